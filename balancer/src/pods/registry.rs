//! The set of pods this balancer can send connections to, ranked for each
//! new connection.
//!
//! The set changes while connections run ([`PodRegistry::set_pods`], from a
//! config reload or discovery). A pod that leaves is remembered until
//! nothing holds it any more (its last connection ended, its poller
//! stopped); then its metric series are removed, so that the scrape and
//! memory follow the pods of now, not every pod ever discovered.
//!
//! Failures and successes of dials are recorded here too
//! ([`PodRegistry::record_fault`], [`PodRegistry::record_success`]), so
//! that ejection and its logging are one rule whichever path (WebSocket
//! dial or plain HTTP) saw them.

use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Instant;

use common::PodAddress;
use common::selection::{self, Health};

use super::figures::Moment;
use super::pod::{Moved, Pod, PodSnapshot};
use super::replicas::ReplicaEstimate;
use super::select_cell::{self, SelectCell};
use super::settings::Settings;
use super::shed::Imbalance;
use crate::observe::metrics::counters::{PodCounters, PodFamilies};

/// How a dial or request to a pod failed, for ejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Down or unreachable: back with its next good report.
    Unreachable,
    /// Answered without switching to WebSocket: held out for `cacheTTL`.
    Misbehaved,
}

/// Pods in the order to try them for one new connection.
#[derive(Debug)]
pub struct Candidates {
    /// Best first.
    pub pods: Vec<Arc<Pod>>,
    /// How many at the front are not ejected.
    pub usable: usize,
    /// Every accepting pod is at a hard limit.
    pub all_full: bool,
    /// The selection settings they were ranked with (the early-refresh
    /// rule of their leases, the rebalancing rules of their relays): read
    /// once per connection.
    pub settings: Settings,
}

/// All pods known to this balancer.
///
/// The pod set can change while connections run ([`PodRegistry::set_pods`],
/// from a config reload or discovery): a pod that leaves gets no new
/// connections, and its relayed connections keep it alive through their
/// leases until they end.
#[derive(Debug)]
pub struct PodRegistry {
    /// The pods new connections may go to, in configuration order.
    pods: RwLock<Vec<Arc<Pod>>>,
    /// Pods that left the set, so that metrics still count the
    /// connections relayed to them, and remove their series once they are
    /// gone; weak, so a pod is still freed with its last connection.
    leaving: Mutex<Vec<Departed>>,
    /// Selection settings; replaced whole by a reload, read once per
    /// decision.
    settings: RwLock<Settings>,
    /// Where pods that join later get their counters.
    metrics: PodFamilies,
    /// How many replicas share the pods, as their reports tell.
    replicas: ReplicaEstimate,
    /// The imbalance the last rebalancing round saw.
    imbalance: Imbalance,
    started: Instant,
}

/// A pod that left the set, as the registry remembers it until its series
/// are removed.
#[derive(Debug)]
struct Departed {
    /// The pod, while anything (a connection's lease, its poller) holds it.
    pod: Weak<Pod>,
    /// Its counters: what [`PodFamilies::retire`] removes, and its URL.
    counters: PodCounters,
}

impl Departed {
    /// The pod while something holds it.
    fn alive(&self) -> Option<Arc<Pod>> {
        self.pod.upgrade()
    }
}

/// What [`PodRegistry::set_pods`] changed.
#[derive(Debug, Default)]
pub struct PodSetChange {
    /// Pods that joined: they need a poller.
    pub added: Vec<Arc<Pod>>,
    /// Pods that left: no new connections; their poller stops.
    pub removed: Vec<Arc<Pod>>,
}

impl PodSetChange {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

impl PodRegistry {
    /// A registry of the given pods, whose counters belong to `metrics`.
    pub fn new(addresses: Vec<PodAddress>, settings: Settings, metrics: &PodFamilies) -> Self {
        PodRegistry {
            pods: RwLock::new(
                addresses
                    .into_iter()
                    .map(|a| {
                        let counters = metrics.for_pod(&a.url);
                        Arc::new(Pod::new(a, counters))
                    })
                    .collect(),
            ),
            leaving: Mutex::new(Vec::new()),
            replicas: ReplicaEstimate::new(settings.replicas),
            imbalance: Imbalance::default(),
            settings: RwLock::new(settings),
            metrics: metrics.clone(),
            started: Instant::now(),
        }
    }

