//! A WebSocket load driver: opens connections (at a fixed rate, or as many
//! at once as `concurrency` allows), sends messages closed-loop or
//! open-loop and checks every echo, holds the connections open, closes
//! them, and reports what happened: successes, failures by reason, where
//! each connection landed (`x-pod-name`), close codes, and latency
//! percentiles from HDR histograms.
//!
//! [`run`] drives a load and returns a [`Report`]; [`progress`] draws it
//! live on a terminal; [`thresholds`] turns it into an exit code.

pub mod load;
pub mod outcome;
pub mod progress;
pub mod report;
pub mod thresholds;

pub use load::{LoadOptions, run};
pub use report::Report;
