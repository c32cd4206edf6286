//! Live-connection rebalancing, the decision: which of this replica's
//! relayed connections to close in one round so that their clients
//! reconnect, through [`crate::selection`], to the least-loaded pods.
//!
//! Selection only places new connections, and WebSocket connections can
//! live for days: after a scale-up the new pods would stay empty. So every
//! round the balancer closes a few connections on pods above the cluster
//! mean (and on pods reporting `drain`), with a Close code that tells
//! clients to come back. This module is the pure part: it sees a snapshot
//! of the pods and returns how many to close where; the timer, picking
//! which connections and sending the Close are the balancer's.
//!
//! Replicas do not talk to each other. Each sheds its own share of a pod's
//! excess, in proportion to how many of the pod's connections it relays,
//! so together they shed about the excess, and none needs to know how many
//! replicas there are.
//!
//! # Budget
//!
//! When a round's budget cannot cover everything, draining pods come
//! first: they are leaving, their connections must move anyway, and every
//! one that moves lands on a least-loaded pod, which also reduces the
//! imbalance. Shedding for imbalance only improves a working cluster and
//! can wait a round. Within each of the two kinds the budget is spread in
//! proportion to what each pod would shed, so no pod waits for another.

use prometheus_client::encoding::EncodeLabelValue;
use rand::Rng;

use crate::report::PodState;

/// One pod as a rebalancing round sees it: what the cluster says about it
/// and what this replica holds there.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PodView {
    /// The pod's last fresh reported count (all replicas' connections):
    /// the load the cluster mean is made of.
    pub reported: u64,
    /// The pod's share: its reported `capacity`, or for a pod that reports
    /// none the average of those that do, as selection counts it. Must be
    /// a positive finite number; any other value is treated as bad data.
    pub weight: f64,
    /// Connections this replica relays to the pod: its part of the pod's
    /// excess is in proportion to them.
    pub own: u64,
    /// Of [`own`](Self::own), those older than `rebalanceMinAge`: the only
    /// ones that may be closed, so a client that just moved is not moved
    /// again.
    pub movable: u64,
    /// The report is younger than `cacheTTL` and the pod is not ejected:
    /// only fresh numbers are acted on.
    pub fresh: bool,
    /// What the pod last reported wanting; `drain` empties it.
    pub state: PodState,
    /// This replica shed from the pod for an imbalance in the round before:
    /// it goes on down to the pod's target. The tolerance band only starts
    /// shedding (hysteresis), so a scale-up ends even, not at the band's
    /// edge, and a pod that reached its target needs the band to start
    /// again.
    pub shedding: bool,
}

/// How much one round may do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShedSettings {
    /// `rebalanceTolerance`: how far above its target (a fraction of it) a
    /// pod may be before it sheds. The band between the target and the
    /// threshold is what keeps a pod near the mean from ever shedding.
    pub tolerance: f64,
    /// The most connections this replica may close in this round
    /// (`rebalanceRate` times the round's length, computed by the caller),
    /// so reconnecting clients arrive at a steady pace.
    pub budget: u64,
}

/// Why connections are closed, as a metric label (`imbalance`, `drain`):
/// the two have different causes and an operator reads them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
// The derive writes the variant's name as the label value.
#[allow(non_camel_case_types)]
pub enum ShedReason {
    /// The pod holds more than its share of the cluster's connections.
    imbalance,
    /// The pod reports `drain`: it wants to be emptied.
    drain,
}

impl ShedReason {
    /// Every reason, so that a departed pod's series of each can be
    /// removed.
    pub const ALL: [ShedReason; 2] = [ShedReason::imbalance, ShedReason::drain];
}

/// Close `count` of this replica's movable connections to pod `pod`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shed {
    /// Index of the pod in the slice given to [`decide`].
    pub pod: usize,
    /// How many connections to close; never 0.
    pub count: u64,
    /// Why, for the metric and the log.
    pub reason: ShedReason,
}

/// What one round does, and how unbalanced the cluster looked.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Decision {
    /// At most one entry per pod, in pod order; empty when nothing is to
    /// be closed.
    pub sheds: Vec<Shed>,
    /// How far the most loaded accepting pod is above its target
    /// (`reported / target - 1`, at least 0), for a gauge: it shows whether
    /// rebalancing has work to do even when a stale report holds it back.
    pub imbalance: f64,
}

