//! The client-facing listener: accepts TCP connections and serves each as
//! HTTP/1.1 with upgrades, handing every request to [`upgrade`]. On plain
//! TCP, a first request that is an upgrade skips hyper (see
//! [`first_request`]); everything else, and every TLS connection, is served
//! by hyper.

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;

use crate::connection::ends::End;
use crate::connection::first_request::{self, FirstRequest};
use crate::connection::forward;
use crate::connection::handshake::plain_response;
use crate::connection::http2;
use crate::connection::out_of_descriptors::{self, Refused, Spare};
use crate::connection::session::Session;
use crate::connection::shared::Shared;
use crate::connection::upgrade::{self, Answer};
use crate::observe::metrics::counters::{HttpVersion, Refusal};

/// Pending connections the kernel queues on the listener.
const LISTEN_BACKLOG: u32 = 128;

/// Binds the client-facing listener. `TCP_NODELAY` is set on the listening
/// socket, and Linux hands it down to every accepted one: one system call
/// per connection fewer than setting it on each (elsewhere it is set on
/// each, as well). Otherwise what `TcpListener::bind` does: `SO_REUSEADDR`
/// (not on Windows, where it would let another process take the port) and
/// a backlog of 128, which paces a burst of clients at the balancer. With
/// 1024, a burst of 10,000 reached the pod at once, and in the flood test
/// one connection failed with 502 (its dials to the pod failed, most likely
/// at the pod's own full accept queue).
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        std::net::SocketAddr::V4(_) => TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    #[cfg(not(windows))]
    socket.set_reuseaddr(true)?;
    // Best effort: where it is not inherited, each accepted socket gets it.
    let _ = socket.set_nodelay(true);
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Pause after an accept that failed for another reason than a client
/// that went away, or for lack of descriptors with no spare left: the
/// listener stays readable, and retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accepts until `drain` (or `stop`) is cancelled; the listening socket is
/// closed then, so new clients are refused at once. Connections are tracked
/// by `tasks` and dropped when `stop` is cancelled. Out of file
/// descriptors, waiting clients are answered 503 through a spare one (see
/// [`out_of_descriptors`]).
pub async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    tasks: TaskTracker,
    drain: CancellationToken,
    stop: CancellationToken,
) {
    let mut spare = Spare::open();
    loop {
        let (tcp, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    refuse_or_back_off(&listener, &mut spare, &shared, &error).await;
                    continue;
                }
            },
            () = drain.cancelled() => break,
            () = stop.cancelled() => break,
        };
        shared.out_of_descriptors.accepted();
        shared.metrics.accepted();
        // Keepalive, TCP_USER_TIMEOUT and TCP_NODELAY are inherited from
        // the listener on Linux (see `bind` and `Shared::set_listener`).
        #[cfg(not(target_os = "linux"))]
        {
            shared.settings().liveness.apply(&tcp);
            let _ = tcp.set_nodelay(true);
        }
        let shared = shared.clone();
        let stopped = stop.clone().cancelled_owned();
        match shared.server_tls.clone() {
            None => tasks.spawn(serve_plain(tcp, shared, client, stopped)),
            Some(tls) => tasks.spawn(serve_tls(tcp, tls, shared, client, stopped)),
        };
    }
    // The listener closes as this returns; its other handle goes first.
    shared.forget_listener();
}

/// After a failed accept: out of descriptors, the waiting client gets its
/// 503 through the spare descriptor (or, without one, the loop backs off);
/// another error is logged and the loop backs off, unless it was only a
/// client that went away before it was accepted.
async fn refuse_or_back_off(
    listener: &TcpListener,
    spare: &mut Spare,
    shared: &Shared,
    error: &std::io::Error,
) {
    use std::io::ErrorKind;
    if out_of_descriptors::is_out_of_descriptors(error) {
        shared.out_of_descriptors.ran_out(error);
        match spare.refuse(listener).await {
            Refused::Answered(client) => {
                shared.out_of_descriptors.refused();
                shared.metrics.refused_out_of_descriptors();
                tracing::debug!(%client, reason = "out_of_descriptors", status = 503, "connection failed");
            }
            Refused::NoneWaiting => {}
            Refused::NoSpare => tokio::time::sleep(ACCEPT_BACKOFF).await,
        }
        return;
    }
    if matches!(
        error.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        tracing::debug!(%error, "client gone before its accept");
        return;
    }
    tracing::warn!(%error, "accept failed");
    tokio::time::sleep(ACCEPT_BACKOFF).await;
}

