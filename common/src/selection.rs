//! Choosing a pod for a new connection. Pure: it sees a snapshot of every
//! pod's load and health and returns the order in which to try them, so that
//! failover (trying the next pod when a dial fails) needs no second pass.
//!
//! The score of a pod is its effective load divided by its share: its
//! reported `capacity` (pods that report none count as the average of those
//! that do) times its slow-start warm-up. Lower is better; ties are broken
//! at random so that several balancer replicas reading the same reports do
//! not all pick the same pod.

use std::cmp::Ordering;

use rand::Rng;
use rand::seq::index::sample;

use crate::config::Strategy;

/// How much the balancer trusts that a pod can take a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Reporting normally.
    Healthy,
    /// No report yet, or the last one is older than `cacheTTL`: usable, with
    /// the balancer's own counts as the only fresh load signal.
    Unknown,
    /// Failed too many polls or dials in a row; tried only when no other pod
    /// is left, so that a cluster-wide blip does not refuse every client.
    Ejected,
}

/// One pod as selection sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PodLoad {
    /// Effective load: the last reported count adjusted by what this
    /// balancer opened and saw close since that report.
    pub load: u64,
    /// The last reported count alone (what the original plugin used).
    pub reported: u64,
    /// Connections this balancer alone holds to the pod (classic leastconn).
    pub local: u64,
    /// `capacity` from the pod's report: its share, and a hard limit.
    pub capacity: Option<u64>,
    /// `maxConnectionsPerPod` from config (0 = none): a hard limit.
    pub limit: u64,
    /// Slow-start share in `(0, 1]`; 1 when warm or slow start is off.
    pub warmup: f64,
    /// Health as above.
    pub health: Health,
    /// False when the pod reports `drain` or `maint`: it is never chosen.
    pub accepting: bool,
    /// When the pod last failed, in any monotonic unit; ejected pods are
    /// tried least recently failed first.
    pub last_failure: u64,
}

impl PodLoad {
    /// A healthy, warm, uncapped pod with `load` connections.
    pub fn with_load(load: u64) -> Self {
        PodLoad {
            load,
            reported: load,
            local: 0,
            capacity: None,
            limit: 0,
            warmup: 1.0,
            health: Health::Healthy,
            accepting: true,
            last_failure: 0,
        }
    }

    /// Whether a hard limit (`capacity` or `maxConnectionsPerPod`) is reached.
    pub fn is_full(&self) -> bool {
        let cap = self.capacity.unwrap_or(u64::MAX);
        let limit = if self.limit == 0 {
            u64::MAX
        } else {
            self.limit
        };
        self.load >= cap.min(limit)
    }
}

/// The order in which to try pods for one connection.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ranking {
    /// Indexes into the input slice, best first.
    pub order: Vec<usize>,
    /// How many entries at the front of `order` are healthy or unknown; the
    /// rest are ejected pods kept as a last resort.
    pub usable: usize,
    /// True when pods would accept but every one is at its hard limit.
    pub all_full: bool,
}

/// Ranks the pods for one new connection with `strategy`.
pub fn rank(pods: &[PodLoad], strategy: Strategy, rng: &mut impl Rng) -> Ranking {
    let accepting: Vec<usize> = (0..pods.len()).filter(|&i| pods[i].accepting).collect();
    let open: Vec<usize> = accepting
        .iter()
        .copied()
        .filter(|&i| !pods[i].is_full())
        .collect();
    let (mut usable, mut ejected): (Vec<usize>, Vec<usize>) = open
        .iter()
        .partition(|&&i| pods[i].health != Health::Ejected);
    let share = shares(pods);

    match strategy {
        Strategy::LeastConnections => {
            sort_by_score(&mut usable, |i| score(&pods[i], share[i]), rng)
        }
        Strategy::PowerOfTwo => {
            sort_by_score(&mut usable, |i| score(&pods[i], share[i]), rng);
            if usable.len() > 2 {
                // Take two at random; the better one first, then the other,
                // then everything else (already sorted) for failover.
                let picked = sample(rng, usable.len(), 2);
                let (a, b) = (usable[picked.index(0)], usable[picked.index(1)]);
                let (first, second) = if score(&pods[b], share[b]) < score(&pods[a], share[a]) {
                    (b, a)
                } else {
                    (a, b)
                };
                usable.retain(|&i| i != first && i != second);
                usable.splice(0..0, [first, second]);
            }
        }
        Strategy::Cached => usable.sort_by_key(|&i| (pods[i].reported, i)),
        Strategy::Local => sort_by_score(&mut usable, |i| pods[i].local as f64, rng),
    }
    ejected.sort_by_key(|&i| (pods[i].last_failure, i));

    let count = usable.len();
    usable.extend(ejected);
    Ranking {
        all_full: usable.is_empty() && !accepting.is_empty(),
        order: usable,
        usable: count,
    }
}

