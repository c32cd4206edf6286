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
//! so a blocked write one way never delays the other. The same tracking
//! tells who closed first and with which code, and the bytes and messages
//! are added to the balancer's [`Traffic`] counters as they pass (one
//! relaxed add to a per-thread stripe per chunk, no lock, no allocation).
//!
//! The relay is a state machine polled by hand ([`Connection`]) rather than
//! a tree of futures: between two polls it holds its fields and nothing
//! else (no pending read or write future, no buffer unless bytes are in
//! flight), which is what keeps an idle connection near 2 KiB.

pub mod outcome;
mod pump;

use std::task::{Context, Poll};
use std::time::Duration;

use rand::Rng;
use tokio::sync::futures::Notified;
use tokio::time::{Instant, Sleep, sleep_until};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use self::outcome::{CLOSE_BAD_GATEWAY, CLOSE_GOING_AWAY, Closer, Ending, RelayOutcome, Side};
use self::pump::{FirstClose, Pump, PumpEnd, Shared};
use crate::connection::ends::{Arrived, End};
use crate::observe::metrics::counters::Traffic;
use crate::pods::shed::ShedSignal;

/// Once one side has closed (or the relay sent its own Close), how long the
/// rest may still take before the connection is dropped. Bounded by the
/// write timeout too.
pub const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Timeouts of one relayed connection.
#[derive(Debug, Clone, Copy)]
pub struct RelayLimits {
    /// No byte either way for this long ends the connection.
    pub idle: Duration,
    /// One write blocked for this long ends the connection.
    pub write: Duration,
}

/// What live rebalancing asks of one connection.
#[derive(Debug, Clone, Copy)]
pub struct ShedRules {
    /// A connection younger than this is never shed: a client just moved
    /// is not moved again.
    pub min_age: Duration,
    /// Close code sent to both sides when it is shed.
    pub code: u16,
}

/// How a drain, and then a stop, reach one connection.
#[derive(Debug, Clone)]
pub struct DrainSignal {
    /// Cancelled when the balancer starts draining.
    pub started: CancellationToken,
    /// Cancelled when the balancer stops: relays end at once. Here rather
    /// than beside it so a relay holds one reference for both.
    pub stop: CancellationToken,
    /// Each connection is closed at a random moment within this window, so
    /// clients do not all reconnect at once.
    pub window: Duration,
    /// Close code sent to both sides (1001 or 1012).
    pub code: u16,
}

