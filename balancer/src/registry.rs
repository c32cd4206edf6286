//! The pods this balancer can send connections to, and what it knows about
//! each: the last report, what it opened and saw close since, and health.
//!
//! The effective load of a pod is its reported count plus the connections
//! this balancer opened to it minus those it saw close, both counted since
//! the moment the report was *requested*. Without that adjustment every
//! connection in one `cacheTTL` window would go to the same pod.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use common::selection::{self, Health, PodLoad};
use common::{PodAddress, Report};

/// Consecutive failed polls or dials after which a pod is ejected.
pub const EJECT_AFTER_FAILURES: u32 = 3;

/// One pod.
#[derive(Debug)]
pub struct Pod {
    /// Where it is; its `url` names it everywhere.
    pub address: PodAddress,
    /// Connections this balancer opened (or is opening) to the pod, ever.
    opened: AtomicU64,
    /// Of those, how many have ended (or failed to open).
    closed: AtomicU64,
    /// Report and health, changed by the poller and by dial outcomes.
    status: Mutex<Status>,
}

#[derive(Debug, Default)]
struct Status {
    /// Last good report and when it arrived.
    report: Option<(Report, Instant)>,
    /// `opened`/`closed` when the last good report was requested.
    base: PollBase,
    /// Failed polls or dials since the last success.
    consecutive_failures: u32,
    /// Whether the pod is currently ejected, so changes are logged once.
    ejected: bool,
}

/// This balancer's own counters at the moment a poll was sent.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PollBase {
    opened: u64,
    closed: u64,
}

/// A point-in-time view of a pod, for the admin endpoints.
#[derive(Debug, Clone)]
pub struct PodSnapshot {
    /// Configured URL.
    pub url: String,
    /// `podName` from the last report.
    pub pod_name: Option<String>,
    /// Last reported `agentsConnections`.
    pub reported: Option<u64>,
    /// Age of the last good report.
    pub report_age: Option<Duration>,
    /// Reported count adjusted by this balancer's own opens and closes.
    pub effective: u64,
    /// Connections this balancer is relaying to the pod now.
    pub relayed: u64,
    /// Health as selection sees it.
    pub health: Health,
    /// Whether the pod accepts new connections (its reported state).
    pub accepting: bool,
}

/// Marks one connection as counted against a pod; dropping it counts the
/// connection closed. Taken before the dial so that concurrent new
/// connections already see it.
#[derive(Debug)]
pub struct Lease {
    pod: Arc<Pod>,
}

impl Lease {
    /// URL of the pod this lease counts against.
    pub fn pod_url(&self) -> &str {
        &self.pod.address.url
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.pod.closed.fetch_add(1, Ordering::Relaxed);
    }
}

impl Pod {
    /// A pod with no report yet.
    pub fn new(address: PodAddress) -> Self {
        Pod {
            address,
            opened: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            status: Mutex::new(Status::default()),
        }
    }

    fn status(&self) -> MutexGuard<'_, Status> {
        // A panic while holding this lock cannot leave the counters
        // inconsistent in a way worse than a stale value: keep going.
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a new connection to this pod until the lease is dropped.
    pub fn lease(self: &Arc<Self>) -> Lease {
        self.opened.fetch_add(1, Ordering::Relaxed);
        Lease { pod: self.clone() }
    }

    /// Connections this balancer has open (or opening) to the pod.
    pub fn relayed(&self) -> u64 {
        let closed = self.closed.load(Ordering::Relaxed);
        self.opened.load(Ordering::Relaxed).saturating_sub(closed)
    }

    /// Snapshot of the local counters, taken just before a poll is sent.
    pub fn poll_base(&self) -> PollBase {
        PollBase {
            closed: self.closed.load(Ordering::Relaxed),
            opened: self.opened.load(Ordering::Relaxed),
        }
    }

    /// Stores a good report. Returns true when the pod was ejected before
    /// (so the caller can log that it is back).
    pub fn record_report(&self, base: PollBase, report: Report) -> bool {
        let mut status = self.status();
        status.report = Some((report, Instant::now()));
        status.base = base;
        status.consecutive_failures = 0;
        std::mem::replace(&mut status.ejected, false)
    }

