//! Moving a WebSocket connection's bytes both ways after the 101, until
//! either side closes, the connection idles past `readTimeout`, a write
//! blocks past `writeTimeout`, or the balancer drains or stops.
//!
//! Bytes pass unchanged (no re-encoding, no unmasking, compression
//! untouched) while a [`FrameTracker`] per direction follows frame
//! boundaries. That lets the relay count messages and insert its own Close
//! frame between two frames: 1001/1012 toward both sides when draining or
//! idle, 1014 toward the client when the pod vanishes without a Close, 1001
//! toward the pod when the client does. Frames toward the pod are masked,
//! frames toward the client are not. The two directions run independently,
//! so a blocked write one way never delays the other.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use common::frame::{FrameTracker, close_frame};
use rand::Rng;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::ends::{End, ReadEnd, WriteEnd};

/// Once one side has closed (or the relay sent its own Close), how long the
/// rest may still take before the connection is dropped. Bounded by the
/// write timeout too.
pub const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Close code sent to the client when the pod went away without a Close.
pub const CLOSE_BAD_GATEWAY: u16 = 1014;

/// Close code for "going away": idle timeout, client gone, drain.
pub const CLOSE_GOING_AWAY: u16 = 1001;

/// Timeouts of one relayed connection.
#[derive(Debug, Clone, Copy)]
pub struct RelayLimits {
    /// No byte either way for this long ends the connection.
    pub idle: Duration,
    /// One write blocked for this long ends the connection.
    pub write: Duration,
}

/// How a drain reaches one connection.
#[derive(Debug, Clone)]
pub struct DrainSignal {
    /// Cancelled when the balancer starts draining.
    pub started: CancellationToken,
    /// Each connection is closed at a random moment within this window, so
    /// clients do not all reconnect at once.
    pub window: Duration,
    /// Close code sent to both sides (1001 or 1012).
    pub code: u16,
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
    /// Closed by the balancer's drain.
    Drained,
    /// The balancer stopped at once.
    Shutdown,
}

impl fmt::Display for Ending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ending::Closed(side) => write!(f, "{side} closed"),
            Ending::ReadError(side) => write!(f, "{side} read error"),
            Ending::WriteFailed(side) => write!(f, "{side} write failed"),
            Ending::Idle => f.write_str("idle timeout"),
            Ending::Drained => f.write_str("drained"),
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
    /// Complete messages from client to pod.
    pub messages_in: u64,
    /// Complete messages from pod to client.
    pub messages_out: u64,
    /// The first reason the relay began to end.
    pub ending: Ending,
}

/// Counters shared by the two directions of one connection.
struct Shared {
    /// Milliseconds since `epoch` of the last byte moved either way.
    last_activity: AtomicU64,
    /// Writes in progress: a blocked write is bounded by the write timeout,
    /// not by the idle one.
    writing: AtomicU64,
    /// Bytes passed, toward the pod [0] and toward the client [1].
    bytes: [AtomicU64; 2],
    /// Complete messages passed, same order.
    messages: [AtomicU64; 2],
    /// Directions that have ended (0, 1 or 2).
    finished: AtomicU64,
    /// Close code the relay asked both directions to insert (0: none yet).
    close_code: AtomicU32,
    /// Start of the connection.
    epoch: Instant,
}

impl Side {
    fn index(self) -> usize {
        match self {
            Side::Pod => 0,
            Side::Client => 1,
        }
    }
}

impl Shared {
    /// Asks both directions to insert a Close with `code` at their next
    /// frame boundary (the first request wins).
    fn request_close(&self, code: u16) {
        let _ = self.close_code.compare_exchange(
            0,
            u32::from(code),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// The requested Close code, if any.
    fn close_requested(&self) -> Option<u16> {
        match self.close_code.load(Ordering::Relaxed) {
            0 => None,
            code => u16::try_from(code).ok(),
        }
    }

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
    /// After the relay's own Close, the reading side answered (or ended).
    Answered,
}

impl PumpEnd {
    /// The connection's ending when this direction (read from `reader`,
    /// written to `writer`) ends first.
    fn ending(self, reader: Side, writer: Side) -> Ending {
        match self {
            PumpEnd::Eof | PumpEnd::Answered => Ending::Closed(reader),
            PumpEnd::ReadError => Ending::ReadError(reader),
            PumpEnd::WriteFailed => Ending::WriteFailed(writer),
        }
    }
}

/// One direction: reads `from`, writes to `to` (the `toward` side).
struct Pump<'a> {
    from: ReadEnd<'a>,
    to: WriteEnd<'a>,
    toward: Side,
    tracker: FrameTracker,
    /// The relay's own Close went out this way; data is no longer passed.
    closed_by_us: bool,
}

impl Pump<'_> {
    /// A Close frame toward this pump's side, masked toward the pod.
    fn close(&self, code: u16) -> Vec<u8> {
        let reason = match code {
            CLOSE_BAD_GATEWAY => "pod went away",
            1012 => "service restart",
            _ => "going away",
        };
        let mask = (self.toward == Side::Pod).then(|| rand::rng().random::<[u8; 4]>());
        close_frame(code, reason, mask)
    }