/// `at + by`, or a time a century away when that would overflow.
pub fn far_future_add(at: Instant, by: Duration) -> Instant {
    at.checked_add(by)
        .unwrap_or_else(|| at + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// `age` in hundredths of a second, rounded up, at most `u32::MAX` (497
/// days, beyond any age a key accepts).
fn centiseconds(age: Duration) -> u32 {
    let cs = age.as_nanos().div_ceil(10_000_000);
    u32::try_from(cs).unwrap_or(u32::MAX)
}

/// The inverse of [`centiseconds`].
fn from_centiseconds(cs: u32) -> Duration {
    Duration::from_millis(u64::from(cs) * 10)
}

/// A relayed connection's whole state: its two ends and both directions.
/// The relay borrows it, so a task holds it once, not once per layer.
pub struct Connection {
    client: End,
    pod: End,
    /// Client to pod.
    up: Pump,
    /// Pod to client.
    down: Pump,
    /// The Close the relay asked both directions to insert.
    requested: Option<u16>,
    /// Last time a byte moved either way.
    last_activity: Instant,
    /// The first Close: a side's that passed, or the relay's own toward
    /// the client.
    first_close: Option<FirstClose>,
}

impl Connection {
    /// A connection between a client and a pod, ready to relay; bytes
    /// either sent past its handshake go first.
    pub fn new((client, client_early): Arrived, (pod, pod_early): Arrived) -> Self {
        Connection {
            client,
            pod,
            up: Pump::new(Side::Pod, client_early),
            down: Pump::new(Side::Client, pod_early),
            requested: None,
            last_activity: Instant::now(),
            first_close: None,
        }
    }

    /// Polls both directions; returns the first that ended since the last
    /// call (client side first), or Pending.
    fn poll(&mut self, cx: &mut Context<'_>, traffic: &Traffic) -> Poll<(Side, PumpEnd)> {
        let before = self.up.bytes + self.down.bytes;
        let (up_done, down_done) = (self.up.ended.is_some(), self.down.ended.is_some());
        let mut result = Poll::Pending;
        let mut shared = Shared {
            requested: self.requested,
            traffic,
            first_close: &mut self.first_close,
            read: false,
        };
        if !up_done
            && let Poll::Ready(end) =
                self.up
                    .poll(cx, &mut self.client, &mut self.pod, &self.down, &mut shared)
        {
            result = Poll::Ready((Side::Client, end));
        }
        if !down_done
            && let Poll::Ready(end) =
                self.down
                    .poll(cx, &mut self.pod, &mut self.client, &self.up, &mut shared)
            && result.is_pending()
        {
            result = Poll::Ready((Side::Pod, end));
        }
        // Bytes read count as activity even before they are passed on (a
        // Close being inserted first).
        if shared.read || self.up.bytes + self.down.bytes != before {
            self.last_activity = Instant::now();
        }
        if self.first_close.is_none() {
            self.first_close = [(Side::Client, &self.up), (Side::Pod, &self.down)]
                .into_iter()
                .find(|(_, pump)| pump.tracker.close_seen())
                .map(|(side, _)| FirstClose::From(side));
        }
        if result.is_pending()
            && let Some(FirstClose::From(first)) = self.first_close
            && self.closing_handshake_over()
        {
            // Both Close frames have passed whole: the WebSocket is over.
            // The client's side closes now, as a server closes first; the
            // pod (which closes first itself) is read to its end, so the
            // short-lived TIME_WAIT stays on its side, not on the
            // balancer's ports toward it.
            self.client.close();
            let _ = self.up.end(PumpEnd::Eof);
            return Poll::Ready((first, PumpEnd::Eof));
        }
        result
    }

    /// Whether each side has sent its Close and every byte before it was
    /// passed on, with no Close of the relay's own involved.
    fn closing_handshake_over(&self) -> bool {
        [&self.up, &self.down].iter().all(|pump| {
            pump.ended.is_none()
                && pump.framed
                && !pump.closed_by_us
                && pump.tracker.close_seen()
                && pump.out.is_none()
                && pump.finishing.is_none()
        })
    }

    fn done(&self) -> bool {
        self.up.ended.is_some() && self.down.ended.is_some()
    }

    /// After writing toward `failed` broke or blocked too long, a last
    /// Close toward the other side (1001 to a pod whose client is gone,
    /// 1014 to a client whose pod is), if that direction is between two
    /// frames with nothing half-written. Best effort: never waits.
    fn farewell(&mut self, failed: Side) {
        let first = &mut self.first_close;
        let (pump, other, end, code) = match failed {
            Side::Client => (&mut self.up, &self.down, &mut self.pod, CLOSE_GOING_AWAY),
            Side::Pod => (
                &mut self.down,
                &self.up,
                &mut self.client,
                CLOSE_BAD_GATEWAY,
            ),
        };
        let clean = pump.ended.is_none()
            && pump.out.is_none()
            && !pump.closed_by_us
            && pump.framed
            && pump.tracker.at_boundary()
            && !pump.tracker.close_seen();
        if clean {
            pump.note_own_close(code, other, first);
            let frame = pump.close_frame(code);
            let mut cx = Context::from_waker(std::task::Waker::noop());
            let _ = end.poll_write(&mut cx, &frame);
            end.shutdown_now();
        }
    }

    /// When the relay must look again: the linger's end, or the idle
    /// timeout (suspended while a write is blocked, which the write timeout
    /// bounds instead), and the drain moment.
    fn deadline(
        &self,
        limits: RelayLimits,
        linger: Option<Instant>,
        drain_at: Option<Instant>,
    ) -> Instant {
        let writing = [
            self.up.write_deadline(limits.write),
            self.down.write_deadline(limits.write),
        ];
        let mut deadline = match linger {
            Some(at) => at,
            None if writing.iter().any(Option::is_some) => {
                far_future_add(Instant::now(), limits.idle)
            }
            None => far_future_add(self.last_activity, limits.idle),
        };
        for at in writing.into_iter().flatten().chain(drain_at) {
            deadline = deadline.min(at);
        }
        deadline
    }
}

/// What woke the relay.
enum Event {
    /// A direction ended (its reading side, and how).
    Ended(Side, PumpEnd),
    /// The timer's deadline passed.
    Timer,
    /// Drain or stop.
    Cancelled,
    /// Rebalancing asked the pod's connections to move.
    Shed,
}

pin_project_lite::pin_project! {
    /// A relay in progress: the future [`run`] returns. Written by hand,
    /// not as an `async fn`, because it lives as long as the connection: a
    /// generator would keep its arguments twice and a closure's captures
    /// besides, which at tens of thousands of connections is real memory.
    pub struct Relay<'a> {
        conn: &'a mut Connection,
        limits: RelayLimits,
        drain: &'a DrainSignal,
        traffic: &'a Traffic,
        // The pod's rebalancing requests, and what they may take.
        shed: &'a ShedSignal,
        #[pin]
        shed_wait: Notified<'a>,
        started: Instant,
        // The minimum age in hundredths of a second, rounded up: a year
        // (the longest any key takes) fits, and the field packs with the
        // two below instead of taking a `Duration`'s 16 bytes.
        min_age_cs: u32,
        shed_code: u16,
        // One cancellation wait at a time: drain, then stop (the drain
        // token is a child of the stop token).
        #[pin]
        cancel: WaitForCancellationFuture<'a>,
        // One timer for idle, blocked writes, linger and the drain moment.
        #[pin]
        timer: Sleep,
        waiting_for_stop: bool,
        course: Course,
    }
}

/// What the relay has decided so far about how the connection ends.
#[derive(Debug, Default)]
struct Course {
    /// The first reason it began to end.
    ending: Option<Ending>,
    /// The moment the relay waits for besides idleness and blocked writes.
    moment: Moment,
}

/// The one moment a relay waits for besides idleness and blocked writes:
/// a drain's moment for this connection, then (or once it is ending for
/// any reason) the end of its linger. One field, as they never overlap:
/// once a connection is ending, its drain moment no longer matters.
#[derive(Debug, Default, Clone, Copy)]
enum Moment {
    /// Neither.
    #[default]
    None,
    /// A drain started: this connection's moment within the window.
    DrainAt(Instant),
    /// It is ending: when the rest is given up on.
    Linger(Instant),
}

impl Moment {
    fn linger(self) -> Option<Instant> {
        match self {
            Moment::Linger(at) => Some(at),
            _ => None,
        }
    }

    fn drain_at(self) -> Option<Instant> {
        match self {
            Moment::DrainAt(at) => Some(at),
            _ => None,
        }
    }
}

impl Course {
    /// A direction ended. Returns true when the relay is over at once (a
    /// write failed: the other side gets a last Close, best effort).
    fn direction_ended(
        &mut self,
        conn: &mut Connection,
        side: Side,
        end: PumpEnd,
        linger_for: Duration,
    ) -> bool {
        let other = match side {
            Side::Client => Side::Pod,
            Side::Pod => Side::Client,
        };
        self.ending.get_or_insert(end.ending(side, other));
        if end == PumpEnd::WriteFailed {
            conn.farewell(other);
            return true;
        }
        self.linger_from(Instant::now(), linger_for);
        false
    }

    /// It is ending: the rest may take `linger_for` from `now`, unless a
    /// linger already runs.
    fn linger_from(&mut self, now: Instant, linger_for: Duration) {
        if self.moment.linger().is_none() {
            self.moment = Moment::Linger(far_future_add(now, linger_for));
        }
    }

    /// The timer fired: a blocked write timed out (over at once), the
    /// drain moment came, the linger ran out (over), or the connection
    /// idled (the relay's own Close goes both ways). Returns true when the
    /// relay is over.
    fn timer_fired(
        &mut self,
        conn: &mut Connection,
        limits: RelayLimits,
        drain_code: u16,
        linger_for: Duration,
    ) -> bool {
        let now = Instant::now();
        let blocked = [
            (Side::Pod, conn.up.write_deadline(limits.write)),
            (Side::Client, conn.down.write_deadline(limits.write)),
        ];
        if let Some((side, _)) = blocked
            .iter()
            .find(|(_, at)| at.is_some_and(|at| now >= at))
        {
            self.ending.get_or_insert(Ending::WriteFailed(*side));
            conn.farewell(*side);
            return true;
        }
        if self.moment.drain_at().is_some_and(|at| now >= at) {
            self.ending.get_or_insert(Ending::Drained);
            conn.requested.get_or_insert(drain_code);
            self.moment = Moment::Linger(far_future_add(now, linger_for));
        } else if let Some(at) = self.moment.linger() {
            return now >= at;
        } else if blocked.iter().all(|(_, at)| at.is_none())
            && now >= far_future_add(conn.last_activity, limits.idle)
        {
            self.ending.get_or_insert(Ending::Idle);
            conn.requested.get_or_insert(CLOSE_GOING_AWAY);
            self.moment = Moment::Linger(far_future_add(now, linger_for));
        }
        false
    }

    /// The drain started: this connection closes at a random moment of
    /// `window`, so clients do not all reconnect at once.
    fn drain_started(&mut self, window: Duration) {
        let jitter = if window.is_zero() {
            Duration::ZERO
        } else {
            window.mul_f64(rand::rng().random_range(0.0..1.0))
        };
        // A connection already ending keeps its linger.
        if self.moment.linger().is_none() {
            self.moment = Moment::DrainAt(far_future_add(Instant::now(), jitter));
        }
    }
}

/// Relays `conn` until both directions are done. `drain` closes the
/// connection cleanly at a random point of the drain window; `stop` ends it
/// at once; a request on `shed` closes it cleanly as `shed_rules` say, once
/// it is old enough. Bytes and messages are counted into `traffic` as they
/// pass.
pub fn run<'a>(
    conn: &'a mut Connection,
    limits: RelayLimits,
    drain: &'a DrainSignal,
    traffic: &'a Traffic,
    shed: &'a ShedSignal,
    shed_rules: ShedRules,
) -> Relay<'a> {
    Relay {
        conn,
        limits,
        drain,
        traffic,
        shed,
        shed_wait: shed.notified(),
        started: Instant::now(),
        min_age_cs: centiseconds(shed_rules.min_age),
        shed_code: shed_rules.code,
        cancel: drain.started.cancelled(),
        timer: sleep_until(far_future_add(Instant::now(), limits.idle)),
        waiting_for_stop: false,
        course: Course::default(),
    }
}

