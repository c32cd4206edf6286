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

/// The share of a pod that reports no capacity: the mean capacity of the
/// pods that do (1 when none do), so the two kinds mix fairly.
pub fn fallback_share(capacities: impl Iterator<Item = Option<u64>>) -> f64 {
    let (sum, count) = capacities
        .flatten()
        .filter(|&c| c > 0)
        .fold((0u128, 0u64), |(sum, count), c| {
            (sum + u128::from(c), count + 1)
        });
    if count == 0 {
        1.0
    } else {
        sum as f64 / count as f64
    }
}

/// The first `k` pods of the order [`rank`] would give, without ranking
/// the others: one pass over the `n` pods (`load(i)` is pod `i`'s load),
/// keeping the best `k` as it goes, so a new connection costs the same at
/// 1,000 pods as at 3 but for that pass. `fallback` is
/// [`fallback_share`] of the pods' capacities.
///
/// The order is the same as a full sort's: usable pods by score (ties at
/// random), then ejected ones least recently failed first; pods that do
/// not accept or are full are left out.
pub fn rank_top(
    n: usize,
    load: impl Fn(usize) -> PodLoad,
    fallback: f64,
    k: usize,
    strategy: Strategy,
    rng: &mut impl Rng,
) -> Ranking {
    let scorer = Scorer::new(fallback);
    let ties = PerPod::new(rng);
    let slots = PerPod::new(rng);
    // Power of two: two usable pods sampled uniformly (a reservoir).
    let mut sampled: [Option<(f64, usize)>; 2] = [None, None];
    // One pass per strategy, so that the pass does not ask which strategy
    // at every pod.
    let found = match strategy {
        Strategy::LeastConnections => scan(n, load, k, |best, i, pod, _| {
            best.offer(scorer.score(pod), i, |i| ties.tiebreak(i));
        }),
        Strategy::PowerOfTwo => scan(n, load, k, |best, i, pod, usable| {
            let score = scorer.score(pod);
            if usable <= 2 {
                sampled[usable - 1] = Some((score, i));
            } else {
                let slot = slots.below(i, usable);
                if slot < 2 {
                    sampled[slot] = Some((score, i));
                }
            }
            best.offer(score, i, |i| ties.tiebreak(i));
        }),
        Strategy::Cached => scan(n, load, k, |best, i, pod, _| {
            best.offer(pod.reported as f64, i, |i| i as u32);
        }),
        Strategy::Local => scan(n, load, k, |best, i, pod, _| {
            best.offer(pod.local as f64, i, |i| ties.tiebreak(i));
        }),
    };
    let Scan {
        best,
        ejected,
        accepting,
        open,
        usable,
    } = found;
    let mut order = best.into_order();
    if let [Some(a), Some(b)] = sampled
        && usable > 2
    {
        // The better of the two first, then the other, then the rest by
        // score for failover.
        let (first, second) = if b.0 < a.0 { (b.1, a.1) } else { (a.1, b.1) };
        order.retain(|&i| i != first && i != second);
        order.splice(0..0, [first, second]);
        order.truncate(k);
    }
    let in_order = order.len();
    order.extend(ejected.into_order());
    order.truncate(k);
    Ranking {
        all_full: open == 0 && accepting > 0,
        usable: in_order.min(order.len()),
        order,
    }
}

/// What one pass over the pods found.
struct Scan {
    /// The best `k` usable pods.
    best: Best,
    /// The `k` ejected pods that failed least recently.
    ejected: Best,
    /// Pods that take new connections.
    accepting: usize,
    /// Of those, the ones below their hard limits.
    open: usize,
    /// Of those, the ones not ejected.
    usable: usize,
}

/// The pass of [`rank_top`]: `keep` offers each usable pod `i` to the
/// best (with how many usable pods were seen so far, this one included).
#[inline(always)]
fn scan(
    n: usize,
    load: impl Fn(usize) -> PodLoad,
    k: usize,
    mut keep: impl FnMut(&mut Best, usize, &PodLoad, usize),
) -> Scan {
    let mut found = Scan {
        best: Best::new(k),
        ejected: Best::new(k),
        accepting: 0,
        open: 0,
        usable: 0,
    };
    for i in 0..n {
        let pod = load(i);
        if !pod.accepting {
            continue;
        }
        found.accepting += 1;
        if pod.is_full() {
            continue;
        }
        found.open += 1;
        if pod.health == Health::Ejected {
            found
                .ejected
                .offer(pod.last_failure as f64, i, |i| i as u32);
            continue;
        }
        found.usable += 1;
        keep(&mut found.best, i, &pod, found.usable);
    }
    found
}

