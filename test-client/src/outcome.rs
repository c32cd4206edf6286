//! What one connection came to: the record [`crate::load`] fills in as a
//! connection runs and [`crate::report`] sums into a report. It sits
//! between the two so that neither has to reach into the other.

/// How one connection went.
#[derive(Debug, Default)]
pub struct ConnOutcome {
    /// `x-pod-name` of the 101, when the handshake succeeded.
    pub pod: Option<String>,
    /// Close code the server answered with.
    pub close_code: Option<u16>,
    /// Why the connection failed, if it did.
    pub failure: Option<String>,
}
