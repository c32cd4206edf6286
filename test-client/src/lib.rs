//! A WebSocket load driver: opens connections (at most `concurrency` at a
//! time), sends messages and checks every echo, holds the connections open,
//! closes them, and reports what happened: successes, failures by reason,
//! where each connection landed (`x-pod-name`) and latency percentiles.
//!
//! [`run`] drives a load and returns a [`Report`]; [`report`] renders it.

pub mod load;
pub mod report;

pub use load::{LoadOptions, run};
pub use report::Report;