/// One random number per pod for one ranking: a seed drawn once from the
/// caller's generator, mixed with the pod's index (the `i`-th output of
/// SplitMix64 from that seed). A ranking of 1,000 pods then costs one draw
/// from the generator rather than one per pod, and ties still fall at
/// random from one ranking to the next.
#[derive(Clone, Copy)]
struct PerPod(u64);

impl PerPod {
    fn new(rng: &mut impl Rng) -> Self {
        PerPod(rng.random())
    }

    /// Pod `i`'s number.
    fn at(self, i: usize) -> u64 {
        const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut z = self
            .0
            .wrapping_add((i as u64).wrapping_add(1).wrapping_mul(GOLDEN));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Pod `i`'s tie-break: its number's high half.
    fn tiebreak(self, i: usize) -> u32 {
        (self.at(i) >> 32) as u32
    }

    /// Pod `i`'s number scaled into `0..n` (multiply-shift: no division).
    fn below(self, i: usize, n: usize) -> usize {
        ((u128::from(self.at(i)) * n as u128) >> 64) as usize
    }
}

/// The `k` lowest `(key, tiebreak)` offered so far, lowest first.
struct Best {
    k: usize,
    entries: Vec<(f64, u32, usize)>,
}

impl Best {
    fn new(k: usize) -> Self {
        // Allocated at the first pod kept: the ejected pods' list of most
        // rankings stays empty, and costs nothing then.
        Best {
            k,
            entries: Vec::new(),
        }
    }

    /// Offers pod `i` with `key`; `tiebreak` is asked only when the pod
    /// could be kept (most pods of a large set are not even that).
    fn offer(&mut self, key: f64, i: usize, tiebreak: impl FnOnce(usize) -> u32) {
        if self.k == 0 {
            return;
        }
        let full = self.entries.len() == self.k;
        if full && self.entries.last().is_some_and(|worst| key > worst.0) {
            return;
        }
        let entry = (key, tiebreak(i), i);
        let before = |a: &(f64, u32, usize), b: &(f64, u32, usize)| {
            a.0.partial_cmp(&b.0)
                .unwrap_or(Ordering::Equal)
                .then(a.1.cmp(&b.1))
                == Ordering::Less
        };
        if full {
            match self.entries.last() {
                Some(worst) if before(&entry, worst) => {
                    self.entries.pop();
                }
                _ => return,
            }
        }
        let at = self.entries.partition_point(|e| !before(&entry, e));
        if self.entries.capacity() == 0 {
            self.entries.reserve_exact(self.k.min(16));
        }
        self.entries.insert(at, entry);
    }

    fn into_order(self) -> Vec<usize> {
        self.entries.into_iter().map(|(_, _, i)| i).collect()
    }
}

/// Load per unit of share; lower is better. Multiplied by the share's
/// reciprocal rather than divided by the share: most pods of most rankings
/// have the same share (the `fallback`, warm), whose reciprocal is worked
/// out once per ranking, so a ranking of 1,000 pods does not pay a
/// division per pod. Two pods of the same share always get the same
/// reciprocal, so equal loads still tie exactly.
#[derive(Clone, Copy)]
struct Scorer {
    fallback: f64,
    per_fallback: f64,
}

impl Scorer {
    fn new(fallback: f64) -> Self {
        Scorer {
            fallback,
            per_fallback: 1.0 / fallback,
        }
    }

