//! One direction of a relayed connection: reading from one end, following
//! frame boundaries, writing to the other, and inserting the relay's own
//! Close frame at a boundary when asked.

use std::task::{Context, Poll};
use std::time::Duration;

use common::frame::{FrameTracker, close_frame};
use rand::Rng;
use tokio::time::Instant;

use super::far_future_add;
use super::outcome::{CLOSE_BAD_GATEWAY, CLOSE_GOING_AWAY, CLOSE_NO_STATUS, Ending, Side};
use crate::connection::ends::{Chunk, End};
use crate::observe::metrics::counters::{Direction, Traffic};

/// How one direction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PumpEnd {
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
    pub(super) fn ending(self, reader: Side, writer: Side) -> Ending {
        match self {
            PumpEnd::Eof | PumpEnd::Answered => Ending::Closed(reader),
            PumpEnd::ReadError => Ending::ReadError(reader),
            PumpEnd::WriteFailed => Ending::WriteFailed(writer),
        }
    }
}

/// What one write attempt did.
enum Written {
    /// Nothing was on its way out (any more).
    Nothing,
    /// Some bytes went out; there may be more.
    Progress,
    /// The side written to cannot take more now.
    Blocked,
    /// The write failed.
    Failed,
}

/// Bytes on their way out: a chunk as read, a range of which is written.
pub(super) enum Outgoing {
    /// Relayed bytes: `chunk[from..to]` still to write.
    Relayed { from: usize, to: usize },
    /// A Close frame of the relay's own.
    Own(Vec<u8>, usize),
}

/// One direction's state: everything it holds between two polls. There is
/// no future in here, so an idle connection costs only these fields.
pub(super) struct Pump {
    /// The side written to.
    pub(super) toward: Side,
    pub(super) tracker: FrameTracker,
    /// The tracker followed the stream so far (a stream that is not
    /// WebSocket still passes, but nothing is inserted any more).
    pub(super) framed: bool,
    /// The relay's own Close went out this way; data is no longer passed.
    pub(super) closed_by_us: bool,
    /// Bytes read and not yet all passed (at most one pooled buffer).
    pub(super) chunk: Option<Chunk>,
    /// Start of the part of `chunk` not yet fed to the tracker.
    pub(super) fed: usize,
    /// What is being written now.
    pub(super) out: Option<Outgoing>,
    /// When the current write started to wait (for `writeTimeout`).
    pub(super) blocked_since: Option<Instant>,
    /// Once `out` is written: shut the writing side and end with this.
    pub(super) finishing: Option<PumpEnd>,
    /// How it ended.
    pub(super) ended: Option<PumpEnd>,
    /// Bytes passed.
    pub(super) bytes: u64,
}

/// The first Close frame of a connection, as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FirstClose {
    /// This side's Close passed first.
    From(Side),
    /// The relay sent the client a Close of its own (this code) first.
    Relay(u16),
}

/// What both directions share while they are polled.
pub(super) struct Shared<'a> {
    /// The Close the relay asked both directions to insert, if any.
    pub(super) requested: Option<u16>,
    /// Where relayed bytes and messages are counted.
    pub(super) traffic: &'a Traffic,
    /// The connection's first Close: a pump records its own there.
    pub(super) first_close: &'a mut Option<FirstClose>,
    /// Some bytes were read during this poll (activity, even before any
    /// of them is passed on).
    pub(super) read: bool,
}

impl Pump {
    pub(super) fn new(toward: Side, early: Option<bytes::Bytes>) -> Self {
        Pump {
            toward,
            tracker: FrameTracker::new(),
            framed: true,
            closed_by_us: false,
            chunk: early.map(Chunk::Owned),
            fed: 0,
            out: None,
            blocked_since: None,
            finishing: None,
            ended: None,
            bytes: 0,
        }
    }

    /// Which way this pump's bytes go, for the traffic counters.
    fn direction(&self) -> Direction {
        match self.toward {
            Side::Pod => Direction::ClientToPod,
            Side::Client => Direction::PodToClient,
        }
    }

