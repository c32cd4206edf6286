//! One connection, from open to close: dial (TCP, TLS for `wss://`, the
//! upgrade and its `x-pod-name`), messages closed-loop (send, wait for the
//! echo) or open-loop at `--msg-rate` (sends on a schedule, latency
//! measured from the scheduled time, so a stalled server shows up in the
//! figures instead of slowing the client down), the hold, and the close.
//!
//! [`one_connection`] is a client of one connection; a reconnecting client
//! (`crate::reconnect`) strings the same steps together, telling by the
//! [`Cut`] and the [`Tally`] how each connection ended.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

use crate::options::{LoadOptions, request};
use crate::outcome::ConnOutcome;
use crate::report::Live;

/// The payload of message `seq` on connection `id`: unique, so a misrouted
/// or reordered echo is caught, and `seq` can be read back from the echo.
fn payload(id: usize, seq: usize, size: usize) -> String {
    let mut text = format!("c{id}-m{seq}-");
    if text.len() < size {
        text.extend(std::iter::repeat_n('x', size - text.len()));
    }
    text
}

/// A connection's stream: plain TCP (`ws://`) or TLS over it (`wss://`).
type Stream = Either<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>;

pub(crate) type Ws = WebSocketStream<Stream>;

/// What every connection of a run shares.
pub(crate) struct Shared<'a> {
    pub(crate) options: &'a LoadOptions,
    /// The TLS client config, when a URL is `wss://`.
    pub(crate) tls: Option<&'a Arc<rustls::ClientConfig>>,
    pub(crate) live: &'a Live,
    /// Cancelled when the run is over: holds end, clients close.
    pub(crate) over: &'a CancellationToken,
}

/// An open connection and the pod it landed on (`x-pod-name`, or
/// `unknown` when the 101 did not say).
pub(crate) struct Opened {
    pub(crate) ws: Ws,
    pub(crate) pod: String,
}

/// Why a connection's messages or hold stopped short. Its text is the
/// failure reason a report shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cut {
    /// The far side sent a Close with this code (1005: without one).
    Closed(u16),
    /// The connection went without a Close: end of stream, or a read,
    /// send or ping that failed.
    Lost(String),
    /// An echo was wrong or did not come in time.
    Echo(&'static str),
}

impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cut::Closed(code) => write!(f, "closed early ({code})"),
            Cut::Lost(reason) => f.write_str(reason),
            Cut::Echo(reason) => f.write_str(reason),
        }
    }
}

/// One connection's messages, counted as they go (and into [`Live`]):
/// what was sent and echoed on it, and the Close the far side sent, if it
/// did. Under `--msg-rate` the sending half may fail after the reading half
/// saw the Close; the tally still knows the connection was closed.
pub(crate) struct Tally<'a> {
    live: &'a Live,
    sent: AtomicU64,
    echoed: AtomicU64,
    closed_with: OnceLock<u16>,
}

impl<'a> Tally<'a> {
    pub(crate) fn new(live: &'a Live) -> Self {
        Tally {
            live,
            sent: AtomicU64::new(0),
            echoed: AtomicU64::new(0),
            closed_with: OnceLock::new(),
        }
    }

    fn sent(&self, bytes: usize) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        self.live.sent(bytes);
    }

    fn echoed(&self, bytes: usize, d: Duration) {
        self.echoed.fetch_add(1, Ordering::Relaxed);
        self.live.echoed(bytes, d);
    }

    /// The far side's Close, as a cut (and remembered).
    fn closed(&self, frame: Option<CloseFrame>) -> Cut {
        let code = frame.map_or(1005, |f| u16::from(f.code));
        let _ = self.closed_with.set(code);
        Cut::Closed(code)
    }

    /// The code of the Close the far side sent, if one came.
    pub(crate) fn closed_with(&self) -> Option<u16> {
        self.closed_with.get().copied()
    }

    /// Messages sent on this connection whose echo has not come (yet).
    pub(crate) fn unanswered(&self) -> u64 {
        let sent = self.sent.load(Ordering::Relaxed);
        sent.saturating_sub(self.echoed.load(Ordering::Relaxed))
    }
}

pub(crate) async fn one_connection(id: usize, shared: &Shared<'_>) -> ConnOutcome {
    let Shared {
        options,
        live,
        over,
        ..
    } = *shared;
    let mut outcome = ConnOutcome::default();
    match open(id, 0, shared).await {
        Ok(Opened { mut ws, pod }) => {
            outcome.pod = Some(pod);
            live.open.fetch_add(1, Ordering::Relaxed);
            let result = converse(id, options, live, over, &mut ws, &mut outcome).await;
            live.open.fetch_sub(1, Ordering::Relaxed);
            if let Err(reason) = result {
                outcome.failure = Some(reason);
            }
        }
        Err(reason) => outcome.failure = Some(reason),
    }
    outcome
}