    /// Sends the relay's own Close this way once one is requested and the
    /// stream is at a frame boundary (none if this side's peer already sent
    /// one: it must not get a second).
    async fn insert_close(
        &mut self,
        requested: Option<u16>,
        framed: bool,
        write_limit: Duration,
    ) -> std::io::Result<()> {
        let Some(code) = requested else { return Ok(()) };
        if self.closed_by_us || !framed || !self.tracker.at_boundary() {
            return Ok(());
        }
        self.closed_by_us = true;
        if self.tracker.close_seen() {
            return Ok(());
        }
        let frame = self.close(code);
        self.to.write(&frame, write_limit).await
    }

    /// Ends this direction: end-of-stream toward its side, unless the other
    /// direction is already over (then the sockets are about to be closed,
    /// which says the same for one system call less).
    async fn finish(&mut self, shared: &Shared, write_limit: Duration) {
        if shared.finished.fetch_add(1, Ordering::Relaxed) == 0 {
            self.to.shutdown(write_limit).await;
        }
    }

    async fn run(mut self, shared: &Shared, write_limit: Duration) -> PumpEnd {
        let side = self.toward.index();
        // The tracker can lose the frame boundaries of a stream that is not
        // WebSocket; bytes still pass, but nothing is inserted any more.
        let mut framed = true;
        loop {
            let requested = shared.close_requested();
            if self
                .insert_close(requested, framed, write_limit)
                .await
                .is_err()
            {
                return PumpEnd::WriteFailed;
            }
            let chunk = tokio::select! {
                read = self.from.read() => read,
                // No waker needed: a Close is only requested by the relay
                // loop, which polls both pumps again right after.
                () = std::future::poll_fn(|_| match shared.close_requested() {
                    Some(_) => std::task::Poll::Ready(()),
                    None => std::task::Poll::Pending,
                }), if requested.is_none() => continue,
            };
            let chunk = match chunk {
                Ok(Some(chunk)) => chunk,
                Ok(None) | Err(_) => {
                    let end = if chunk.is_ok() {
                        PumpEnd::Eof
                    } else {
                        PumpEnd::ReadError
                    };
                    let end = if self.closed_by_us {
                        PumpEnd::Answered
                    } else {
                        end
                    };
                    // The reading side vanished without a Close: tell the
                    // other side properly (1014 to a client, 1001 to a pod).
                    if !self.closed_by_us
                        && framed
                        && self.tracker.at_boundary()
                        && !self.tracker.close_seen()
                    {
                        let code = match self.toward {
                            Side::Client => CLOSE_BAD_GATEWAY,
                            Side::Pod => CLOSE_GOING_AWAY,
                        };
                        let frame = self.close(code);
                        let _ = self.to.write(&frame, write_limit).await;
                    }
                    self.finish(shared, write_limit).await;
                    return end;
                }
            };
            shared.touch();
            let mut rest = chunk.bytes();
            while !rest.is_empty() {
                // Stop at the first frame boundary when a Close waits for one.
                let stop = requested.is_some() && !self.closed_by_us;
                let used = if framed {
                    match self.tracker.feed(rest, stop, |_| {}) {
                        Ok(used) => used,
                        Err(_) => {
                            framed = false;
                            rest.len()
                        }
                    }
                } else {
                    rest.len()
                };
                let (now, later) = rest.split_at(used);
                if !self.closed_by_us {
                    shared.writing.fetch_add(1, Ordering::Relaxed);
                    let written = self.to.write(now, write_limit).await;
                    shared.writing.fetch_sub(1, Ordering::Relaxed);
                    if written.is_err() {
                        return PumpEnd::WriteFailed;
                    }
                    shared.bytes[side].fetch_add(now.len() as u64, Ordering::Relaxed);
                    shared.messages[side].store(self.tracker.messages(), Ordering::Relaxed);
                } else if self.tracker.close_seen() {
                    // The answer to our Close: this direction is done.
                    self.finish(shared, write_limit).await;
                    return PumpEnd::Answered;
                }
                if self
                    .insert_close(requested, framed, write_limit)
                    .await
                    .is_err()
                {
                    return PumpEnd::WriteFailed;
                }
                rest = later;
            }
            shared.touch();
        }
    }
}