    /// Queues a Close of the relay's own toward this pump's side, and
    /// records whether it is what closed the connection for the client.
    pub(super) fn send_own_close(
        &mut self,
        code: u16,
        other: &Pump,
        first: &mut Option<FirstClose>,
    ) {
        self.note_own_close(code, other, first);
        self.out = Some(Outgoing::Own(self.close_frame(code), 0));
    }

    /// Records `code` as the connection's first Close when it goes to the
    /// client before any Close of either side passed.
    pub(super) fn note_own_close(&self, code: u16, other: &Pump, first: &mut Option<FirstClose>) {
        if self.toward == Side::Client
            && first.is_none()
            && !self.tracker.close_seen()
            && !other.tracker.close_seen()
        {
            *first = Some(FirstClose::Relay(code));
        }
    }

    /// The code of the Close frame this pump's reading side sent
    /// ([`CLOSE_NO_STATUS`] when it had none), if it sent one.
    pub(super) fn close_received(&self) -> Option<u16> {
        self.tracker
            .close_seen()
            .then(|| self.tracker.close_code().unwrap_or(CLOSE_NO_STATUS))
    }

    /// A Close frame toward this pump's side, masked toward the pod.
    pub(super) fn close_frame(&self, code: u16) -> Vec<u8> {
        let reason = match code {
            CLOSE_BAD_GATEWAY => "pod went away",
            1012 => "service restart",
            _ => "going away",
        };
        let mask = (self.toward == Side::Pod).then(|| rand::rng().random::<[u8; 4]>());
        close_frame(code, reason, mask)
    }