    /// Counts a failed poll or dial. Returns true when this failure ejects
    /// the pod (so the caller can log it once).
    pub fn record_failure(&self) -> bool {
        let mut status = self.status();
        status.consecutive_failures = status.consecutive_failures.saturating_add(1);
        let eject = status.consecutive_failures >= EJECT_AFTER_FAILURES && !status.ejected;
        if eject {
            status.ejected = true;
        }
        eject
    }

    /// A dial reached the pod: it is alive whatever its polls say.
    pub fn record_dial_success(&self) {
        let mut status = self.status();
        status.consecutive_failures = 0;
        status.ejected = false;
    }

    /// Current view of the pod; `cache_ttl` decides staleness.
    pub fn snapshot(&self, cache_ttl: Duration) -> PodSnapshot {
        let status = self.status();
        let opened = self.opened.load(Ordering::Relaxed);
        let closed = self.closed.load(Ordering::Relaxed);
        let relayed = opened.saturating_sub(closed);
        let now = Instant::now();
        let (effective, report_age, stale) = match &status.report {
            Some((report, at)) => {
                let since_opened = opened.saturating_sub(status.base.opened);
                let since_closed = closed.saturating_sub(status.base.closed);
                let effective = report
                    .agents_connections
                    .saturating_add(since_opened)
                    .saturating_sub(since_closed);
                let age = now.saturating_duration_since(*at);
                (effective, Some(age), age > cache_ttl)
            }
            None => (relayed, None, true),
        };
        let health = if status.ejected {
            Health::Ejected
        } else if stale {
            Health::Unknown
        } else {
            Health::Healthy
        };
        let report = status.report.as_ref().map(|(r, _)| r);
        PodSnapshot {
            url: self.address.url.clone(),
            pod_name: report.and_then(|r| r.pod_name.clone()),
            reported: report.map(|r| r.agents_connections),
            report_age,
            effective,
            relayed,
            health,
            accepting: report.is_none_or(|r| r.state.accepts_new()),
        }
    }
}

/// Pods in the order to try them for one new connection.
#[derive(Debug)]
pub struct Candidates {
    /// Best first.
    pub pods: Vec<Arc<Pod>>,
    /// How many at the front are not ejected.
    pub usable: usize,
}

/// All pods known to this balancer.
#[derive(Debug)]
pub struct PodRegistry {
    pods: RwLock<Vec<Arc<Pod>>>,
    cache_ttl: Duration,
}

impl PodRegistry {
    /// A registry of the given pods.
    pub fn new(addresses: Vec<PodAddress>, cache_ttl: Duration) -> Self {
        PodRegistry {
            pods: RwLock::new(
                addresses
                    .into_iter()
                    .map(|a| Arc::new(Pod::new(a)))
                    .collect(),
            ),
            cache_ttl,
        }
    }

    /// Every pod, in configuration order.
    pub fn pods(&self) -> Vec<Arc<Pod>> {
        self.pods.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// How old a report may be before it is stale.
    pub fn cache_ttl(&self) -> Duration {
        self.cache_ttl
    }

    /// Every pod's current view, in configuration order.
    pub fn snapshots(&self) -> Vec<PodSnapshot> {
        self.pods()
            .iter()
            .map(|p| p.snapshot(self.cache_ttl))
            .collect()
    }

    /// Whether at least one pod can take a new connection.
    pub fn has_usable_pod(&self) -> bool {
        self.snapshots()
            .iter()
            .any(|s| s.accepting && s.health != Health::Ejected)
    }

    /// Ranks the pods for one new connection.
    pub fn candidates(&self) -> Candidates {
        let pods = self.pods();
        let loads: Vec<PodLoad> = pods
            .iter()
            .map(|p| {
                let s = p.snapshot(self.cache_ttl);
                PodLoad {
                    load: s.effective,
                    health: s.health,
                    accepting: s.accepting,
                }
            })
            .collect();
        let ranking = selection::rank(&loads, &mut rand::rng());
        Candidates {
            pods: ranking.order.iter().map(|&i| pods[i].clone()).collect(),
            usable: ranking.usable,
        }
    }
}
