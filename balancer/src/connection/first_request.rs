//! The first request on a plain TCP connection, read and parsed by hand.
//!
//! Nearly every connection to the balancer is one WebSocket upgrade and
//! then frames for hours. That request is read into one small buffer,
//! parsed with `httparse`, answered with one write, and relayed in the same
//! task: no HTTP server machinery, no upgrade channel, no second task.
//! Anything else (plain HTTP, a malformed head) is handed to hyper with the
//! bytes already read put back in front, so it is served exactly as before.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::{Response, header};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::connection::handshake::Body;
use crate::connection::head::{ParsedRequest, RequestHead};

/// What the first bytes of a connection turned out to be.
pub enum FirstRequest {
    /// A complete head with an `Upgrade` header: parsed, plus the bytes
    /// that followed it (the client's first frames, if it did not wait).
    Upgrade {
        /// Request line and fields.
        head: RequestHead,
        /// Bytes after the head.
        early: Bytes,
    },
    /// Anything else, for hyper: every byte read so far.
    Other(Bytes),
    /// The head grew past the limit before it ended.
    TooLarge,
    /// The client closed before sending a whole head.
    Closed,
}

/// Spare room each read of the first request reserves.
const READ_CHUNK: usize = 2048;

/// Reads until the first request head is complete, or is clearly not an
/// upgrade this module serves, or passes `max_head` bytes. The caller
/// bounds the time it may take.
pub async fn read<R: AsyncRead + Unpin>(
    io: &mut R,
    max_head: usize,
) -> std::io::Result<FirstRequest> {
    // As much as each read reserves: no reallocation for a head that fits
    // in the first.
    let mut buf = Vec::with_capacity(READ_CHUNK);
    loop {
        // Into spare capacity: nothing is zeroed first.
        buf.reserve(READ_CHUNK);
        let n = io.read_buf(&mut buf).await?;
        if n == 0 {
            return Ok(if buf.is_empty() {
                FirstRequest::Closed
            } else {
                FirstRequest::Other(Bytes::from(buf))
            });
        }
        match RequestHead::parse(&buf) {
            ParsedRequest::Partial if buf.len() >= max_head => return Ok(FirstRequest::TooLarge),
            ParsedRequest::Partial => continue,
            ParsedRequest::Complete(head, len) if head.fields().contains("upgrade") => {
                if len > max_head {
                    return Ok(FirstRequest::TooLarge);
                }
                let early = Bytes::copy_from_slice(&buf[len..]);
                return Ok(FirstRequest::Upgrade { head, early });
            }
            ParsedRequest::Complete(..) | ParsedRequest::Other => {
                return Ok(FirstRequest::Other(Bytes::from(buf)));
            }
        }
    }
}

/// Writes `response` as HTTP/1.1. Anything but a 101 also says
/// `Connection: close`, and the caller closes after it.
pub async fn write_response<W: AsyncWrite + Unpin>(
    io: &mut W,
    response: Response<Body>,
) -> std::io::Result<()> {
    let (mut parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let switching = parts.status == http::StatusCode::SWITCHING_PROTOCOLS;
    if !switching {
        parts.headers.insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
        parts.headers.insert(
            header::CONTENT_LENGTH,
            header::HeaderValue::from(body.len()),
        );
    }
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        parts
            .status
            .canonical_reason()
            .unwrap_or("Unknown")
            .as_bytes(),
    );
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    io.write_all(&out).await?;
    io.flush().await
}

/// A stream with bytes already read from it put back in front, so that
/// hyper reads the connection from its first byte.
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    /// `prefix` is returned by reads before anything from `inner`.
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Prefixed { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &[u8] = b"GET /ws?x=1 HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";

    #[tokio::test]
    async fn an_upgrade_is_parsed_and_what_follows_is_kept() {
        let mut input = UPGRADE.to_vec();
        input.extend_from_slice(b"\x81\x85frame");
        let mut reader = &input[..];
        match read(&mut reader, 8192).await.unwrap() {
            FirstRequest::Upgrade { head, early } => {
                assert_eq!(head.target(), "/ws?x=1");
                assert_eq!(head.fields().single("upgrade"), Some(&b"websocket"[..]));
                assert_eq!(&early[..], b"\x81\x85frame");
            }
            _ => panic!("not parsed as an upgrade"),
        }
    }

    #[tokio::test]
    async fn plain_http_and_garbage_go_to_hyper_whole() {
        for input in [
            &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            &b"\x16\x03\x01 not http at all\r\n\r\n"[..],
        ] {
            let mut reader = input;
            match read(&mut reader, 8192).await.unwrap() {
                FirstRequest::Other(bytes) => assert_eq!(&bytes[..], input),
                _ => panic!("should go to hyper"),
            }
        }
    }

    #[tokio::test]
    async fn a_head_past_the_limit_is_too_large() {
        let mut input = b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nX: ".to_vec();
        input.extend(std::iter::repeat_n(b'a', 20_000));
        let mut reader = &input[..];
        assert!(matches!(
            read(&mut reader, 8192).await.unwrap(),
            FirstRequest::TooLarge
        ));
    }

    #[tokio::test]
    async fn prefixed_reads_the_prefix_first() {
        let mut stream = Prefixed::new(Bytes::from_static(b"abc"), &b"def"[..]);
        let mut all = String::new();
        stream.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "abcdef");
    }
}
