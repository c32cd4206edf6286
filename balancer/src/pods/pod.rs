//! One pod, as this balancer knows it: the last report, what this balancer
//! opened and saw close since, and its health.
//!
//! The effective load of a pod is its reported count plus the connections
//! this balancer opened to it minus those it saw close, both counted since
//! the moment the report was *requested* (and multiplied by `replicas`, on
//! the assumption that the other replicas do the same meanwhile). A
//! connection still being dialled when a poll is sent is not yet in the
//! pod's count, so it stays in the adjustment until the next report: the
//! base of a poll counts only dials that had *settled* (answered or failed).
//! Without that adjustment every connection in one `cacheTTL` window would
//! go to the same pod. When this balancer's own opens on a pod pile up, the
//! pod's poller is woken early so the next decisions rest on a fresh count.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::selection::Health;
use common::{PodAddress, PodState, Report};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::condition::{Condition, ConditionChange};
use super::figures::Moment;
use super::select_cell::{self, Anchored, Published, SelectCell};
use super::settings::{EarlyRefresh, Settings};
use super::shed::ShedSignal;
use crate::observe::metrics::counters::PodCounters;

mod selection_read;

/// Longest a lone balancer keeps counting from an older report while every
/// newer one was taken with its own dials in flight (see [`PollBase`]):
/// past it, the newest report is the base again, so that connections the
/// balancer cannot see (clients dialling the pod directly) are not ignored
/// for longer than this.
const ANCHOR_MAX_AGE: Duration = Duration::from_secs(10);

/// One pod.
#[derive(Debug)]
pub struct Pod {
    /// Where it is; its `url` names it everywhere.
    pub address: PodAddress,
    /// Woken when the pod should be polled before its next scheduled poll.
    refresh: Notify,
    /// When the pod joined this balancer's registry.
    pub(super) added_at: Instant,
    /// Cancelled when the pod leaves the registry: its poller stops, while
    /// the connections still relayed to it (whose leases keep it alive)
    /// run until they end.
    pub(super) removed: CancellationToken,
    /// Report and health, changed by the poller and by dial outcomes.
    status: Mutex<Status>,
    /// What selection needs of `status`, republished at every change of
    /// it, so new connections read it without the lock.
    cell: SelectCell,
    /// The pod's Prometheus counters, resolved once so that a connection
    /// only bumps atomics.
    pub metrics: PodCounters,
    /// Rebalancing's requests to move some of its connections.
    pub shed: ShedSignal,
}

#[derive(Debug, Default)]
struct Status {
    /// Last good report and when it arrived.
    report: Option<(Report, Instant)>,
    /// `opened`/`closed` when the last good report was requested.
    base: PollBase,
    /// The report the effective load counts from: the last one, except
    /// while a lone balancer keeps an older, exact one (see [`PollBase`]).
    anchor: Option<Anchor>,
    /// Failed polls or dials since the last success.
    consecutive_failures: u32,
    /// Whether the pod is currently ejected, so changes are logged once.
    ejected: bool,
    /// When the pod last failed a poll or a dial.
    last_failure: Option<Instant>,
    /// Dials ejected the pod: good reports do not bring it back before
    /// this moment (its reports are fine; its upgrades are not).
    dials_failing_until: Option<Instant>,
    /// Dials answered with something other than a WebSocket switch (or a
    /// 4xx) since the last one that switched.
    broken_dials: u32,
    /// When the pod (re)joined the rotation, for slow start.
    warm_since: Option<Instant>,
    /// The condition last seen by [`Pod::condition_change`], so that each
    /// change is logged once.
    condition: Condition,
}

/// How a pod's count moved between two of its reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    /// The change of its reported count.
    pub reported: i128,
    /// This balancer's own net opens there over the same span.
    pub own: i128,
}

/// The count the effective load starts from, with this balancer's own
/// counters when it was taken.
#[derive(Debug, Clone, Copy)]
struct Anchor {
    count: u64,
    base: PollBase,
    at: Instant,
}

/// This balancer's own counters at the moment a poll was sent.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PollBase {
    settled: u64,
    closed: u64,
    /// Set for a lone balancer when some of its own dials or closes were
    /// under way while the poll was out (see [`Doubt`]).
    doubt: Option<Doubt>,
}

