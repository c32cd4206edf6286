//! Shared, I/O-free parts of wsbalancer.
//!
//! Everything here can be unit-tested and fuzzed without a socket: the
//! configuration model, its table of keys and its layered loading
//! ([`config`], [`config::keys`], [`load`], failing with [`error`]), pod
//! addresses ([`pod_address`]), the `/metric` report a pod serves
//! ([`report`]), the choice of a pod for a new connection ([`selection`])
//! and which live connections to move off overloaded or draining pods
//! ([`rebalance`]).
//! With the `tls` feature, [`tls`] builds the TLS client config the balancer
//! and test-client use toward servers (that part reads files).

#![warn(missing_docs)]

pub mod config;
pub mod error;
pub mod frame;
pub mod load;
pub mod pod_address;
pub mod rebalance;
pub mod report;
pub mod selection;
#[cfg(feature = "tls")]
pub mod tls;

pub use config::{Config, Discovery, HttpMode, Strategy};
pub use error::ConfigError;
pub use load::{ConfigSources, Overrides};
pub use pod_address::{PodAddress, PodAddressError};
pub use report::{PodState, Report, ReportError};
