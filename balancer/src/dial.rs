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

use base64::Engine;
use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::Empty;
use rustls::pki_types::ServerName;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
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
    /// Short reason label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            DialError::Connect(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => "refused",
            DialError::Connect(_) => "connect",
            DialError::Tls(_) | DialError::ServerName(_) => "tls",
            DialError::Io(_) | DialError::Handshake(_) | DialError::BadUpgrade(_) => "handshake",
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
        head: http::response::Parts,
        /// The stream, now a WebSocket.
        io: S,
        /// Bytes the pod sent right after its 101 (its first frames).
        early: Bytes,
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
    Ok(Either::Right(Box::new(stream)))
}

/// Largest response head accepted from a pod.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Most headers accepted in a pod's response.
const MAX_RESPONSE_HEADERS: usize = 100;

/// The request head as bytes: request line, headers, blank line.
fn encode_head(request: &Request<Empty<Bytes>>) -> Vec<u8> {
    let target = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let size: usize = request
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    let mut head = Vec::with_capacity(target.len() + size + 32);
    head.extend_from_slice(b"GET ");
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in request.headers() {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// A parsed response head and where it ends in the buffer.
fn parse_head(buf: &[u8]) -> Result<Option<(http::response::Parts, usize)>, DialError> {
    // Uninitialised: nothing to copy in before parsing.
    let mut headers =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_RESPONSE_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut headers,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(DialError::Handshake("malformed response head")),
    };
    let status = response
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(DialError::Handshake("bad status code"))?;
    // Parts filled in directly: `http`'s builder moves the whole response
    // through a closure for every header.
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = status;
    parts.headers.reserve(response.headers.len());
    for h in response.headers.iter() {
        let name = header::HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| DialError::Handshake("bad header name"))?;
        let value = header::HeaderValue::from_bytes(h.value)
            .map_err(|_| DialError::Handshake("bad header value"))?;
        parts.headers.append(name, value);
    }
    Ok(Some((parts, len)))
}

/// Reads more of the answer into `buf`; an end of stream is an error
/// unless `eof_ok`.
async fn read_more<T: AsyncRead + Unpin>(
    io: &mut T,
    buf: &mut Vec<u8>,
    eof_ok: bool,
) -> Result<bool, DialError> {
    // Into spare capacity: nothing is zeroed first.
    buf.reserve(2048);
    let n = io.read_buf(buf).await?;
    if n == 0 && !eof_ok {
        return Err(DialError::Handshake("pod closed before answering"));
    }
    Ok(n > 0)
}

/// Sends the upgrade request over `io` and waits for the pod's answer.
pub async fn handshake<T>(
    mut io: T,
    request: Request<Empty<Bytes>>,
) -> Result<PodAnswer<T>, DialError>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let expected_accept = request
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|key| accept_key(key.as_bytes()));
    io.write_all(&encode_head(&request)).await?;
    io.flush().await?;
    let mut buf = Vec::with_capacity(1024);
    let (head, len) = loop {
        read_more(&mut io, &mut buf, false).await?;
        if let Some(parsed) = parse_head(&buf)? {
            break parsed;
        }
        if buf.len() > MAX_RESPONSE_HEAD {
            return Err(DialError::Handshake("response head too large"));
        }
    };
    buf.drain(..len);
    if head.status == StatusCode::SWITCHING_PROTOCOLS {
        check_switch(&head.headers, expected_accept.as_deref())?;
        return Ok(PodAnswer::Upgraded {
            head,
            io,
            early: Bytes::from(buf),
        });
    }
    let bodyless = head.status.is_informational()
        || head.status == StatusCode::NO_CONTENT
        || head.status == StatusCode::NOT_MODIFIED;
    let body = if bodyless {
        Bytes::new()
    } else {
        read_status_body(&mut io, &head.headers, buf).await
    };
    Ok(PodAnswer::Status { head, body })
}

/// The body of a non-101 answer, at most [`MAX_STATUS_BODY`] bytes: by
/// `Content-Length`, chunked, or up to the end of the stream. A broken or
/// over-long body gives what was read (the status is what matters).
async fn read_status_body<T: AsyncRead + Unpin>(
    io: &mut T,
    headers: &http::HeaderMap,
    mut buf: Vec<u8>,
) -> Bytes {
    let chunked = crate::handshake::has_token(headers, header::TRANSFER_ENCODING, "chunked");
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
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
        if buf.len() < size + 2 || body.len() + size > MAX_STATUS_BODY {
            return None;
        }
        body.extend_from_slice(&buf[..size]);
        buf = &buf[size + 2..];
    }
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
