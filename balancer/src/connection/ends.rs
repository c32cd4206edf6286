//! The two ends of a relayed connection, as the relay reads and writes them.
//!
//! Ends are polled, not awaited: a read borrows a buffer from a shared pool
//! only for the moment bytes are there, so an idle connection holds no
//! relay buffer and no pending future at all. Bytes read past the handshake
//! are handed out first, so none is lost.

use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::either::Either;

use crate::connection::dial::PodStream;

/// Size of a relay buffer: a whole 64 KiB message and its header in one
/// read and one write (when it has all arrived), so the far side is woken
/// once per message, not once per piece. Buffers are borrowed only while
/// bytes are in flight, so the size costs an idle connection nothing.
pub const CHUNK: usize = 64 * 1024 + 64;

/// Largest remainder [`Chunk::copy_rest`] copies out of a pooled buffer; a
/// larger one keeps the buffer (at most 4 times what it owes).
const COPY_MAX: usize = 16 * 1024;

/// Free buffers kept for reuse at most (about 4 MiB); beyond, they are
/// freed.
const POOL_MAX: usize = 64;

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
        let Some(buf) = self.0.take() else { return };
        if let Ok(mut free) = POOL.lock()
            && free.len() < POOL_MAX
        {
            free.push(buf);
        }
    }
}

/// Bytes read from one end.
pub enum Chunk {
    /// Bytes the connection owns outright: those read past the handshake,
    /// or what a blocked write still owes (see [`Chunk::copy_rest`]).
    Owned(Bytes),
    /// `len` bytes at the start of a pooled buffer.
    Pooled(Buffer, usize),
}

impl Chunk {
    /// The bytes from `from` on, copied into a chunk of their own, when this
    /// is a pooled buffer and they are few enough to copy (`None`
    /// otherwise). A write that has to wait then holds what it owes instead
    /// of a whole pooled buffer, which goes back to the pool: a client that
    /// stops reading pins the bytes it was sent, not 64 KiB.
    pub fn copy_rest(&self, from: usize) -> Option<Chunk> {
        match self {
            Chunk::Pooled(buf, len) => {
                let rest = buf.0.as_deref()?.get(from..*len)?;
                (rest.len() <= COPY_MAX).then(|| Chunk::Owned(Bytes::copy_from_slice(rest)))
            }
            Chunk::Owned(_) => None,
        }
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Owned(b) => b,
            Chunk::Pooled(buf, len) => buf.0.as_deref().map_or(&[][..], |b| &b[..*len]),
        }
    }
}

/// Any non-TCP stream an end may be: an upgrade hyper could not hand back
/// as TCP, or TLS toward a pod.
type AnyIo = Either<TokioIo<Upgraded>, PodStream>;

/// One end of a relayed connection, owned for the connection's life and
/// driven by polling: reads and writes never hold a future (nor a buffer)
/// while they wait.
pub enum End {
    /// Plain TCP.
    Tcp(TcpStream),
    /// Anything else (boxed: TLS state is large).
    Io(Box<AnyIo>),
    /// Closed by the relay: reads see the end of the stream, and writes
    /// are dropped (nothing more is owed to a side that has gone).
    Closed,
}

/// An end as it arrives from a handshake: the stream, and the bytes already
/// read past the handshake (to be relayed first, so none is lost).
pub type Arrived = (End, Option<Bytes>);

fn early(read_buf: Bytes) -> Option<Bytes> {
    (!read_buf.is_empty()).then_some(read_buf)
}

/// The client's upgraded connection (plain TCP from our listener).
pub fn client_end(upgraded: Upgraded) -> Arrived {
    match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => (End::Tcp(parts.io.into_inner()), early(parts.read_buf)),
        Err(upgraded) => (
            End::Io(Box::new(Either::Left(TokioIo::new(upgraded)))),
            None,
        ),
    }
}

/// The pod's connection (TCP or TLS from the dialler) after its 101, with
/// the bytes it sent right after the 101.
pub fn pod_end(io: PodStream, early_bytes: Bytes) -> Arrived {
    let end = match io {
        Either::Left(tcp) => End::Tcp(tcp),
        tls @ Either::Right(_) => End::Io(Box::new(Either::Right(tls))),
    };
    (end, early(early_bytes))
}