/// Connects (from client `id`'s `--bind` address, if any), sets up TLS for
/// `wss://`, and upgrades. Attempt `attempt` of a client goes to the URL
/// after the one attempt `attempt - 1` went to: a client given several
/// URLs tries them in turn.
pub(crate) async fn open(id: usize, attempt: usize, shared: &Shared<'_>) -> Result<Opened, String> {
    let Shared { options, live, .. } = *shared;
    let request = request(options, id.wrapping_add(attempt)).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let handshake = async {
        let tcp = connect(&request, options.bind.get(id % options.bind.len().max(1))).await?;
        let stream = match request.uri().scheme_str() {
            Some("wss") => Either::Right(tls_connect(&request, shared.tls, tcp).await?),
            _ => Either::Left(tcp),
        };
        tokio_tungstenite::client_async(request, stream)
            .await
            .map_err(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(r) => {
                    format!("http {}", r.status().as_u16())
                }
                tokio_tungstenite::tungstenite::Error::Io(e) => format!("handshake: {}", e.kind()),
                other => format!("handshake: {other}"),
            })
    };
    let (ws, response) = tokio::time::timeout(options.timeout, handshake)
        .await
        .map_err(|_| "handshake timeout".to_owned())??;
    live.handshake(started.elapsed());
    let pod = response
        .headers()
        .get("x-pod-name")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("unknown")
        .to_owned();
    Ok(Opened { ws, pod })
}

/// TLS over `tcp`, for the request's host name.
async fn tls_connect(
    request: &Request,
    tls: Option<&Arc<rustls::ClientConfig>>,
    tcp: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let tls = tls.ok_or("tls: no client config (the --ca-file could not be read)")?;
    let host = host(request);
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| format!("tls: server name {host:?}: {e}"))?;
    tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| format!("tls: {e}"))
}

/// The request's host, without the brackets of an IPv6 literal.
fn host(request: &Request) -> &str {
    let host = request.uri().host().unwrap_or("127.0.0.1");
    host.trim_start_matches('[').trim_end_matches(']')
}

/// A TCP connection to the request's host, from `bind` when given.
async fn connect(request: &Request, bind: Option<&IpAddr>) -> Result<TcpStream, String> {
    let uri = request.uri();
    let host = host(request);
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("wss") {
            443
        } else {
            80
        });
    let target: SocketAddr = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("resolve: {}", e.kind()))?
        .find(|a| bind.is_none_or(|b| a.is_ipv4() == b.is_ipv4()))
        .ok_or_else(|| "resolve: no address".to_owned())?;
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| format!("socket: {}", e.kind()))?;
    if let Some(ip) = bind {
        socket
            .bind(SocketAddr::new(*ip, 0))
            .map_err(|e| format!("bind {ip}: {}", e.kind()))?;
    }
    let tcp = socket
        .connect(target)
        .await
        .map_err(|e| format!("connect: {}", e.kind()))?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// Messages, hold, close.
async fn converse(
    id: usize,
    options: &LoadOptions,
    live: &Live,
    over: &CancellationToken,
    ws: &mut Ws,
    outcome: &mut ConnOutcome,
) -> Result<(), String> {
    let tally = Tally::new(live);
    exchange(id, options, &tally, ws)
        .await
        .map_err(|cut| cut.to_string())?;
    if !options.hold.is_zero() {
        let until = Instant::now() + options.hold;
        hold(options, over, Some(until), &tally, ws)
            .await
            .map_err(|cut| cut.to_string())?;
    }
    close(options, ws, &mut outcome.close_code).await
}

/// Closes with 1000 and waits for the far side's answer, whose code goes
/// to `answer`.
pub(crate) async fn close(
    options: &LoadOptions,
    ws: &mut Ws,
    answer: &mut Option<u16>,
) -> Result<(), String> {
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "done".into(),
    }))
    .await
    .map_err(|e| format!("close: {e}"))?;
    let closing = tokio::time::timeout(options.timeout, async {
        while let Some(message) = ws.next().await {
            if let Ok(Message::Close(frame)) = message {
                *answer = Some(frame.map_or(1005, |f| u16::from(f.code)));
            }
        }
    })
    .await;
    if closing.is_err() {
        return Err("close timeout".into());
    }
    Ok(())
}

/// After the far side's Close: lets the WebSocket layer send its answer
/// and reads to the end of the stream, within the timeout.
pub(crate) async fn finish_closing(options: &LoadOptions, ws: &mut Ws) {
    let _ = tokio::time::timeout(options.timeout, async {
        while ws.next().await.is_some() {}
    })
    .await;
}

/// The connection's messages: closed loop, or open loop at `--msg-rate`.
pub(crate) async fn exchange(
    id: usize,
    options: &LoadOptions,
    tally: &Tally<'_>,
    ws: &mut Ws,
) -> Result<(), Cut> {
    match options.msg_rate {
        Some(rate) => open_loop(id, options, tally, ws, rate).await,
        None => closed_loop(id, options, tally, ws).await,
    }
}