/// Decides how many of this replica's connections to close on which pod
/// in one round.
///
/// - Pods that accept new connections (`ready`, or a state this version
///   does not know) shed for imbalance. The target of a pod is the mean
///   per unit of weight (the reported load of all fresh pods over the
///   weight of the fresh accepting pods) times its weight. A pod sheds
///   only when its report is above `target * (1 + tolerance)`, and then
///   the whole connections above its target, never more: it stops at the
///   mean, not at the threshold, so it does not start again next round.
/// - This replica's part of that excess is `excess * own / reported`,
///   rounded down or up at random by the fraction (from `rng`), so that
///   many replicas together shed the excess on average; one replica that
///   relays everything sheds exactly the excess.
/// - If any pod's report is not fresh, or an accepting pod's weight is not
///   a positive finite number, nothing is shed for imbalance: the mean
///   would be a guess.
/// - A fresh pod reporting `drain` sheds all of this replica's connections
///   there. `maint` pods keep theirs.
/// - Each pod's count is capped at its movable connections, and the total
///   at `budget`, drains first (see the module's doc).
/// - Nothing at all is shed when no fresh pod accepts new connections:
///   closed clients would have nowhere to go.
pub fn decide(pods: &[PodView], settings: &ShedSettings, rng: &mut impl Rng) -> Decision {
    let destination = pods.iter().any(|p| p.fresh && p.state.accepts_new());
    if !destination {
        return Decision::default();
    }
    let mean = mean_per_weight(pods);
    let all_fresh = pods.iter().all(|p| p.fresh);

    let mut wants = Vec::new();
    for (index, pod) in pods.iter().enumerate() {
        if !pod.fresh {
            continue;
        }
        let movable = pod.movable.min(pod.own);
        let want = match (pod.state, mean) {
            (PodState::Drain, _) => Some((movable, ShedReason::drain)),
            (state, Some(mean)) if state.accepts_new() && all_fresh => {
                let share = excess_share(pod, mean, settings.tolerance, rng);
                Some((share.min(movable), ShedReason::imbalance))
            }
            _ => None,
        };
        if let Some((count, reason)) = want.filter(|&(count, _)| count > 0) {
            wants.push(Shed {
                pod: index,
                count,
                reason,
            });
        }
    }

    Decision {
        sheds: within_budget(wants, settings.budget),
        imbalance: mean.map_or(0.0, |mean| imbalance(pods, mean)),
    }
}

/// Whether `weight` can be a pod's share.
fn usable_weight(weight: f64) -> bool {
    weight.is_finite() && weight > 0.0
}

/// The reported load of the fresh pods per unit of weight of the fresh
/// accepting ones; `None` when there is no weight to share it, or a weight
/// is not a positive finite number (bad data, like a stale report).
fn mean_per_weight(pods: &[PodView]) -> Option<f64> {
    let fresh = || pods.iter().filter(|p| p.fresh);
    // u128: no sum of u64 counts overflows it.
    let load: u128 = fresh().map(|p| u128::from(p.reported)).sum();
    let mut weight = 0.0;
    for pod in fresh().filter(|p| p.state.accepts_new()) {
        if !usable_weight(pod.weight) {
            return None;
        }
        weight += pod.weight;
    }
    if !usable_weight(weight) {
        return None;
    }
    let mean = load as f64 / weight;
    mean.is_finite().then_some(mean)
}

/// This replica's part of `pod`'s excess over its target, randomly
/// rounded; 0 within the tolerance band.
fn excess_share(pod: &PodView, mean: f64, tolerance: f64, rng: &mut impl Rng) -> u64 {
    let reported = pod.reported as f64;
    let target = mean * pod.weight;
    // Written so that a NaN fails; the second test keeps a negative
    // tolerance from shedding a pod below its target.
    let start = if pod.shedding {
        target
    } else {
        target * (1.0 + tolerance)
    };
    let above = reported > start && reported > target;
    if !above {
        return 0;
    }
    // Whole connections above the target: a replica relaying everything
    // never takes the pod below it. `as` saturates.
    let excess = ((reported - target).floor() as u64).min(pod.reported);
    let own = pod.own.min(pod.reported);
    if own == pod.reported {
        return excess;
    }
    random_round(excess as f64 * (own as f64 / reported), rng)
}

