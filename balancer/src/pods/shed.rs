//! A pod's request that some of this balancer's connections to it move
//! elsewhere (live rebalancing): the rebalancing round sets how many, and
//! wakes the pod's relays; each relay old enough to move takes one from the
//! quota and closes at a frame boundary with the rebalancing Close code,
//! and its client reconnects to a less loaded pod. No per-connection
//! bookkeeping: the relays that wake first and qualify are the ones moved.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use common::Config;
use common::rebalance::ShedReason;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

/// The rebalancing settings, taken from [`Config`]; a reload replaces them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RebalanceSettings {
    /// `rebalance`: whether rounds shed anything.
    pub enabled: bool,
    /// `rebalanceTolerance`: the fraction above the mean that starts it.
    pub tolerance: f64,
    /// `rebalanceRate`: connections per second this replica may shed.
    pub rate: u64,
    /// `rebalanceMinAge`: connections younger than this stay.
    pub min_age: Duration,
    /// `rebalanceCloseCode`: the Close code both sides get.
    pub close_code: u16,
}

impl RebalanceSettings {
    /// The settings of `config`.
    pub fn from_config(config: &Config) -> Self {
        RebalanceSettings {
            enabled: config.rebalance,
            tolerance: config.rebalance_tolerance,
            rate: u64::from(config.rebalance_rate),
            min_age: config.rebalance_min_age,
            close_code: config.rebalance_close_code,
        }
    }
}

/// The imbalance this balancer sees, for `/metrics`: the largest relative
/// excess of a pod over its share of the mean, as of the last round.
#[derive(Debug, Default)]
pub struct Imbalance(AtomicU64);

impl Imbalance {
    /// The last round's figure (0 before any).
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }

    /// Records a round's figure.
    pub fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::Relaxed);
    }
}

/// One pod's shedding request.
#[derive(Debug, Default)]
pub struct ShedSignal {
    /// Connections still to shed in the current round.
    quota: AtomicU64,
    /// Why they are shed: 0 for an imbalance, 1 for a draining pod.
    reason: AtomicU8,
    /// Wakes the relays of the pod that wait on it.
    wake: Notify,
    /// Connections taken from the quota, ever.
    taken: AtomicU64,
}

impl ShedSignal {
    /// Asks for `count` connections to move, for `reason` (replacing what
    /// the previous round left), and wakes the pod's relays.
    pub fn request(&self, count: u64, reason: ShedReason) {
        let reason = match reason {
            ShedReason::imbalance => 0,
            ShedReason::drain => 1,
        };
        self.reason.store(reason, Ordering::Relaxed);
        self.quota.store(count, Ordering::Release);
        if count > 0 {
            self.wake.notify_waiters();
        }
    }

    /// Resolves at the next request (a relay waits on it for its life).
    pub fn notified(&self) -> Notified<'_> {
        self.wake.notified()
    }

    /// Connections shed from the pod so far.
    pub fn taken(&self) -> u64 {
        self.taken.load(Ordering::Relaxed)
    }

    /// Takes one connection from the quota, and says why it moves; `None`
    /// once the round's quota is used up.
    pub fn take(&self) -> Option<ShedReason> {
        self.quota
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                left.checked_sub(1)
            })
            .ok()?;
        self.taken.fetch_add(1, Ordering::Relaxed);
        Some(match self.reason.load(Ordering::Relaxed) {
            1 => ShedReason::drain,
            _ => ShedReason::imbalance,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quota_is_taken_once_per_connection() {
        let signal = ShedSignal::default();
        assert_eq!(signal.take(), None, "nothing asked");
        signal.request(2, ShedReason::drain);
        assert_eq!(signal.take(), Some(ShedReason::drain));
        assert_eq!(signal.take(), Some(ShedReason::drain));
        assert_eq!(signal.take(), None, "used up");
        signal.request(1, ShedReason::imbalance);
        assert_eq!(signal.take(), Some(ShedReason::imbalance));
    }

    #[tokio::test]
    async fn a_request_wakes_the_waiting_relays() {
        let signal = ShedSignal::default();
        let waiting = signal.notified();
        tokio::pin!(waiting);
        waiting.as_mut().enable();
        signal.request(1, ShedReason::imbalance);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("woken");
    }
}
