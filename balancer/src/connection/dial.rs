//! Opening a connection to a pod: TCP (and TLS for `https`/`wss`), then the
//! forwarded upgrade request, until the pod's answer.
//!
//! The exchange is written by hand: the request head goes out in one write
//! and the answer is parsed with `httparse` from one small buffer, with no
//! connection task, no upgrade channel and no 8 KiB read buffer per dial
//! (hyper's client costs all three, on the path every connection takes).
//!
//! Every failure before the answer is a [`DialError`], which the caller
//! treats as "this pod is unreachable, try the next one". An HTTP answer
//! other than 101 is not an error: it is the application's answer to the
//! client. The caller bounds the whole dial with `dialTimeout`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use base64::Engine;
use bytes::Bytes;
use http::StatusCode;
use rustls::pki_types::ServerName;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;

use common::PodAddress;

use crate::connection::head::{Fields, ParsedRequest, RequestHead, ResponseError, ResponseHead};
use crate::connection::liveness::Liveness;

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
    /// Reading or writing the exchange failed.
    #[error("handshake: {0}")]
    Io(#[from] std::io::Error),
    /// The pod broke the HTTP exchange (closed early, garbage, too large).
    #[error("handshake: {0}")]
    Handshake(&'static str),
    /// The pod said 101 but did not switch protocols properly.
    #[error("handshake: {0}")]
    BadUpgrade(&'static str),
}

impl DialError {
    /// Why, as logs and metrics say it.
    pub fn reason(&self) -> DialFailure {
        match self {
            DialError::Connect(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                DialFailure::refused
            }
            DialError::Connect(_) => DialFailure::connect,
            DialError::Tls(_) | DialError::ServerName(_) => DialFailure::tls,
            DialError::Io(_) | DialError::Handshake(_) | DialError::BadUpgrade(_) => {
                DialFailure::handshake
            }
        }
    }

    /// Whether the pod was reached and answered, but not with a proper
    /// WebSocket switch (as opposed to being unreachable).
    pub fn pod_answered(&self) -> bool {
        matches!(
            self,
            DialError::Io(_) | DialError::Handshake(_) | DialError::BadUpgrade(_)
        )
    }
}

/// Why a dial of a pod ended without a relayed connection: the `reason`
/// label of `wsbalancer_pod_connections_failed_total` and the `reason` of
/// the log line. The label encoding is derived, so a new reason is a new
/// variant and can never fall into another's series; the variants are
/// spelled as the exported label values (a documented contract), hence
/// lowercase (and `Debug` writes them as they are exported, for logs).
#[allow(non_camel_case_types)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, prometheus_client::encoding::EncodeLabelValue,
)]
pub enum DialFailure {
    /// The pod refused the TCP connection.
    refused,
    /// TCP connect failed otherwise (unreachable, no route).
    connect,
    /// Connect, TLS and handshake took longer than `dialTimeout`.
    timeout,
    /// The TCP connect was still pending after `hedgeDelay` when a pod
    /// dialled beside it answered first (a hedged dial): abandoned, and
    /// held against the pod like a timeout.
    slow_connect,
    /// The TLS handshake failed.
    tls,
    /// The HTTP exchange broke, or the 101 was not a proper switch.
    handshake,
    /// The pod answered an informational status instead of 101.
    status_1xx,
    /// The pod answered 2xx instead of 101.
    status_2xx,
    /// The pod answered 3xx instead of 101.
    status_3xx,
    /// The pod answered 4xx (the application refusing this client).
    status_4xx,
    /// The pod answered 5xx.
    status_5xx,
    /// The pod answered a status outside 100-599.
    other,
}

impl DialFailure {
    /// Every reason, in label order.
    pub const ALL: [DialFailure; 12] = [
        DialFailure::refused,
        DialFailure::connect,
        DialFailure::timeout,
        DialFailure::slow_connect,
        DialFailure::tls,
        DialFailure::handshake,
        DialFailure::status_1xx,
        DialFailure::status_2xx,
        DialFailure::status_3xx,
        DialFailure::status_4xx,
        DialFailure::status_5xx,
        DialFailure::other,
    ];

    /// The reason for a pod that answered `status` instead of 101.
    pub fn of_status(status: u16) -> DialFailure {
        match status {
            100..=199 => DialFailure::status_1xx,
            200..=299 => DialFailure::status_2xx,
            300..=399 => DialFailure::status_3xx,
            400..=499 => DialFailure::status_4xx,
            500..=599 => DialFailure::status_5xx,
            _ => DialFailure::other,
        }
    }
}

/// A byte stream to a pod, plain or TLS. (An enum rather than a boxed trait
/// object: the compiler cannot prove `Send` through the latter here.)
///
/// The TLS side is boxed: its state is large, and a plain connection should
/// not carry its size.
pub type PodStream = Either<TcpStream, Box<TlsStream<TcpStream>>>;

