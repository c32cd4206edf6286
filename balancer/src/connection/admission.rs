//! The balancer's own limits on a new upgrade, applied after the handshake
//! check and before any pod is chosen: no new connection while draining,
//! `rateLimit` per client address, `allowedOrigins`, and `maxConnections`.
//! An admitted connection holds a [`Slot`] of `maxConnections` for as long
//! as it is dialled or relayed.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use http::StatusCode;
use prometheus_client::metrics::gauge::Gauge;

use crate::connection::head::Fields;
use crate::connection::rate_limit::RateLimiter;
use crate::connection::refusal::Refused;
use crate::connection::settings::ConnectionSettings;
use crate::observe::metrics::counters::Refusal;

/// What admission keeps between connections.
#[derive(Debug)]
pub struct Admission {
    /// Connections being dialled or relayed now, against `maxConnections`
    /// (exported as `wsbalancer_connections_active`).
    active: Gauge<u64, AtomicU64>,
    /// `rateLimit` buckets, one per client address.
    rate_limiter: RateLimiter,
}

/// One slot of `maxConnections`, released on drop.
#[derive(Debug)]
pub struct Slot(Gauge<u64, AtomicU64>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Admission {
    /// Admission counting its slots in `active`.
    pub fn new(active: Gauge<u64, AtomicU64>) -> Self {
        Admission {
            active,
            rate_limiter: RateLimiter::default(),
        }
    }

    /// Admits a new upgrade from `client` whose head (`fields`) arrived at
    /// `received`, or says why not. `draining`: the balancer drains (a
    /// kept-alive connection may still send an upgrade then: it goes
    /// elsewhere, and this connection closes).
    pub fn admit(
        &self,
        draining: bool,
        settings: &ConnectionSettings,
        client: SocketAddr,
        fields: &Fields,
        received: Instant,
    ) -> Result<Slot, Refused> {
        if draining {
            return Err(Refused {
                close: true,
                ..Refused::unavailable(Refusal::Draining, "draining")
            });
        }
        if let Err(wait) = self
            .rate_limiter
            .allow(client.ip(), settings.rate_limit, received)
        {
            return Err(Refused {
                retry_after: Some(wait.as_secs_f64().ceil().max(1.0) as u64),
                ..Refused::with_status(
                    Refusal::RateLimited,
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many new connections from this address",
                )
            });
        }
        if !settings.origin_allowed(fields) {
            return Err(Refused::with_status(
                Refusal::Origin,
                StatusCode::FORBIDDEN,
                "origin not allowed",
            ));
        }
        self.slot(settings.max_connections).ok_or_else(|| {
            Refused::unavailable(Refusal::MaxConnections, "the balancer is at maxConnections")
        })
    }

    /// Takes a `maxConnections` slot, or `None` when the balancer is full.
    fn slot(&self, max_connections: u64) -> Option<Slot> {
        let before = self.active.inc();
        let slot = Slot(self.active.clone());
        (max_connections == 0 || before < max_connections).then_some(slot)
    }
}