    fn score(self, pod: &PodLoad) -> f64 {
        let share = match pod.capacity {
            Some(c) if c > 0 => c as f64,
            _ => self.fallback,
        } * pod.warmup.clamp(f64::MIN_POSITIVE, 1.0);
        let per_share = if share == self.fallback {
            self.per_fallback
        } else {
            1.0 / share
        };
        pod.load as f64 * per_share
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

    /// Every pod, in order: the full ranking the tests compare against.
    fn rank(pods: &[PodLoad], strategy: Strategy, rng: &mut impl Rng) -> Ranking {
        let fallback = fallback_share(pods.iter().map(|p| p.capacity));
        rank_top(pods.len(), |i| pods[i], fallback, pods.len(), strategy, rng)
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

    /// A pod drawn from `(load, capacity, state)`: `state` 0 healthy, 1
    /// unknown, 2 ejected, 3 draining, 4 full.
    fn drawn(load: u64, capacity: Option<u64>, state: u8, at: u64) -> PodLoad {
        PodLoad {
            capacity,
            health: match state {
                1 => Health::Unknown,
                2 => Health::Ejected,
                _ => Health::Healthy,
            },
            accepting: state != 3,
            limit: if state == 4 { load.max(1) } else { 0 },
            last_failure: at,
            local: load,
            ..pod(if state == 4 { load.max(1) } else { load })
        }
    }

    /// The order a full sort gives (keys distinct: no tie), written
    /// independently of [`rank_top`].
    fn sorted(pods: &[PodLoad], strategy: Strategy) -> Vec<usize> {
        let fallback = fallback_share(pods.iter().map(|p| p.capacity));
        let open: Vec<usize> = (0..pods.len())
            .filter(|&i| pods[i].accepting && !pods[i].is_full())
            .collect();
        let key = |i: usize| match strategy {
            Strategy::Cached => pods[i].reported as f64,
            Strategy::Local => pods[i].local as f64,
            _ => Scorer::new(fallback).score(&pods[i]),
        };
        let mut usable: Vec<usize> = open
            .iter()
            .copied()
            .filter(|&i| pods[i].health != Health::Ejected)
            .collect();
        usable.sort_by(|&a, &b| key(a).partial_cmp(&key(b)).unwrap_or(Ordering::Equal));
        let mut ejected: Vec<usize> = open
            .iter()
            .copied()
            .filter(|&i| pods[i].health == Health::Ejected)
            .collect();
        ejected.sort_by_key(|&i| (pods[i].last_failure, i));
        usable.extend(ejected);
        usable
    }

    proptest::proptest! {
        /// The first `k` of a one-pass ranking are the first `k` of a full
        /// sort, whatever the pods (distinct loads: no tie to break at
        /// random), and the flags agree.
        #[test]
        fn the_top_k_are_the_first_k_of_a_full_sort(
            pods in proptest::collection::vec(
                (0u64..1000, proptest::option::of(1u64..50), 0u8..5),
                0..40,
            ),
            k in 1usize..6,
        ) {
            let pods: Vec<PodLoad> = pods
                .iter()
                .enumerate()
                .map(|(i, &(load, cap, state))| drawn(load * 64 + i as u64, cap.map(|c| c * 1000 + i as u64), state, i as u64))
                .collect();
            for strategy in [Strategy::LeastConnections, Strategy::Cached, Strategy::Local] {
                let fallback = fallback_share(pods.iter().map(|p| p.capacity));
                let top = rank_top(pods.len(), |i| pods[i], fallback, k, strategy, &mut rng());
                let want: Vec<usize> = sorted(&pods, strategy).into_iter().take(k).collect();
                proptest::prop_assert_eq!(&top.order, &want, "{:?}", strategy);
                let usable = want.iter().filter(|&&i| pods[i].health != Health::Ejected).count();
                proptest::prop_assert_eq!(top.usable, usable);
                let accepting = pods.iter().any(|p| p.accepting);
                let open = pods.iter().any(|p| p.accepting && !p.is_full());
                proptest::prop_assert_eq!(top.all_full, accepting && !open);
            }
        }
    }

    #[test]
    fn the_top_k_breaks_ties_at_random_among_all_tied_pods() {
        let pods = vec![pod(3); 10];
        let mut rng = rng();
        let mut firsts = [0usize; 10];
        for _ in 0..5000 {
            let top = rank_top(
                pods.len(),
                |i| pods[i],
                1.0,
                3,
                Strategy::LeastConnections,
                &mut rng,
            );
            assert_eq!(top.order.len(), 3);
            firsts[top.order[0]] += 1;
        }
        for count in firsts {
            assert!((350..650).contains(&count), "{firsts:?}");
        }
    }
}