/// What the pod answered, over a stream `S` (a [`PodStream`] once dialled).
pub enum PodAnswer<S = PodStream> {
    /// 101: the connection is now a WebSocket to relay.
    Upgraded {
        /// Status line and headers of the 101.
        head: ResponseHead,
        /// The stream, now a WebSocket.
        io: S,
        /// Bytes the pod sent right after its 101 (its first frames).
        early: Bytes,
    },
    /// Any other status, with its (bounded) body.
    Status {
        /// Status line and headers.
        head: ResponseHead,
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
/// else (h2c, a wrong accept key, a subprotocol `request` did not offer) is
/// a broken pod, and the next is tried.
fn check_switch(
    head: &ResponseHead,
    expected_accept: &str,
    request: &[u8],
) -> Result<(), DialError> {
    let fields = head.fields();
    if !fields.has_token("upgrade", "websocket") {
        return Err(DialError::BadUpgrade("101 without Upgrade: websocket"));
    }
    if fields.single("sec-websocket-accept") != Some(expected_accept.as_bytes()) {
        return Err(DialError::BadUpgrade("wrong Sec-WebSocket-Accept"));
    }
    // RFC 6455 §4.1: the client must fail a connection whose server picked
    // a subprotocol it did not offer. The balancer does so before the
    // client sees it, and tries the next pod.
    let mut chosen = fields.values("sec-websocket-protocol");
    if let Some(protocol) = chosen.next()
        && (chosen.next().is_some() || !offers(request, protocol))
    {
        return Err(DialError::BadUpgrade("subprotocol not offered"));
    }
    Ok(())
}

/// Whether the upgrade request `request` (the head sent to the pod) offers
/// `protocol` in its `Sec-WebSocket-Protocol` (compared exactly, as RFC
/// 6455 tokens are). Read only when a pod picks one: most answers do not.
fn offers(request: &[u8], protocol: &[u8]) -> bool {
    match RequestHead::parse(request) {
        ParsedRequest::Complete(head, _) => head
            .fields()
            .tokens("sec-websocket-protocol")
            .any(|offered| offered == protocol),
        _ => false,
    }
}

/// Connects to `pod` and sends it `head`, the upgrade request; the pod
/// must switch with `expected_accept`. `connected` is set once the TCP
/// connection is up: a hedged dial tells a silent pod host (never
/// connected) from a slow application (connected, not yet answering).
pub async fn open(
    pod: &PodAddress,
    tls: &Arc<rustls::ClientConfig>,
    liveness: Liveness,
    head: &[u8],
    expected_accept: &str,
    connected: &AtomicBool,
) -> Result<PodAnswer, DialError> {
    let io = connect(pod, tls, liveness, connected).await?;
    handshake(io, head, expected_accept).await
}

/// Opens the TCP (and TLS) connection to `pod`, finding a dead pod host
/// as `liveness` says.
pub async fn connect(
    pod: &PodAddress,
    tls: &Arc<rustls::ClientConfig>,
    liveness: Liveness,
    connected: &AtomicBool,
) -> Result<PodStream, DialError> {
    let tcp = match pod.socket_addr {
        Some(addr) => TcpStream::connect(addr).await,
        // An owned name keeps this future `Send` for any caller lifetime.
        None => TcpStream::connect(pod.authority.clone()).await,
    }
    .map_err(DialError::Connect)?;
    connected.store(true, Ordering::Relaxed);
    let _ = tcp.set_nodelay(true);
    liveness.apply(&tcp);
    if !pod.tls {
        return Ok(Either::Left(tcp));
    }
    let name = ServerName::try_from(pod.host.clone())
        .map_err(|_| DialError::ServerName(pod.host.clone()))?;
    let stream = TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .map_err(DialError::Tls)?;
    Ok(Either::Right(Box::new(stream)))
}

/// Spare room each read of a pod's answer reserves.
const READ_CHUNK: usize = 2048;

/// Largest response head accepted from a pod.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Reads more of the answer into `buf`; an end of stream is an error
/// unless `eof_ok`.
async fn read_more<T: AsyncRead + Unpin>(
    io: &mut T,
    buf: &mut Vec<u8>,
    eof_ok: bool,
) -> Result<bool, DialError> {
    // Into spare capacity: nothing is zeroed first.
    buf.reserve(READ_CHUNK);
    let n = io.read_buf(buf).await?;
    if n == 0 && !eof_ok {
        return Err(DialError::Handshake("pod closed before answering"));
    }
    Ok(n > 0)
}

/// Sends the upgrade request `head` over `io` and waits for the pod's answer.
pub async fn handshake<T>(
    mut io: T,
    head: &[u8],
    expected_accept: &str,
) -> Result<PodAnswer<T>, DialError>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let request = head;
    io.write_all(request).await?;
    io.flush().await?;
    // As much as the first read reserves: no reallocation for a head that
    // fits in it.
    let mut buf = Vec::with_capacity(READ_CHUNK);
    let (head, len) = loop {
        read_more(&mut io, &mut buf, false).await?;
        let parsed = ResponseHead::parse(&buf).map_err(|e| match e {
            ResponseError::Malformed => DialError::Handshake("malformed response head"),
            ResponseError::Status => DialError::Handshake("bad status code"),
        })?;
        if let Some(parsed) = parsed {
            break parsed;
        }
        if buf.len() > MAX_RESPONSE_HEAD {
            return Err(DialError::Handshake("response head too large"));
        }
    };
    let rest = &buf[len..];
    let status = head.status();
    if status == StatusCode::SWITCHING_PROTOCOLS {
        check_switch(&head, expected_accept, request)?;
        let early = Bytes::copy_from_slice(rest);
        return Ok(PodAnswer::Upgraded { head, io, early });
    }
    let bodyless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let body = if bodyless {
        Bytes::new()
    } else {
        read_status_body(&mut io, head.fields(), rest.to_vec()).await
    };
    Ok(PodAnswer::Status { head, body })
}

/// The body of a non-101 answer, at most [`MAX_STATUS_BODY`] bytes: by
/// `Content-Length`, chunked, or up to the end of the stream. A broken or
/// over-long body gives what was read (the status is what matters).
async fn read_status_body<T: AsyncRead + Unpin>(
    io: &mut T,
    fields: &Fields,
    mut buf: Vec<u8>,
) -> Bytes {
    let chunked = fields.has_token("transfer-encoding", "chunked");
    let length = fields
        .single("content-length")
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    loop {
        if chunked {
            if let Some(body) = decode_chunked(&buf) {
                return Bytes::from(body);
            }
        } else if let Some(length) = length
            && buf.len() >= length
        {
            buf.truncate(length);
            return Bytes::from(buf);
        }
        if buf.len() >= MAX_STATUS_BODY + 1024 {
            break;
        }
        match read_more(io, &mut buf, true).await {
            Ok(true) => {}
            Ok(false) | Err(_) => break,
        }
    }
    if chunked {
        return Bytes::new();
    }
    buf.truncate(MAX_STATUS_BODY);
    Bytes::from(buf)
}

/// A whole chunked body decoded, or `None` while incomplete (or broken).
pub fn decode_chunked(mut buf: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = buf.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&buf[..line_end]).ok()?;
        let size_text = size_text.split(';').next()?.trim();
        let size = usize::from_str_radix(size_text, 16).ok()?;
        buf = &buf[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        // Sizes come from the pod: checked, so that one near `usize::MAX`
        // is refused rather than overflowing.
        let with_crlf = size.checked_add(2)?;
        if buf.len() < with_crlf || body.len().checked_add(size)? > MAX_STATUS_BODY {
            return None;
        }
        body.extend_from_slice(&buf[..size]);
        buf = &buf[with_crlf..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_size_near_the_integer_limit_is_refused_not_a_panic() {
        // The second chunk declares 2^64 - 1 bytes: `size + 2` overflowed.
        let body = b"3\r\nabc\r\nffffffffffffffff\r\nxyz\r\n0\r\n\r\n";
        assert_eq!(decode_chunked(body), None);
        assert_eq!(decode_chunked(b"fffffffffffffffe\r\n"), None);
        assert_eq!(decode_chunked(b"10000000000000000\r\n"), None, "past u64");
        assert_eq!(
            decode_chunked(b"3\r\nabc\r\n0\r\n\r\n").as_deref(),
            Some(&b"abc"[..])
        );
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    fn head(upgrade: &str) -> ResponseHead {
        let text = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: {upgrade}\r\n\
             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        );
        ResponseHead::parse(text.as_bytes()).unwrap().unwrap().0
    }

    const REQUEST: &[u8] = b"GET /ws HTTP/1.1\r\nHost: a\r\n\r\n";

    #[test]
    fn a_101_must_be_a_websocket_switch_for_this_key() {
        let accept = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
        assert!(check_switch(&head("websocket"), accept, REQUEST).is_ok());
        assert!(check_switch(&head("websocket"), "other", REQUEST).is_err());
        assert!(check_switch(&head("h2c"), accept, REQUEST).is_err());
    }

    #[test]
    fn a_101_may_only_pick_a_subprotocol_the_request_offered() {
        let accept = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
        let answer = |protocol: &str| {
            let text = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: {protocol}\r\n\r\n"
            );
            ResponseHead::parse(text.as_bytes()).unwrap().unwrap().0
        };
        let offering = b"GET /ws HTTP/1.1\r\nHost: a\r\n\
            Sec-WebSocket-Protocol: chat, superchat\r\n\r\n";
        assert!(check_switch(&answer("superchat"), accept, offering).is_ok());
        for (protocol, request) in [
            ("evil", &offering[..]),
            ("Chat", offering),
            ("chat, superchat", offering),
            ("chat", REQUEST),
        ] {
            assert!(
                check_switch(&answer(protocol), accept, request).is_err(),
                "{protocol} accepted for {}",
                String::from_utf8_lossy(request)
            );
        }
    }
}

#[cfg(test)]
mod chunked_tests {
    use super::decode_chunked;

    #[test]
    fn chunked_bodies_decode_only_when_complete() {
        assert_eq!(
            decode_chunked(b"5\r\nhello\r\n6;x=1\r\n world\r\n0\r\n\r\n").as_deref(),
            Some(&b"hello world"[..])
        );
        assert_eq!(decode_chunked(b"5\r\nhel"), None);
        assert_eq!(decode_chunked(b"zz\r\n"), None);
    }
}
