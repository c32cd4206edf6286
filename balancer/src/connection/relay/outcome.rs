//! What a relayed connection did and how it ended: who closed it, with
//! which code, and what passed. The session logs it and the metrics count
//! it; nothing here does I/O.

use std::fmt;
use std::time::Duration;

use common::rebalance::ShedReason;

/// Close code sent to the client when the pod went away without a Close.
pub const CLOSE_BAD_GATEWAY: u16 = 1014;

/// Close code for "going away": idle timeout, client gone, drain.
pub const CLOSE_GOING_AWAY: u16 = 1001;

/// Close code reported for a Close frame that carries no code (RFC 6455
/// §7.1.5: "no status received").
pub const CLOSE_NO_STATUS: u16 = 1005;

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
    /// Closed by rebalancing, so that the client reconnects elsewhere.
    Shed(ShedReason),
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
            Ending::Shed(reason) => write!(f, "shed ({reason:?})"),
            Ending::Shutdown => f.write_str("shutdown"),
        }
    }
}

/// Who closed a connection, as the client saw it: the sender of the first
/// Close frame exchanged with the client, or, when there was none, the side
/// whose [`Ending`] ended it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closer {
    /// The client sent the first Close, or went away without one.
    Client,
    /// The pod sent the first Close, or failed without one where the relay
    /// could not say so with a Close of its own.
    Pod,
    /// The relay closed the client's connection with a Close of its own
    /// (drain, idle timeout, 1014 for a pod that vanished), or stopped.
    Balancer,
}

impl Closer {
    /// The `side` label and log value.
    pub fn as_str(self) -> &'static str {
        match self {
            Closer::Client => "client",
            Closer::Pod => "pod",
            Closer::Balancer => "balancer",
        }
    }
}

impl fmt::Display for Closer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Side> for Closer {
    fn from(side: Side) -> Self {
        match side {
            Side::Client => Closer::Client,
            Side::Pod => Closer::Pod,
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
    /// Code of the Close frame the client sent ([`CLOSE_NO_STATUS`] when it
    /// carried none), whether it opened the closing handshake or answered
    /// one; `None` when it sent no Close.
    pub client_close: Option<u16>,
    /// Code of the Close frame the pod sent, likewise.
    pub pod_close: Option<u16>,
    /// Who closed the connection.
    pub closer: Closer,
    /// Code of the Close frame that closed it, `closer`'s own (the relay's
    /// when `closer` is the balancer); `None` when no Close frame did.
    pub close_code: Option<u16>,
    /// How long the relay ran (from the 101 to its end).
    pub lived: Duration,
}
