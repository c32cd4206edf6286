//! Echo pods for exercising wsbalancer.
//!
//! A [`Pod`] is what a real backend pod looks like to the balancer: `/ws`
//! accepts a WebSocket and echoes every text and binary message, `/metric`
//! reports the live connection count in the `/metric` contract, and the 101
//! answer carries `x-pod-name` so a client can see where it landed. Many pods
//! run in one process (the `test-server` binary) or inside a test.
//!
//! `/metrics` serves the pod's own Prometheus metrics (text format 0.0.4), so
//! a demo can scrape every pod: `test_server_connections_active` (the same
//! number `/metric` reports), `test_server_connections_accepted_total`,
//! `test_server_echoed_messages_total`, `test_server_echoed_bytes_total`,
//! `test_server_close_frames_received_total{code}` and
//! `test_server_pod_state{pod,state}`. Every pod has its own registry, also
//! when many run in one process.
//!
//! One text message is a command rather than data: `close:CODE` (for
//! example `close:4002`) makes the pod close the connection with that code,
//! so tests can check that a pod's close reaches the client.

#![warn(missing_docs)]

mod metrics;
pub mod netns;
pub mod self_signed;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use common::PodState;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::metrics::PodMetrics;

/// Header naming the pod on its 101 answer.
pub const POD_NAME_HEADER: &str = "x-pod-name";

/// How to run one pod.
#[derive(Clone)]
pub struct PodOptions {
    /// Reported as `podName` and sent as `x-pod-name`.
    pub name: String,
    /// Address to bind; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Subprotocols this pod supports; it selects the first one the client
    /// offers (in the client's order).
    pub subprotocols: Vec<String>,
    /// Serve HTTPS/WSS with this config instead of plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// `capacity` to report, if any.
    pub capacity: Option<u64>,
    /// How long each echo waits before it is sent (a slow pod); echoes on
    /// one connection stay in order, so a queue builds behind a slow one.
    pub delay: Duration,
}

impl PodOptions {
    /// A plain pod on an ephemeral loopback port.
    pub fn new(name: impl Into<String>) -> Self {
        PodOptions {
            name: name.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            subprotocols: Vec::new(),
            tls: None,
            capacity: None,
            delay: Duration::ZERO,
        }
    }
}

/// State shared by a pod's handlers.
struct Shared {
    name: String,
    ip: String,
    subprotocols: Vec<String>,
    /// Live and accepted connection counts, echo and close counters: what
    /// both `/metric` and `/metrics` report.
    metrics: PodMetrics,
    /// Close codes received from clients, in order.
    close_codes: Mutex<Vec<u16>>,
    /// `capacity` in the report.
    capacity: Option<u64>,
    /// `state` in the report; its lock also orders the `pod_state` series.
    state: Mutex<PodState>,
    /// Cancelled when the pod stops: every connection task ends.
    stop: CancellationToken,
    /// Echo delay in microseconds (changeable while running).
    delay_micros: AtomicU64,
}

/// A running pod. Dropping it does not stop it; call [`Pod::stop`].
pub struct Pod {
    shared: Arc<Shared>,
    addr: SocketAddr,
    tls: bool,
    accept_loop: JoinHandle<()>,
}