/// Relays until both directions are done. `drain` closes the connection
/// cleanly at a random point of the drain window; `stop` ends it at once.
pub async fn relay(
    mut client: End,
    mut pod: End,
    limits: RelayLimits,
    drain: DrainSignal,
    stop: CancellationToken,
) -> RelayOutcome {
    let shared = Shared {
        last_activity: AtomicU64::new(0),
        writing: AtomicU64::new(0),
        bytes: [AtomicU64::new(0), AtomicU64::new(0)],
        messages: [AtomicU64::new(0), AtomicU64::new(0)],
        finished: AtomicU64::new(0),
        close_code: AtomicU32::new(0),
        epoch: Instant::now(),
    };
    let (client_read, client_write) = client.split();
    let (pod_read, pod_write) = pod.split();
    let up = Pump {
        from: client_read,
        to: pod_write,
        toward: Side::Pod,
        tracker: FrameTracker::new(),
        closed_by_us: false,
    }
    .run(&shared, limits.write);
    let down = Pump {
        from: pod_read,
        to: client_write,
        toward: Side::Client,
        tracker: FrameTracker::new(),
        closed_by_us: false,
    }
    .run(&shared, limits.write);
    // One cancellation wait at a time (drain, then stop; the drain token is
    // a child of the stop token) and one timer for idle, linger and the
    // drain moment: an idle connection's task stays small.
    let cancel = drain.started.cancelled();
    let timer = sleep_until(shared.idle_deadline(limits.idle));
    tokio::pin!(up, down, cancel, timer);
    let mut waiting_for_stop = false;
    let mut up_result: Option<PumpEnd> = None;
    let mut down_result: Option<PumpEnd> = None;
    let mut ending: Option<Ending> = None;
    let mut linger: Option<Instant> = None;
    let linger_for = limits.write.min(CLOSE_LINGER);
    let mut drain_at: Option<Instant> = None;

    while up_result.is_none() || down_result.is_none() {
        let mut deadline = linger.unwrap_or_else(|| shared.idle_deadline(limits.idle));
        if let Some(at) = drain_at {
            deadline = deadline.min(at);
        }
        if timer.deadline() != deadline || timer.is_elapsed() {
            timer.as_mut().reset(deadline);
        }
        tokio::select! {
            r = &mut up, if up_result.is_none() => {
                ending.get_or_insert(r.ending(Side::Client, Side::Pod));
                up_result = Some(r);
                if r == PumpEnd::WriteFailed { break; }
                linger.get_or_insert_with(|| far_future_add(Instant::now(), linger_for));
            }
            r = &mut down, if down_result.is_none() => {
                ending.get_or_insert(r.ending(Side::Pod, Side::Client));
                down_result = Some(r);
                if r == PumpEnd::WriteFailed { break; }
                linger.get_or_insert_with(|| far_future_add(Instant::now(), linger_for));
            }
            () = &mut timer => {
                let now = Instant::now();
                if drain_at.is_some_and(|at| now >= at) {
                    drain_at = None;
                    ending.get_or_insert(Ending::Drained);
                    shared.request_close(drain.code);
                    linger.get_or_insert_with(|| far_future_add(now, linger_for));
                } else if let Some(at) = linger {
                    if now >= at {
                        break;
                    }
                } else if shared.writing.load(Ordering::Relaxed) > 0 {
                    shared.touch();
                } else if now >= shared.idle_deadline(limits.idle) {
                    ending.get_or_insert(Ending::Idle);
                    shared.request_close(CLOSE_GOING_AWAY);
                    linger = Some(far_future_add(now, linger_for));
                }
            }
            () = &mut cancel => {
                if waiting_for_stop || stop.is_cancelled() {
                    ending.get_or_insert(Ending::Shutdown);
                    break;
                }
                waiting_for_stop = true;
                cancel.set(stop.cancelled());
                let jitter = if drain.window.is_zero() {
                    Duration::ZERO
                } else {
                    drain.window.mul_f64(rand::rng().random_range(0.0..1.0))
                };
                drain_at = Some(far_future_add(Instant::now(), jitter));
            }
        }
    }
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    RelayOutcome {
        client_to_pod: load(&shared.bytes[0]),
        pod_to_client: load(&shared.bytes[1]),
        messages_in: load(&shared.messages[0]),
        messages_out: load(&shared.messages[1]),
        ending: ending.unwrap_or(Ending::Idle),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ends::tcp_end;
    use common::frame::{OP_BINARY, OP_CLOSE, OP_TEXT, encode_frame};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A connected pair of real loopback sockets: (far end, near end).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let far = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (near, _) = listener.accept().await.unwrap();
        (far, near)
    }

    fn limits() -> RelayLimits {
        RelayLimits {
            idle: Duration::from_secs(30),
            write: Duration::from_secs(2),
        }
    }

    /// Relays between two accepted sockets in a task of its own.
    fn start(
        client: TcpStream,
        pod: TcpStream,
        drain: DrainSignal,
    ) -> tokio::task::JoinHandle<RelayOutcome> {
        tokio::spawn(relay(
            tcp_end(client),
            tcp_end(pod),
            limits(),
            drain,
            CancellationToken::new(),
        ))
    }

    fn no_drain() -> DrainSignal {
        DrainSignal {
            started: CancellationToken::new(),
            window: Duration::ZERO,
            code: 1001,
        }
    }

    #[tokio::test]
    async fn frames_pass_unchanged_and_messages_are_counted() {
        let (mut client, client_near) = pair().await;
        let (pod_near, mut pod) = pair().await;
        let task = start(client_near, pod_near, no_drain());
        let masked = encode_frame(true, OP_TEXT, b"hello", Some([1, 2, 3, 4]));
        client.write_all(&masked).await.unwrap();
        let mut got = vec![0u8; masked.len()];
        pod.read_exact(&mut got).await.unwrap();
        assert_eq!(got, masked, "bytes reach the pod unchanged, still masked");
        let reply = encode_frame(true, OP_BINARY, &[9u8; 70_000], None);
        pod.write_all(&reply).await.unwrap();
        let mut got = vec![0u8; reply.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, reply);
        drop(pod);
        let outcome = task.await.unwrap();
        assert_eq!((outcome.messages_in, outcome.messages_out), (1, 1));
        assert_eq!(outcome.client_to_pod, masked.len() as u64);
        // The pod vanished without a Close: the client got 1014 after the data.
        let mut close = [0u8; 4];
        client.read_exact(&mut close).await.unwrap();
        assert_eq!(close[0] & 0x0F, OP_CLOSE);
        assert_eq!(u16::from_be_bytes([close[2], close[3]]), CLOSE_BAD_GATEWAY);
    }

    #[tokio::test]
    async fn a_blocked_direction_does_not_stall_the_other() {
        let (client, client_near) = pair().await;
        let (pod_near, pod) = pair().await;
        let task = start(client_near, pod_near, no_drain());
        let (mut pod_read, mut pod_write) = pod.into_split();
        let (_client_read, mut client_write) = client.into_split();
        // The client never reads while the pod pushes far more than the
        // socket buffers hold.
        let pushing = tokio::spawn(async move {
            let frame = encode_frame(true, OP_BINARY, &vec![7u8; 1 << 20], None);
            for _ in 0..64 {
                if pod_write.write_all(&frame).await.is_err() {
                    break;
                }
            }
        });
        let frame = encode_frame(true, OP_TEXT, b"still here", Some([0; 4]));
        client_write.write_all(&frame).await.unwrap();
        let mut got = vec![0u8; frame.len()];
        tokio::time::timeout(Duration::from_secs(1), pod_read.read_exact(&mut got))
            .await
            .expect("client bytes reach the pod while the other way is blocked")
            .unwrap();
        assert_eq!(got, frame);
        let outcome = task.await.unwrap();
        assert_eq!(outcome.ending, Ending::WriteFailed(Side::Client));
        pushing.abort();
    }

    #[tokio::test]
    async fn drain_waits_for_the_frame_in_flight_then_closes_both_sides() {
        let (mut client, client_near) = pair().await;
        let (pod_near, mut pod) = pair().await;
        let drain = no_drain();
        let started = drain.started.clone();
        let task = start(client_near, pod_near, drain);
        // Half a frame from the pod, then the drain starts.
        let frame = encode_frame(true, OP_BINARY, &[5u8; 1000], None);
        pod.write_all(&frame[..500]).await.unwrap();
        let mut first = vec![0u8; 500];
        client.read_exact(&mut first).await.unwrap();
        started.cancel();
        pod.write_all(&frame[500..]).await.unwrap();
        // The client gets the whole frame, then the Close, never a Close inside it.
        let mut rest = vec![0u8; frame.len() - 500];
        client.read_exact(&mut rest).await.unwrap();
        assert_eq!([first, rest].concat(), frame);
        let mut close = [0u8; 4];
        client.read_exact(&mut close).await.unwrap();
        assert_eq!(close[0], 0x88);
        assert_eq!(u16::from_be_bytes([close[2], close[3]]), 1001);
        // The pod gets a masked Close.
        let mut to_pod = [0u8; 2];
        pod.read_exact(&mut to_pod).await.unwrap();
        assert_eq!(to_pod[0], 0x88);
        assert_ne!(to_pod[1] & 0x80, 0, "masked toward the pod");
        // Both answer; the relay ends.
        client
            .write_all(&encode_frame(true, OP_CLOSE, &[0x03, 0xE9], Some([1; 4])))
            .await
            .unwrap();
        pod.write_all(&encode_frame(true, OP_CLOSE, &[0x03, 0xE9], None))
            .await
            .unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(outcome.ending, Ending::Drained);
    }
}
