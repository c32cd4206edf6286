//! How many balancer replicas share the pods, learned from the pods' own
//! reports instead of configured: between two reports of a pod, its count
//! moved by what every replica opened and closed there, while this
//! balancer knows only its own share of that. Their ratio, smoothed over
//! many reports, is how many times this balancer counts its own opens and
//! closes between reports. It follows the replica count as an autoscaler,
//! a rollout's surge or a crash changes it, and a `replicas` setting is
//! only its starting point.

use std::sync::Mutex;

/// Own net opens on a pod between two of its reports below which the
/// pair says nothing reliable: a few handshakes in flight at either poll
/// would swing the ratio.
const MIN_OWN_NET: i128 = 4;

/// Weight of a new sample in the running estimate: a burst shared by
/// several replicas is over within a few early refreshes, so two samples
/// must be enough to show a change of replica count (0.3 took four, and
/// the 3-replica burst ended at 19% spread; 0.6 measured in
/// docs/benchmarks.md), while the rounding keeps one odd sample from
/// moving a lone balancer off 1.
const WEIGHT: f64 = 0.6;

/// Largest replica count believed: past it a sample is noise (a pod
/// restarted, or filled by clients that bypass the balancers).
const MAX_REPLICAS: f64 = 64.0;

/// The running estimate, shared by every pod of a registry.
#[derive(Debug)]
pub struct ReplicaEstimate {
    /// Smoothed ratio of all replicas' net opens to this balancer's own.
    ratio: Mutex<f64>,
}

impl ReplicaEstimate {
    /// An estimate starting at `hint` replicas (1 when not told).
    pub fn new(hint: u32) -> Self {
        ReplicaEstimate {
            ratio: Mutex::new(f64::from(hint.max(1))),
        }
    }

    /// Starts again from `hint` (a reload that changed it).
    pub fn reset(&self, hint: u32) {
        *self.ratio.lock().unwrap_or_else(|p| p.into_inner()) = f64::from(hint.max(1));
    }

    /// A pod's count moved by `reported_delta` between two reports while
    /// this balancer's own net opens there were `own_net`.
    pub fn observe(&self, reported_delta: i128, own_net: i128) {
        if let Some(sample) = sample(reported_delta, own_net) {
            let mut ratio = self.ratio.lock().unwrap_or_else(|p| p.into_inner());
            *ratio += WEIGHT * (sample - *ratio);
        }
    }

    /// Replicas sharing the pods, this one included: the smoothed ratio to
    /// the nearest whole replica, at least 1. Rounded, so that the noise of
    /// handshakes in flight at a poll never makes a lone balancer count
    /// its own connections more than once.
    pub fn replicas(&self) -> u32 {
        let ratio = *self.ratio.lock().unwrap_or_else(|p| p.into_inner());
        // In 1..=MAX_REPLICAS, so the cast is exact.
        ratio.round().clamp(1.0, MAX_REPLICAS) as u32
    }
}

/// The ratio one pair of reports shows, when it shows one: only when this
/// balancer itself opened a few connections net (otherwise the others'
/// share cannot be told from zero), clamped to `1..=MAX_REPLICAS` (fewer
/// than its own means the others closed, or a report lagged).
pub fn sample(reported_delta: i128, own_net: i128) -> Option<f64> {
    if own_net < MIN_OWN_NET {
        return None;
    }
    // Both are bounded by pod counts (u64), far inside f64's exact range
    // for any count a pod can hold.
    let ratio = reported_delta as f64 / own_net as f64;
    Some(ratio.clamp(1.0, MAX_REPLICAS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_of_reports_says_something_only_after_own_opens() {
        assert_eq!(sample(30, 10), Some(3.0));
        assert_eq!(sample(30, 3), None, "too few own opens");
        assert_eq!(sample(-5, -10), None, "own closes say nothing");
        assert_eq!(sample(5, 10), Some(1.0), "never below this balancer alone");
        assert_eq!(sample(10_000, 10), Some(MAX_REPLICAS));
    }

    #[test]
    fn the_estimate_follows_the_replica_count() {
        let estimate = ReplicaEstimate::new(1);
        assert_eq!(estimate.replicas(), 1);
        for _ in 0..10 {
            estimate.observe(24, 8);
        }
        assert_eq!(estimate.replicas(), 3);
        // One replica goes away.
        for _ in 0..10 {
            estimate.observe(16, 8);
        }
        assert_eq!(estimate.replicas(), 2);
    }

    #[test]
    fn a_lone_balancer_with_noisy_reports_stays_one() {
        let estimate = ReplicaEstimate::new(1);
        // A couple of 101s in transit at each poll.
        for own in [8, 9, 12, 8, 10] {
            estimate.observe(own + 2, own);
        }
        assert_eq!(estimate.replicas(), 1);
    }

    #[test]
    fn a_hint_is_only_where_it_starts() {
        let estimate = ReplicaEstimate::new(3);
        assert_eq!(estimate.replicas(), 3);
        for _ in 0..10 {
            estimate.observe(8, 8);
        }
        assert_eq!(estimate.replicas(), 1, "the reports win");
    }
}
