//! A WebSocket load driver: opens connections (at a fixed rate, or as many
//! at once as `concurrency` allows), sends messages closed-loop or
//! open-loop and checks every echo, holds the connections open, closes
//! them, and reports what happened: successes, failures by reason, where
//! each connection landed (`x-pod-name`), close codes, and latency
//! percentiles from HDR histograms. With `--reconnect` each client
//! reconnects whenever its connection ends, until the run is over, and the
//! report adds reconnects, moves between pods, the closes behind them and
//! the spread at the end.
//!
//! [`run`] drives a load described by [`LoadOptions`] and returns a
//! [`Report`]; one connection's steps are in `connection`; [`progress`]
//! draws the run live on a terminal; [`thresholds`] turns the report into
//! an exit code.

pub mod backoff;
mod connection;
pub mod load;
pub mod options;
pub mod outcome;
pub mod progress;
mod reconnect;
pub mod report;
pub mod thresholds;

pub use load::{run, run_until};
pub use options::LoadOptions;
pub use report::Report;
