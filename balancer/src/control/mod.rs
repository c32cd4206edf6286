//! How the balancer is controlled while it runs: the command line
//! ([`cli`]), the log output ([`logging`]), config reloads on SIGHUP or a
//! changed file ([`reload`]) and reloads of the listener's certificate
//! ([`cert_reload`]).

pub mod cert_reload;
pub mod cli;
pub mod descriptors;
pub mod logging;
pub mod reload;