    /// Moves bytes from `from` to `to` until it must wait (Pending) or this
    /// direction is over (Ready). `other` is the opposite direction.
    pub(super) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut End,
        to: &mut End,
        other: &Pump,
        shared: &mut Shared<'_>,
    ) -> Poll<PumpEnd> {
        if let Some(end) = self.ended {
            return Poll::Ready(end);
        }
        loop {
            // 1. Finish the write in progress.
            match self.poll_out(cx, to, shared) {
                Written::Nothing => {}
                Written::Progress => continue,
                Written::Blocked => return Poll::Pending,
                Written::Failed => return self.end(PumpEnd::WriteFailed),
            }
            // 2. An ending waiting for its last write.
            if let Some(end) = self.finishing {
                if other.ended.is_none() {
                    self.close_writing_side(to, other);
                }
                return self.end(end);
            }
            // 3. The relay's own Close, at a frame boundary.
            if let Some(code) = shared.requested
                && !self.closed_by_us
                && self.framed
                && self.tracker.at_boundary()
            {
                self.closed_by_us = true;
                // None if this side's peer already sent one: no second.
                if !self.tracker.close_seen() {
                    self.send_own_close(code, other, shared.first_close);
                    continue;
                }
            }
            // 4. Feed the next piece of the chunk to the tracker.
            if let Some(chunk) = &self.chunk
                && self.fed < chunk.bytes().len()
            {
                self.feed(shared);
                continue;
            }
            self.chunk = None;
            self.fed = 0;
            // 5. Read more.
            match from.poll_read_chunk(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(Some(chunk))) => {
                    shared.read = true;
                    self.chunk = Some(chunk);
                }
                Poll::Ready(result) => self.reading_side_ended(result.is_ok(), other, shared),
            }
        }
    }

    /// Writes what is on its way out toward `to`, once.
    fn poll_out(&mut self, cx: &mut Context<'_>, to: &mut End, shared: &Shared<'_>) -> Written {
        let Some(out) = &mut self.out else {
            return Written::Nothing;
        };
        let bytes: &[u8] = match out {
            Outgoing::Relayed { from, to } => match &self.chunk {
                Some(chunk) => &chunk.bytes()[*from..*to],
                None => &[],
            },
            Outgoing::Own(frame, written) => &frame[*written..],
        };
        if bytes.is_empty() {
            self.out = None;
            return Written::Nothing;
        }
        match to.poll_write(cx, bytes) {
            Poll::Pending => {
                if self.blocked_since.is_none() {
                    self.blocked_since = Some(Instant::now());
                    self.keep_only_unwritten();
                }
                Written::Blocked
            }
            Poll::Ready(Ok(n)) if n > 0 => {
                self.blocked_since = None;
                match out {
                    Outgoing::Relayed { from, .. } => {
                        *from += n;
                        self.bytes += n as u64;
                        shared.traffic.add_bytes(self.direction(), n as u64);
                    }
                    Outgoing::Own(_, written) => *written += n,
                }
                Written::Progress
            }
            Poll::Ready(_) => Written::Failed,
        }
    }

    /// This direction is over: the side written to is closed properly when
    /// the WebSocket is over (the client's side closes, as a server closes
    /// first), else shut at once.
    fn close_writing_side(&self, to: &mut End, other: &Pump) {
        if self.toward == Side::Client && self.tracker.close_seen() && other.tracker.close_seen() {
            to.close();
        } else {
            to.shutdown_now();
        }
    }

    /// The reading side ended (`clean`: EOF rather than an error): the
    /// direction finishes once what is queued is written. A side that
    /// vanished without a Close is announced to the other side properly
    /// (1014 to a client, 1001 to a pod).
    fn reading_side_ended(&mut self, clean: bool, other: &Pump, shared: &mut Shared<'_>) {
        let end = match (self.closed_by_us, clean) {
            (true, _) => PumpEnd::Answered,
            (false, true) => PumpEnd::Eof,
            (false, false) => PumpEnd::ReadError,
        };
        if !self.closed_by_us
            && self.framed
            && self.tracker.at_boundary()
            && !self.tracker.close_seen()
        {
            let code = match self.toward {
                Side::Client => CLOSE_BAD_GATEWAY,
                Side::Pod => CLOSE_GOING_AWAY,
            };
            self.send_own_close(code, other, shared.first_close);
        }
        self.finishing = Some(end);
    }

    /// Feeds the chunk's next bytes to the tracker and queues them to be
    /// written: up to the next frame boundary when a Close of the relay's
    /// own waits for one.
    fn feed(&mut self, shared: &mut Shared<'_>) {
        let stopping = shared.requested.is_some() && !self.closed_by_us;
        let Some(chunk) = &self.chunk else { return };
        let rest = chunk.bytes().get(self.fed..).unwrap_or_default();
        let used = if self.framed {
            let messages = self.tracker.messages();
            let used = match self.tracker.feed(rest, stopping, |_| {}) {
                Ok(used) => used,
                Err(_) => {
                    self.framed = false;
                    rest.len()
                }
            };
            let completed = self.tracker.messages() - messages;
            if completed > 0 {
                shared.traffic.add_messages(self.direction(), completed);
            }
            used
        } else {
            rest.len()
        };
        let start = self.fed;
        self.fed += used;
        if !self.closed_by_us {
            self.out = Some(Outgoing::Relayed {
                from: start,
                to: self.fed,
            });
        } else if self.tracker.close_seen() {
            // The answer to our Close: this direction is done.
            self.finishing = Some(PumpEnd::Answered);
        }
    }

    /// A write has to wait: when what it still owes is little, that is
    /// copied out and the pooled buffer goes back (see [`Chunk::copy_rest`]);
    /// the offsets follow.
    fn keep_only_unwritten(&mut self) {
        let Some(Outgoing::Relayed { from, to }) = &mut self.out else {
            return;
        };
        let Some(rest) = self.chunk.as_ref().and_then(|c| c.copy_rest(*from)) else {
            return;
        };
        self.chunk = Some(rest);
        self.fed -= *from;
        *to -= *from;
        *from = 0;
    }

    pub(super) fn end(&mut self, end: PumpEnd) -> Poll<PumpEnd> {
        self.ended = Some(end);
        self.chunk = None;
        self.out = None;
        Poll::Ready(end)
    }

    /// When this direction's blocked write times out, if one is blocked.
    pub(super) fn write_deadline(&self, limit: Duration) -> Option<Instant> {
        self.blocked_since.map(|at| far_future_add(at, limit))
    }
}
