//! What one client came to: the record [`crate::load`] fills in as a
//! client runs and [`crate::report`] sums into a report. It sits between
//! the two so that neither has to reach into the other.

use std::collections::BTreeMap;

/// How one client went: its one connection, or (`--reconnect`) the last
/// of its connections plus the [`History`] of all of them.
#[derive(Debug, Default)]
pub struct ConnOutcome {
    /// `x-pod-name` of the 101, when the handshake succeeded (a
    /// reconnecting client's pods are in its history instead).
    pub pod: Option<String>,
    /// Close code the server answered with.
    pub close_code: Option<u16>,
    /// Why the connection failed, if it did.
    pub failure: Option<String>,
    /// With `--reconnect`: every connection the client opened, and how
    /// each ended.
    pub history: Option<History>,
}

/// A reconnecting client's connections, from the first open to the end of
/// the run.
#[derive(Debug, Default)]
pub struct History {
    /// Successful handshakes per pod, over all of the client's connections.
    pub landed: BTreeMap<String, u64>,
    /// Opens after one of the client's connections had ended.
    pub reconnects: u64,
    /// Reconnects that landed on another pod than the connection before.
    pub moves: u64,
    /// Closes the far side started (what sent the client reconnecting),
    /// by code.
    pub closes: BTreeMap<u16, u64>,
    /// Connections that ended without a Close (reset, end of stream).
    pub drops: u64,
    /// Connections the client closed itself at `--reconnect-max-age`.
    pub aged_out: u64,
    /// Open attempts that failed, by reason.
    pub failed_attempts: BTreeMap<String, u64>,
    /// Messages whose echo a close or drop cut off: sent, never answered,
    /// and no fault of the echo.
    pub cut_off: u64,
    /// The pod the client was connected to when the run ended; `None`
    /// when it was between connections.
    pub final_pod: Option<String>,
    /// The client stopped trying (`--reconnect-attempts` failed in a row).
    pub gave_up: bool,
}
