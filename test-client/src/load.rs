//! Driving connections: one task per connection, started at a fixed rate
//! (`--rate`) or as fast as `--concurrency` allows, each sending its
//! messages closed-loop (send, wait for the echo) or open-loop at
//! `--msg-rate` (sends on a schedule, latency measured from the scheduled
//! time, so a stalled server shows up in the figures instead of slowing the
//! client down), then holding the connection and closing it.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

use crate::outcome::ConnOutcome;
use crate::report::{Collector, Live, Report};

/// What load to apply.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// `ws://` or `wss://` URLs (the balancer, or pods directly);
    /// connections go to them in turn.
    pub urls: Vec<String>,
    /// Connections to open in total.
    pub connections: usize,
    /// Connections in progress at once.
    pub concurrency: usize,
    /// New connections per second (open-loop arrivals), when set.
    pub rate: Option<f64>,
    /// Bound on the whole run: no connection starts after it, and holds
    /// are cut short.
    pub duration: Option<Duration>,
    /// Messages sent (and echoes awaited) on each connection.
    pub messages: usize,
    /// Messages per second per connection (open loop), when set.
    pub msg_rate: Option<f64>,
    /// Payload bytes per message.
    pub size: usize,
    /// How long each connection stays open after its messages.
    pub hold: Duration,
    /// Send binary instead of text messages.
    pub binary: bool,
    /// Subprotocol to offer, if any.
    pub subprotocol: Option<String>,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// `Origin` header, if any.
    pub origin: Option<String>,
    /// Local addresses to connect from, in turn (more source addresses,
    /// more ephemeral ports).
    pub bind: Vec<IpAddr>,
    /// Send a ping this often while holding.
    pub ping_interval: Option<Duration>,
    /// Bound on the handshake, each echo and the close.
    pub timeout: Duration,
    /// Number of the first connection (workers of one run count on from
    /// each other, so URLs and source addresses rotate as in one process).
    pub first_id: usize,
    /// For `wss://`: certificates to trust besides the system roots (PEM).
    pub ca_file: Option<PathBuf>,
    /// For `wss://`: accept any certificate (self-signed test setups).
    pub insecure: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            urls: vec!["ws://127.0.0.1:8080/ws".into()],
            connections: 100,
            concurrency: 50,
            rate: None,
            duration: None,
            messages: 10,
            msg_rate: None,
            size: 64,
            hold: Duration::from_secs(2),
            binary: false,
            subprotocol: None,
            headers: Vec::new(),
            origin: None,
            bind: Vec::new(),
            ping_interval: None,
            timeout: Duration::from_secs(10),
            first_id: 0,
            ca_file: None,
            insecure: false,
        }
    }
}

/// Why options cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    /// A URL is not a WebSocket URL.
    #[error("--url {0:?}: {1}")]
    Url(String, String),
    /// A header is not `Name: value` with a valid name and value.
    #[error("--header {0:?}: expected NAME:VALUE with a valid header name and value")]
    Header(String),
    /// A rate is not a positive number.
    #[error("{0} must be a positive number of per-second events")]
    Rate(&'static str),
    /// TLS for `wss://` could not be set up (the CA file).
    #[error("--ca-file: {0}")]
    Tls(#[from] common::tls::TlsSetupError),
}

/// The handshake request of connection `id`.
fn request(options: &LoadOptions, id: usize) -> Result<Request, OptionsError> {
    let url = &options.urls[id % options.urls.len()];
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| OptionsError::Url(url.clone(), e.to_string()))?;
    let headers = request.headers_mut();
    for (name, value) in &options.headers {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) else {
            return Err(OptionsError::Header(format!("{name}:{value}")));
        };
        headers.append(name, value);
    }
    for (name, value) in [
        ("origin", &options.origin),
        ("sec-websocket-protocol", &options.subprotocol),
    ] {
        if let Some(value) = value {
            let value =
                HeaderValue::from_str(value).map_err(|_| OptionsError::Header(value.clone()))?;
            headers.insert(name, value);
        }
    }
    Ok(request)
}

