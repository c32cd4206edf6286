//! `rateLimit`: new connections (and plain HTTP requests) per second from
//! one client address.
//!
//! A token bucket per address, as large as one second's allowance and
//! refilled continuously, so a client may open `rateLimit` connections at
//! once and then `rateLimit` per second. Past it the client gets 429 with
//! `Retry-After` before any pod is dialled.
//!
//! An address is what one client holds: an IPv4 address, or an IPv6 /64
//! (the prefix one host or one subscriber gets; an IPv4-mapped IPv6
//! address is its IPv4 address), so a client cannot escape its limit by
//! walking through the addresses of its own prefix.
//!
//! The table is bounded. A bucket that has refilled to full is the same as
//! no bucket, so a sweep drops those (at most one second after their last
//! use): the table follows the clients of the last seconds. It holds at
//! most [`MAX_TRACKED`] addresses; when that many were active within the
//! last second, a new address is let through untracked rather than
//! refused, so that a flood from many addresses cannot lock every new
//! client out (`maxConnections` bounds what such a flood opens), while the
//! addresses already tracked stay limited.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// Most addresses tracked at once: about 10 MB of buckets at most.
pub const MAX_TRACKED: usize = 100_000;

/// How often the table is swept, at most, while it has room.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// How often a full table may be swept: a bucket takes up to a second to
/// refill, so sweeping more often frees next to nothing.
const SWEEP_FULL_EVERY: Duration = Duration::from_millis(250);

/// One address's allowance.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Connections it may still open now (fractional while refilling).
    tokens: f64,
    /// When `tokens` was last brought up to date.
    at: Instant,
}

impl Bucket {
    /// Whether it has refilled to `rate` by `now`: then it is the same as
    /// a new bucket, and can be forgotten.
    fn is_full(&self, rate: f64, now: Instant) -> bool {
        let idle = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens + idle * rate >= rate
    }

    /// Takes one token, or says how long until one is there.
    fn take(&mut self, rate: f64, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }
}

/// The address whose allowance a client at `ip` takes from: IPv4 as is,
/// IPv4-mapped IPv6 as its IPv4 address, other IPv6 by its /64.
pub fn rate_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !u128::from(u64::MAX))),
        },
    }
}

/// Per-address token buckets.
#[derive(Debug)]
pub struct RateLimiter {
    /// By [`rate_key`].
    buckets: DashMap<IpAddr, Bucket>,
    /// Most buckets kept ([`MAX_TRACKED`]).
    capacity: usize,
    /// When the table was created, for `last_sweep`.
    epoch: Instant,
    /// Milliseconds after `epoch` of the last sweep.
    last_sweep: AtomicU64,
    /// Whether new addresses are being let through untracked, so that it
    /// is logged once when it starts and once when it ends.
    overflowing: AtomicBool,
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter::with_capacity(MAX_TRACKED)
    }
}

impl RateLimiter {
    /// A table of at most `capacity` addresses.
    pub fn with_capacity(capacity: usize) -> Self {
        RateLimiter {
            buckets: DashMap::new(),
            capacity,
            epoch: Instant::now(),
            last_sweep: AtomicU64::new(0),
            overflowing: AtomicBool::new(false),
        }
    }