/// A plain TCP stream as an end (tests, and relays between sockets).
#[cfg(test)]
pub fn tcp_end(tcp: TcpStream) -> Arrived {
    let _ = tcp.set_nodelay(true);
    (End::Tcp(tcp), None)
}

impl End {
    /// The next bytes, or `None` at end of stream.
    ///
    /// A TCP end waits for readiness in the socket's own waker slot, takes
    /// a pooled buffer only once readable, and reads through `poll_read`,
    /// which (unlike `try_read`) clears readiness after a short read: the
    /// next read waits for new data instead of costing a recv() that says
    /// EAGAIN. When nothing is there, the buffer goes back to the pool.
    pub fn poll_read_chunk(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<Option<Chunk>>> {
        match self {
            End::Tcp(tcp) => std::task::ready!(tcp.poll_read_ready(cx))?,
            End::Io(_) => {}
            End::Closed => return Poll::Ready(Ok(None)),
        }
        let mut buf = Buffer::take();
        let mut filled = ReadBuf::new(buf.slice());
        let read = match self {
            End::Tcp(tcp) => Pin::new(tcp).poll_read(cx, &mut filled),
            End::Io(io) => Pin::new(&mut **io).poll_read(cx, &mut filled),
            End::Closed => Poll::Ready(Ok(())),
        };
        std::task::ready!(read)?;
        let n = filled.filled().len();
        Poll::Ready(Ok((n > 0).then_some(Chunk::Pooled(buf, n))))
    }

    /// Writes some of `bytes` (flushed, for TLS), or waits.
    pub fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self {
            End::Tcp(tcp) => Pin::new(tcp).poll_write(cx, bytes),
            End::Io(io) => {
                let n = std::task::ready!(Pin::new(&mut **io).poll_write(cx, bytes))?;
                // TLS buffers records; a flush that must wait is retried
                // with the next write or shutdown.
                let _ = Pin::new(&mut **io).poll_flush(cx);
                Poll::Ready(Ok(n))
            }
            End::Closed => Poll::Ready(Ok(bytes.len())),
        }
    }

    /// Closes this end now (after a TLS close_notify when there is one):
    /// what was written is still delivered, then end-of-stream.
    pub fn close(&mut self) {
        if let End::Io(_) = self {
            self.shutdown_now();
        }
        *self = End::Closed;
    }

    /// Sends end-of-stream (FIN, or a TLS close_notify) without waiting;
    /// a TLS one that cannot go out now is dropped with the connection.
    pub fn shutdown_now(&mut self) {
        let mut cx = Context::from_waker(Waker::noop());
        let _ = match self {
            End::Tcp(tcp) => Pin::new(tcp).poll_shutdown(&mut cx),
            End::Io(io) => Pin::new(&mut **io).poll_shutdown(&mut cx),
            End::Closed => Poll::Ready(Ok(())),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pooled(content: &[u8]) -> Chunk {
        let mut buf = Buffer::take();
        buf.slice()[..content.len()].copy_from_slice(content);
        Chunk::Pooled(buf, content.len())
    }

    #[test]
    fn a_small_rest_is_copied_out_of_its_pooled_buffer() {
        let chunk = pooled(b"0123456789");
        let rest = chunk.copy_rest(4).expect("copied");
        assert!(matches!(rest, Chunk::Owned(_)));
        assert_eq!(rest.bytes(), b"456789");
        assert_eq!(chunk.copy_rest(10).map(|c| c.bytes().len()), Some(0));
    }

    #[test]
    fn a_large_rest_or_an_owned_chunk_stays_as_it_is() {
        let big = vec![7u8; COPY_MAX + 1];
        assert!(pooled(&big).copy_rest(0).is_none());
        assert!(
            pooled(&big).copy_rest(1).is_some(),
            "exactly COPY_MAX is copied"
        );
        assert!(
            Chunk::Owned(Bytes::from_static(b"abc"))
                .copy_rest(1)
                .is_none()
        );
        assert!(pooled(b"abc").copy_rest(4).is_none(), "past the end");
    }
}
