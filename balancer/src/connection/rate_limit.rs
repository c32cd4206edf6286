//! `rateLimit`: new connections per second from one client IP address.
//!
//! A token bucket per address, as large as one second's allowance and
//! refilled continuously, so a client may open `rateLimit` connections at
//! once and then `rateLimit` per second. Past it the client gets 429 with
//! `Retry-After` before any pod is dialled. Buckets of addresses that went
//! quiet are swept out, so the table's size follows the clients of the last
//! minute, not every address ever seen.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// A bucket that has been full this long is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(60);

/// How often the table may be swept, at most.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// One address's allowance.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Connections it may still open now (fractional while refilling).
    tokens: f64,
    /// When `tokens` was last brought up to date.
    at: Instant,
}

/// Per-address token buckets.
#[derive(Debug)]
pub struct RateLimiter {
    buckets: DashMap<IpAddr, Bucket>,
    /// When the table was created, for `last_sweep`.
    epoch: Instant,
    /// Milliseconds after `epoch` of the last sweep.
    last_sweep: AtomicU64,
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter {
            buckets: DashMap::new(),
            epoch: Instant::now(),
            last_sweep: AtomicU64::new(0),
        }
    }
}

impl RateLimiter {
    /// Takes one connection from `ip`'s allowance of `per_second` (0: no
    /// limit), or says how long until one is free.
    pub fn allow(&self, ip: IpAddr, per_second: u32, now: Instant) -> Result<(), Duration> {
        if per_second == 0 {
            return Ok(());
        }
        self.sweep(f64::from(per_second), now);
        let rate = f64::from(per_second);
        let mut bucket = self.buckets.entry(ip).or_insert(Bucket {
            tokens: rate,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(rate);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }

    /// Drops buckets that have been full for a while, at most once per
    /// [`SWEEP_EVERY`].
    fn sweep(&self, rate: f64, now: Instant) {
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        let last = self.last_sweep.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) < SWEEP_EVERY.as_millis() as u64
            || self
                .last_sweep
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        self.buckets.retain(|_, bucket| {
            let idle = now.saturating_duration_since(bucket.at);
            let full = bucket.tokens + idle.as_secs_f64() * rate >= rate;
            !(full && idle >= FORGET_AFTER)
        });
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
    fn quiet_addresses_are_forgotten() {
        let limiter = RateLimiter::default();
        let t0 = Instant::now();
        for last in 0..100 {
            let _ = limiter.allow(ip(last), 10, t0);
        }
        assert_eq!(limiter.tracked(), 100);
        let much_later = t0 + FORGET_AFTER + SWEEP_EVERY + Duration::from_secs(1);
        let _ = limiter.allow(ip(200), 10, much_later);
        assert_eq!(limiter.tracked(), 1);
    }
}