/// `x` rounded down, plus one with probability its fractional part, so
/// that the expected value is `x`. 0 for anything not finite and positive.
fn random_round(x: f64, rng: &mut impl Rng) -> u64 {
    if !(x.is_finite() && x > 0.0) {
        return 0;
    }
    let whole = x.floor();
    let up = rng.random::<f64>() < x - whole;
    (whole as u64).saturating_add(u64::from(up))
}

/// The largest `reported / target - 1` over fresh accepting pods, at least
/// 0 (pods all below their target, when `drain` or `maint` pods hold the
/// rest, is no imbalance to act on); a pod whose target is 0 but holds
/// connections counts as [`f64::MAX`].
fn imbalance(pods: &[PodView], mean: f64) -> f64 {
    pods.iter()
        .filter(|p| p.fresh && p.state.accepts_new())
        .filter_map(|pod| {
            if pod.reported == 0 {
                return None;
            }
            let target = mean * pod.weight;
            let over = pod.reported as f64 / target - 1.0;
            Some(if over.is_finite() { over } else { f64::MAX })
        })
        .fold(0.0, f64::max)
}

/// `wants` cut down to `budget` in total: drains first, then imbalance,
/// each kind spread in proportion by [`spread`].
fn within_budget(mut wants: Vec<Shed>, budget: u64) -> Vec<Shed> {
    let mut left = budget;
    for reason in [ShedReason::drain, ShedReason::imbalance] {
        let of_kind: Vec<usize> = (0..wants.len())
            .filter(|&i| wants[i].reason == reason)
            .collect();
        let counts: Vec<u64> = of_kind.iter().map(|&i| wants[i].count).collect();
        for (&i, granted) in of_kind.iter().zip(spread(&counts, left)) {
            wants[i].count = granted;
            // `spread` grants at most `left` in total.
            left = left.saturating_sub(granted);
        }
    }
    wants.retain(|shed| shed.count > 0);
    wants
}

