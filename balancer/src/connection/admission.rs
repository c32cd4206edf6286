//! The balancer's own limits on a new upgrade, applied after the handshake
//! check and before any pod is chosen: no new connection while draining,
//! `rateLimit` per client address, `allowedOrigins`, and `maxConnections`.
//! An admitted connection holds a [`Slot`] of `maxConnections` for as long
//! as it is dialled or relayed. A plain HTTP request (`httpMode: proxy`)
//! takes from the same `rateLimit` allowance and holds a slot of
//! `maxHttpRequests` until its response is sent.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use http::StatusCode;
use prometheus_client::metrics::gauge::Gauge;

use crate::connection::forward;
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
    /// Plain HTTP requests being proxied now, against `maxHttpRequests`
    /// (exported as `wsbalancer_http_requests_active`).
    http_active: Gauge<u64, AtomicU64>,
    /// `rateLimit` buckets, one per client address.
    rate_limiter: RateLimiter,
}

/// One slot of `maxConnections` (or of `maxHttpRequests`), released on
/// drop.
#[derive(Debug)]
pub struct Slot(Gauge<u64, AtomicU64>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Admission {
    /// Admission counting its connection slots in `active` and its plain
    /// request slots in `http_active`.
    pub fn new(active: Gauge<u64, AtomicU64>, http_active: Gauge<u64, AtomicU64>) -> Self {
        Admission {
            active,
            http_active,
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
        let forwarded_for = fields.values("x-forwarded-for");
        let ip = forward::client_ip(client.ip(), &settings.forward, forwarded_for);
        let text = "too many new connections from this address";
        self.rate_limit(settings, ip, received, text)?;
        if !settings.origin_allowed(fields) {
            return Err(Refused::with_status(
                Refusal::Origin,
                StatusCode::FORBIDDEN,
                "origin not allowed",
            ));
        }
        slot(&self.active, settings.max_connections).ok_or_else(|| {
            Refused::unavailable(Refusal::MaxConnections, "the balancer is at maxConnections")
        })
    }

    /// Admits a plain HTTP request from `client` whose head (`headers`)
    /// arrived at `received`, or says why not: it takes from the client's
    /// `rateLimit` allowance like an upgrade, and holds a slot of
    /// `maxHttpRequests` until its response is sent.
    pub fn admit_request(
        &self,
        settings: &ConnectionSettings,
        client: SocketAddr,
        headers: &http::HeaderMap,
        received: Instant,
    ) -> Result<Slot, Refused> {
        let forwarded_for = headers
            .get_all("x-forwarded-for")
            .iter()
            .map(http::HeaderValue::as_bytes);
        let ip = forward::client_ip(client.ip(), &settings.forward, forwarded_for);
        self.rate_limit(
            settings,
            ip,
            received,
            "too many requests from this address",
        )?;
        slot(&self.http_active, settings.max_http_requests).ok_or_else(|| {
            Refused::unavailable(
                Refusal::MaxHttpRequests,
                "too many plain HTTP requests in flight (maxHttpRequests)",
            )
        })
    }

    /// Takes one from the allowance of the client at `ip`, or refuses with
    /// 429, `text` and how long to wait.
    fn rate_limit(
        &self,
        settings: &ConnectionSettings,
        ip: IpAddr,
        received: Instant,
        text: &'static str,
    ) -> Result<(), Refused> {
        self.rate_limiter
            .allow(ip, settings.rate_limit, received)
            .map_err(|wait| Refused {
                retry_after: Some(wait.as_secs_f64().ceil().max(1.0) as u64),
                ..Refused::with_status(Refusal::RateLimited, StatusCode::TOO_MANY_REQUESTS, text)
            })
    }
}

/// Takes a slot of `gauge` under `max` (0 = unlimited), or `None` when all
/// are taken.
fn slot(gauge: &Gauge<u64, AtomicU64>, max: u64) -> Option<Slot> {
    let before = gauge.inc();
    let slot = Slot(gauge.clone());
    (max == 0 || before < max).then_some(slot)
}
