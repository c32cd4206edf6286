//! What a pod's published status and its counters say at one moment:
//! effective load, staleness, health and slow-start share. One function,
//! shared by rankings (every pod, every new connection) and by snapshots,
//! so the two can never disagree.

use common::PodState;
use common::selection::Health;

use super::condition::Condition;
use super::select_cell::{Anchored, Published};
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

/// One moment and the settings every pod's figures are worked out with,
/// converted once per ranking rather than once per pod: nanoseconds, as
/// [`Published`] times are.
#[derive(Debug, Clone, Copy)]
pub(super) struct Moment {
    /// Now ([`super::select_cell::now`]).
    pub now: u64,
    /// `cacheTTL`.
    ttl: u64,
    /// The slow-start ramp (0: off).
    slow_start: u64,
    /// Balancer replicas sharing the pods.
    replicas: i64,
}

impl Moment {
    /// `now` under `settings`.
    pub fn new(now: u64, settings: &Settings) -> Self {
        Moment {
            now,
            ttl: settings.cache_ttl_nanos(),
            slow_start: u64::try_from(settings.slow_start.as_nanos()).unwrap_or(u64::MAX),
            replicas: i64::from(settings.replicas),
        }
    }
}

impl Moment {
    /// The effective load of a pod whose load counts from `anchor`, with
    /// its `(opened, closed)` counters now: the anchor's count, plus what
    /// this balancer opened since and minus what closed since, times the
    /// replicas (each is assumed to do as this one does).
    #[inline(always)]
    pub fn effective(&self, anchor: Anchored, (opened, closed): (u64, u64)) -> u64 {
        let signed = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let net_since = signed(opened.saturating_sub(anchor.settled))
            .saturating_sub(signed(closed.saturating_sub(anchor.closed)));
        let scaled = net_since.saturating_mul(self.replicas);
        signed(anchor.count)
            .saturating_add(scaled)
            .max(0)
            .unsigned_abs()
    }

    /// Whether a report that arrived `at` is past `cacheTTL`.
    #[inline(always)]
    pub fn is_stale(&self, at: u64) -> bool {
        self.now.saturating_sub(at) > self.ttl
    }
}

impl Figures {
    /// The figures of `view` with the pod's `(opened, closed)` counters at
    /// `moment`. Integer arithmetic on nanoseconds, no `Duration` per pod:
    /// this runs for every pod of a ranking.
    #[inline(always)]
    pub fn of(view: &Published, (opened, closed): (u64, u64), moment: &Moment) -> Self {
        let relayed = opened.saturating_sub(closed);
        let (effective, report_age, stale) = match (view.report_at, view.anchor) {
            (Some(at), Some(anchor)) => {
                let age = moment.now.saturating_sub(at);
                (
                    moment.effective(anchor, (opened, closed)),
                    Some(age),
                    age > moment.ttl,
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
            Some(since) if moment.slow_start != 0 => {
                let elapsed = moment.now.saturating_sub(since) as f64;
                (elapsed / moment.slow_start as f64).clamp(MIN_WARMUP, 1.0)
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
