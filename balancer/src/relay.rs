//! Moving bytes both ways between a client and its pod after the 101, until
//! either side closes, the connection idles past `readTimeout`, a write
//! blocks past `writeTimeout`, or the balancer stops.
//!
//! Frames pass unchanged (close frames included, so close codes travel end
//! to end). One task drives both directions, each independently of the
//! other; when one side ends, the other is shut down for writing and given
//! [`CLOSE_LINGER`] to finish, so no socket or task outlives its connection.

use std::fmt;
use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

/// Bytes read per wake-up in each direction.
const CHUNK: usize = 16 * 1024;

/// Once one side has closed, how long the other direction may still carry
/// bytes (a close reply, say) before the connection is dropped. Bounded by
/// the write timeout too.
pub const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Timeouts of one relayed connection.
#[derive(Debug, Clone, Copy)]
pub struct RelayLimits {
    /// No byte either way for this long ends the connection.
    pub idle: Duration,
    /// One write blocked for this long ends the connection.
    pub write: Duration,
}

/// Which end of a relayed connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The WebSocket client.
    Client,
    /// The pod.
    Pod,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Client => "client",
            Side::Pod => "pod",
        })
    }
}

/// Why a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// This side closed its connection first.
    Closed(Side),
    /// Reading from this side failed (reset, TLS error).
    ReadError(Side),
    /// Writing to this side failed or blocked past the write timeout.
    WriteFailed(Side),
    /// Nothing moved for the idle timeout.
    Idle,
    /// The balancer is stopping.
    Shutdown,
}

impl fmt::Display for Ending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ending::Closed(side) => write!(f, "{side} closed"),
            Ending::ReadError(side) => write!(f, "{side} read error"),
            Ending::WriteFailed(side) => write!(f, "{side} write failed"),
            Ending::Idle => f.write_str("idle timeout"),
            Ending::Shutdown => f.write_str("shutdown"),
        }
    }
}

/// What one relayed connection did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayOutcome {
    /// Bytes from client to pod.
    pub client_to_pod: u64,
    /// Bytes from pod to client.
    pub pod_to_client: u64,
    /// The first reason the relay began to end.
    pub ending: Ending,
}

/// Counters shared by the two directions of one connection.
struct Shared {
    /// Bytes client -> pod.
    up: AtomicU64,
    /// Bytes pod -> client.
    down: AtomicU64,
    /// Milliseconds since `epoch` of the last byte moved either way.
    last_activity: AtomicU64,
    /// Writes in progress: a blocked write is bounded by the write timeout,
    /// not by the idle one.
    writing: AtomicU64,
    /// Start of the connection.
    epoch: Instant,
}

impl Shared {
    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_activity.store(ms, Ordering::Relaxed);
    }

    fn idle_deadline(&self, idle: Duration) -> Instant {
        let last = Duration::from_millis(self.last_activity.load(Ordering::Relaxed));
        far_future_add(self.epoch, last.saturating_add(idle))
    }
}

/// `at + by`, or a time a century away when that would overflow.
pub fn far_future_add(at: Instant, by: Duration) -> Instant {
    at.checked_add(by)
        .unwrap_or_else(|| at + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// How one direction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PumpEnd {
    /// The reading side closed (EOF).
    Eof,
    /// Reading failed.
    ReadError,
    /// Writing failed or blocked past the write timeout.
    WriteFailed,
}

/// Copies one direction until EOF or an error. On EOF the writing side is
/// shut down, so the peer sees the close.
async fn pump<R, W>(
    mut from: R,
    mut to: W,
    counter: &AtomicU64,
    shared: &Shared,
    write_limit: Duration,
) -> PumpEnd
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) => {
                let _ = timeout(write_limit, to.shutdown()).await;
                return PumpEnd::Eof;
            }
            Ok(n) => n,
            Err(_) => {
                let _ = timeout(write_limit, to.shutdown()).await;
                return PumpEnd::ReadError;
            }
        };
        shared.touch();
        shared.writing.fetch_add(1, Ordering::Relaxed);
        let written = forward(&mut to, &buf[..n], write_limit).await;
        shared.writing.fetch_sub(1, Ordering::Relaxed);
        if written.is_err() {
            return PumpEnd::WriteFailed;
        }
        counter.fetch_add(n as u64, Ordering::Relaxed);
        shared.touch();
    }
}