/// How far a poll's count may be off from this balancer's own view for
/// reasons of its own: its dials and closes under way while the poll was
/// out, which the pod may or may not have counted. A lone balancer that
/// rebased on such a report counted a handshake or two twice (or not at
/// all), which was what kept its burst from ending exact; while the report
/// differs from its own view by no more than this, it keeps counting from
/// its last exact report. A wider difference is somebody else's doing
/// (another replica the estimate has not seen yet, a direct client), and
/// the report is the base again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Doubt {
    /// Dials still unanswered when the answer came (counted or not).
    in_flight: u64,
    /// Dials answered, and connections closed, while the poll was out (in
    /// this balancer's view; perhaps not yet in the pod's).
    during: u64,
}

impl Anchor {
    /// Whether `count`, reported with `base`, differs from this anchor's
    /// count plus this balancer's own net opens since by no more than
    /// `doubt` allows.
    fn explains(&self, base: PollBase, doubt: Doubt, count: u64) -> bool {
        let own = (i128::from(base.settled) - i128::from(self.base.settled))
            - (i128::from(base.closed) - i128::from(self.base.closed));
        let unexplained = i128::from(count) - (i128::from(self.count) + own);
        -i128::from(doubt.during) <= unexplained && unexplained <= i128::from(doubt.in_flight)
    }
}

/// This balancer's own counters just before a poll is sent.
#[derive(Debug, Clone, Copy)]
pub struct PollStart {
    settled: u64,
    closed: u64,
}

/// A point-in-time view of a pod, for selection and the admin endpoints.
#[derive(Debug, Clone)]
pub struct PodSnapshot {
    /// Configured URL.
    pub url: String,
    /// `podName` from the last report.
    pub pod_name: Option<String>,
    /// Last reported `agentsConnections`.
    pub reported: Option<u64>,
    /// Reported `capacity`.
    pub capacity: Option<u64>,
    /// Reported state (`ready` until the pod says otherwise).
    pub state: PodState,
    /// Age of the last good report.
    pub report_age: Option<Duration>,
    /// True when there is no report younger than `cacheTTL`.
    pub stale: bool,
    /// Reported count adjusted by this balancer's own opens and closes.
    pub effective: u64,
    /// Connections this balancer is relaying to the pod now.
    pub relayed: u64,
    /// Health as selection sees it.
    pub health: Health,
    /// Whether the pod accepts new connections (its reported state).
    pub accepting: bool,
    /// Slow-start share in `(0, 1]`.
    pub warmup: f64,
    /// Failed polls or dials in a row.
    pub consecutive_failures: u32,
    /// When it last failed (for ordering ejected pods).
    pub last_failure: Option<Instant>,
    /// Its condition in one word.
    pub condition: Condition,
}

/// Marks one connection as counted against a pod; dropping it counts the
/// connection closed. Taken before the dial so that concurrent new
/// connections already see it.
#[derive(Debug)]
pub struct Lease {
    pub(super) pod: Arc<Pod>,
    settled: bool,
}

impl Lease {
    /// URL of the pod this lease counts against.
    pub fn pod_url(&self) -> &str {
        &self.pod.address.url
    }

    /// The pod this lease counts against.
    pub fn pod(&self) -> &Pod {
        &self.pod
    }