impl LoadOptions {
    /// Checks what can be checked before the run: every URL and header
    /// builds a request, rates are positive, and TLS can be set up when a
    /// URL is `wss://`.
    pub fn validate(&self) -> Result<(), OptionsError> {
        if self.urls.is_empty() {
            return Err(OptionsError::Url(String::new(), "no URL given".into()));
        }
        for id in 0..self.urls.len() {
            let request = request(self, id)?;
            if !matches!(request.uri().scheme_str(), Some("ws" | "wss")) {
                return Err(OptionsError::Url(
                    self.urls[id].clone(),
                    "expected a ws:// or wss:// URL".into(),
                ));
            }
        }
        self.tls()?;
        for (flag, rate) in [("--rate", self.rate), ("--msg-rate", self.msg_rate)] {
            if rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
                return Err(OptionsError::Rate(flag));
            }
        }
        Ok(())
    }

    /// The TLS client config for `wss://` URLs, when there is one.
    fn tls(&self) -> Result<Option<Arc<rustls::ClientConfig>>, OptionsError> {
        let wss = (0..self.urls.len())
            .any(|id| request(self, id).is_ok_and(|r| r.uri().scheme_str() == Some("wss")));
        if !wss {
            return Ok(None);
        }
        Ok(Some(common::tls::client_config(
            !self.insecure,
            self.ca_file.as_deref(),
        )?))
    }
}

/// Runs the load and returns the report; `live` is updated as it goes
/// (for a progress display).
pub async fn run(options: LoadOptions, live: Arc<Live>) -> Report {
    let options = Arc::new(options);
    // Checked by `validate`; should the CA file have gone since, `wss://`
    // connections fail and say so.
    let tls = options.tls().ok().flatten();
    let permits = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let started = Instant::now();
    let end = options.duration.map(|d| started + d);
    // Cut holds short at the end of the run.
    let over = CancellationToken::new();
    if let Some(end) = end {
        let over = over.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(end).await;
            over.cancel();
        });
    }
    let mut tasks = JoinSet::new();
    let mut collector = Collector::new(&options.urls.join(","));
    for n in 0..options.connections {
        let id = options.first_id + n;
        if let Some(rate) = options.rate {
            let at = started + Duration::from_secs_f64(n as f64 / rate);
            tokio::select! {
                () = tokio::time::sleep_until(at) => {}
                () = over.cancelled() => break,
            }
        }
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p,
            () = over.cancelled() => break,
        };
        let (task_options, task_live, task_over) = (options.clone(), live.clone(), over.clone());
        let task_tls = tls.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let shared = Shared {
                options: &task_options,
                tls: task_tls.as_ref(),
                live: &task_live,
                over: &task_over,
            };
            one_connection(id, &shared).await
        });
        // Collect as we go, so a long run does not keep every outcome.
        while let Some(joined) = tasks.try_join_next() {
            collect(&mut collector, &live, joined);
        }
    }
    while let Some(joined) = tasks.join_next().await {
        collect(&mut collector, &live, joined);
    }
    over.cancel();
    collector.finish(&live, started.elapsed())
}

fn collect(
    collector: &mut Collector,
    live: &Live,
    joined: Result<ConnOutcome, tokio::task::JoinError>,
) {
    let outcome = joined.unwrap_or_else(|error| ConnOutcome {
        failure: Some(format!("client task failed: {error}")),
        ..ConnOutcome::default()
    });
    let counter = if outcome.failure.is_some() {
        &live.failed
    } else {
        &live.ok
    };
    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    collector.add(outcome);
}

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

type Ws = WebSocketStream<Stream>;

/// What every connection of a run shares.
struct Shared<'a> {
    options: &'a LoadOptions,
    /// The TLS client config, when a URL is `wss://`.
    tls: Option<&'a Arc<rustls::ClientConfig>>,
    live: &'a Live,
    over: &'a CancellationToken,
}

async fn one_connection(id: usize, shared: &Shared<'_>) -> ConnOutcome {
    let Shared {
        options,
        live,
        over,
        ..
    } = *shared;
    let mut outcome = ConnOutcome::default();
    match open(id, shared, &mut outcome).await {
        Ok(mut ws) => {
            live.open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let result = converse(id, options, live, over, &mut ws, &mut outcome).await;
            live.open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            if let Err(reason) = result {
                outcome.failure = Some(reason);
            }
        }
        Err(reason) => outcome.failure = Some(reason),
    }
    outcome
}

