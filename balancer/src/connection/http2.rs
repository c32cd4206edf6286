//! HTTP/2 on the TLS listener (`http2`, ALPN `h2`). A browser that holds
//! an HTTP/2 connection to the origin opens its WebSockets as streams on
//! it (RFC 8441 extended CONNECT, `:protocol websocket`); the pods keep
//! speaking HTTP/1.1, so each such stream becomes an ordinary upgrade
//! toward the chosen pod, with a key of its own, and goes through the same
//! path as an HTTP/1.1 upgrade: [`upgrade::answer`] (checks, admission,
//! failover), then a [`Session`](crate::connection::session::Session)
//! whose client end is the stream. Plain requests on the connection are
//! proxied as HTTP/1.1 ones (`httpMode`).
//!
//! Flow control is per stream: each stream may have at most
//! [`STREAM_WINDOW`] bytes unread in the balancer, and the connection's
//! window covers every stream's at once, so a WebSocket whose pod stops
//! reading holds its own window and never the others'.
//!
//! A drain closes every WebSocket of the connection within the drain
//! window (their Close frames, as over HTTP/1.1), then sends GOAWAY. A
//! connection with no stream for a whole `handshakeTimeout` gets GOAWAY
//! too, as an idle HTTP/1.1 connection is closed after it.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::task::TaskTracker;

use crate::connection::forward;
use crate::connection::handshake::{Body, plain_response};
use crate::connection::head::RequestHead;
use crate::connection::http_proxy::InFlight;
use crate::connection::shared::Shared;
use crate::connection::upgrade::{self, Answer};
use crate::observe::metrics::counters::{HttpVersion, Refusal};

/// Bytes a client may send on one stream before the balancer has passed
/// them on (the stream's receive window): 256 KiB, four whole 64 KiB
/// messages in flight toward a pod.
pub const STREAM_WINDOW: u32 = 256 * 1024;

/// Streams open at once on one connection: WebSockets and plain requests
/// together. Browsers keep one connection per origin, so this is how many
/// WebSockets one page can hold on it (beyond, the browser queues them).
pub const MAX_STREAMS: u32 = 256;

/// The connection's receive window: every stream's window at once, so
/// that streams whose pods stop reading cannot starve the others.
pub const CONNECTION_WINDOW: u32 = STREAM_WINDOW * MAX_STREAMS;

// HTTP/2 caps a window at 2^31 - 1 (RFC 9113 section 6.9.1): checked when
// the constants change, at compile time.
const _: () = assert!(CONNECTION_WINDOW < 1 << 31);

