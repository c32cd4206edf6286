//! The settings a connection reads once, at its start: what a config reload
//! may change for new connections (timeouts, limits, origins, forwarded
//! headers, TLS toward pods). A reload replaces them whole, so connections
//! already relayed keep the ones they started with.

use std::sync::Arc;

use common::{Config, HttpMode};

use crate::connection::forward;
use crate::connection::head::Fields;
use crate::connection::liveness::Liveness;
use crate::connection::pod_client::PodClient;
use crate::connection::relay::RelayLimits;

/// The settings a new connection reads once, at its start; a reload
/// replaces them whole, so connections already relayed keep theirs.
#[derive(Debug)]
pub struct ConnectionSettings {
    /// TLS settings toward `https`/`wss` pods.
    pub tls: Arc<rustls::ClientConfig>,
    /// Bound on connect + TLS + handshake to one pod.
    pub dial_timeout: std::time::Duration,
    /// `hedgeDelay`: a dial not connected after this long has the next pod
    /// dialled beside it (zero: one pod at a time).
    pub hedge_delay: std::time::Duration,
    /// Idle and write limits of relayed connections.
    pub limits: RelayLimits,
    /// Keepalive and `TCP_USER_TIMEOUT` on both of its sockets.
    pub liveness: Liveness,
    /// Headers added to forwarded requests.
    pub forward: forward::ForwardPolicy,
    /// `allowedOrigins`, lowercased; empty allows all.
    pub allowed_origins: Vec<String>,
    /// `maxConnections` (0 = unlimited).
    pub max_connections: u64,
    /// `rateLimit`: new connections and plain requests per second per
    /// client address (0 = none).
    pub rate_limit: u32,
    /// What plain HTTP requests get.
    pub http_mode: HttpMode,
    /// `maxHttpRequests`: plain HTTP requests proxied at once (0 =
    /// unlimited).
    pub max_http_requests: u64,
    /// Pooled client for plain HTTP requests, with the same TLS settings
    /// and `dialTimeout` as the WebSocket dials (a reload that changes them
    /// builds a new one, so both always agree).
    pub http: PodClient,
}

impl ConnectionSettings {
    /// The settings of `config`, dialling pods with `tls` and proxying
    /// plain HTTP with `http` (built from the same TLS settings).
    pub fn from_config(config: &Config, tls: Arc<rustls::ClientConfig>, http: PodClient) -> Self {
        ConnectionSettings {
            tls,
            dial_timeout: config.dial_timeout,
            hedge_delay: config.hedge_delay,
            limits: RelayLimits {
                idle: config.read_timeout,
                write: config.write_timeout,
            },
            liveness: Liveness::from_config(config),
            forward: forward::ForwardPolicy::from_config(config),
            allowed_origins: config
                .allowed_origins
                .iter()
                .map(|o| o.to_ascii_lowercase())
                .collect(),
            max_connections: config.max_connections,
            rate_limit: config.rate_limit,
            http_mode: config.http_mode,
            max_http_requests: config.max_http_requests,
            http,
        }
    }

    /// Whether the request's `Origin` is allowed (absent is: not a browser).
    pub fn origin_allowed(&self, fields: &Fields) -> bool {
        if self.allowed_origins.is_empty() {
            return true;
        }
        let mut origins = fields.values("origin");
        match (origins.next(), origins.next()) {
            (None, _) => true,
            (Some(origin), None) => self
                .allowed_origins
                .iter()
                .any(|a| a.as_bytes().eq_ignore_ascii_case(origin)),
            (Some(_), Some(_)) => false,
        }
    }
}