    /// Marks the dial as finished (answered or failed): from the next poll
    /// on, the pod's own report is expected to include it.
    pub fn settle(&mut self) {
        if !std::mem::replace(&mut self.settled, true) {
            self.pod.cell.settled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.settled {
            // The dial never reached a 101: the pod never counted this
            // connection, so it is undone rather than counted as closed.
            self.pod.cell.opened.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        self.pod.cell.closed.fetch_add(1, Ordering::SeqCst);
    }
}

impl Pod {
    /// A pod with no report yet, counting into `metrics`.
    pub fn new(address: PodAddress, metrics: PodCounters) -> Self {
        let pod = Pod {
            metrics,
            address,
            refresh: Notify::new(),
            added_at: Instant::now(),
            removed: CancellationToken::new(),
            status: Mutex::new(Status::default()),
            cell: SelectCell::default(),
            shed: ShedSignal::default(),
        };
        pod.cell.publish(&Status::default().published());
        pod
    }

    /// Resolves once the pod has left the registry.
    pub async fn removed(&self) {
        self.removed.cancelled().await;
    }

    /// Whether the pod has left the registry (it gets no new connections).
    pub fn is_removed(&self) -> bool {
        self.removed.is_cancelled()
    }

    fn status(&self) -> MutexGuard<'_, Status> {
        // A panic while holding this lock cannot leave the counters
        // inconsistent in a way worse than a stale value: keep going.
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The status, to change: what selection reads of it is republished
    /// when the guard goes, still under the lock (so one writer at a time,
    /// in the order of the changes).
    fn status_mut(&self) -> StatusMut<'_> {
        StatusMut {
            guard: self.status(),
            cell: &self.cell,
        }
    }

    /// Counts a new connection to this pod until the lease is dropped, and
    /// (with `early_refresh`) asks for an early poll once enough were opened
    /// since the last one.
    pub fn lease(self: &Arc<Self>, early_refresh: Option<EarlyRefresh>) -> Lease {
        let opened = self.cell.opened.fetch_add(1, Ordering::Relaxed) + 1;
        let (base, reported) = {
            let status = self.status();
            (
                status.base.settled,
                status
                    .report
                    .as_ref()
                    .map_or(0, |(r, _)| r.agents_connections),
            )
        };
        if let Some(rule) = early_refresh
            && opened.saturating_sub(base) >= rule.at_least.max(reported / rule.share.max(1))
        {
            self.refresh.notify_one();
        }
        Lease {
            pod: self.clone(),
            settled: false,
        }
    }

    /// Asks for an early poll: a dial could not reach the pod, and its
    /// poller finds out at once whether the pod itself is gone (a silent
    /// host is then ejected within a few poll timeouts, not at its next
    /// scheduled poll).
    pub fn recheck(&self) {
        self.refresh.notify_one();
    }

    /// Resolves when an early poll is wanted.
    pub async fn refresh_wanted(&self) {
        self.refresh.notified().await;
    }

    /// Connections this balancer has open (or opening) to the pod.
    pub fn relayed(&self) -> u64 {
        let closed = self.cell.closed.load(Ordering::Relaxed);
        self.cell
            .opened
            .load(Ordering::Relaxed)
            .saturating_sub(closed)
    }

    /// Closes and settled dials so far: taken just before a poll is sent,
    /// since a close this balancer saw may not have reached the pod's
    /// count yet.
    pub fn poll_start(&self) -> PollStart {
        PollStart {
            settled: self.cell.settled.load(Ordering::SeqCst),
            closed: self.cell.closed.load(Ordering::SeqCst),
        }
    }

    /// The poll base once the answer is in: dials settled by now had their
    /// 101 sent, so the pod counted them before answering (bar the few
    /// 101s still in transit); dials still in flight stay in the adjustment.
    /// `lone`: this balancer believes no other replica shares the pod.
    pub fn poll_base(&self, start: PollStart, lone: bool) -> PollBase {
        let settled = self.cell.settled.load(Ordering::SeqCst);
        let closed = self.cell.closed.load(Ordering::SeqCst);
        let opened = self.cell.opened.load(Ordering::SeqCst);
        let doubt = Doubt {
            in_flight: opened.saturating_sub(settled),
            during: settled.saturating_sub(start.settled) + closed.saturating_sub(start.closed),
        };
        // Nothing of ours under way: the pod counted exactly what we know.
        let exact = doubt.in_flight == 0 && doubt.during == 0;
        PollBase {
            settled,
            closed: start.closed,
            doubt: (lone && !exact).then_some(doubt),
        }
    }

    /// Stores a good report. `joined_late` says whether a first report
    /// should start slow start (pods added after the balancer started).
    /// Returns how the pod's count moved since its previous report, beside
    /// this balancer's own part of that, for the replica estimate.
    pub fn record_report(
        &self,
        base: PollBase,
        report: Report,
        joined_late: bool,
    ) -> Option<Moved> {
        let mut status = self.status_mut();
        let now = Instant::now();
        let first = status.report.is_none();
        let moved = status.report.as_ref().map(|(previous, _)| Moved {
            reported: i128::from(report.agents_connections)
                - i128::from(previous.agents_connections),
            own: (i128::from(base.settled) - i128::from(status.base.settled))
                - (i128::from(base.closed) - i128::from(status.base.closed)),
        });
        let keep = base.doubt.is_some_and(|doubt| {
            status.anchor.is_some_and(|anchor| {
                now.saturating_duration_since(anchor.at) < ANCHOR_MAX_AGE
                    && anchor.explains(base, doubt, report.agents_connections)
            })
        });
        if !keep {
            status.anchor = Some(Anchor {
                count: report.agents_connections,
                base,
                at: now,
            });
        }
        status.report = Some((report, now));
        status.base = base;
        if status.dials_failing_until.is_some_and(|until| now < until) {
            // Alive, but its upgrades failed: it stays out until the
            // hold ends, then this poll's success lets it back to try.
            return moved;
        }
        status.dials_failing_until = None;
        let was_ejected = std::mem::replace(&mut status.ejected, false);
        if was_ejected || (first && joined_late) {
            status.warm_since = Some(now);
        }
        status.consecutive_failures = 0;
        moved
    }

    /// The pod's condition if it changed since the last call (each change
    /// is returned once, to whoever looks first): the poller looks after
    /// every poll, a dial after it ejected the pod or brought it back.
    pub fn condition_change(&self, settings: &Settings) -> Option<ConditionChange> {
        let mut status = self.status();
        let figures = self.figures(
            &self.cell.read(),
            &Moment::new(select_cell::now(), settings),
        );
        let now = figures.condition(status.report.is_some(), status.state());
        let from = std::mem::replace(&mut status.condition, now);
        (from != now).then(|| ConditionChange {
            from,
            to: now,
            pod_name: status.report.as_ref().and_then(|(r, _)| r.pod_name.clone()),
        })
    }

    /// Counts a failed poll or dial. Returns true when this failure ejects
    /// the pod (so the caller can log it once).
    pub fn record_failure(&self, eject_after: u32) -> bool {
        let mut status = self.status_mut();
        status.consecutive_failures = status.consecutive_failures.saturating_add(1);
        status.last_failure = Some(Instant::now());
        let eject = status.consecutive_failures >= eject_after && !status.ejected;
        if eject {
            status.ejected = true;
        }
        eject
    }

    /// A dial reached the pod but got no WebSocket switch (an answer other
    /// than 101 or 4xx, or a broken 101). `eject_after` of those in a row
    /// eject the pod, and good reports do not bring it back for `hold`: a
    /// pod whose `/metric` works but whose upgrades fail would otherwise be
    /// back after every poll and, its count never rising, take the next
    /// connections again. Returns true when this ejected it.
    pub fn record_dial_failure(&self, eject_after: u32, hold: Duration) -> bool {
        let mut status = self.status_mut();
        let now = Instant::now();
        // Counted apart from poll failures: good polls do not reset it.
        status.broken_dials = status.broken_dials.saturating_add(1);
        status.last_failure = Some(now);
        if status.broken_dials < eject_after {
            return false;
        }
        status.dials_failing_until = Some(now + hold);
        !std::mem::replace(&mut status.ejected, true)
    }

    /// Failed polls or dials in a row, and whether the pod is ejected.
    pub fn failures(&self) -> (u32, bool) {
        let status = self.status();
        (status.consecutive_failures, status.ejected)
    }

    /// A dial reached the pod: it is alive whatever its polls say. Returns
    /// true when that brought it back from ejection.
    pub fn record_dial_success(&self) -> bool {
        // Most dials find nothing to clear: the status (and what selection
        // reads of it) is not republished for them.
        {
            let status = self.status();
            if status.consecutive_failures == 0
                && status.dials_failing_until.is_none()
                && status.broken_dials == 0
                && !status.ejected
            {
                return false;
            }
        }
        let mut status = self.status_mut();
        status.consecutive_failures = 0;
        status.dials_failing_until = None;
        status.broken_dials = 0;
        let was_ejected = std::mem::replace(&mut status.ejected, false);
        if was_ejected {
            status.warm_since = Some(Instant::now());
        }
        was_ejected
    }

    /// Current view of the pod.
    pub fn snapshot(&self, settings: &Settings) -> PodSnapshot {
        let status = self.status();
        let figures = self.figures(
            &self.cell.read(),
            &Moment::new(select_cell::now(), settings),
        );
        let report = status.report.as_ref().map(|(r, _)| r);
        let state = status.state();
        PodSnapshot {
            url: self.address.url.clone(),
            pod_name: report.and_then(|r| r.pod_name.clone()),
            reported: report.map(|r| r.agents_connections),
            capacity: report.and_then(|r| r.capacity),
            state,
            report_age: figures.report_age.map(Duration::from_nanos),
            stale: figures.stale,
            effective: figures.effective,
            relayed: figures.relayed,
            health: figures.health,
            accepting: state.accepts_new(),
            warmup: figures.warmup,
            consecutive_failures: status.consecutive_failures,
            last_failure: status.last_failure,
            condition: figures.condition(report.is_some(), state),
        }
    }
}

/// The status, held to be changed; what selection reads of it is
/// republished when this goes.
struct StatusMut<'a> {
    guard: MutexGuard<'a, Status>,
    cell: &'a SelectCell,
}

