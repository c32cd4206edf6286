//! The two ends of a relayed connection, as the relay reads and writes them.
//!
//! A plain TCP end is read by waiting for readiness first and only then
//! borrowing a buffer from a shared pool, so an idle connection holds no
//! relay buffer at all. Other ends (TLS toward a pod) read into a pooled
//! buffer held while waiting. Bytes read past the handshake (hyper's
//! `read_buf`) are handed out first, so none is lost.

use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::net::tcp;
use tokio::time::timeout;
use tokio_util::either::Either;

use crate::dial::PodStream;

/// Size of one relay buffer.
pub const CHUNK: usize = 16 * 1024;

/// Buffers kept for reuse at most (4 MiB); beyond, they are freed.
const POOL_MAX: usize = 256;

/// Free relay buffers shared by every connection.
static POOL: Mutex<Vec<Box<[u8]>>> = Mutex::new(Vec::new());

/// A buffer borrowed from the pool; returned when dropped.
pub struct Buffer(Option<Box<[u8]>>);

impl Buffer {
    /// Takes a buffer from the pool, or allocates one.
    pub fn take() -> Self {
        let reused = POOL.lock().ok().and_then(|mut pool| pool.pop());
        Buffer(Some(
            reused.unwrap_or_else(|| vec![0u8; CHUNK].into_boxed_slice()),
        ))
    }

    fn slice(&mut self) -> &mut [u8] {
        self.0.as_deref_mut().unwrap_or_default()
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        if let (Some(buf), Ok(mut pool)) = (self.0.take(), POOL.lock())
            && pool.len() < POOL_MAX
        {
            pool.push(buf);
        }
    }
}

/// Bytes read from one end.
pub enum Chunk {
    /// Bytes already buffered by hyper during the handshake.
    Early(Bytes),
    /// `len` bytes at the start of a pooled buffer.
    Pooled(Buffer, usize),
}

impl Chunk {
    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Early(b) => b,
            Chunk::Pooled(buf, len) => buf.0.as_deref().map_or(&[][..], |b| &b[..*len]),
        }
    }
}

/// Any non-TCP stream an end may be: an upgrade hyper could not hand back
/// as TCP, or TLS toward a pod.
type AnyIo = Either<TokioIo<Upgraded>, PodStream>;

/// One end of a relayed connection, owned for the connection's life; the
/// relay borrows its two halves with [`End::split`]. Plain TCP is split
/// without an `Arc` and without a shutdown when a half is dropped.
pub enum End {
    /// Plain TCP, and bytes read past the handshake.
    Tcp(TcpStream, Option<Bytes>),
    /// Anything else (boxed: TLS state is large), and bytes read past the
    /// handshake.
    Io(Box<AnyIo>, Option<Bytes>),
}

/// The reading half of an end.
pub enum ReadEnd<'a> {
    /// Plain TCP: read only when readable.
    Tcp(tcp::ReadHalf<'a>, Option<Bytes>),
    /// Anything else.
    Io(ReadHalf<&'a mut AnyIo>, Option<Bytes>),
}

/// The writing half of an end.
pub enum WriteEnd<'a> {
    /// Plain TCP.
    Tcp(tcp::WriteHalf<'a>),
    /// Anything else.
    Io(WriteHalf<&'a mut AnyIo>),
}

fn early(read_buf: Bytes) -> Option<Bytes> {
    (!read_buf.is_empty()).then_some(read_buf)
}

/// The client's upgraded connection (plain TCP from our listener).
pub fn client_end(upgraded: Upgraded) -> End {
    match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => End::Tcp(parts.io.into_inner(), early(parts.read_buf)),
        Err(upgraded) => End::Io(Box::new(Either::Left(TokioIo::new(upgraded))), None),
    }
}

/// The pod's upgraded connection (TCP or TLS from the dialler).
pub fn pod_end(upgraded: Upgraded) -> End {
    match upgraded.downcast::<TokioIo<PodStream>>() {
        Ok(parts) => match parts.io.into_inner() {
            Either::Left(tcp) => End::Tcp(tcp, early(parts.read_buf)),
            tls @ Either::Right(_) => End::Io(Box::new(Either::Right(tls)), early(parts.read_buf)),
        },
        Err(upgraded) => End::Io(Box::new(Either::Left(TokioIo::new(upgraded))), None),
    }
}

/// A plain TCP stream as an end (tests, and relays between sockets).
pub fn tcp_end(tcp: TcpStream) -> End {
    let _ = tcp.set_nodelay(true);
    End::Tcp(tcp, None)
}

impl End {
    /// The two halves, borrowed for the relay. Bytes read past the
    /// handshake go to the reading half, to be handed out first.
    pub fn split(&mut self) -> (ReadEnd<'_>, WriteEnd<'_>) {
        match self {
            End::Tcp(tcp, early) => {
                let early = early.take();
                let (read, write) = tcp.split();
                (ReadEnd::Tcp(read, early), WriteEnd::Tcp(write))
            }
            End::Io(io, early) => {
                let early = early.take();
                let (read, write) = tokio::io::split(&mut **io);
                (ReadEnd::Io(read, early), WriteEnd::Io(write))
            }
        }
    }
}

impl ReadEnd<'_> {
    /// The next bytes, or `None` at end of stream.
    pub async fn read(&mut self) -> std::io::Result<Option<Chunk>> {
        match self {
            ReadEnd::Tcp(_, pending) | ReadEnd::Io(_, pending) => {
                if let Some(bytes) = pending.take() {
                    return Ok(Some(Chunk::Early(bytes)));
                }
            }
        }
        match self {
            ReadEnd::Tcp(half, _) => loop {
                half.readable().await?;
                let mut buf = Buffer::take();
                // One non-blocking read through `poll_read`, which (unlike
                // `try_read`) clears readiness after a short read: the next
                // read then waits for new data instead of costing a
                // recv() that only says EAGAIN.
                let mut filled = ReadBuf::new(buf.slice());
                let mut cx = Context::from_waker(Waker::noop());
                match Pin::new(&mut *half).poll_read(&mut cx, &mut filled) {
                    Poll::Ready(Ok(())) => {
                        let n = filled.filled().len();
                        return Ok((n > 0).then_some(Chunk::Pooled(buf, n)));
                    }
                    Poll::Ready(Err(e)) => return Err(e),
                    // Spurious readiness: give the buffer back and wait.
                    Poll::Pending => continue,
                }
            },
            ReadEnd::Io(half, _) => {
                let mut buf = Buffer::take();
                match half.read(buf.slice()).await? {
                    0 => Ok(None),
                    n => Ok(Some(Chunk::Pooled(buf, n))),
                }
            }
        }
    }
}

impl WriteEnd<'_> {
    /// Writes and flushes `bytes` within `limit`.
    pub async fn write(&mut self, bytes: &[u8], limit: Duration) -> std::io::Result<()> {
        let write = async {
            match self {
                WriteEnd::Tcp(half) => half.write_all(bytes).await,
                WriteEnd::Io(half) => {
                    half.write_all(bytes).await?;
                    half.flush().await
                }
            }
        };
        match timeout(limit, write).await {
            Ok(result) => result,
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    }

    /// Sends end-of-stream (FIN, or TLS close_notify) within `limit`.
    pub async fn shutdown(&mut self, limit: Duration) {
        let _ = match self {
            WriteEnd::Tcp(half) => timeout(limit, half.shutdown()).await,
            WriteEnd::Io(half) => timeout(limit, half.shutdown()).await,
        };
    }
}