impl Future for Relay<'_> {
    type Output = RelayOutcome;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<RelayOutcome> {
        let mut this = self.project();
        let limits = *this.limits;
        let linger_for = limits.write.min(CLOSE_LINGER);
        while !this.conn.done() {
            // Pumps first, then the timer, whose deadline is recomputed after
            // every poll (a write that just blocked brings it forward).
            let event = 'event: {
                if let Poll::Ready((side, end)) = this.conn.poll(cx, this.traffic) {
                    break 'event Event::Ended(side, end);
                }
                // Only ever brought forward, or re-armed once it has fired:
                // activity does not move the timer (no timer-wheel work per
                // message); a timer that fires early just finds no idleness.
                let deadline = this.conn.deadline(
                    limits,
                    this.course.moment.linger(),
                    this.course.moment.drain_at(),
                );
                if deadline < this.timer.deadline() || this.timer.is_elapsed() {
                    this.timer.as_mut().reset(deadline);
                }
                if this.timer.as_mut().poll(cx).is_ready() {
                    break 'event Event::Timer;
                }
                if this.cancel.as_mut().poll(cx).is_ready() {
                    break 'event Event::Cancelled;
                }
                if this.shed_wait.as_mut().poll(cx).is_ready() {
                    break 'event Event::Shed;
                }
                return Poll::Pending;
            };
            let over = match event {
                Event::Ended(side, end) => this
                    .course
                    .direction_ended(this.conn, side, end, linger_for),
                Event::Timer => {
                    this.course
                        .timer_fired(this.conn, limits, this.drain.code, linger_for)
                }
                Event::Cancelled if *this.waiting_for_stop || this.drain.stop.is_cancelled() => {
                    this.course.ending.get_or_insert(Ending::Shutdown);
                    true
                }
                Event::Shed => {
                    // Waits for the next round from now on.
                    this.shed_wait.set(this.shed.notified());
                    if this.course.ending.is_none()
                        && this.started.elapsed() >= from_centiseconds(*this.min_age_cs)
                        && let Some(reason) = this.shed.take()
                    {
                        this.course.ending = Some(Ending::Shed(reason));
                        this.conn.requested.get_or_insert(*this.shed_code);
                        this.course.linger_from(Instant::now(), linger_for);
                    }
                    false
                }
                Event::Cancelled => {
                    // The drain started; from now on only a stop cancels.
                    *this.waiting_for_stop = true;
                    this.cancel.set(this.drain.stop.cancelled());
                    this.course.drain_started(this.drain.window);
                    false
                }
            };
            if over {
                break;
            }
        }
        Poll::Ready(this.conn.outcome(
            this.course.ending.unwrap_or(Ending::Idle),
            this.started.elapsed(),
        ))
    }
}

