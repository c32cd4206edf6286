//! Driving connections: one task per connection, a semaphore for the
//! concurrency, and a collector that turns each connection's outcome into
//! the [`Report`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::report::{Collector, Report};

/// What load to apply.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// `ws://` or `wss://` URL (the balancer, or a pod directly).
    pub url: String,
    /// Connections to open in total.
    pub connections: usize,
    /// Connections in progress at once.
    pub concurrency: usize,
    /// Messages sent (and echoes awaited) on each connection.
    pub messages: usize,
    /// Payload bytes per message.
    pub size: usize,
    /// How long each connection stays open after its messages.
    pub hold: Duration,
    /// Send binary instead of text messages.
    pub binary: bool,
    /// Subprotocol to offer, if any.
    pub subprotocol: Option<String>,
    /// Bound on the handshake, each echo and the close.
    pub timeout: Duration,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            url: "ws://127.0.0.1:8080/ws".into(),
            connections: 100,
            concurrency: 50,
            messages: 10,
            size: 64,
            hold: Duration::from_secs(2),
            binary: false,
            subprotocol: None,
            timeout: Duration::from_secs(10),
        }
    }
}

/// How one connection went.
#[derive(Debug, Default)]
pub struct ConnOutcome {
    /// `x-pod-name` of the 101, when the handshake succeeded.
    pub pod: Option<String>,
    /// Handshake time.
    pub handshake: Option<Duration>,
    /// Round trip of each echoed message.
    pub round_trips: Vec<Duration>,
    /// Messages sent.
    pub sent: u64,
    /// Echoes received and verified.
    pub received: u64,
    /// Close code the server answered with.
    pub close_code: Option<u16>,
    /// Why the connection failed, if it did.
    pub failure: Option<String>,
}

/// Runs the load and returns the report.
pub async fn run(options: LoadOptions) -> Report {
    let options = Arc::new(options);
    let permits = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for id in 0..options.connections {
        let options = options.clone();
        let permits = permits.clone();
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            one_connection(id, &options).await
        });
    }
    let mut collector = Collector::new(&options.url, options.connections);
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(outcome) => collector.add(outcome),
            Err(error) => collector.add(ConnOutcome {
                failure: Some(format!("client task failed: {error}")),
                ..ConnOutcome::default()
            }),
        }
    }
    collector.finish(started.elapsed())
}

/// The payload of message `seq` on connection `id`: unique, so a misrouted
/// or reordered echo is caught.
fn payload(id: usize, seq: usize, size: usize) -> String {
    let mut text = format!("c{id}-m{seq}-");
    if text.len() < size {
        text.extend(std::iter::repeat_n('x', size - text.len()));
    }
    text
}

async fn one_connection(id: usize, options: &LoadOptions) -> ConnOutcome {
    let mut outcome = ConnOutcome::default();
    if let Err(reason) = drive(id, options, &mut outcome).await {
        outcome.failure = Some(reason);
    }
    outcome
}

async fn drive(id: usize, options: &LoadOptions, outcome: &mut ConnOutcome) -> Result<(), String> {
    let mut request = options
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("bad url: {e}"))?;
    if let Some(protocol) = &options.subprotocol {
        let value = HeaderValue::from_str(protocol).map_err(|_| "bad subprotocol".to_owned())?;
        request
            .headers_mut()
            .insert("sec-websocket-protocol", value);
    }
    let started = Instant::now();
    let (mut ws, response) =
        tokio::time::timeout(options.timeout, tokio_tungstenite::connect_async(request))
            .await
            .map_err(|_| "handshake timeout".to_owned())?
            .map_err(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(r) => {
                    format!("http {}", r.status().as_u16())
                }
                tokio_tungstenite::tungstenite::Error::Io(e) => format!("connect: {}", e.kind()),
                other => format!("handshake: {other}"),
            })?;
    outcome.handshake = Some(started.elapsed());
    outcome.pod = Some(
        response
            .headers()
            .get("x-pod-name")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("unknown")
            .to_owned(),
    );

    for seq in 0..options.messages {
        let text = payload(id, seq, options.size);
        let message = if options.binary {
            Message::binary(text.clone().into_bytes())
        } else {
            Message::text(text.clone())
        };
        let sent_at = Instant::now();
        ws.send(message).await.map_err(|e| format!("send: {e}"))?;
        outcome.sent += 1;
        let echo = loop {
            let next = tokio::time::timeout(options.timeout, ws.next())
                .await
                .map_err(|_| "echo timeout".to_owned())?;
            match next {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => break m,
                Some(Ok(Message::Close(_))) | None => return Err("closed early".into()),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(format!("read: {e}")),
            }
        };
        if echo.into_data().as_ref() != text.as_bytes() {
            return Err("echo mismatch".into());
        }
        outcome.received += 1;
        outcome.round_trips.push(sent_at.elapsed());
    }

    // Hold the connection, still reading so server pings are answered.
    if !options.hold.is_zero() {
        let held = tokio::time::timeout(options.hold, async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Close(_))) | None => {
                        return Err::<(), String>("closed early".to_owned());
                    }
                    Some(Err(e)) => return Err(format!("read: {e}")),
                    Some(Ok(_)) => {}
                }
            }
        })
        .await;
        if let Ok(Err(reason)) = held {
            return Err(reason);
        }
    }

    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "done".into(),
    }))
    .await
    .map_err(|e| format!("close: {e}"))?;
    let closing = tokio::time::timeout(options.timeout, async {
        while let Some(message) = ws.next().await {
            if let Ok(Message::Close(frame)) = message {
                outcome.close_code = Some(frame.map_or(1005, |f| u16::from(f.code)));
            }
        }
    })
    .await;
    if closing.is_err() {
        return Err("close timeout".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_unique_and_sized() {
        assert_eq!(payload(3, 4, 64).len(), 64);
        assert!(payload(3, 4, 64).starts_with("c3-m4-"));
        assert_ne!(payload(1, 23, 0), payload(12, 3, 0));
        assert_eq!(payload(12, 345, 2), "c12-m345-");
    }
}