/// Relays until both directions are done. The two directions run
/// independently, so a blocked write one way never delays the other; `stop`
/// ends the relay at once.
pub async fn relay<C, P>(
    client: C,
    pod: P,
    limits: RelayLimits,
    stop: CancellationToken,
) -> RelayOutcome
where
    C: AsyncRead + AsyncWrite + Unpin,
    P: AsyncRead + AsyncWrite + Unpin,
{
    let shared = Shared {
        up: AtomicU64::new(0),
        down: AtomicU64::new(0),
        last_activity: AtomicU64::new(0),
        writing: AtomicU64::new(0),
        epoch: Instant::now(),
    };
    let (client_read, client_write) = tokio::io::split(client);
    let (pod_read, pod_write) = tokio::io::split(pod);
    let up = pump(client_read, pod_write, &shared.up, &shared, limits.write);
    let down = pump(pod_read, client_write, &shared.down, &shared, limits.write);
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    let mut ending: Option<Ending> = None;
    let mut linger: Option<Instant> = None;
    let end_of = |end: PumpEnd, reader: Side, writer: Side| match end {
        PumpEnd::Eof => Ending::Closed(reader),
        PumpEnd::ReadError => Ending::ReadError(reader),
        PumpEnd::WriteFailed => Ending::WriteFailed(writer),
    };

    while !(up_done && down_done) {
        let deadline = linger.unwrap_or_else(|| shared.idle_deadline(limits.idle));
        tokio::select! {
            end = &mut up, if !up_done => {
                up_done = true;
                ending.get_or_insert(end_of(end, Side::Client, Side::Pod));
                if end == PumpEnd::WriteFailed { break; }
                linger.get_or_insert_with(|| far_future_add(Instant::now(), limits.write.min(CLOSE_LINGER)));
            }
            end = &mut down, if !down_done => {
                down_done = true;
                ending.get_or_insert(end_of(end, Side::Pod, Side::Client));
                if end == PumpEnd::WriteFailed { break; }
                linger.get_or_insert_with(|| far_future_add(Instant::now(), limits.write.min(CLOSE_LINGER)));
            }
            () = sleep_until(deadline) => {
                // The idle deadline moves with traffic: only stop when it
                // has really passed (or the linger after a close is over).
                if linger.is_none() && shared.writing.load(Ordering::Relaxed) > 0 {
                    shared.touch();
                } else if linger.is_some() || Instant::now() >= shared.idle_deadline(limits.idle) {
                    ending.get_or_insert(Ending::Idle);
                    break;
                }
            }
            () = stop.cancelled() => {
                ending.get_or_insert(Ending::Shutdown);
                break;
            }
        }
    }
    RelayOutcome {
        client_to_pod: shared.up.load(Ordering::Relaxed),
        pod_to_client: shared.down.load(Ordering::Relaxed),
        ending: ending.unwrap_or(Ending::Idle),
    }
}

/// Writes and flushes one chunk within the write timeout.
async fn forward<W: AsyncWrite + Unpin>(
    to: &mut W,
    bytes: &[u8],
    limit: Duration,
) -> std::io::Result<()> {
    match timeout(limit, async {
        to.write_all(bytes).await?;
        to.flush().await
    })
    .await
    {
        Ok(result) => result,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    fn limits() -> RelayLimits {
        RelayLimits {
            idle: Duration::from_secs(5),
            write: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn bytes_flow_both_ways_and_close_propagates() {
        let (client_far, client_near) = duplex(1024);
        let (pod_near, pod_far) = duplex(1024);
        let task = tokio::spawn(relay(
            client_near,
            pod_near,
            limits(),
            CancellationToken::new(),
        ));
        let (mut client_far, mut pod_far) = (client_far, pod_far);
        client_far.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        pod_far.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        pod_far.write_all(b"world!").await.unwrap();
        let mut buf = [0u8; 6];
        client_far.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"world!");
        drop(pod_far);
        // The client sees EOF once the pod is gone.
        assert_eq!(client_far.read(&mut buf).await.unwrap(), 0);
        drop(client_far);
        let outcome = task.await.unwrap();
        assert_eq!(outcome.client_to_pod, 5);
        assert_eq!(outcome.pod_to_client, 6);
        assert_eq!(outcome.ending, Ending::Closed(Side::Pod));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connection_times_out() {
        let (_client_far, client_near) = duplex(64);
        let (pod_near, _pod_far) = duplex(64);
        let outcome = relay(client_near, pod_near, limits(), CancellationToken::new()).await;
        assert_eq!(outcome.ending, Ending::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn a_blocked_direction_does_not_stall_the_other() {
        let (mut client_far, client_near) = duplex(64);
        let (pod_near, pod_far) = duplex(64);
        let (mut pod_far_read, mut pod_far_write) = tokio::io::split(pod_far);
        let task = tokio::spawn(relay(
            client_near,
            pod_near,
            limits(),
            CancellationToken::new(),
        ));
        // The client never reads while the pod pushes more than fits.
        let pushing = tokio::spawn(async move {
            let _ = pod_far_write.write_all(&[7u8; 8192]).await;
        });
        client_far.write_all(b"still here").await.unwrap();
        let mut got = [0u8; 10];
        tokio::time::timeout(Duration::from_secs(1), pod_far_read.read_exact(&mut got))
            .await
            .expect("client bytes reach the pod while the other way is blocked")
            .unwrap();
        assert_eq!(&got, b"still here");
        assert!(!pushing.is_finished());
        let outcome = task.await.unwrap();
        assert_eq!(outcome.ending, Ending::WriteFailed(Side::Client));
        assert_eq!(outcome.client_to_pod, 10);
    }

    #[tokio::test(start_paused = true)]
    async fn stuck_reader_hits_write_timeout() {
        let (mut client_far, client_near) = duplex(64);
        // The pod never reads, so its 64-byte pipe fills up.
        let (pod_near, _pod_far) = duplex(64);
        let task = tokio::spawn(relay(
            client_near,
            pod_near,
            limits(),
            CancellationToken::new(),
        ));
        let _ = client_far.write_all(&[1u8; 4096]).await;
        let outcome = task.await.unwrap();
        assert_eq!(outcome.ending, Ending::WriteFailed(Side::Pod));
    }
}