/// Serves one TLS connection: the handshake, then HTTP/2 when ALPN picked
/// `h2`, else HTTP/1.1 with upgrades.
async fn serve_tls(
    tcp: TcpStream,
    tls: Arc<crate::connection::listener_tls::ServerTls>,
    shared: Arc<Shared>,
    client: std::net::SocketAddr,
    stopped: WaitForCancellationFutureOwned,
) {
    let accept = TlsAcceptor::from(tls.current()).accept(tcp);
    match tokio::time::timeout(shared.handshake_timeout, accept).await {
        Ok(Ok(stream)) if stream.get_ref().1.alpn_protocol() == Some(b"h2") => {
            http2::serve(stream, shared, client, stopped).await;
        }
        Ok(Ok(stream)) => {
            shared.metrics.speaks(HttpVersion::Http1);
            serve(stream, shared, client, stopped).await;
        }
        Ok(Err(error)) => tracing::debug!(%client, %error, "TLS handshake failed"),
        Err(_) => tracing::debug!(%client, "TLS handshake timed out"),
    }
}

/// Serves one plain TCP connection. A WebSocket upgrade as the first
/// request (the usual case) is answered here, then relayed in a task of its
/// own; anything else goes to hyper, from the first byte.
async fn serve_plain(
    tcp: TcpStream,
    shared: Arc<Shared>,
    client: std::net::SocketAddr,
    stopped: WaitForCancellationFutureOwned,
) {
    shared.metrics.speaks(HttpVersion::Http1);
    // The relay gets a task of its own, sized for the relay alone: a task
    // is as large as its largest state, and an idle relay should carry
    // neither an HTTP server nor a dial.
    let answered = answer_first_request(tcp, &shared, client, stopped).await;
    if let Some((tcp, early, session)) = answered {
        session.start(&shared, (End::Tcp(tcp), early));
    }
}

/// Reads and answers the first request; returns what to relay when it was
/// an upgrade the pod accepted.
async fn answer_first_request(
    mut tcp: TcpStream,
    shared: &Arc<Shared>,
    client: std::net::SocketAddr,
    stopped: WaitForCancellationFutureOwned,
) -> Option<(TcpStream, Option<bytes::Bytes>, Session)> {
    tokio::pin!(stopped);
    let read = tokio::time::timeout(
        shared.handshake_timeout,
        first_request::read(&mut tcp, shared.max_header_bytes),
    );
    let first = tokio::select! {
        first = read => first,
        () = &mut stopped => return None,
    };
    let (head, early) = match first {
        Ok(Ok(FirstRequest::Upgrade { head, early })) => (head, early),
        Ok(Ok(FirstRequest::Other(read))) => {
            let io = first_request::Prefixed::new(read, tcp);
            serve(io, shared.clone(), client, stopped).await;
            return None;
        }
        Ok(Ok(FirstRequest::TooLarge)) => {
            tracing::debug!(%client, reason = Refusal::TooLarge.as_str(), status = 431, "connection failed");
            shared.metrics.refused(431, Refusal::TooLarge);
            let response = plain_response(
                http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request head too large",
            );
            let _ = first_request::write_response(&mut tcp, response).await;
            return None;
        }
        Ok(Ok(FirstRequest::Closed)) | Ok(Err(_)) => return None,
        Err(_) => {
            tracing::debug!(%client, "request head not received in time");
            return None;
        }
    };
    let conn_id = shared.next_conn_id();
    // The one read of the settings for this connection.
    let settings = shared.settings();
    let answer = tokio::select! {
        answer = upgrade::answer(shared, &settings, conn_id, client, &head) => answer,
        () = &mut stopped => return None,
    };
    match answer {
        Answer::Respond(response) => {
            let _ = first_request::write_response(&mut tcp, response).await;
            None
        }
        Answer::Switch { pod_head, session } => {
            let response = forward::switching_protocols_head(&pod_head);
            let written =
                tokio::time::timeout(settings.limits.write, tcp.write_all(&response)).await;
            let early = (!early.is_empty()).then_some(early);
            if matches!(written, Ok(Ok(()))) {
                Some((tcp, early, session))
            } else {
                session.client_gone("client_gone", None);
                None
            }
        }
    }
}

/// Serves one client connection (plain or TLS) as HTTP/1.1 with upgrades.
async fn serve<IO>(
    io: IO,
    shared: Arc<Shared>,
    client: std::net::SocketAddr,
    stopped: impl std::future::Future<Output = ()>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (header_timeout, max_header_bytes) = (shared.handshake_timeout, shared.max_header_bytes);
    let service =
        service_fn(move |request| upgrade::serve_request(shared.clone(), client, request));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        // Slowloris guard, and 431 for a head larger than allowed.
        .header_read_timeout(header_timeout)
        .max_buf_size(max_header_bytes)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%client, %error, "http connection ended with an error");
            }
        }
        () = stopped => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_sockets_have_nodelay_from_the_listener() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(
            accepted.nodelay().unwrap(),
            "TCP_NODELAY on the accepted socket"
        );
    }

    #[tokio::test]
    async fn a_taken_address_is_an_error() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let taken = listener.local_addr().unwrap();
        assert!(bind(taken).is_err());
    }
}