/// Serves one TLS connection that picked `h2`, until the client closes it,
/// a drain has closed its WebSockets (then GOAWAY), or `stopped`.
pub async fn serve<IO>(
    io: IO,
    shared: Arc<Shared>,
    client: SocketAddr,
    stopped: impl Future<Output = ()>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    shared.metrics.speaks(HttpVersion::Http2);
    // Until it returns: a drain waits for its GOAWAY.
    let _counted = shared.http2.token();
    // The connection's WebSockets, each counted until its relay ends.
    let streams = TaskTracker::new();
    // Its requests: every one so far, and those being answered now.
    let requests = Arc::new(Requests::default());
    let service = {
        let (shared, streams, requests) = (shared.clone(), streams.clone(), requests.clone());
        hyper::service::service_fn(move |request| {
            let answering = Answering::start(requests.clone());
            let answer = serve_request(shared.clone(), client, streams.clone(), request);
            async move {
                let response = answer.await;
                drop(answering);
                response
            }
        })
    };
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .enable_connect_protocol()
        .max_header_list_size(u32::try_from(shared.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(MAX_STREAMS)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn, stopped);
    let websockets_closed = async {
        shared.drain.started.cancelled().await;
        streams.close();
        streams.wait().await;
    };
    let idle = idle(shared.handshake_timeout, &streams, &requests);
    tokio::select! {
        result = conn.as_mut() => return log_end(client, result),
        () = websockets_closed => {}
        () = idle => tracing::debug!(%client, "idle http2 connection closed"),
        () = &mut stopped => return,
    }
    // Draining (and this connection's WebSockets are closed) or idle:
    // GOAWAY, then the requests still running finish.
    conn.as_mut().graceful_shutdown();
    // Bounded: a client that never sent its preface, or ignores the PING
    // that completes a graceful GOAWAY, would otherwise hold it forever.
    tokio::select! {
        result = tokio::time::timeout(shared.handshake_timeout, conn) => match result {
            Ok(result) => log_end(client, result),
            Err(_) => tracing::debug!(%client, "http2 connection dropped after its GOAWAY went unanswered"),
        },
        () = stopped => {}
    }
}

/// A connection's requests, for telling when it is idle.
#[derive(Debug, Default)]
struct Requests {
    /// Every request so far.
    started: AtomicU64,
    /// Requests whose answer is being made now.
    answering: AtomicUsize,
}

/// Counts one request as being answered until dropped.
struct Answering(Arc<Requests>);

impl Answering {
    fn start(requests: Arc<Requests>) -> Self {
        requests.started.fetch_add(1, Ordering::Relaxed);
        requests.answering.fetch_add(1, Ordering::Relaxed);
        Answering(requests)
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.answering.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Returns once the connection has had no WebSocket and no request being
/// answered, and no new request, over a whole `period`. A response body
/// still being sent then is finished after the GOAWAY.
async fn idle(period: Duration, streams: &TaskTracker, requests: &Requests) {
    let mut seen = requests.started.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(period).await;
        let now = requests.started.load(Ordering::Relaxed);
        let quiet =
            now == seen && streams.is_empty() && requests.answering.load(Ordering::Relaxed) == 0;
        if quiet {
            return;
        }
        seen = now;
    }
}

/// Logs how a connection ended, when it was an error.
fn log_end(client: SocketAddr, result: Result<(), hyper::Error>) {
    if let Err(error) = result {
        tracing::debug!(%client, %error, "http2 connection ended with an error");
    }
}

/// Answers one stream: an extended CONNECT is a WebSocket, anything else a
/// plain request.
async fn serve_request(
    shared: Arc<Shared>,
    client: SocketAddr,
    streams: TaskTracker,
    mut request: Request<Incoming>,
) -> Result<Response<InFlight>, Infallible> {
    if request.method() == Method::CONNECT {
        let response = websocket(&shared, client, &streams, request).await;
        return Ok(response.map(InFlight::free));
    }
    // HTTP/2 carries the host in `:authority`; the HTTP/1.1 request to the
    // pod (and `X-Forwarded-Host`) take it from `Host`.
    as_http1_fields(&mut request);
    upgrade::serve_request(shared, client, request).await
}

/// An extended CONNECT: checked, admitted and dialled as the HTTP/1.1
/// upgrade it stands for; a `200` with the pod's subprotocol and
/// extensions once the pod switched, and the stream is relayed.
async fn websocket(
    shared: &Arc<Shared>,
    client: SocketAddr,
    streams: &TaskTracker,
    mut request: Request<Incoming>,
) -> Response<Body> {
    let protocol = request
        .extensions()
        .get::<hyper::ext::Protocol>()
        .map(|p| p.as_str().to_owned());
    match protocol.as_deref() {
        Some(p) if p.eq_ignore_ascii_case("websocket") => {}
        other => {
            let (status, reason) = match other {
                None => (
                    StatusCode::METHOD_NOT_ALLOWED,
                    "CONNECT is for WebSockets only (RFC 8441, :protocol websocket)",
                ),
                Some(_) => (
                    StatusCode::NOT_IMPLEMENTED,
                    "the only :protocol served is websocket",
                ),
            };
            tracing::debug!(%client, status = status.as_u16(), reason = Refusal::Invalid.as_str(), detail = reason, "connection failed");
            shared.metrics.refused(status.as_u16(), Refusal::Invalid);
            return plain_response(status, reason);
        }
    }
    let on_upgrade = hyper::upgrade::on(&mut request);
    let (parts, _) = request.into_parts();
    let head = RequestHead::from_parts(&as_upgrade(parts));
    let conn_id = shared.next_conn_id();
    // The one read of the settings for this connection.
    let settings = shared.settings();
    match upgrade::answer(shared, &settings, conn_id, client, &head).await {
        // Over HTTP/2 a 2xx to a CONNECT opens the WebSocket (RFC 8441):
        // a pod that answered its upgrade with a 2xx did not switch.
        Answer::Respond(response) if response.status().is_success() => {
            tracing::debug!(conn_id, %client, status = response.status().as_u16(), "pod answered the upgrade without switching");
            plain_response(
                StatusCode::BAD_GATEWAY,
                "the pod answered the upgrade without switching protocols",
            )
        }
        Answer::Respond(response) => response,
        Answer::Switch { pod_head, session } => {
            let session = session.over_http2(streams.token());
            tokio::spawn(session.after_upgrade(shared.clone(), on_upgrade));
            forward::connect_accepted(&pod_head)
        }
    }
}

/// The HTTP/1.1 upgrade an extended CONNECT stands for (RFC 8441 §5):
/// `GET` with the same path, `Host` from `:authority`, the upgrade pair,
/// and a `Sec-WebSocket-Key` of its own (HTTP/2 has none: the pod's
/// accept key is checked against this one). Every other field, origin,
/// subprotocols and extensions among them, passes as sent.
fn as_upgrade(mut parts: http::request::Parts) -> http::request::Parts {
    parts.method = Method::GET;
    parts.version = http::Version::HTTP_11;
    let mut request = Request::from_parts(parts, ());
    as_http1_fields(&mut request);
    let headers = request.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    let key: [u8; 16] = rand::random();
    let key = base64::engine::general_purpose::STANDARD.encode(key);
    if let Ok(key) = HeaderValue::from_str(&key) {
        headers.insert(header::SEC_WEBSOCKET_KEY, key);
    }
    request.into_parts().0
}

/// Makes an HTTP/2 request's fields what an HTTP/1.1 pod expects: `Host`
/// from `:authority` when it has none, and one `Cookie` field where an
/// HTTP/2 client may send several (RFC 9113 section 8.2.3).
fn as_http1_fields<B>(request: &mut Request<B>) {
    join_cookies(request.headers_mut());
    if request.headers().contains_key(header::HOST) {
        return;
    }
    let host = request
        .uri()
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
    if let Some(host) = host {
        request.headers_mut().insert(header::HOST, host);
    }
}

/// Joins several `cookie` fields into one, with "; " between them, in the
/// order they came. One field (or none) is left as it is.
fn join_cookies(headers: &mut http::HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    if values.next().is_none() || values.next().is_none() {
        return;
    }
    let mut joined = Vec::new();
    for value in headers.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(value.as_bytes());
    }
    // Each part was a valid value, and "; " is too: this cannot fail.
    if let Ok(joined) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, joined);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_cookies_reach_the_pod_as_one_field() {
        let (mut parts, ()) = Request::builder()
            .uri("https://chat.example.com/ws")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .header("cookie", "c=3")
            .body(())
            .expect("a request")
            .into_parts();
        parts = as_upgrade(parts);
        let cookies: Vec<_> = parts.headers.get_all(header::COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1; b=2; c=3"]);

        let mut one = Request::builder()
            .uri("https://chat.example.com/")
            .header("cookie", "a=1; b=2")
            .body(())
            .expect("a request");
        as_http1_fields(&mut one);
        let cookies: Vec<_> = one.headers().get_all(header::COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1; b=2"], "one field is left as it is");
        assert_eq!(one.headers()[header::HOST], "chat.example.com");
    }

    #[test]
    fn an_extended_connect_becomes_an_upgrade_with_a_key_of_its_own() {
        let (parts, ()) = Request::builder()
            .method(Method::CONNECT)
            .version(http::Version::HTTP_2)
            .uri("https://chat.example.com/ws?room=1")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-protocol", "chat, superchat")
            .header("sec-websocket-key", "c2VudCBieSB0aGUgY2xpZW50")
            .header("origin", "https://chat.example.com")
            .body(())
            .expect("a request")
            .into_parts();
        let parts = as_upgrade(parts);
        assert_eq!(parts.method, Method::GET);
        assert_eq!(parts.version, http::Version::HTTP_11);
        assert_eq!(parts.headers[header::HOST], "chat.example.com");
        assert_eq!(parts.headers[header::UPGRADE], "websocket");
        assert_eq!(
            parts.headers[header::SEC_WEBSOCKET_PROTOCOL],
            "chat, superchat"
        );
        assert_eq!(parts.headers[header::ORIGIN], "https://chat.example.com");
        let key = parts.headers[header::SEC_WEBSOCKET_KEY].as_bytes();
        assert_ne!(key, b"c2VudCBieSB0aGUgY2xpZW50", "the client's is replaced");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(key)
            .expect("base64");
        assert_eq!(decoded.len(), 16);
        let head = RequestHead::from_parts(&parts);
        assert_eq!(head.target(), "/ws?room=1");
        assert!(crate::connection::handshake::check(&head).is_ok());
    }
}
