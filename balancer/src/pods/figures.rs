//! What a pod's published status and its counters say at one moment:
//! effective load, staleness, health and slow-start share. One function,
//! shared by rankings (every pod, every new connection) and by snapshots,
//! so the two can never disagree.

use common::PodState;
use common::selection::Health;

use super::condition::Condition;
use super::select_cell::Published;
use super::settings::Settings;

/// Smallest warm-up share of a pod in slow start, so it is never starved.
const MIN_WARMUP: f64 = 0.05;

/// Figures derived from a pod's published status and its counters.
pub(super) struct Figures {
    /// Effective load.
    pub effective: u64,
    /// Connections this balancer holds to the pod.
    pub relayed: u64,
    /// Age of the last report, in nanoseconds.
    pub report_age: Option<u64>,
    /// Whether the last report is older than `cacheTTL` (or missing).
    pub stale: bool,
    /// Health as selection sees it.
    pub health: Health,
    /// Slow-start share in `(0, 1]`.
    pub warmup: f64,
}

impl Figures {
    /// The figures of `view` with the pod's `(opened, closed)` counters at
    /// `now` (nanoseconds, as [`Published`] times are). Integer arithmetic
    /// on nanoseconds, no `Duration` per pod: this runs for every pod of a
    /// ranking.
    pub fn of(
        view: &Published,
        (opened, closed): (u64, u64),
        now: u64,
        settings: &Settings,
    ) -> Self {
        let relayed = opened.saturating_sub(closed);
        let (effective, report_age, stale) = match (view.report_at, view.anchor) {
            (Some(at), Some(anchor)) => {
                let signed = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
                let net_since = signed(opened.saturating_sub(anchor.settled))
                    .saturating_sub(signed(closed.saturating_sub(anchor.closed)));
                let scaled = net_since.saturating_mul(i64::from(settings.replicas));
                let effective = signed(anchor.count).saturating_add(scaled).max(0);
                let age = now.saturating_sub(at);
                (
                    effective.unsigned_abs(),
                    Some(age),
                    age > settings.cache_ttl_nanos(),
                )
            }
            _ => (relayed, None, true),
        };
        let health = if view.ejected {
            Health::Ejected
        } else if stale {
            Health::Unknown
        } else {
            Health::Healthy
        };
        let warmup = match view.warm_since {
            Some(since) if !settings.slow_start.is_zero() => {
                let elapsed = now.saturating_sub(since) as f64 / 1e9;
                (elapsed / settings.slow_start.as_secs_f64()).clamp(MIN_WARMUP, 1.0)
            }
            _ => 1.0,
        };
        Figures {
            effective,
            relayed,
            report_age,
            stale,
            health,
            warmup,
        }
    }

    /// The pod's condition in `state` (`has_report`: any report at all).
    pub fn condition(&self, has_report: bool, state: PodState) -> Condition {
        Condition::of(self.health, has_report, self.stale, state)
    }
}
