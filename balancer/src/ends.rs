//! The two ends of a relayed connection, as the relay reads and writes them.
//!
//! A plain TCP end is read by waiting for readiness first and only then
//! borrowing a buffer from a shared pool, so an idle connection holds no
//! relay buffer at all. Other ends (TLS toward a pod) read into a pooled
//! buffer held while waiting. Bytes read past the handshake (hyper's
//! `read_buf`) are handed out first, so none is lost.

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
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

/// The reading half of an end.
pub enum ReadEnd {
    /// Plain TCP: read only when readable.
    Tcp(OwnedReadHalf, Option<Bytes>),
    /// Anything else.
    Io(ReadHalf<AnyIo>, Option<Bytes>),
}

/// The writing half of an end.
pub enum WriteEnd {
    /// Plain TCP.
    Tcp(OwnedWriteHalf),
    /// Anything else.
    Io(WriteHalf<AnyIo>),
}

fn early(read_buf: Bytes) -> Option<Bytes> {
    (!read_buf.is_empty()).then_some(read_buf)
}

/// Splits the client's upgraded connection (plain TCP from our listener).
pub fn client_end(upgraded: Upgraded) -> (ReadEnd, WriteEnd) {
    match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => tcp_ends(parts.io.into_inner(), parts.read_buf),
        Err(upgraded) => io_ends(Either::Left(TokioIo::new(upgraded)), Bytes::new()),
    }
}

/// Splits the pod's upgraded connection (TCP or TLS from the dialler).
pub fn pod_end(upgraded: Upgraded) -> (ReadEnd, WriteEnd) {
    match upgraded.downcast::<TokioIo<PodStream>>() {
        Ok(parts) => match parts.io.into_inner() {
            Either::Left(tcp) => tcp_ends(tcp, parts.read_buf),
            tls @ Either::Right(_) => io_ends(Either::Right(tls), parts.read_buf),
        },
        Err(upgraded) => io_ends(Either::Left(TokioIo::new(upgraded)), Bytes::new()),
    }
}

/// Splits a plain TCP stream (tests, and ends hyper handed back as TCP).
pub fn tcp_end(tcp: TcpStream) -> (ReadEnd, WriteEnd) {
    tcp_ends(tcp, Bytes::new())
}

fn tcp_ends(tcp: TcpStream, read_buf: Bytes) -> (ReadEnd, WriteEnd) {
    let _ = tcp.set_nodelay(true);
    let (read, write) = tcp.into_split();
    (ReadEnd::Tcp(read, early(read_buf)), WriteEnd::Tcp(write))
}

fn io_ends(io: AnyIo, read_buf: Bytes) -> (ReadEnd, WriteEnd) {
    let (read, write) = tokio::io::split(io);
    (ReadEnd::Io(read, early(read_buf)), WriteEnd::Io(write))
}

impl ReadEnd {
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
                match half.try_read(buf.slice()) {
                    Ok(0) => return Ok(None),
                    Ok(n) => return Ok(Some(Chunk::Pooled(buf, n))),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
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

impl WriteEnd {
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
