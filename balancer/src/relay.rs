//! Moving bytes both ways between a client and its pod after the 101, until
//! either side closes, the connection idles past `readTimeout`, a write
//! blocks past `writeTimeout`, or the balancer stops.
//!
//! Frames pass unchanged (close frames included, so close codes travel end
//! to end). One task drives both directions; when one side ends, the other
//! is shut down for writing and given [`CLOSE_LINGER`] to finish, so no
//! socket or task outlives its connection.

use std::fmt;
use std::time::Duration;

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

/// One direction's state.
struct Direction {
    open: bool,
    bytes: u64,
    buf: Box<[u8]>,
}

impl Direction {
    fn new() -> Self {
        Direction {
            open: true,
            bytes: 0,
            buf: vec![0u8; CHUNK].into_boxed_slice(),
        }
    }
}

/// Relays until both directions are done. `stop` ends it at once.
pub async fn relay<C, P>(
    mut client: C,
    mut pod: P,
    limits: RelayLimits,
    stop: CancellationToken,
) -> RelayOutcome
where
    C: AsyncRead + AsyncWrite + Unpin,
    P: AsyncRead + AsyncWrite + Unpin,
{
    let mut up = Direction::new(); // client -> pod
    let mut down = Direction::new(); // pod -> client
    let mut ending: Option<Ending> = None;
    let mut deadline = Instant::now() + limits.idle;

    while up.open || down.open {
        tokio::select! {
            read = client.read(&mut up.buf), if up.open => {
                match read {
                    Ok(0) | Err(_) => {
                        let side_ending = if read.is_ok() { Ending::Closed(Side::Client) } else { Ending::ReadError(Side::Client) };
                        ending.get_or_insert(side_ending);
                        up.open = false;
                        let _ = timeout(limits.write, pod.shutdown()).await;
                        deadline = Instant::now() + limits.write.min(CLOSE_LINGER);
                    }
                    Ok(n) => {
                        if forward(&mut pod, &up.buf[..n], limits.write).await.is_err() {
                            ending.get_or_insert(Ending::WriteFailed(Side::Pod));
                            break;
                        }
                        up.bytes += n as u64;
                        if ending.is_none() {
                            deadline = Instant::now() + limits.idle;
                        }
                    }
                }
            }
            read = pod.read(&mut down.buf), if down.open => {
                match read {
                    Ok(0) | Err(_) => {
                        let side_ending = if read.is_ok() { Ending::Closed(Side::Pod) } else { Ending::ReadError(Side::Pod) };
                        ending.get_or_insert(side_ending);
                        down.open = false;
                        let _ = timeout(limits.write, client.shutdown()).await;
                        deadline = Instant::now() + limits.write.min(CLOSE_LINGER);
                    }
                    Ok(n) => {
                        if forward(&mut client, &down.buf[..n], limits.write).await.is_err() {
                            ending.get_or_insert(Ending::WriteFailed(Side::Client));
                            break;
                        }
                        down.bytes += n as u64;
                        if ending.is_none() {
                            deadline = Instant::now() + limits.idle;
                        }
                    }
                }
            }
            () = sleep_until(deadline) => {
                ending.get_or_insert(Ending::Idle);
                break;
            }
            () = stop.cancelled() => {
                ending.get_or_insert(Ending::Shutdown);
                break;
            }
        }
    }
    RelayOutcome {
        client_to_pod: up.bytes,
        pod_to_client: down.bytes,
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