impl Pod {
    /// Binds and starts serving.
    pub async fn start(options: PodOptions) -> std::io::Result<Pod> {
        let listener = TcpListener::bind(options.listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            metrics: PodMetrics::new(&options.name),
            name: options.name,
            ip: addr.ip().to_string(),
            subprotocols: options.subprotocols,
            close_codes: Mutex::new(Vec::new()),
            capacity: options.capacity,
            state: Mutex::new(PodState::Ready),
            stop: CancellationToken::new(),
            delay_micros: AtomicU64::new(micros(options.delay)),
        });
        let router = Router::new()
            .route("/ws", get(upgrade))
            .route("/metric", get(metric))
            .route("/metrics", get(prometheus_metrics))
            .route("/echo", any(echo_http))
            .route("/websockets.html", get(websockets_page))
            .with_state(shared.clone());
        let tls = options.tls.is_some();
        let acceptor = options.tls.map(TlsAcceptor::from);
        let accept_loop =
            tokio::spawn(accept_loop(listener, router, acceptor, shared.stop.clone()));
        tracing::info!(pod = %shared.name, %addr, tls, "pod listening");
        Ok(Pod {
            shared,
            addr,
            tls,
            accept_loop,
        })
    }

    /// The pod's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL to give the balancer (`http://` or `https://`).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Live connections (counted from the 101 on), the number `/metric`
    /// reports and `/metrics` exports as `test_server_connections_active`.
    pub fn connections(&self) -> u64 {
        self.shared.metrics.active()
    }

    /// Connections answered 101 since start.
    pub fn accepted(&self) -> u64 {
        self.shared.metrics.accepted()
    }

    /// Close codes clients sent to this pod, in arrival order (1005 for a
    /// close frame without a code).
    pub fn close_codes(&self) -> Vec<u16> {
        self.shared
            .close_codes
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default()
    }

    /// Makes every echo from now on wait `delay` first (a pod slowing
    /// down); `Duration::ZERO` makes it prompt again.
    pub fn set_delay(&self, delay: Duration) {
        self.shared
            .delay_micros
            .store(micros(delay), Ordering::Relaxed);
        tracing::info!(pod = %self.shared.name, delay_ms = delay.as_millis() as u64, "echo delay set");
    }

    /// Changes the `state` the pod reports (`drain`, `maint`, `ready`).
    /// Connections keep being accepted: only the balancer reads the state.
    pub fn set_state(&self, state: PodState) {
        let mut current = self
            .shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *current = state;
        self.shared.metrics.set_state(state);
        tracing::info!(pod = %self.shared.name, ?state, "pod state set");
    }

    /// Stops listening and drops every connection at once, as a crashed pod
    /// would.
    pub async fn stop(self) {
        self.shared.stop.cancel();
        let _ = self.accept_loop.await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    router: Router,
    acceptor: Option<TlsAcceptor>,
    stop: CancellationToken,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        let _ = tcp.set_nodelay(true);
        let router = router.clone();
        let acceptor = acceptor.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            match acceptor {
                None => serve(tcp, router, stop).await,
                Some(acceptor) => match acceptor.accept(tcp).await {
                    Ok(tls) => serve(tls, router, stop).await,
                    Err(error) => tracing::debug!(%error, client = %peer, "tls handshake failed"),
                },
            }
        });
    }
}

async fn serve<IO>(io: IO, router: Router, stop: CancellationToken)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(router);
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::select! {
        _ = conn => {}
        () = stop.cancelled() => {}
    }
}