/// `budget` split over `wants`: all of them when it covers their total,
/// else each `want * budget / total` rounded down, and the few left over
/// to the largest remainders (lower index first on a tie). The result sums
/// to at most `budget`, and each entry is at most its want.
fn spread(wants: &[u64], budget: u64) -> Vec<u64> {
    let total: u128 = wants.iter().map(|&w| u128::from(w)).sum();
    let budget_wide = u128::from(budget);
    if total <= budget_wide {
        return wants.to_vec();
    }
    // From here `budget < total`, so every quotient is below its want and
    // fits a u64; a product of two u64 fits a u128.
    let mut granted = Vec::with_capacity(wants.len());
    let mut remainders = Vec::with_capacity(wants.len());
    for (i, &want) in wants.iter().enumerate() {
        let product = u128::from(want) * budget_wide;
        granted.push(u64::try_from(product / total).unwrap_or(want));
        remainders.push((product % total, i));
    }
    let given: u64 = granted.iter().fold(0, |sum: u64, &g| sum.saturating_add(g));
    let leftover = budget.saturating_sub(given);
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(remainder, i) in remainders
        .iter()
        .take(usize::try_from(leftover).unwrap_or(usize::MAX))
    {
        // A pod with no remainder got its exact share already.
        if remainder > 0 && granted[i] < wants[i] {
            granted[i] += 1;
        }
    }
    granted
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    /// A fresh ready pod of weight 1 whose connections are all this
    /// replica's and all movable.
    fn pod(reported: u64) -> PodView {
        PodView {
            reported,
            weight: 1.0,
            own: reported,
            movable: reported,
            fresh: true,
            state: PodState::Ready,
            shedding: false,
        }
    }

    /// Tolerance 10%, a budget that never binds.
    fn settings() -> ShedSettings {
        ShedSettings {
            tolerance: 0.1,
            budget: u64::MAX,
        }
    }

    fn shed(pod: usize, count: u64, reason: ShedReason) -> Shed {
        Shed { pod, count, reason }
    }

    /// The counts by pod, for short assertions.
    fn counts(decision: &Decision) -> Vec<(usize, u64)> {
        decision.sheds.iter().map(|s| (s.pod, s.count)).collect()
    }

    #[test]
    fn after_a_scale_up_the_old_pods_shed_down_to_the_mean() {
        let pods = [pod(500), pod(500), pod(500), pod(0), pod(0)];
        let d = decide(&pods, &settings(), &mut rng());
        let why = ShedReason::imbalance;
        assert_eq!(
            d.sheds,
            [shed(0, 200, why), shed(1, 200, why), shed(2, 200, why)]
        );
        assert!(
            (d.imbalance - (500.0 / 300.0 - 1.0)).abs() < 1e-12,
            "{}",
            d.imbalance
        );
    }

    #[test]
    fn a_replica_sheds_its_relayed_fraction_of_the_excess() {
        let half = |p: PodView| PodView {
            own: p.reported / 2,
            movable: p.reported / 2,
            ..p
        };
        let pods = [
            half(pod(500)),
            half(pod(500)),
            half(pod(500)),
            pod(0),
            pod(0),
        ];
        assert_eq!(
            counts(&decide(&pods, &settings(), &mut rng())),
            [(0, 100), (1, 100), (2, 100)]
        );
        // 123 of the first pod's 500 relayed here: 200 * 123 / 500 = 49.2,
        // so 49 or 50, and 49.2 on average.
        let part = PodView {
            own: 123,
            movable: 123,
            ..pod(500)
        };
        let pods = [part, pod(500), pod(500), pod(0), pod(0)];
        let runs = 4000;
        let mut sum = 0;
        for seed in 0..runs {
            let d = decide(&pods, &settings(), &mut StdRng::seed_from_u64(seed));
            let Some(&Shed { pod: 0, count, .. }) = d.sheds.first() else {
                panic!("{d:?}");
            };
            assert!((49..=50).contains(&count), "{count}");
            sum += count;
        }
        let mean = sum as f64 / runs as f64;
        assert!((mean - 49.2).abs() < 0.05, "{mean}");
    }

    #[test]
    fn own_counts_above_the_report_count_as_all_of_it() {
        // The report lags this replica's opens: it cannot hold more than
        // the whole pod.
        let ahead = PodView {
            own: 900,
            movable: 900,
            ..pod(500)
        };
        let pods = [ahead, pod(100), pod(0)];
        assert_eq!(counts(&decide(&pods, &settings(), &mut rng())), [(0, 300)]);
    }

    #[test]
    fn a_pod_already_shedding_goes_on_down_to_its_target() {
        // 5% above: inside the band, nothing to start...
        let d = decide(&[pod(105), pod(95)], &settings(), &mut rng());
        assert_eq!(d.sheds, []);
        // ...but a pod this replica was shedding from goes on to the mean.
        let shedding = PodView {
            shedding: true,
            ..pod(105)
        };
        let d = decide(&[shedding, pod(95)], &settings(), &mut rng());
        assert_eq!(d.sheds.iter().map(|s| s.count).sum::<u64>(), 5);
        // And not below it.
        let at_target = PodView {
            shedding: true,
            ..pod(100)
        };
        let d = decide(&[at_target, pod(100)], &settings(), &mut rng());
        assert_eq!(d.sheds, []);
    }

    #[test]
    fn within_the_tolerance_nothing_is_shed_and_above_it_down_to_the_mean() {
        let d = decide(&[pod(105), pod(95)], &settings(), &mut rng());
        assert_eq!(d.sheds, []);
        assert!((d.imbalance - 0.05).abs() < 1e-12);
        // Exactly at the threshold is still inside the band.
        assert_eq!(
            decide(&[pod(110), pod(90)], &settings(), &mut rng()).sheds,
            []
        );
        assert_eq!(
            counts(&decide(&[pod(115), pod(85)], &settings(), &mut rng())),
            [(0, 15)]
        );
    }

    #[test]
    fn one_stale_report_stops_imbalance_shedding() {
        let stale = PodView {
            fresh: false,
            ..pod(0)
        };
        let pods = [pod(500), pod(500), pod(500), pod(0), stale];
        let d = decide(&pods, &settings(), &mut rng());
        assert_eq!(d.sheds, []);
        // The gauge still shows the fresh pods' picture.
        // 1500 over the four fresh pods: 500 is a third above 375.
        assert!(
            (d.imbalance - (500.0 / 375.0 - 1.0)).abs() < 1e-12,
            "{}",
            d.imbalance
        );
    }

    #[test]
    fn only_old_enough_connections_are_shed() {
        let young = PodView {
            movable: 50,
            ..pod(500)
        };
        let pods = [young, pod(500), pod(500), pod(0), pod(0)];
        assert_eq!(
            counts(&decide(&pods, &settings(), &mut rng())),
            [(0, 50), (1, 200), (2, 200)]
        );
        // Movable beyond own is a caller's slip: own still caps. 10 of 500
        // relayed here, an excess of 250: 5 of them.
        let odd = PodView {
            own: 10,
            movable: 400,
            ..pod(500)
        };
        assert_eq!(
            counts(&decide(&[odd, pod(0)], &settings(), &mut rng())),
            [(0, 5)]
        );
    }

    #[test]
    fn a_draining_pod_sheds_every_movable_connection_at_the_budgets_pace() {
        let drain = PodView {
            state: PodState::Drain,
            movable: 280,
            own: 300,
            ..pod(300)
        };
        let pods = [pod(100), drain, pod(100)];
        let d = decide(&pods, &settings(), &mut rng());
        assert_eq!(d.sheds, [shed(1, 280, ShedReason::drain)]);
        let paced = ShedSettings {
            budget: 40,
            ..settings()
        };
        assert_eq!(counts(&decide(&pods, &paced, &mut rng())), [(1, 40)]);
        // It goes on while another pod's report is stale (only imbalance
        // needs the whole picture), but not when its own is.
        let stale = PodView {
            fresh: false,
            ..pod(0)
        };
        assert_eq!(
            counts(&decide(&[pod(100), drain, stale], &settings(), &mut rng())),
            [(1, 280)]
        );
        let stale_drain = PodView {
            fresh: false,
            ..drain
        };
        assert_eq!(
            decide(&[pod(100), stale_drain], &settings(), &mut rng()).sheds,
            []
        );
        // With nowhere to go, not even a drain sheds.
        assert_eq!(decide(&[drain, drain], &settings(), &mut rng()).sheds, []);
    }

    #[test]
    fn maintenance_pods_keep_their_connections_and_take_no_share() {
        let maint = PodView {
            state: PodState::Maint,
            ..pod(900)
        };
        let d = decide(&[maint, pod(0), pod(0)], &settings(), &mut rng());
        assert_eq!(d.sheds, []);
        assert_eq!(d.imbalance, 0.0);
    }

    #[test]
    fn the_budget_caps_the_round_drains_first_then_in_proportion() {
        let pods = [pod(500), pod(500), pod(500), pod(0), pod(0)];
        let budget = |budget| ShedSettings {
            budget,
            ..settings()
        };
        let d = decide(&pods, &budget(60), &mut rng());
        assert_eq!(counts(&d), [(0, 20), (1, 20), (2, 20)]);
        // 100 over three equal wants: 33 each and the one left to the first.
        let d = decide(&pods, &budget(100), &mut rng());
        assert_eq!(counts(&d), [(0, 34), (1, 33), (2, 33)]);
        assert_eq!(decide(&pods, &budget(0), &mut rng()).sheds, []);

        let drain = PodView {
            state: PodState::Drain,
            ..pod(50)
        };
        let pods = [pod(500), drain, pod(0)];
        let d = decide(&pods, &budget(60), &mut rng());
        assert_eq!(
            d.sheds,
            [
                shed(0, 10, ShedReason::imbalance),
                shed(1, 50, ShedReason::drain)
            ]
        );
        let d = decide(&pods, &budget(30), &mut rng());
        assert_eq!(d.sheds, [shed(1, 30, ShedReason::drain)]);
    }

    #[test]
    fn a_pod_with_twice_the_capacity_holds_twice_the_share() {
        let big = |reported| PodView {
            weight: 2000.0,
            ..pod(reported)
        };
        let small = |reported| PodView {
            weight: 1000.0,
            ..pod(reported)
        };
        // 600 over a weight of 4000: targets 300, 150, 150.
        assert_eq!(
            decide(&[big(300), small(150), small(150)], &settings(), &mut rng()).sheds,
            []
        );
        assert_eq!(
            counts(&decide(
                &[big(400), small(100), small(100)],
                &settings(),
                &mut rng()
            )),
            [(0, 100)]
        );
        // Even counts are not even shares: the small pods shed to the big.
        assert_eq!(
            counts(&decide(
                &[big(0), small(300), small(300)],
                &settings(),
                &mut rng()
            )),
            [(1, 150), (2, 150)]
        );
    }

    #[test]
    fn even_pods_shed_nothing_and_rounds_settle() {
        let d = decide(&[pod(300), pod(300), pod(300)], &settings(), &mut rng());
        assert_eq!(d, Decision::default());
        // Play rounds: shed connections reconnect to the least-loaded pod,
        // one by one. Shedding stops once balanced and never starts again.
        let mut loads = vec![500, 500, 500, 0, 0];
        let mut rng = rng();
        let mut rounds_with_sheds = 0;
        for _ in 0..20 {
            let pods: Vec<PodView> = loads.iter().map(|&l| pod(l)).collect();
            let budget = ShedSettings {
                budget: 150,
                ..settings()
            };
            let d = decide(&pods, &budget, &mut rng);
            if d.sheds.is_empty() {
                continue;
            }
            rounds_with_sheds += 1;
            let mut moving = 0;
            for s in &d.sheds {
                loads[s.pod] -= s.count;
                moving += s.count;
            }
            for _ in 0..moving {
                let least = (0..loads.len()).min_by_key(|&i| loads[i]).unwrap_or(0);
                loads[least] += 1;
            }
        }
        assert_eq!(loads, [300, 300, 300, 300, 300]);
        assert_eq!(rounds_with_sheds, 4, "600 connections at 150 a round");
    }

    #[test]
    fn nothing_to_share_sheds_nothing() {
        assert_eq!(decide(&[], &settings(), &mut rng()), Decision::default());
        let drain = PodView {
            state: PodState::Drain,
            ..pod(10)
        };
        assert_eq!(
            decide(&[drain], &settings(), &mut rng()),
            Decision::default()
        );
        let weightless = |reported| PodView {
            weight: 0.0,
            ..pod(reported)
        };
        let d = decide(&[weightless(500), weightless(0)], &settings(), &mut rng());
        assert_eq!(d, Decision::default());
        // One bad weight spoils the mean, as a stale report would; drains
        // still go.
        let d = decide(&[pod(500), weightless(0), drain], &settings(), &mut rng());
        assert_eq!(d.sheds, [shed(2, 10, ShedReason::drain)]);
        assert_eq!(d.imbalance, 0.0);
        // No load at all.
        assert_eq!(
            decide(&[pod(0), pod(0)], &settings(), &mut rng()),
            Decision::default()
        );
    }

    #[test]
    fn extreme_inputs_neither_panic_nor_overflow() {
        let max = pod(u64::MAX);
        let weights = [
            0.0,
            -1.0,
            f64::NAN,
            f64::INFINITY,
            f64::MIN_POSITIVE,
            1e-300,
            1e300,
            f64::MAX,
        ];
        let tolerances = [0.1, 0.0, -5.0, f64::NAN, f64::INFINITY, f64::MAX];
        let budgets = [0, 1, 3, u64::MAX];
        let mut rng = rng();
        for &weight in &weights {
            for &tolerance in &tolerances {
                for &budget in &budgets {
                    let settings = ShedSettings { tolerance, budget };
                    let odd = PodView { weight, ..max };
                    let drain = PodView {
                        state: PodState::Drain,
                        ..max
                    };
                    let sets: [&[PodView]; 4] = [
                        &[max, max, pod(0)],
                        &[odd, pod(0), max],
                        &[max, drain, drain, pod(1)],
                        &[odd, odd, drain],
                    ];
                    for pods in sets {
                        let d = decide(pods, &settings, &mut rng);
                        let sum = d.sheds.iter().fold(0u128, |s, x| s + u128::from(x.count));
                        assert!(sum <= u128::from(budget), "{pods:?} {settings:?}");
                        assert!(d.imbalance.is_finite() && d.imbalance >= 0.0, "{d:?}");
                    }
                }
            }
        }
        // Counts at u64::MAX: all of a drain and an excess (the drain's
        // load counts toward the mean: 2 * MAX over 3 pods), and a drain
        // of u64::MAX takes a budget of u64::MAX whole.
        let drain = |own| PodView {
            state: PodState::Drain,
            own,
            movable: own,
            ..max
        };
        let pods = [max, pod(0), pod(0), drain(1000)];
        let d = decide(&pods, &settings(), &mut rng);
        assert_eq!(d.sheds.len(), 2, "{d:?}");
        assert_eq!(d.sheds[1], shed(3, 1000, ShedReason::drain));
        let excess = u64::MAX / 3;
        assert!(d.sheds[0].count.abs_diff(excess) < 1 << 12, "{d:?}");
        let pods = [max, pod(0), pod(0), drain(u64::MAX)];
        let d = decide(&pods, &settings(), &mut rng);
        assert_eq!(d.sheds, [shed(3, u64::MAX, ShedReason::drain)]);
    }

    #[test]
    fn spread_sums_to_the_budget_and_never_exceeds_a_want() {
        assert_eq!(spread(&[], 5), Vec::<u64>::new());
        assert_eq!(spread(&[3, 4], 100), [3, 4]);
        assert_eq!(spread(&[1, 1, 1], 2), [1, 1, 0]);
        assert_eq!(spread(&[10, 30], 20), [5, 15]);
        assert_eq!(
            spread(&[u64::MAX, u64::MAX], u64::MAX),
            [u64::MAX / 2 + 1, u64::MAX / 2]
        );
    }

    #[test]
    fn the_reason_is_its_metric_label_value() {
        use prometheus_client::encoding::EncodeLabelSet;
        use prometheus_client::metrics::counter::Counter;
        use prometheus_client::metrics::family::Family;
        use prometheus_client::registry::Registry;

        #[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
        struct Labels {
            reason: ShedReason,
        }
        let family = Family::<Labels, Counter>::default();
        family
            .get_or_create(&Labels {
                reason: ShedReason::imbalance,
            })
            .inc();
        family
            .get_or_create(&Labels {
                reason: ShedReason::drain,
            })
            .inc();
        let mut registry = Registry::default();
        registry.register("sheds", "test", family);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        assert!(
            text.contains(r#"sheds_total{reason="imbalance"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"sheds_total{reason="drain"} 1"#), "{text}");
    }

    fn any_state() -> impl Strategy<Value = PodState> {
        prop_oneof![
            Just(PodState::Ready),
            Just(PodState::Drain),
            Just(PodState::Maint),
            Just(PodState::Unknown),
        ]
    }

    fn any_count() -> impl Strategy<Value = u64> {
        prop_oneof![0..2000u64, any::<u64>(), Just(u64::MAX)]
    }

    fn any_pod() -> impl Strategy<Value = PodView> {
        (
            any_count(),
            prop_oneof![0.5..4000.0f64, any::<f64>()],
            any_count(),
            any_count(),
            prop::bool::weighted(0.9),
            any_state(),
            any::<bool>(),
        )
            .prop_map(
                |(reported, weight, own, movable, fresh, state, shedding)| PodView {
                    reported,
                    weight,
                    own,
                    movable,
                    fresh,
                    state,
                    shedding,
                },
            )
    }

    proptest! {
        #[test]
        fn sheds_stay_within_budget_and_movable(
            pods in prop::collection::vec(any_pod(), 0..8),
            tolerance in prop_oneof![0.01..1.0f64, any::<f64>()],
            budget in any_count(),
            seed in any::<u64>(),
        ) {
            let settings = ShedSettings { tolerance, budget };
            let d = decide(&pods, &settings, &mut StdRng::seed_from_u64(seed));
            let sum = d.sheds.iter().fold(0u128, |s, x| s + u128::from(x.count));
            prop_assert!(sum <= u128::from(budget));
            let mut last = None;
            for s in &d.sheds {
                let pod = &pods[s.pod];
                prop_assert!(s.count > 0);
                prop_assert!(s.count <= pod.movable.min(pod.own));
                prop_assert!(pod.fresh);
                prop_assert_eq!(s.reason == ShedReason::drain, pod.state == PodState::Drain);
                prop_assert!(last < Some(s.pod), "one entry per pod, in order");
                last = Some(s.pod);
            }
            prop_assert!(d.imbalance.is_finite() && d.imbalance >= 0.0);
        }
    }
}