/// Each pod's share: its capacity, or for pods that report none, the mean
/// capacity of those that do (1 when none do), so the two kinds mix fairly.
fn shares(pods: &[PodLoad]) -> Vec<f64> {
    let reported: Vec<u64> = pods
        .iter()
        .filter_map(|p| p.capacity)
        .filter(|&c| c > 0)
        .collect();
    let fallback = if reported.is_empty() {
        1.0
    } else {
        reported.iter().sum::<u64>() as f64 / reported.len() as f64
    };
    pods.iter()
        .map(|p| match p.capacity {
            Some(c) if c > 0 => c as f64,
            _ => fallback,
        })
        .collect()
}

/// Load per unit of share; lower is better.
fn score(pod: &PodLoad, share: f64) -> f64 {
    pod.load as f64 / (share * pod.warmup.clamp(f64::MIN_POSITIVE, 1.0))
}

/// Sorts by score, breaking exact ties at random.
fn sort_by_score(indexes: &mut [usize], score: impl Fn(usize) -> f64, rng: &mut impl Rng) {
    let mut keyed: Vec<(f64, u32, usize)> = indexes
        .iter()
        .map(|&i| (score(i), rng.random(), i))
        .collect();
    keyed.sort_by(|a, b| {
        a.0.partial_cmp(&b.0)
            .unwrap_or(Ordering::Equal)
            .then(a.1.cmp(&b.1))
    });
    for (slot, (_, _, i)) in indexes.iter_mut().zip(keyed) {
        *slot = i;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn rng() -> StdRng {
        StdRng::seed_from_u64(42)
    }

    fn pod(load: u64) -> PodLoad {
        PodLoad::with_load(load)
    }

    fn first_counts(pods: &[PodLoad], strategy: Strategy, runs: usize) -> Vec<usize> {
        let mut rng = rng();
        let mut firsts = vec![0; pods.len()];
        for _ in 0..runs {
            firsts[rank(pods, strategy, &mut rng).order[0]] += 1;
        }
        firsts
    }

    #[test]
    fn least_loaded_first() {
        let r = rank(
            &[pod(5), pod(0), pod(2)],
            Strategy::LeastConnections,
            &mut rng(),
        );
        assert_eq!(r.order, vec![1, 2, 0]);
        assert_eq!(r.usable, 3);
        assert!(!r.all_full);
    }

    #[test]
    fn ties_are_broken_at_random() {
        let firsts = first_counts(
            &[pod(3), pod(3), pod(3), pod(9)],
            Strategy::LeastConnections,
            3000,
        );
        assert_eq!(firsts[3], 0);
        for count in &firsts[..3] {
            assert!((800..1200).contains(count), "{firsts:?}");
        }
    }

    #[test]
    fn capacity_weights_the_share() {
        // 300 of 1000 is less loaded than 100 of 200.
        let big = PodLoad {
            capacity: Some(1000),
            ..pod(300)
        };
        let small = PodLoad {
            capacity: Some(200),
            ..pod(100)
        };
        let r = rank(&[small, big], Strategy::LeastConnections, &mut rng());
        assert_eq!(r.order, vec![1, 0]);
        // A pod without capacity counts as the mean of those with one: here
        // 1000, so 250 of it beats 300 of 1000.
        let plain = pod(250);
        let r = rank(&[plain, big], Strategy::LeastConnections, &mut rng());
        assert_eq!(r.order, vec![0, 1]);
        // With small (200) in the mix the mean is 600: 250/600 loses to 0.3.
        let r = rank(&[plain, big, small], Strategy::LeastConnections, &mut rng());
        assert_eq!(r.order, vec![1, 0, 2]);
    }

    #[test]
    fn full_pods_are_never_chosen_and_all_full_is_reported() {
        let capped = PodLoad {
            capacity: Some(10),
            ..pod(10)
        };
        let limited = PodLoad { limit: 4, ..pod(4) };
        let r = rank(
            &[capped, limited, pod(50)],
            Strategy::LeastConnections,
            &mut rng(),
        );
        assert_eq!(r.order, vec![2]);
        let r = rank(&[capped, limited], Strategy::LeastConnections, &mut rng());
        assert!(r.order.is_empty());
        assert!(r.all_full);
    }

    #[test]
    fn draining_pods_are_skipped_but_not_full() {
        let drain = PodLoad {
            accepting: false,
            ..pod(0)
        };
        let r = rank(&[drain, pod(7)], Strategy::LeastConnections, &mut rng());
        assert_eq!(r.order, vec![1]);
        let r = rank(&[drain], Strategy::LeastConnections, &mut rng());
        assert!(r.order.is_empty());
        assert!(!r.all_full);
    }

    #[test]
    fn ejected_pods_come_last_least_recently_failed_first() {
        let ejected = |last_failure| PodLoad {
            health: Health::Ejected,
            last_failure,
            ..pod(0)
        };
        let unknown = PodLoad {
            health: Health::Unknown,
            ..pod(10)
        };
        let r = rank(
            &[ejected(50), ejected(20), unknown],
            Strategy::LeastConnections,
            &mut rng(),
        );
        assert_eq!(r.order, vec![2, 1, 0]);
        assert_eq!(r.usable, 1);
        let r = rank(
            &[ejected(50), ejected(20)],
            Strategy::LeastConnections,
            &mut rng(),
        );
        assert_eq!(r.order, vec![1, 0]);
        assert_eq!(r.usable, 0);
    }

    #[test]
    fn slow_start_shrinks_a_cold_pods_share() {
        let cold = PodLoad {
            warmup: 0.1,
            ..pod(2)
        };
        // 2 at 10% warm-up scores like 20: it loses to a warm pod at 10.
        let r = rank(&[cold, pod(10)], Strategy::LeastConnections, &mut rng());
        assert_eq!(r.order, vec![1, 0]);
        // Empty, it still gets the next connection.
        let r = rank(
            &[PodLoad { load: 0, ..cold }, pod(10)],
            Strategy::LeastConnections,
            &mut rng(),
        );
        assert_eq!(r.order[0], 0);
    }

    #[test]
    fn power_of_two_never_picks_the_worst_of_three_first() {
        let firsts = first_counts(&[pod(0), pod(5), pod(9)], Strategy::PowerOfTwo, 3000);
        assert_eq!(firsts[2], 0, "{firsts:?}");
        // The best pod wins in the 2 of 3 samples that include it.
        assert!((1800..2200).contains(&firsts[0]), "{firsts:?}");
        let r = rank(&[pod(0), pod(5), pod(9)], Strategy::PowerOfTwo, &mut rng());
        assert_eq!(r.order.len(), 3);
    }

    #[test]
    fn cached_rule_ignores_local_counts_and_prefers_the_first_listed() {
        let a = PodLoad {
            reported: 3,
            ..pod(50)
        };
        let b = PodLoad {
            reported: 3,
            ..pod(0)
        };
        let r = rank(&[a, b], Strategy::Cached, &mut rng());
        assert_eq!(r.order, vec![0, 1]);
    }

    #[test]
    fn local_rule_counts_only_own_connections() {
        let a = PodLoad { local: 1, ..pod(0) };
        let b = PodLoad {
            local: 0,
            ..pod(500)
        };
        let r = rank(&[a, b], Strategy::Local, &mut rng());
        assert_eq!(r.order, vec![1, 0]);
    }
}