    /// Takes one connection from `ip`'s allowance of `per_second` (0: no
    /// limit), or says how long until one is free.
    pub fn allow(&self, ip: IpAddr, per_second: u32, now: Instant) -> Result<(), Duration> {
        if per_second == 0 {
            return Ok(());
        }
        let rate = f64::from(per_second);
        let key = rate_key(ip);
        self.sweep(rate, now, SWEEP_EVERY);
        if let Some(mut bucket) = self.buckets.get_mut(&key) {
            return bucket.take(rate, now);
        }
        if self.buckets.len() >= self.capacity {
            self.sweep(rate, now, SWEEP_FULL_EVERY);
            if self.buckets.len() >= self.capacity {
                if !self.overflowing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        tracked = self.buckets.len(),
                        "rateLimit: too many client addresses at once, new ones are let through untracked"
                    );
                }
                return Ok(());
            }
        }
        // Another thread may have added it meanwhile: take from that one.
        self.buckets
            .entry(key)
            .or_insert(Bucket {
                tokens: rate,
                at: now,
            })
            .take(rate, now)
    }

    /// Drops the buckets that refilled, at most once per `every`.
    fn sweep(&self, rate: f64, now: Instant, every: Duration) {
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        let last = self.last_sweep.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) < every.as_millis() as u64
            || self
                .last_sweep
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        self.buckets.retain(|_, bucket| !bucket.is_full(rate, now));
        if self.buckets.len() < self.capacity && self.overflowing.swap(false, Ordering::Relaxed) {
            tracing::info!(
                tracked = self.buckets.len(),
                "rateLimit: every client address is tracked again"
            );
        }
    }

    /// Addresses tracked now.
    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    fn v6(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_burst_of_one_seconds_allowance_then_the_rate() {
        let limiter = RateLimiter::default();
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(limiter.allow(ip(1), 5, t0).is_ok());
        }
        let wait = limiter.allow(ip(1), 5, t0).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(200));
        // Another address has its own allowance.
        assert!(limiter.allow(ip(2), 5, t0).is_ok());
        // A fifth of a second later, one more.
        let later = t0 + Duration::from_millis(200);
        assert!(limiter.allow(ip(1), 5, later).is_ok());
        assert!(limiter.allow(ip(1), 5, later).is_err());
        // No limit: always.
        assert!((0..100).all(|_| limiter.allow(ip(3), 0, t0).is_ok()));
    }

    #[test]
    fn refilled_addresses_are_forgotten() {
        let limiter = RateLimiter::default();
        let t0 = Instant::now();
        for last in 0..100 {
            let _ = limiter.allow(ip(last), 10, t0);
        }
        // Each used one token of ten: still refilling within the sweep.
        assert_eq!(limiter.tracked(), 100);
        let later = t0 + SWEEP_EVERY + Duration::from_secs(1);
        let _ = limiter.allow(ip(200), 10, later);
        assert_eq!(limiter.tracked(), 1);
    }

    #[test]
    fn ipv6_is_limited_by_its_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(rate_key(v6("2001:db8:1:2:aaaa::1")), v6("2001:db8:1:2::"));
        assert_eq!(
            rate_key(v6("2001:db8:1:2:ffff:ffff:ffff:ffff")),
            v6("2001:db8:1:2::")
        );
        assert_ne!(rate_key(v6("2001:db8:1:3::1")), v6("2001:db8:1:2::"));
        assert_eq!(rate_key(v6("::ffff:10.0.0.1")), ip(1));
        assert_eq!(rate_key(ip(1)), ip(1));

        let limiter = RateLimiter::default();
        let t0 = Instant::now();
        // One host walking through its /64 shares one allowance.
        assert!(limiter.allow(v6("2001:db8::1"), 2, t0).is_ok());
        assert!(limiter.allow(v6("2001:db8::2:1"), 2, t0).is_ok());
        assert!(limiter.allow(v6("2001:db8::ffff:3"), 2, t0).is_err());
        // The next /64 is someone else.
        assert!(limiter.allow(v6("2001:db8:0:1::1"), 2, t0).is_ok());
        // The same client over IPv4 and IPv4-mapped IPv6.
        assert!(limiter.allow(ip(7), 1, t0).is_ok());
        assert!(limiter.allow(v6("::ffff:10.0.0.7"), 1, t0).is_err());
        assert_eq!(limiter.tracked(), 3);
    }

    #[test]
    fn a_full_table_sweeps_then_lets_new_addresses_through_untracked() {
        let limiter = RateLimiter::with_capacity(10);
        let t0 = Instant::now();
        // Ten addresses each use their whole allowance: all stay limited.
        for last in 0..10 {
            assert!(limiter.allow(ip(last), 1, t0).is_ok());
        }
        assert_eq!(limiter.tracked(), 10);
        // A flood of new addresses within the same second: let through,
        // not refused and not tracked; the tracked ones stay limited.
        for last in 10..200 {
            assert!(limiter.allow(ip(last), 1, t0).is_ok(), "{last}");
            assert!(limiter.allow(ip(last), 1, t0).is_ok(), "{last} again");
        }
        assert_eq!(limiter.tracked(), 10);
        assert!(limiter.allow(ip(3), 1, t0).is_err(), "still limited");

        // A second later the tracked ones have refilled: a full table is
        // swept at once (not after `SWEEP_EVERY`), and new addresses get
        // buckets again.
        let later = t0 + Duration::from_millis(1100);
        assert!(limiter.allow(ip(250), 1, later).is_ok());
        assert_eq!(limiter.tracked(), 1);
        assert!(limiter.allow(ip(250), 1, later).is_err(), "tracked again");
    }
}