impl Connection {
    /// How the relay went, once it is over.
    fn outcome(&self, ending: Ending, lived: Duration) -> RelayOutcome {
        let (client_close, pod_close) = (self.up.close_received(), self.down.close_received());
        let (closer, close_code) = match self.first_close {
            Some(FirstClose::Relay(code)) => (Closer::Balancer, Some(code)),
            Some(FirstClose::From(Side::Client)) => (Closer::Client, client_close),
            Some(FirstClose::From(Side::Pod)) => (Closer::Pod, pod_close),
            None => match ending {
                Ending::Closed(side) | Ending::ReadError(side) | Ending::WriteFailed(side) => {
                    (Closer::from(side), None)
                }
                Ending::Idle | Ending::Drained | Ending::Shed(_) | Ending::Shutdown => {
                    (Closer::Balancer, None)
                }
            },
        };
        RelayOutcome {
            client_to_pod: self.up.bytes,
            pod_to_client: self.down.bytes,
            messages_in: self.up.tracker.messages(),
            messages_out: self.down.tracker.messages(),
            ending,
            client_close,
            pod_close,
            closer,
            close_code,
            lived,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::ends::tcp_end;
    use common::frame::{OP_BINARY, OP_CLOSE, OP_TEXT, encode_frame};
    use common::rebalance::ShedReason;
    use std::sync::Arc;
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
        start_shed(client, pod, drain, Arc::new(ShedSignal::default()), SHED)
    }

    /// Rebalancing as configured by default.
    const SHED: ShedRules = ShedRules {
        min_age: Duration::ZERO,
        code: 1012,
    };

    /// Like [`start`], with the pod's shedding requests on `shed`.
    fn start_shed(
        client: TcpStream,
        pod: TcpStream,
        drain: DrainSignal,
        shed: Arc<ShedSignal>,
        rules: ShedRules,
    ) -> tokio::task::JoinHandle<RelayOutcome> {
        tokio::spawn(async move {
            let mut conn = Connection::new(tcp_end(client), tcp_end(pod));
            let traffic = Traffic::default();
            run(&mut conn, limits(), &drain, &traffic, &shed, rules).await
        })
    }

    /// Reads one unmasked Close frame's code from `from`.
    async fn close_code_of(from: &mut TcpStream) -> u16 {
        let mut head = [0u8; 2];
        from.read_exact(&mut head).await.unwrap();
        assert_eq!(head[0], 0x80 | OP_CLOSE, "a final Close frame");
        let len = usize::from(head[1] & 0x7F);
        let mask = if head[1] & 0x80 != 0 {
            let mut mask = [0u8; 4];
            from.read_exact(&mut mask).await.unwrap();
            Some(mask)
        } else {
            None
        };
        let mut payload = vec![0u8; len];
        from.read_exact(&mut payload).await.unwrap();
        if let Some(mask) = mask {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i % 4];
            }
        }
        u16::from_be_bytes([payload[0], payload[1]])
    }

    /// Asks for one connection every few milliseconds: a relay that is
    /// being polled at the moment of a request waits for the next one.
    fn keep_asking(shed: Arc<ShedSignal>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                shed.request(1, ShedReason::imbalance);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    }

    #[tokio::test]
    async fn a_shed_request_closes_with_its_code_toward_both_sides() {
        let (mut client, client_near) = pair().await;
        let (pod_near, mut pod) = pair().await;
        let shed = Arc::new(ShedSignal::default());
        let task = start_shed(client_near, pod_near, no_drain(), shed.clone(), SHED);
        // Once the relay waits on the signal (a frame has passed through).
        let frame = encode_frame(true, OP_TEXT, b"hi", Some([1, 2, 3, 4]));
        client.write_all(&frame).await.unwrap();
        let mut got = vec![0u8; frame.len()];
        pod.read_exact(&mut got).await.unwrap();
        let asking = keep_asking(shed.clone());
        let within = Duration::from_secs(5);
        let to_client = tokio::time::timeout(within, close_code_of(&mut client)).await;
        assert_eq!(to_client.expect("a Close for the client"), 1012);
        let to_pod = tokio::time::timeout(within, close_code_of(&mut pod)).await;
        assert_eq!(to_pod.expect("a Close for the pod"), 1012);
        drop((client, pod));
        let outcome = tokio::time::timeout(within, task).await.unwrap().unwrap();
        assert_eq!(outcome.ending, Ending::Shed(ShedReason::imbalance));
        assert_eq!(
            (outcome.closer, outcome.close_code),
            (Closer::Balancer, Some(1012))
        );
        asking.abort();
    }

    #[tokio::test]
    async fn a_connection_younger_than_the_minimum_age_is_not_shed() {
        let (mut client, client_near) = pair().await;
        let (pod_near, mut pod) = pair().await;
        let shed = Arc::new(ShedSignal::default());
        let rules = ShedRules {
            min_age: Duration::from_secs(3600),
            ..SHED
        };
        let task = start_shed(client_near, pod_near, no_drain(), shed.clone(), rules);
        let frame = encode_frame(true, OP_TEXT, b"hi", Some([1, 2, 3, 4]));
        client.write_all(&frame).await.unwrap();
        let mut got = vec![0u8; frame.len()];
        pod.read_exact(&mut got).await.unwrap();
        let asking = keep_asking(shed.clone());
        // Asked many times over: still relaying, the next frames pass.
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            client.write_all(&frame).await.unwrap();
            tokio::time::timeout(Duration::from_secs(5), pod.read_exact(&mut got))
                .await
                .expect("still relayed")
                .unwrap();
        }
        asking.abort();
        assert_eq!(got, frame);
        assert_eq!(
            shed.take(),
            Some(ShedReason::imbalance),
            "left for older ones"
        );
        drop(pod);
        let outcome = task.await.unwrap();
        assert_ne!(outcome.ending, Ending::Shed(ShedReason::imbalance));
    }

    /// The relay lives as long as its connection, inside a tokio task
    /// whose cell comes in 128-byte steps: at 368 bytes the connection's
    /// task future (the relay and the session's few fields) is 408 and its
    /// cell 512 bytes; a few bytes more and every idle connection costs
    /// 128 more (measured: 2.06 -> 2.50 KiB at 5,000). Grow it knowingly.
    #[test]
    fn the_relay_state_fits_its_task_cell() {
        assert!(
            std::mem::size_of::<Relay<'static>>() <= 368,
            "Relay is {} bytes",
            std::mem::size_of::<Relay<'static>>()
        );
    }

    fn no_drain() -> DrainSignal {
        DrainSignal {
            started: CancellationToken::new(),
            stop: CancellationToken::new(),
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
        // Neither side sent a Close: the client's came from the relay.
        assert_eq!((outcome.client_close, outcome.pod_close), (None, None));
        assert_eq!(
            (outcome.closer, outcome.close_code),
            (Closer::Balancer, Some(CLOSE_BAD_GATEWAY))
        );
        // The pod vanished without a Close: the client got 1014 after the data.
        let mut close = [0u8; 4];
        client.read_exact(&mut close).await.unwrap();
        assert_eq!(close[0] & 0x0F, OP_CLOSE);
        assert_eq!(u16::from_be_bytes([close[2], close[3]]), CLOSE_BAD_GATEWAY);
    }

    #[tokio::test]
    async fn a_stream_that_ends_inside_a_frame_passes_every_byte_and_no_close() {
        let (mut client, client_near) = pair().await;
        let (pod_near, mut pod) = pair().await;
        let task = start(client_near, pod_near, no_drain());
        let cut = encode_frame(true, OP_TEXT, b"never finished", Some([9, 9, 9, 9]));
        client.write_all(&cut[..8]).await.unwrap();
        client.shutdown().await.unwrap();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), pod.read_to_end(&mut rest));
        read.await.unwrap().unwrap();
        assert_eq!(rest, cut[..8], "no Close of the relay's own inside a frame");
        drop(pod);
        let outcome = task.await.unwrap();
        assert_eq!((outcome.messages_in, outcome.client_to_pod), (0, 8));
    }

    /// Like [`pair`], with small socket buffers both ways, so that writes
    /// toward the far end block after a few KiB when it does not read.
    async fn small_pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpSocket::new_v4().unwrap();
        listener.set_send_buffer_size(4096).unwrap();
        listener.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = listener.listen(8).unwrap();
        let far = tokio::net::TcpSocket::new_v4().unwrap();
        far.set_recv_buffer_size(4096).unwrap();
        let far = far.connect(listener.local_addr().unwrap()).await.unwrap();
        let (near, _) = listener.accept().await.unwrap();
        (far, near)
    }

    #[tokio::test]
    async fn bytes_owed_by_a_blocked_write_pass_intact_once_it_reads() {
        let (mut client, client_near) = small_pair().await;
        let (pod_near, mut pod) = pair().await;
        let task = start(client_near, pod_near, no_drain());
        // Frames of 1 KiB, one at a time, while the client reads nothing:
        // the relay's writes toward it block with a little owed each time.
        let mut sent = Vec::new();
        for i in 0..200u32 {
            let frame = encode_frame(true, OP_BINARY, &[(i % 251) as u8; 1024], None);
            pod.write_all(&frame).await.unwrap();
            sent.extend_from_slice(&frame);
            tokio::task::yield_now().await;
        }
        let mut got = vec![0u8; sent.len()];
        let read = tokio::time::timeout(Duration::from_secs(10), client.read_exact(&mut got));
        read.await.unwrap().unwrap();
        assert!(got == sent, "every byte, in order");
        drop(pod);
        let outcome = task.await.unwrap();
        assert_eq!(outcome.messages_out, 200);
    }

    #[tokio::test]
    async fn after_both_closes_the_client_side_closes_at_once() {
        let (mut client, client_near) = pair().await;
        let (pod_near, mut pod) = pair().await;
        let task = start(client_near, pod_near, no_drain());
        let close = encode_frame(true, OP_CLOSE, &1000u16.to_be_bytes(), Some([1, 2, 3, 4]));
        client.write_all(&close).await.unwrap();
        let mut got = vec![0u8; close.len()];
        pod.read_exact(&mut got).await.unwrap();
        // The pod answers, but keeps its TCP connection open for now.
        let answer = encode_frame(true, OP_CLOSE, &1000u16.to_be_bytes(), None);
        pod.write_all(&answer).await.unwrap();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut rest));
        read.await
            .expect("the client's side should close without waiting for the pod")
            .unwrap();
        assert_eq!(rest, answer, "the Close answer arrives whole, then the end");
        assert!(!task.is_finished(), "the pod's side is read to its end");
        drop(pod);
        let outcome = task.await.unwrap();
        assert_eq!(outcome.ending, Ending::Closed(Side::Client));
        assert_eq!(
            (outcome.client_close, outcome.pod_close),
            (Some(1000), Some(1000))
        );
        assert_eq!(
            (outcome.closer, outcome.close_code),
            (Closer::Client, Some(1000))
        );
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
        // The client never closed; the relay's 1001 went to the pod only.
        assert_eq!((outcome.closer, outcome.close_code), (Closer::Client, None));
        pushing.abort();
        // The client is as good as gone: the pod gets a masked Close 1001.
        let mut head = [0u8; 6];
        tokio::time::timeout(Duration::from_secs(5), pod_read.read_exact(&mut head))
            .await
            .expect("a Close for the pod")
            .unwrap();
        assert_eq!(head[0], 0x80 | OP_CLOSE, "a final Close frame");
        assert_eq!(head[1] & 0x80, 0x80, "masked toward the pod");
        let mut payload = vec![0u8; usize::from(head[1] & 0x7F)];
        pod_read.read_exact(&mut payload).await.unwrap();
        let unmasked: Vec<u8> = payload
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ head[2 + i % 4])
            .collect();
        assert_eq!(u16::from_be_bytes([unmasked[0], unmasked[1]]), 1001);
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
        // Both answered the relay's Close: it is the one that closed.
        assert_eq!(
            (outcome.client_close, outcome.pod_close),
            (Some(1001), Some(1001))
        );
        assert_eq!(
            (outcome.closer, outcome.close_code),
            (Closer::Balancer, Some(1001))
        );
    }
}
