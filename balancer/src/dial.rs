//! Opening a connection to a pod: TCP (and TLS for `https`/`wss`), then the
//! forwarded upgrade request, until the pod's answer.
//!
//! Every failure before the answer is a [`DialError`], which the caller
//! treats as "this pod is unreachable, try the next one". An HTTP answer
//! other than 101 is not an error: it is the application's answer to the
//! client. The caller bounds the whole dial with `dialTimeout`.

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;

use common::PodAddress;

/// Largest body of a pod's non-101 answer passed to the client.
pub const MAX_STATUS_BODY: usize = 64 * 1024;

/// Why a pod could not be reached (all are reasons to fail over).
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// TCP connect failed (refused, unreachable, DNS).
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// TLS handshake failed (bad certificate, wrong name, not TLS).
    #[error("tls: {0}")]
    Tls(std::io::Error),
    /// The host is not a valid TLS server name.
    #[error("tls: invalid server name {0:?}")]
    ServerName(String),
    /// The pod broke the HTTP exchange (closed, garbage, no 101 upgrade).
    #[error("handshake: {0}")]
    Handshake(#[from] hyper::Error),
    /// The pod said 101 but did not switch protocols properly.
    #[error("handshake: {0}")]
    BadUpgrade(&'static str),
}

impl DialError {
    /// Short reason label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            DialError::Connect(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => "refused",
            DialError::Connect(_) => "connect",
            DialError::Tls(_) | DialError::ServerName(_) => "tls",
            DialError::Handshake(_) | DialError::BadUpgrade(_) => "handshake",
        }
    }
}

/// A byte stream to a pod, plain or TLS. (An enum rather than a boxed trait
/// object: the compiler cannot prove `Send` through the latter here.)
pub type PodStream = Either<TcpStream, TlsStream<TcpStream>>;

/// What the pod answered.
pub enum PodAnswer {
    /// 101: the connection is now a WebSocket to relay. `io` already holds
    /// any bytes the pod sent right after its 101.
    Upgraded {
        /// Status line and headers of the 101.
        head: http::response::Parts,
        /// The upgraded stream.
        io: Upgraded,
    },
    /// Any other status, with its (bounded) body.
    Status {
        /// Status line and headers.
        head: http::response::Parts,
        /// Body, at most [`MAX_STATUS_BODY`] bytes.
        body: Bytes,
    },
}

/// The `Sec-WebSocket-Accept` a pod must answer to `key` (RFC 6455 §4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(sha1.finalize())
}

/// A 101 must really switch to WebSocket, for this very handshake; anything
/// else (h2c, a wrong accept key) is a broken pod, and the next is tried.
fn check_switch(headers: &http::HeaderMap, expected_accept: Option<&str>) -> Result<(), DialError> {
    if !crate::handshake::has_token(headers, header::UPGRADE, "websocket") {
        return Err(DialError::BadUpgrade("101 without Upgrade: websocket"));
    }
    let accept = headers
        .get(header::SEC_WEBSOCKET_ACCEPT)
        .map(|v| v.as_bytes());
    if accept != expected_accept.map(str::as_bytes) {
        return Err(DialError::BadUpgrade("wrong Sec-WebSocket-Accept"));
    }
    Ok(())
}

/// Connects to `pod` and sends it the upgrade request.
pub async fn open(
    pod: &PodAddress,
    tls: &Arc<rustls::ClientConfig>,
    request: Request<Empty<Bytes>>,
) -> Result<PodAnswer, DialError> {
    let io = connect(pod, tls).await?;
    handshake(io, request).await
}

/// Opens the TCP (and TLS) connection to `pod`.
pub async fn connect(
    pod: &PodAddress,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<PodStream, DialError> {
    // An owned address keeps this future `Send` for any caller lifetime.
    let target = format!("{}:{}", pod.authority_host(), pod.port);
    let tcp = TcpStream::connect(target)
        .await
        .map_err(DialError::Connect)?;
    let _ = tcp.set_nodelay(true);
    if !pod.tls {
        return Ok(Either::Left(tcp));
    }
    let name = ServerName::try_from(pod.host.clone())
        .map_err(|_| DialError::ServerName(pod.host.clone()))?;
    let stream = TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .map_err(DialError::Tls)?;
    Ok(Either::Right(stream))
}

/// Sends the upgrade request over `io` and waits for the pod's answer.
pub async fn handshake<T>(io: T, request: Request<Empty<Bytes>>) -> Result<PodAnswer, DialError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let expected_accept = request
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|key| accept_key(key.as_bytes()));
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await?;
    // The connection future must be driven for the request to make progress;
    // it is polled here rather than spawned so that a timeout or a failure
    // drops everything at once.
    let conn = conn.with_upgrades();
    tokio::pin!(conn);
    let send = sender.send_request(request);
    tokio::pin!(send);
    // The connection future finishes on its own once it hands the stream
    // over to the upgrade, possibly before the response is read here.
    let mut conn_done = false;
    let mut response = tokio::select! {
        biased;
        r = &mut send => r?,
        r = &mut conn => {
            r?;
            conn_done = true;
            send.await?
        }
    };
    drop(sender);
    let drive_conn = async { if conn_done { Ok(()) } else { conn.await } };
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        check_switch(response.headers(), expected_accept.as_deref())?;
        let on_upgrade = hyper::upgrade::on(&mut response);
        let (upgraded, conn_result) = tokio::join!(on_upgrade, drive_conn);
        conn_result?;
        let io = upgraded?;
        let (head, _) = response.into_parts();
        return Ok(PodAnswer::Upgraded { head, io });
    }
    let (head, body) = response.into_parts();
    let collect = Limited::new(body, MAX_STATUS_BODY).collect();
    let (collected, _) = tokio::join!(collect, drive_conn);
    let body = match collected {
        Ok(c) => c.to_bytes(),
        // An over-long or broken error body still leaves a useful status.
        Err(_) => Bytes::new(),
    };
    Ok(PodAnswer::Status { head, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn a_101_must_be_a_websocket_switch_for_this_key() {
        let mut h = http::HeaderMap::new();
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        h.insert(
            header::SEC_WEBSOCKET_ACCEPT,
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".parse().unwrap(),
        );
        assert!(check_switch(&h, Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")).is_ok());
        assert!(check_switch(&h, Some("other")).is_err());
        h.insert(header::UPGRADE, "h2c".parse().unwrap());
        assert!(check_switch(&h, Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")).is_err());
    }
}