fn message(options: &LoadOptions, text: String) -> Message {
    if options.binary {
        Message::binary(text.into_bytes())
    } else {
        Message::text(text)
    }
}

/// The next data message (pings are answered by the WebSocket layer).
async fn next_data(
    ws: &mut (impl StreamExt<Item = tokio_tungstenite::tungstenite::Result<Message>> + Unpin),
    tally: &Tally<'_>,
) -> Result<Message, Cut> {
    loop {
        match ws.next().await {
            Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => return Ok(m),
            Some(Ok(Message::Close(frame))) => return Err(tally.closed(frame)),
            None => return Err(Cut::Lost("closed early".into())),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(Cut::Lost(format!("read: {e}"))),
        }
    }
}

/// Send one message, wait for its echo, repeat.
async fn closed_loop(
    id: usize,
    options: &LoadOptions,
    tally: &Tally<'_>,
    ws: &mut Ws,
) -> Result<(), Cut> {
    for seq in 0..options.messages {
        let text = payload(id, seq, options.size);
        let len = text.len();
        let sent_at = Instant::now();
        ws.send(message(options, text.clone()))
            .await
            .map_err(|e| Cut::Lost(format!("send: {e}")))?;
        tally.sent(len);
        let echo = tokio::time::timeout(options.timeout, next_data(ws, tally))
            .await
            .map_err(|_| Cut::Echo("echo timeout"))??;
        if echo.into_data().as_ref() != text.as_bytes() {
            return Err(Cut::Echo("echo mismatch"));
        }
        tally.echoed(len, sent_at.elapsed());
    }
    Ok(())
}

/// Sends on a schedule (`rate` per second) while reading echoes; each
/// round trip counts from the time its message was due, not from when it
/// could be sent, so a server that stalls cannot hide the stall.
async fn open_loop(
    id: usize,
    options: &LoadOptions,
    tally: &Tally<'_>,
    ws: &mut Ws,
    rate: f64,
) -> Result<(), Cut> {
    let count = options.messages;
    let start = Instant::now();
    let due = |seq: usize| start + Duration::from_secs_f64(seq as f64 / rate);
    // Halves of the borrowed stream: whole again when they are dropped.
    let (mut sink, mut stream) = ws.split();
    let send = async {
        for seq in 0..count {
            tokio::time::sleep_until(due(seq)).await;
            let text = payload(id, seq, options.size);
            let len = text.len();
            sink.send(message(options, text))
                .await
                .map_err(|e| Cut::Lost(format!("send: {e}")))?;
            tally.sent(len);
        }
        Ok::<_, Cut>(())
    };
    let receive = async {
        let mut expected = 0;
        while expected < count {
            // The last message is due at `due(count - 1)`; allow the
            // timeout after whichever is later, that or now.
            let deadline = due(count.saturating_sub(1)).max(Instant::now()) + options.timeout;
            let echo = tokio::time::timeout_at(deadline, next_data(&mut stream, tally))
                .await
                .map_err(|_| Cut::Echo("echo timeout"))??;
            let data = echo.into_data();
            // Echoes come back in order: each must be the next one sent.
            if data.as_ref() != payload(id, expected, options.size).as_bytes() {
                return Err(Cut::Echo("echo mismatch"));
            }
            tally.echoed(data.len(), due(expected).elapsed());
            expected += 1;
        }
        Ok(())
    };
    let (sent, received) = tokio::join!(send, receive);
    sent?;
    received
}

/// Holds the connection open, reading (so server pings are answered) and
/// pinging when asked, until `until` (never, when `None`) or the run is
/// over.
pub(crate) async fn hold(
    options: &LoadOptions,
    over: &CancellationToken,
    until: Option<Instant>,
    tally: &Tally<'_>,
    ws: &mut Ws,
) -> Result<(), Cut> {
    let mut ping = options
        .ping_interval
        .filter(|d| !d.is_zero())
        .map(|d| tokio::time::interval_at(Instant::now() + d, d));
    loop {
        let tick = async {
            match ping.as_mut() {
                Some(interval) => {
                    interval.tick().await;
                }
                None => std::future::pending().await,
            }
        };
        let deadline = async {
            match until {
                Some(until) => tokio::time::sleep_until(until).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = deadline => return Ok(()),
            () = over.cancelled() => return Ok(()),
            () = tick => {
                ws.send(Message::Ping(Vec::new().into()))
                    .await
                    .map_err(|e| Cut::Lost(format!("ping: {e}")))?;
            }
            message = ws.next() => match message {
                Some(Ok(Message::Close(frame))) => return Err(tally.closed(frame)),
                None => return Err(Cut::Lost("closed early".into())),
                Some(Err(e)) => return Err(Cut::Lost(format!("read: {e}"))),
                Some(Ok(_)) => {}
            },
        }
    }
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