async fn metric(State(shared): State<Arc<Shared>>) -> Response {
    let state = shared.state.lock().map(|s| *s).unwrap_or_default();
    let mut body = serde_json::json!({
        "agentsConnections": shared.metrics.active(),
        "podName": shared.name,
        "podIP": shared.ip,
        "state": state,
    });
    if let Some(capacity) = shared.capacity {
        body["capacity"] = capacity.into();
    }
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// `/metrics`: this pod's registry in the Prometheus text format.
async fn prometheus_metrics(State(shared): State<Arc<Shared>>) -> Response {
    match shared.metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Err(error) => {
            tracing::error!(pod = %shared.name, %error, "encoding /metrics failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// How many WebSockets [`websockets_page`] opens.
pub const PAGE_WEBSOCKETS: usize = 5;

/// The close code [`websockets_page`]'s WebSockets close with, once each
/// has had its echo: a pod that records it [`PAGE_WEBSOCKETS`] times has
/// seen the page's whole run.
pub const PAGE_CLOSE_CODE: u16 = 4321;

/// A page for a real browser: it opens [`PAGE_WEBSOCKETS`] WebSockets to
/// `/ws` on its own origin (over the page's HTTP/2 connection, when the
/// browser has one and the origin allows extended CONNECT), sends a
/// message on each, and closes each with [`PAGE_CLOSE_CODE`] once its
/// echo is back.
async fn websockets_page() -> Response {
    let page = format!(
        r#"<!doctype html><meta charset="utf-8"><title>websockets</title>
<script>
for (let i = 0; i < {PAGE_WEBSOCKETS}; i++) {{
  const ws = new WebSocket(`wss://${{location.host}}/ws`);
  ws.onopen = () => ws.send(`hello ${{i}}`);
  ws.onmessage = (event) => {{
    if (event.data === `hello ${{i}}`) ws.close({PAGE_CLOSE_CODE}, "done");
  }};
}}
</script>"#
    );
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response()
}

/// Plain HTTP: streams the request body back as it arrives, and says what
/// the pod saw in `x-seen-*` headers (for proxying tests).
async fn echo_http(State(shared): State<Arc<Shared>>, request: axum::extract::Request) -> Response {
    let (parts, body) = request.into_parts();
    let names: Vec<&str> = parts.headers.keys().map(|n| n.as_str()).collect();
    let mut response = Response::new(axum::body::Body::new(body));
    let seen = [
        ("x-seen-method", Some(parts.method.as_str().to_owned())),
        ("x-seen-uri", Some(parts.uri.to_string())),
        ("x-seen-header-names", Some(names.join(","))),
        (
            "x-seen-forwarded-for",
            parts
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        ),
        ("x-pod-name", Some(shared.name.clone())),
    ];
    for (name, value) in seen {
        if let Some(value) = value.and_then(|v| header::HeaderValue::from_str(&v).ok()) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

async fn upgrade(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let chosen = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find(|offered| shared.subprotocols.iter().any(|s| s == offered))
        .map(str::to_owned);
    let ws = match chosen {
        Some(protocol) => ws.protocols([protocol]),
        None => ws,
    };
    let name = HeaderValue::from_str(&shared.name).ok();
    // Counted from the moment the 101 is committed to, so that a report
    // never lags behind a 101 the client has already seen; if the upgrade
    // then fails, axum drops the callback and with it this count.
    let live = Live::new(shared);
    let mut response = ws
        .max_message_size(64 << 20)
        .on_upgrade(move |socket| echo(socket, live));
    if let Some(name) = name {
        response.headers_mut().insert(POD_NAME_HEADER, name);
    }
    response
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Counts a connection for exactly as long as it lives.
struct Live(Arc<Shared>);

impl Live {
    fn new(shared: Arc<Shared>) -> Self {
        shared.metrics.connection_opened();
        Live(shared)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.metrics.connection_closed();
    }
}

impl Shared {
    /// Records a close frame from a client, for [`Pod::close_codes`] and
    /// `/metrics` alike.
    fn close_received(&self, code: u16) {
        self.close_codes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(code);
        self.metrics.close_received(code);
        tracing::debug!(pod = %self.name, code, "close frame received");
    }
}

/// Echoes text and binary messages until the peer closes. Pings are answered
/// and the close handshake is completed (with the peer's code) by the
/// WebSocket layer itself.
async fn echo(mut socket: WebSocket, live: Live) {
    let stop = live.0.stop.clone();
    loop {
        let message = tokio::select! {
            m = socket.recv() => m,
            () = stop.cancelled() => return,
        };
        // The payload size of an echo, `None` for a command's reply.
        let (reply, echoed) = match message {
            Some(Ok(Message::Text(text))) => match close_command(text.as_str()) {
                Some(code) => {
                    let frame = CloseFrame {
                        code,
                        reason: "closed by pod".into(),
                    };
                    (Message::Close(Some(frame)), None)
                }
                None => {
                    let size = text.as_str().len();
                    (Message::Text(text), Some(size))
                }
            },
            Some(Ok(Message::Binary(data))) => {
                let size = data.len();
                (Message::Binary(data), Some(size))
            }
            Some(Ok(Message::Close(frame))) => {
                live.0.close_received(frame.map_or(1005, |f| f.code));
                continue;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Err(_)) | None => return,
        };
        let delay = live.0.delay_micros.load(Ordering::Relaxed);
        if echoed.is_some() && delay > 0 {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_micros(delay)) => {}
                () = stop.cancelled() => return,
            }
        }
        if socket.send(reply).await.is_err() {
            return;
        }
        if let Some(size) = echoed {
            live.0.metrics.echoed(size);
        }
    }
}

/// `close:4002` → `Some(4002)`.
fn close_command(text: &str) -> Option<u16> {
    text.strip_prefix("close:")?.trim().parse().ok()
}