impl std::ops::Deref for StatusMut<'_> {
    type Target = Status;

    fn deref(&self) -> &Status {
        &self.guard
    }
}

impl std::ops::DerefMut for StatusMut<'_> {
    fn deref_mut(&mut self) -> &mut Status {
        &mut self.guard
    }
}

impl Drop for StatusMut<'_> {
    fn drop(&mut self) {
        self.cell.publish(&self.guard.published());
    }
}

impl Status {
    /// What selection reads of this status.
    fn published(&self) -> Published {
        let report = self.report.as_ref();
        Published {
            anchor: self.anchor.map(|a| Anchored {
                count: a.count,
                settled: a.base.settled,
                closed: a.base.closed,
            }),
            reported: report.map_or(0, |(r, _)| r.agents_connections),
            report_at: report.map(|(_, at)| select_cell::nanos(*at)),
            capacity: report.and_then(|(r, _)| r.capacity),
            accepting: self.state().accepts_new(),
            ejected: self.ejected,
            warm_since: self.warm_since.map(select_cell::nanos),
            last_failure: self.last_failure.map(select_cell::nanos),
        }
    }

    /// The state the pod last reported (`Ready` before any report).
    fn state(&self) -> PodState {
        self.report
            .as_ref()
            .map(|(r, _)| r.state)
            .unwrap_or_default()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::observe::metrics::counters::PodFamilies;
    use common::Config;

    /// Default settings with this `cacheTTL`.
    pub(crate) fn settings(cache_ttl: Duration) -> Settings {
        Settings {
            cache_ttl,
            ..Settings::from_config(&Config::default())
        }
    }

    fn pod() -> Pod {
        let address = PodAddress::parse("http://10.0.0.1:8080", "/metric").unwrap();
        let counters = PodFamilies::default().for_pod(&address.url);
        Pod::new(address, counters)
    }

    /// A good report of one connection in `state`.
    pub(crate) fn report(state: &str) -> Report {
        let body = format!(r#"{{"agentsConnections":1,"podName":"p-1","state":"{state}"}}"#);
        Report::parse(body.as_bytes()).unwrap()
    }

    /// A pod in a status a ranking meets: what it is, the pod, and
    /// whether it is plain.
    type InStatus = (&'static str, Arc<Pod>, bool);

    /// A pod in each status a ranking meets, and the leases that hold
    /// connections on one of them.
    fn pods_in_every_status() -> (Vec<InStatus>, Vec<Lease>) {
        let reported = |state: &str| {
            let pod = Arc::new(pod());
            pod.record_report(PollBase::default(), report(state), false);
            pod
        };
        let with_connections = reported("ready");
        let mut settled = with_connections.lease(None);
        settled.settle();
        let leases = vec![settled, with_connections.lease(None)];
        let failed_once = reported("ready");
        failed_once.record_failure(3);
        let ejected = reported("ready");
        ejected.record_failure(1);
        let warming = Arc::new(pod());
        warming.record_report(PollBase::default(), report("ready"), true);
        let capped = Arc::new(pod());
        let body = br#"{"agentsConnections":4,"capacity":10,"state":"ready"}"#;
        capped.record_report(PollBase::default(), Report::parse(body).unwrap(), false);
        let pods = vec![
            ("never reported", Arc::new(pod()), false),
            ("ready", reported("ready"), true),
            ("with connections", with_connections, true),
            ("failed once", failed_once, true),
            ("draining", reported("drain"), false),
            ("ejected", ejected, false),
            ("warming", warming, false),
            ("capacity", capped, false),
        ];
        (pods, leases)
    }

    #[test]
    fn a_plain_pod_loads_as_the_whole_status_says() {
        let settings = Settings {
            slow_start: Duration::from_secs(60),
            ..settings(Duration::from_secs(30))
        };
        let now = select_cell::now();
        let moments = [
            Moment::new(now, &settings),
            // Past cacheTTL: the report is stale.
            Moment::new(now + 31_000_000_000, &settings),
        ];
        let (pods, _leases) = pods_in_every_status();
        for (what, pod, plain) in &pods {
            assert_eq!(pod.cell.read_plain().is_some(), *plain, "{what}");
            for moment in &moments {
                assert_eq!(
                    pod.load(moment, 5),
                    pod.load_whole(moment, 5),
                    "{what} at {}",
                    moment.now
                );
            }
        }
        let busy = pods[2].1.load(&moments[0], 0);
        assert_eq!((busy.load, busy.local), (3, 2), "reported 1 + own 2");
        let stale = pods[1].1.load(&moments[1], 0);
        assert_eq!(stale.health, Health::Unknown, "stale on the plain path");
    }

    #[test]
    fn each_condition_change_is_reported_once() {
        let settings = settings(Duration::from_secs(30));
        let pod = pod();
        assert_eq!(
            pod.condition_change(&settings),
            None,
            "unknown from the start"
        );
        pod.record_report(PollBase::default(), report("ready"), false);
        let change = pod.condition_change(&settings).unwrap();
        assert_eq!(
            (change.from, change.to),
            (Condition::Unknown, Condition::Ready)
        );
        assert_eq!(change.pod_name.as_deref(), Some("p-1"));
        assert_eq!(pod.condition_change(&settings), None, "once per change");

        pod.record_report(PollBase::default(), report("drain"), false);
        let change = pod.condition_change(&settings).unwrap();
        assert_eq!(
            (change.from, change.to),
            (Condition::Ready, Condition::Drain)
        );

        for _ in 0..settings.eject_after {
            pod.record_failure(settings.eject_after);
        }
        let change = pod.condition_change(&settings).unwrap();
        assert_eq!(
            (change.from, change.to),
            (Condition::Drain, Condition::Ejected)
        );
        assert_eq!(pod.snapshot(&settings).condition, Condition::Ejected);

        assert!(pod.record_dial_success(), "a dial brings it back");
        let change = pod.condition_change(&settings).unwrap();
        assert_eq!(
            (change.from, change.to),
            (Condition::Ejected, Condition::Drain)
        );
        assert_eq!(pod.condition_change(&settings), None);
    }

    fn report_of(count: u64) -> Report {
        let body = format!(r#"{{"agentsConnections":{count}}}"#);
        Report::parse(body.as_bytes()).unwrap()
    }

    #[test]
    fn a_lone_balancer_counts_from_its_last_exact_report() {
        let settings = settings(Duration::from_secs(30));
        let pod = Arc::new(pod());
        let poll = |count: u64, lone: bool| {
            let start = pod.poll_start();
            pod.record_report(pod.poll_base(start, lone), report_of(count), false);
            pod.snapshot(&settings).effective
        };
        assert_eq!(poll(10, true), 10);

        // Two dials: one answered before the next poll goes out, one still
        // in flight when it comes back, which the pod has counted (its 101
        // is on its way): 12. Taken as the base, with the dial in flight
        // still in this balancer's adjustment, that would be 13.
        let mut answered = pod.lease(None);
        answered.settle();
        let in_flight = pod.lease(None);
        assert_eq!(poll(12, true), 12, "the exact report and its own two opens");
        // Shared with other replicas, the newest report is the base.
        assert_eq!(poll(12, false), 13, "12 and the dial in flight");
        assert_eq!(
            poll(12, true),
            13,
            "kept: nothing its own dial cannot explain"
        );

        // More than its own dials in flight can explain: somebody else's
        // opens, and the report is the base again.
        assert_eq!(poll(15, true), 16, "15 and the dial in flight");

        // Once every dial settled before a poll went out, that poll is
        // exact and becomes the base.
        drop(in_flight);
        assert_eq!(poll(14, true), 14);
        drop(answered);
    }

    #[test]
    fn an_old_report_is_stale() {
        let pod = pod();
        pod.record_report(PollBase::default(), report("ready"), false);
        // Older than a TTL of zero once the clock has moved at all.
        let recorded = Instant::now();
        while recorded.elapsed().is_zero() {}
        let change = pod.condition_change(&settings(Duration::ZERO)).unwrap();
        assert_eq!(change.to, Condition::Stale);
        let change = pod
            .condition_change(&settings(Duration::from_secs(30)))
            .unwrap();
        assert_eq!(
            (change.from, change.to),
            (Condition::Stale, Condition::Ready)
        );
    }
}