    /// Every pod, in configuration order.
    pub fn pods(&self) -> Vec<Arc<Pod>> {
        self.pods.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Makes `addresses` the pod set, in that order. Pods already known
    /// (same URL) stay as they are, with their report and counts; new ones
    /// join (with slow start once their first report arrives, when it is
    /// on); the others leave: no new connections, while their relayed
    /// connections run on until they end.
    pub fn set_pods(&self, addresses: Vec<PodAddress>) -> PodSetChange {
        let mut pods = self.pods.write().unwrap_or_else(|p| p.into_inner());
        let mut change = PodSetChange::default();
        let mut next = Vec::with_capacity(addresses.len());
        for address in addresses {
            if next.iter().any(|p: &Arc<Pod>| p.address.url == address.url) {
                continue;
            }
            match pods.iter().find(|p| p.address.url == address.url) {
                Some(pod) => next.push(pod.clone()),
                None => {
                    let counters = self.metrics.for_pod(&address.url);
                    let pod = Arc::new(Pod::new(address, counters));
                    change.added.push(pod.clone());
                    next.push(pod);
                }
            }
        }
        for pod in pods.iter() {
            if !next.iter().any(|p| Arc::ptr_eq(p, pod)) {
                pod.removed.cancel();
                change.removed.push(pod.clone());
            }
        }
        *pods = next;
        let mut leaving = self.leaving.lock().unwrap_or_else(|p| p.into_inner());
        leaving.extend(change.removed.iter().map(|pod| Departed {
            pod: Arc::downgrade(pod),
            counters: pod.metrics.clone(),
        }));
        self.forget_gone(&pods, &mut leaving);
        drop(leaving);
        drop(pods);
        for pod in &change.added {
            tracing::info!(pod = %pod.address.url, "pod added");
        }
        for pod in &change.removed {
            tracing::info!(pod = %pod.address.url, relayed = pod.relayed(), "pod removed");
        }
        change
    }

    /// The selection settings, with the replica count as learned so far.
    pub fn settings(&self) -> Settings {
        Settings {
            replicas: self.replicas.replicas(),
            ..*self.settings.read().unwrap_or_else(|p| p.into_inner())
        }
    }

    /// Replaces the selection settings (a reload): they apply to the next
    /// decision. A changed `replicas` hint restarts the estimate from it.
    pub fn set_settings(&self, settings: Settings) {
        let mut current = self.settings.write().unwrap_or_else(|p| p.into_inner());
        if current.replicas != settings.replicas {
            self.replicas.reset(settings.replicas);
        }
        *current = settings;
    }

    /// The imbalance the last rebalancing round saw.
    pub fn imbalance(&self) -> &Imbalance {
        &self.imbalance
    }

    /// A pod's count moved between two reports (see [`Pod::record_report`]):
    /// what the replica estimate learns from.
    pub fn report_moved(&self, moved: Moved) {
        self.replicas.observe(moved.reported, moved.own);
    }

    /// Whether `pod` joined after the balancer's first `cacheTTL`: its first
    /// report then starts slow start (pods known at start-up are warm).
    pub fn joined_late(&self, pod: &Pod) -> bool {
        pod.added_at.saturating_duration_since(self.started) > self.settings().cache_ttl
    }

    /// Every pod's current view, in configuration order.
    pub fn snapshots(&self) -> Vec<PodSnapshot> {
        let settings = self.settings();
        self.pods().iter().map(|p| p.snapshot(&settings)).collect()
    }

    /// Pods that left the set and still have connections relayed to them:
    /// not candidates for anything, listed for metrics only.
    pub fn leaving_snapshots(&self) -> Vec<PodSnapshot> {
        let settings = self.settings();
        let leaving = self.leaving.lock().unwrap_or_else(|p| p.into_inner());
        leaving
            .iter()
            .filter_map(Departed::alive)
            .filter(|pod| pod.relayed() > 0)
            .map(|pod| pod.snapshot(&settings))
            .collect()
    }

    /// Removes the series of departed pods that nothing holds any more
    /// (their last connection ended), and forgets them. Run on every pod
    /// set change and before every scrape, so a scrape never shows a pod
    /// that is gone.
    pub fn sweep_departed(&self) {
        let pods = self.pods.read().unwrap_or_else(|p| p.into_inner());
        let mut leaving = self.leaving.lock().unwrap_or_else(|p| p.into_inner());
        self.forget_gone(&pods, &mut leaving);
    }

    /// [`PodRegistry::sweep_departed`], under the caller's locks: the pod
    /// set's, so that no pod of the same URL joins meanwhile.
    fn forget_gone(&self, pods: &[Arc<Pod>], leaving: &mut Vec<Departed>) {
        let (gone, kept): (Vec<Departed>, Vec<Departed>) = std::mem::take(leaving)
            .into_iter()
            .partition(|d| d.alive().is_none());
        *leaving = kept;
        // A URL still in use shares its series (the counters of a URL are
        // one set, whichever pod of that URL counts into them): the pod set
        // or a departed pod still held keep them.
        let in_use = |url: &str| {
            pods.iter().any(|p| p.address.url == url)
                || leaving
                    .iter()
                    .any(|d| d.alive().is_some_and(|p| p.address.url == url))
        };
        for departed in gone {
            let url = departed.counters.url();
            if in_use(url) {
                continue;
            }
            self.metrics.retire(&departed.counters);
            tracing::debug!(pod = %url, "departed pod's metric series removed");
        }
    }

    /// Whether at least one pod can take a new connection.
    pub fn has_usable_pod(&self) -> bool {
        self.snapshots()
            .iter()
            .any(|s| s.accepting && s.health != Health::Ejected)
    }

    /// The first `k` pods to try for one new connection, best first
    /// (`k`: the failover attempts), with the settings they were ranked
    /// with (read once for the whole connection).
    ///
    /// One pass over the pods, without a lock per pod (each pod's inputs
    /// are published in its [`SelectCell`](super::select_cell::SelectCell))
    /// and without ranking past the first `k`, so a handshake costs about
    /// the same at a thousand pods as at three.
    pub fn candidates(&self, k: usize) -> Candidates {
        let settings = self.settings();
        let pods = self.pods.read().unwrap_or_else(|p| p.into_inner());
        let moment = Moment::new(select_cell::now(), &settings);
        let fallback = if SelectCell::capacity_seen() {
            selection::fallback_share(pods.iter().map(|p| p.capacity()))
        } else {
            1.0
        };
        let ranking = selection::rank_top(
            pods.len(),
            #[inline(always)]
            |i| {
                if let Some(ahead) = pods.get(i + 6) {
                    ahead.prefetch();
                }
                pods[i].load(&moment, settings.max_per_pod)
            },
            fallback,
            k,
            settings.strategy,
            &mut rand::rng(),
        );
        Candidates {
            pods: ranking.order.iter().map(|&i| pods[i].clone()).collect(),
            usable: ranking.usable,
            all_full: ranking.all_full,
            settings,
        }
    }

    /// Counts a failure against `pod` toward its ejection, and logs the
    /// ejection. A pod that answered, but not with a WebSocket switch,
    /// stays out past its next good poll; one that could not be reached
    /// (down, restarting) is back as soon as it reports again, and is
    /// re-polled at once (so a silent host is ejected within a few poll
    /// timeouts).
    pub fn record_fault(&self, pod: &Pod, fault: Fault) {
        let settings = self.settings();
        let ejected = match fault {
            Fault::Misbehaved => pod.record_dial_failure(settings.eject_after, settings.cache_ttl),
            Fault::Unreachable => {
                pod.recheck();
                pod.record_failure(settings.eject_after)
            }
        };
        if ejected {
            self.log_condition(pod);
        }
    }

    /// A dial or request reached `pod` and it answered as a working pod:
    /// it is back if dials had ejected it (logged once).
    pub fn record_success(&self, pod: &Pod) {
        if pod.record_dial_success() {
            self.log_condition(pod);
        }
    }

    /// Logs the pod's change of condition (ejected by dials, or back after
    /// one succeeded), unless the poller logged it first.
    fn log_condition(&self, pod: &Pod) {
        if let Some(change) = pod.condition_change(&self.settings()) {
            change.log(&pod.address.url);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::metrics::counters::PodFamilies;
    use crate::pods::pod::PollBase;
    use crate::pods::pod::tests::{report, settings};
    use std::time::Duration;

    fn addresses(urls: &[&str]) -> Vec<PodAddress> {
        urls.iter()
            .map(|u| PodAddress::parse(u, "/metric").unwrap())
            .collect()
    }

    fn urls(pods: &[Arc<Pod>]) -> Vec<&str> {
        pods.iter().map(|p| p.address.url.as_str()).collect()
    }

    #[test]
    fn set_pods_keeps_known_pods_adds_new_and_removes_gone() {
        let families = PodFamilies::default();
        let a = "http://10.0.0.1:8080";
        let b = "http://10.0.0.2:8080";
        let c = "http://10.0.0.3:8080";
        let registry = PodRegistry::new(
            addresses(&[a, b]),
            settings(Duration::from_secs(30)),
            &families,
        );
        let kept = registry.pods()[1].clone();
        kept.record_report(PollBase::default(), report("ready"), false);

        let change = registry.set_pods(addresses(&[b, c, c]));
        assert_eq!(urls(&change.added), [c]);
        assert_eq!(urls(&change.removed), [a]);
        assert!(change.removed[0].is_removed());
        assert_eq!(urls(&registry.pods()), [b, c], "deduplicated, in order");
        assert!(
            Arc::ptr_eq(&registry.pods()[0], &kept),
            "same pod, same report"
        );
        assert_eq!(registry.snapshots()[0].reported, Some(1));
        assert!(!kept.is_removed());

        assert!(registry.set_pods(addresses(&[b, c])).is_empty());
    }

    #[test]
    fn a_removed_pod_gets_no_new_connection_but_keeps_its_own() {
        let families = PodFamilies::default();
        let a = "http://10.0.0.1:8080";
        let b = "http://10.0.0.2:8080";
        let registry = PodRegistry::new(
            addresses(&[a]),
            settings(Duration::from_secs(30)),
            &families,
        );
        let pod_a = registry.pods()[0].clone();
        pod_a.record_report(PollBase::default(), report("ready"), false);
        let mut lease = pod_a.lease(None);
        lease.settle();
        drop(pod_a);

        let change = registry.set_pods(addresses(&[b]));
        assert_eq!(urls(&change.removed), [a]);
        drop(change);
        for _ in 0..20 {
            assert_eq!(urls(&registry.candidates(3).pods), [b]);
        }
        // The lease alone keeps the removed pod, and counts into it.
        assert_eq!(lease.pod().relayed(), 1);
        assert!(lease.pod().is_removed());
        let weak = Arc::downgrade(&lease.pod);
        drop(lease);
        assert!(weak.upgrade().is_none(), "gone with its last connection");
    }

    #[test]
    fn a_pod_that_joins_late_warms_up() {
        let families = PodFamilies::default();
        let settings = Settings {
            slow_start: Duration::from_secs(60),
            ..settings(Duration::ZERO)
        };
        let registry = PodRegistry::new(Vec::new(), settings, &families);
        let change = registry.set_pods(addresses(&["http://10.0.0.9:8080"]));
        let pod = &change.added[0];
        let recorded = Instant::now();
        while recorded.elapsed().is_zero() {}
        assert!(registry.joined_late(pod));
        pod.record_report(
            PollBase::default(),
            report("ready"),
            registry.joined_late(pod),
        );
        let warmup = pod.snapshot(&registry.settings()).warmup;
        assert!(warmup < 0.5, "slow start applies, got {warmup}");
    }
}

/// The cost of one ranking at 3, 100 and 1,000 pods, with the pods'
/// cells in cache and evicted: a micro-measure to run by hand (release
/// build) when changing selection, beside `cargo xtask bench pod-count`.
/// It prints times and asserts only the ranking: never wall time.
///
/// `cargo test --release -p wsbalancer --lib ranking_cost -- --ignored --nocapture`
#[cfg(test)]
mod ranking_cost {
    use super::*;
    use crate::observe::metrics::counters::PodFamilies;
    use crate::pods::pod::PollBase;
    use crate::pods::pod::tests::{report, settings};
    use std::time::Duration;

    #[test]
    #[ignore = "a measurement, run by hand"]
    fn ranking_cost() {
        for n in [3usize, 100, 1000] {
            let families = PodFamilies::default();
            let addresses = (0..n)
                .map(|i| {
                    let url = format!("http://10.0.{}.{}:8080", i / 250, i % 250 + 1);
                    PodAddress::parse(&url, "/metric").unwrap()
                })
                .collect();
            let registry =
                PodRegistry::new(addresses, settings(Duration::from_secs(30)), &families);
            for pod in registry.pods() {
                pod.record_report(PollBase::default(), report("ready"), false);
            }
            let rounds = 20_000u32;
            let start = Instant::now();
            for _ in 0..rounds {
                assert_eq!(registry.candidates(3).pods.len(), 3);
            }
            let hot = start.elapsed() / rounds;
            // Evicted: 8 MiB written between rankings (the L2 is 2 MiB).
            let mut evict = vec![0u8; 8 << 20];
            let mut cold = Duration::ZERO;
            for round in 0..2000u32 {
                for byte in evict.iter_mut().step_by(64) {
                    *byte = byte.wrapping_add(round as u8);
                }
                let start = Instant::now();
                assert_eq!(registry.candidates(3).pods.len(), 3);
                cold += start.elapsed();
            }
            eprintln!(
                "{n} pods: {hot:?} per ranking in cache, {:?} evicted",
                cold / 2000
            );
        }
    }
}