/// Connects (from the next `--bind` address, if any), sets up TLS for
/// `wss://`, and upgrades.
async fn open(id: usize, shared: &Shared<'_>, outcome: &mut ConnOutcome) -> Result<Ws, String> {
    let Shared { options, live, .. } = *shared;
    let request = request(options, id).map_err(|e| e.to_string())?;
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
    outcome.pod = Some(
        response
            .headers()
            .get("x-pod-name")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("unknown")
            .to_owned(),
    );
    Ok(ws)
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
    match options.msg_rate {
        Some(rate) => open_loop(id, options, live, ws, rate).await?,
        None => closed_loop(id, options, live, ws).await?,
    }
    hold(options, over, ws).await?;
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
) -> Result<Message, String> {
    loop {
        match ws.next().await {
            Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => return Ok(m),
            Some(Ok(Message::Close(frame))) => {
                let code = frame.map_or(1005, |f| u16::from(f.code));
                return Err(format!("closed early ({code})"));
            }
            None => return Err("closed early".into()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(format!("read: {e}")),
        }
    }
}

/// Send one message, wait for its echo, repeat.
async fn closed_loop(
    id: usize,
    options: &LoadOptions,
    live: &Live,
    ws: &mut Ws,
) -> Result<(), String> {
    for seq in 0..options.messages {
        let text = payload(id, seq, options.size);
        let len = text.len();
        let sent_at = Instant::now();
        ws.send(message(options, text.clone()))
            .await
            .map_err(|e| format!("send: {e}"))?;
        live.sent(len);
        let echo = tokio::time::timeout(options.timeout, next_data(ws))
            .await
            .map_err(|_| "echo timeout".to_owned())??;
        if echo.into_data().as_ref() != text.as_bytes() {
            return Err("echo mismatch".into());
        }
        live.echoed(len, sent_at.elapsed());
    }
    Ok(())
}

/// Sends on a schedule (`rate` per second) while reading echoes; each
/// round trip counts from the time its message was due, not from when it
/// could be sent, so a server that stalls cannot hide the stall.
async fn open_loop(
    id: usize,
    options: &LoadOptions,
    live: &Live,
    ws: &mut Ws,
    rate: f64,
) -> Result<(), String> {
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
                .map_err(|e| format!("send: {e}"))?;
            live.sent(len);
        }
        Ok::<_, String>(())
    };
    let receive = async {
        let mut expected = 0;
        while expected < count {
            // The last message is due at `due(count - 1)`; allow the
            // timeout after whichever is later, that or now.
            let deadline = due(count.saturating_sub(1)).max(Instant::now()) + options.timeout;
            let echo = tokio::time::timeout_at(deadline, next_data(&mut stream))
                .await
                .map_err(|_| "echo timeout".to_owned())??;
            let data = echo.into_data();
            // Echoes come back in order: each must be the next one sent.
            if data.as_ref() != payload(id, expected, options.size).as_bytes() {
                return Err("echo mismatch".into());
            }
            live.echoed(data.len(), due(expected).elapsed());
            expected += 1;
        }
        Ok(())
    };
    let (sent, received) = tokio::join!(send, receive);
    sent?;
    received
}

/// Holds the connection open, reading (so server pings are answered) and
/// pinging when asked, until the hold ends or the run is over.
async fn hold(options: &LoadOptions, over: &CancellationToken, ws: &mut Ws) -> Result<(), String> {
    if options.hold.is_zero() {
        return Ok(());
    }
    let until = Instant::now() + options.hold;
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
        tokio::select! {
            () = tokio::time::sleep_until(until) => return Ok(()),
            () = over.cancelled() => return Ok(()),
            () = tick => {
                ws.send(Message::Ping(Vec::new().into()))
                    .await
                    .map_err(|e| format!("ping: {e}"))?;
            }
            message = ws.next() => match message {
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.map_or(1005, |f| u16::from(f.code));
                    return Err(format!("closed early ({code})"));
                }
                None => return Err("closed early".into()),
                Some(Err(e)) => return Err(format!("read: {e}")),
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

    #[test]
    fn options_are_checked_before_the_run() {
        let ok = LoadOptions::default();
        assert!(ok.validate().is_ok());
        let bad_url = LoadOptions {
            urls: vec!["http://x/".into()],
            ..LoadOptions::default()
        };
        assert!(bad_url.validate().is_err());
        let bad_header = LoadOptions {
            headers: vec![("bad name".into(), "v".into())],
            ..LoadOptions::default()
        };
        assert!(matches!(
            bad_header.validate(),
            Err(OptionsError::Header(_))
        ));
        let bad_rate = LoadOptions {
            rate: Some(0.0),
            ..LoadOptions::default()
        };
        assert!(matches!(
            bad_rate.validate(),
            Err(OptionsError::Rate("--rate"))
        ));
        let wss = LoadOptions {
            urls: vec!["wss://127.0.0.1:1/ws".into()],
            ..LoadOptions::default()
        };
        assert!(wss.validate().is_ok());
        let missing_ca = LoadOptions {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..wss
        };
        assert!(matches!(missing_ca.validate(), Err(OptionsError::Tls(_))));
    }
}
