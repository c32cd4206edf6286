//! Live rebalancing (`rebalance: true`): rounds, about a second apart and
//! jittered so that replicas do not act in step, in which this balancer
//! sheds its own share of each overloaded pod's excess (and of each
//! draining pod's connections), paced by `rebalanceRate`. The decision is
//! `common::rebalance::decide`, from the same reports selection uses; here
//! it is turned into requests on each pod's [`ShedSignal`](super::shed),
//! one log line per round and the imbalance gauge.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::rebalance::{self, PodView, ShedSettings};
use common::selection::Health;
use rand::Rng;
use tokio_util::sync::CancellationToken;

use super::pod::PodSnapshot;
use super::registry::PodRegistry;

/// Time between two rounds, before jitter: short enough that a pace of a
/// few connections per second is spread evenly, long enough that a round
/// costs nothing.
const ROUND: Duration = Duration::from_secs(1);

/// Runs rounds until `stop`.
pub async fn run(registry: Arc<PodRegistry>, stop: CancellationToken) {
    // Pods (by URL) this replica shed from for an imbalance last round.
    let mut shedding = HashSet::new();
    loop {
        let jitter = rand::rng().random_range(0.8..1.2);
        let round = ROUND.mul_f64(jitter);
        tokio::select! {
            () = tokio::time::sleep(round) => {}
            () = stop.cancelled() => return,
        }
        shedding = round_once(&registry, round, &shedding);
    }
}

/// One round: decide from the pods' current view, and ask each pod's
/// relays for their share. `shedding` is what the round before shed from
/// for an imbalance; returns the same for this round.
pub fn round_once(
    registry: &PodRegistry,
    round: Duration,
    shedding: &HashSet<String>,
) -> HashSet<String> {
    let selection = registry.settings();
    let settings = selection.rebalance;
    // The pods that are part of the cluster now: a pod listed but never
    // heard from (not up yet) or ejected (down) holds nothing to move and
    // takes nothing; one whose report merely got old is kept, and stops
    // imbalance shedding until it reports again.
    let pods: Vec<_> = registry
        .pods()
        .into_iter()
        .map(|pod| {
            let snapshot = pod.snapshot(&selection);
            (pod, snapshot)
        })
        .filter(|(_, s)| s.reported.is_some() && s.health != Health::Ejected)
        .collect();
    let views: Vec<PodView> = pods
        .iter()
        .map(|(pod, s)| PodView {
            shedding: shedding.contains(&pod.address.url),
            ..view(s)
        })
        .collect();
    let pods: Vec<_> = pods.into_iter().map(|(pod, _)| pod).collect();
    let views = with_weights(views);
    // Paced: rate x the round's length, the fraction rounded at random.
    let budget = settings.rate as f64 * round.as_secs_f64();
    let mut rng = rand::rng();
    let budget = budget.floor() as u64 + u64::from(rng.random_bool(budget.fract()));
    let decision = rebalance::decide(
        &views,
        &ShedSettings {
            tolerance: settings.tolerance,
            budget,
        },
        &mut rng,
    );
    registry.imbalance().set(decision.imbalance);
    if !settings.enabled {
        return HashSet::new();
    }
    let mut total = 0u64;
    for pod in registry.pods() {
        // Every pod's request is replaced, so a pod that needs nothing any
        // more stops shedding what an earlier round asked.
        pod.shed.request(0, rebalance::ShedReason::imbalance);
    }
    for shed in &decision.sheds {
        if let Some(pod) = pods.get(shed.pod) {
            pod.shed.request(shed.count, shed.reason);
            total = total.saturating_add(shed.count);
        }
    }
    if total > 0 {
        tracing::info!(
            shed = total,
            pods = decision.sheds.len(),
            imbalance = decision.imbalance,
            "rebalancing round"
        );
    }
    decision
        .sheds
        .iter()
        .filter(|shed| shed.reason == rebalance::ShedReason::imbalance)
        .filter_map(|shed| pods.get(shed.pod))
        .map(|pod| pod.address.url.clone())
        .collect()
}

/// What the decision needs of one pod (its weight is filled in after).
fn view(snapshot: &PodSnapshot) -> PodView {
    PodView {
        reported: snapshot.reported.unwrap_or(0),
        weight: snapshot.capacity.map_or(0.0, |c| c as f64),
        own: snapshot.relayed,
        // The relays themselves refuse to move a connection younger than
        // `rebalanceMinAge`, so every one of them is a candidate here.
        movable: snapshot.relayed,
        fresh: !snapshot.stale,
        state: snapshot.state,
        shedding: false,
    }
}

/// Pods that report no capacity count as the mean capacity of those that
/// do (1 when none does), as selection counts them.
fn with_weights(mut views: Vec<PodView>) -> Vec<PodView> {
    let reported: Vec<f64> = views
        .iter()
        .map(|v| v.weight)
        .filter(|w| *w > 0.0)
        .collect();
    let mean = if reported.is_empty() {
        1.0
    } else {
        reported.iter().sum::<f64>() / reported.len() as f64
    };
    for view in &mut views {
        if view.weight <= 0.0 {
            view.weight = mean;
        }
    }
    views
}
