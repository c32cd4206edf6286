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
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
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

/// The pod's connection (TCP or TLS from the dialler) after its 101, with
/// the bytes it sent right after the 101.
pub fn pod_end(io: PodStream, early_bytes: Bytes) -> End {
    match io {
        Either::Left(tcp) => End::Tcp(tcp, early(early_bytes)),
        tls @ Either::Right(_) => End::Io(Box::new(Either::Right(tls)), early(early_bytes)),
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
    ///
    /// A TCP end waits for readiness through the socket's own waker slot
    /// (no waiter node in this future), takes a pooled buffer only once
    /// readable, and reads once through `poll_read`, which (unlike
    /// `try_read`) clears readiness after a short read: the next read then
    /// waits for new data instead of costing a recv() that says EAGAIN.
    pub async fn read(&mut self) -> std::io::Result<Option<Chunk>> {
        match self {
            ReadEnd::Tcp(_, pending) | ReadEnd::Io(_, pending) => {
                if let Some(bytes) = pending.take() {
                    return Ok(Some(Chunk::Early(bytes)));
                }
            }
        }
        match self {
            ReadEnd::Tcp(half, _) => {
                std::future::poll_fn(|cx| {
                    let stream: &TcpStream = half.as_ref();
                    std::task::ready!(stream.poll_read_ready(cx))?;
                    let mut buf = Buffer::take();
                    let mut filled = ReadBuf::new(buf.slice());
                    // Pending (spurious readiness) registers `cx` and
                    // returns the buffer to the pool.
                    std::task::ready!(Pin::new(&mut *half).poll_read(cx, &mut filled))?;
                    let n = filled.filled().len();
                    Poll::Ready(Ok((n > 0).then_some(Chunk::Pooled(buf, n))))
                })
                .await
            }
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
    /// Writes as much of `bytes` as the socket takes now, without waiting.
    fn write_now(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut done = 0;
        while done < bytes.len() {
            let poll = match self {
                WriteEnd::Tcp(half) => Pin::new(half).poll_write(&mut cx, &bytes[done..]),
                WriteEnd::Io(half) => Pin::new(half).poll_write(&mut cx, &bytes[done..]),
            };
            match poll {
                Poll::Ready(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => done += n,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => break,
            }
        }
        Ok(done)
    }

    /// Writes and flushes `bytes` within `limit`. What the socket takes at
    /// once is written without a timer; only a write that must wait gets
    /// one, in a boxed future, so an idle connection's task stays small.
    pub async fn write(&mut self, bytes: &[u8], limit: Duration) -> std::io::Result<()> {
        let done = self.write_now(bytes)?;
        if done == bytes.len() && matches!(self, WriteEnd::Tcp(_)) {
            return Ok(());
        }
        Box::pin(self.write_waiting(&bytes[done..], limit)).await
    }

    async fn write_waiting(&mut self, bytes: &[u8], limit: Duration) -> std::io::Result<()> {
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
    /// A TCP shutdown never waits; a TLS one (which writes close_notify)
    /// may, in a boxed future.
    pub async fn shutdown(&mut self, limit: Duration) {
        match self {
            WriteEnd::Tcp(half) => {
                let mut cx = Context::from_waker(Waker::noop());
                let _ = Pin::new(half).poll_shutdown(&mut cx);
            }
            WriteEnd::Io(half) => {
                let _ = Box::pin(timeout(limit, half.shutdown())).await;
            }
        }
    }
}
