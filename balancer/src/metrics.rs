//! Prometheus metrics of the balancer, served at `/metrics` on the admin
//! listener in the text format.
//!
//! Two kinds of series. What changes on the data path is counted as it
//! happens, at the cost of an atomic add: a pod's counters are resolved
//! when the pod joins the registry ([`PodCounters`], kept in its
//! [`Pod`](crate::registry::Pod)), so a connection never looks a label up,
//! and the bytes and messages the relay moves go to per-thread stripes
//! ([`Traffic`]), so relays on different threads rarely share a cache
//! line. What the registry already knows (each pod's count, report
//! age and health) and the draining flag are read at scrape time instead,
//! from the same snapshots `/balancer-metrics` shows.
//!
//! Cardinality is bounded: labels carry pod URLs (from the configuration),
//! pod names (one per pod), and values from fixed sets (close-code classes,
//! failure reasons, sides, states), never anything a client chooses.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::selection::Health;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, EncodeMetric,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use tokio_util::sync::CancellationToken;

use crate::registry::{Condition, PodRegistry, PodSnapshot};
use crate::relay::Closer;

/// Prefix of every series the balancer exports.
pub const PREFIX: &str = "wsbalancer";

/// `Content-Type` of a `/metrics` answer: the Prometheus text format 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds of the handshake-duration buckets, in seconds: from half a
/// millisecond (a local pod) to the longest dial timeout worth waiting for.
const HANDSHAKE_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Upper bounds of the connection-duration buckets, in seconds: WebSocket
/// connections live from a second to days.
const CONNECTION_BUCKETS: [f64; 14] = [
    0.1, 1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0,
    86400.0,
];

/// Values of the `code` label of closed connections: the registered codes
/// 1000-1015 one by one, the two ranges applications choose from as one
/// value each, no Close frame at all, and anything else.
pub const CODE_LABELS: [&str; 20] = [
    "1000", "1001", "1002", "1003", "1004", "1005", "1006", "1007", "1008", "1009", "1010", "1011",
    "1012", "1013", "1014", "1015", "3xxx", "4xxx", "none", "other",
];

/// Index into [`CODE_LABELS`] of a close code (`None`: no Close frame).
pub fn code_index(code: Option<u16>) -> usize {
    match code {
        Some(code @ 1000..=1015) => usize::from(code - 1000),
        Some(3000..=3999) => 16,
        Some(4000..=4999) => 17,
        None => 18,
        Some(_) => 19,
    }
}

/// The `code` label value of a close code (`None`: no Close frame).
pub fn code_label(code: Option<u16>) -> &'static str {
    CODE_LABELS[code_index(code)]
}

/// Values of the `side` label, in [`Closer`] order.
const SIDE_LABELS: [&str; 3] = ["client", "pod", "balancer"];

fn side_index(closer: Closer) -> usize {
    match closer {
        Closer::Client => 0,
        Closer::Pod => 1,
        Closer::Balancer => 2,
    }
}

/// Values of the `reason` label of failed dials: those of
/// [`DialError::reason`](crate::dial::DialError::reason), the dial timeout,
/// and the class of a status a pod answered instead of 101.
pub const FAIL_REASONS: [&str; 11] = [
    "refused",
    "connect",
    "timeout",
    "tls",
    "handshake",
    "status_1xx",
    "status_2xx",
    "status_3xx",
    "status_4xx",
    "status_5xx",
    "other",
];

/// Index into [`FAIL_REASONS`] of a reason (`other` when unknown).
fn reason_index(reason: &str) -> usize {
    FAIL_REASONS
        .iter()
        .position(|r| *r == reason)
        .unwrap_or(FAIL_REASONS.len() - 1)
}

/// Index into [`FAIL_REASONS`] of a pod's non-101 status.
fn status_index(status: u16) -> usize {
    match status {
        100..=599 => 5 + usize::from(status / 100 - 1),
        _ => FAIL_REASONS.len() - 1,
    }
}

/// Labels of the per-pod counters: the URL alone, so that a pod renamed
/// behind the same URL keeps its series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PodLabel {
    pod: Arc<str>,
}

/// Labels of failed dials.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailedLabels {
    pod: Arc<str>,
    reason: &'static str,
}

/// Labels of closed connections.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClosedLabels {
    pod: Arc<str>,
    code: &'static str,
    side: &'static str,
}

/// Labels of handshakes the balancer refused itself.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    /// The status the client got; the balancer's own refusals come from a
    /// handful of constants, so this stays bounded.
    status: u16,
    /// Why, from a fixed set (see [`Refusal`]).
    reason: &'static str,
}

/// Why the balancer itself refused an upgrade (a pod's own answer is
/// counted per pod instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not a valid WebSocket upgrade (400, 405, 426...).
    Invalid,
    /// The request head was too large (431).
    TooLarge,
    /// The balancer is draining (503).
    Draining,
    /// `Origin` not in `allowedOrigins` (403).
    Origin,
    /// `maxConnections` reached (503).
    MaxConnections,
    /// The client IP is past `rateLimit` (429).
    RateLimited,
    /// Every accepting pod is at its limit (503).
    PodsFull,
    /// No pod accepts new connections (503).
    NoPod,
    /// Every pod tried failed before its 101 (502, or 503 when none was
    /// healthy).
    Unreachable,
}

impl Refusal {
    /// The `reason` label value, also logged.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Invalid => "invalid",
            Refusal::TooLarge => "too_large",
            Refusal::Draining => "draining",
            Refusal::Origin => "origin",
            Refusal::MaxConnections => "max_connections",
            Refusal::RateLimited => "rate_limited",
            Refusal::PodsFull => "pods_full",
            Refusal::NoPod => "no_pod",
            Refusal::Unreachable => "unreachable",
        }
    }
}

/// Which way relayed bytes went: the `direction` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the client to the pod.
    ClientToPod = 0,
    /// From the pod to the client.
    PodToClient = 1,
}

/// Values of the `direction` label, in [`Direction`] order.
const DIRECTION_LABELS: [&str; 2] = ["client_to_pod", "pod_to_client"];

/// Stripes of [`Traffic`]: enough that the worker threads of a large
/// machine rarely share one.
const STRIPES: usize = 32;

/// One stripe of [`Traffic`], alone on its cache lines (128 bytes: the
/// adjacent-line prefetcher pairs 64-byte lines).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe {
    /// Bytes, by [`Direction`].
    bytes: [AtomicU64; 2],
    /// Messages, by [`Direction`].
    messages: [AtomicU64; 2],
}

/// Source of stripe numbers, handed out to threads in turn.
static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's stripe, taken on its first add.
    static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Bytes and messages relayed by every connection, each way, counted live:
/// the relay adds as it writes each chunk. Each thread adds to a stripe of
/// its own and a scrape sums them, so the relay's cost is one uncontended
/// relaxed add per chunk.
#[derive(Debug)]
pub struct Traffic {
    stripes: Box<[Stripe; STRIPES]>,
}

impl Default for Traffic {
    fn default() -> Self {
        Traffic {
            stripes: Box::new(std::array::from_fn(|_| Stripe::default())),
        }
    }
}

impl Traffic {
    /// This thread's stripe.
    fn stripe(&self) -> &Stripe {
        let index = STRIPE.with(|stripe| {
            if stripe.get() == usize::MAX {
                stripe.set(NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES);
            }
            stripe.get()
        });
        &self.stripes[index]
    }

    /// `n` bytes were written toward the other end.
    pub fn add_bytes(&self, direction: Direction, n: u64) {
        self.stripe().bytes[direction as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// `n` complete messages passed.
    pub fn add_messages(&self, direction: Direction, n: u64) {
        self.stripe().messages[direction as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Totals so far: (bytes, messages), each by [`Direction`].
    pub fn totals(&self) -> ([u64; 2], [u64; 2]) {
        let mut bytes = [0; 2];
        let mut messages = [0; 2];
        for stripe in self.stripes.iter() {
            for d in 0..2 {
                bytes[d] += stripe.bytes[d].load(Ordering::Relaxed);
                messages[d] += stripe.messages[d].load(Ordering::Relaxed);
            }
        }
        (bytes, messages)
    }
}

/// The label families every pod's counters belong to.
#[derive(Debug, Clone, Default)]
pub struct PodFamilies {
    opened: Family<PodLabel, Counter>,
    failed: Family<FailedLabels, Counter>,
    closed: Family<ClosedLabels, Counter>,
    failovers: Family<PodLabel, Counter>,
    poll_errors: Family<PodLabel, Counter>,
}

impl PodFamilies {
    /// The counters of the pod at `url`, resolved now.
    pub fn for_pod(&self, url: &str) -> PodCounters {
        let pod: Arc<str> = Arc::from(url);
        let label = PodLabel { pod: pod.clone() };
        PodCounters {
            opened: self.opened.get_or_create_owned(&label),
            failovers: self.failovers.get_or_create_owned(&label),
            poll_errors: self.poll_errors.get_or_create_owned(&label),
            lazy: Arc::new(LazyCounters {
                pod,
                failed_family: self.failed.clone(),
                closed_family: self.closed.clone(),
                failed: std::array::from_fn(|_| OnceLock::new()),
                closed: std::array::from_fn(|_| OnceLock::new()),
            }),
        }
    }
}

/// One pod's counters. Those with a label beyond `pod` are created on
/// first use (only what happened is exported: a pod does not carry 60
/// zero series of close codes) and kept, so every later use is one atomic
/// add.
#[derive(Debug, Clone)]
pub struct PodCounters {
    /// Connections relayed after the pod's 101 reached the client.
    opened: Counter,
    /// Dials that moved on to the next pod after this one failed.
    failovers: Counter,
    /// Failed polls of the pod's report.
    poll_errors: Counter,
    /// Failed dials and closed connections.
    lazy: Arc<LazyCounters>,
}

/// The counters of [`PodCounters`] created on first use.
struct LazyCounters {
    /// The `pod` label.
    pod: Arc<str>,
    failed_family: Family<FailedLabels, Counter>,
    closed_family: Family<ClosedLabels, Counter>,
    /// By [`FAIL_REASONS`] index.
    failed: [OnceLock<Counter>; FAIL_REASONS.len()],
    /// By [`CODE_LABELS`] index times 3 plus side index.
    closed: [OnceLock<Counter>; CODE_LABELS.len() * SIDE_LABELS.len()],
}

impl fmt::Debug for LazyCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the families: they hold every pod's series.
        f.debug_struct("LazyCounters")
            .field("pod", &self.pod)
            .finish_non_exhaustive()
    }
}

impl PodCounters {
    /// A connection to the pod is relayed (its 101 reached the client).
    pub fn opened(&self) {
        self.opened.inc();
    }

    /// A dial moved on from this pod to the next.
    pub fn failed_over(&self) {
        self.failovers.inc();
    }

    /// A poll of the pod's report failed.
    pub fn poll_failed(&self) {
        self.poll_errors.inc();
    }

    /// A dial failed for `reason`, one of [`FAIL_REASONS`].
    pub fn dial_failed(&self, reason: &str) {
        self.failed(reason_index(reason));
    }

    /// The pod answered an upgrade with `status` instead of 101.
    pub fn answered_status(&self, status: u16) {
        self.failed(status_index(status));
    }

    fn failed(&self, index: usize) {
        let lazy = &*self.lazy;
        lazy.failed[index]
            .get_or_init(|| {
                lazy.failed_family.get_or_create_owned(&FailedLabels {
                    pod: lazy.pod.clone(),
                    reason: FAIL_REASONS[index],
                })
            })
            .inc();
    }

    /// A relayed connection ended: `code` is the ending Close's code (see
    /// [`Closer`]), `None` when no Close frame ended it.
    pub fn closed(&self, code: Option<u16>, closer: Closer) {
        let lazy = &*self.lazy;
        let (code, side) = (code_index(code), side_index(closer));
        lazy.closed[code * SIDE_LABELS.len() + side]
            .get_or_init(|| {
                lazy.closed_family.get_or_create_owned(&ClosedLabels {
                    pod: lazy.pod.clone(),
                    code: CODE_LABELS[code],
                    side: SIDE_LABELS[side],
                })
            })
            .inc();
    }
}

/// Every metric of one balancer, and the registry that exports them.
#[derive(Debug)]
pub struct Metrics {
    /// Owns the exported series; encoded on every scrape.
    registry: Registry,
    /// Families of the per-pod counters, for pods joining the registry.
    pods: PodFamilies,
    /// Upgrade request received to 101 written, in seconds.
    handshake: Histogram,
    /// Relayed connection lifetimes, in seconds.
    connection: Histogram,
    /// Connections being dialled or relayed: what `maxConnections` counts.
    active: Gauge<u64, AtomicU64>,
    /// TCP (or TLS) connections accepted on the listener.
    accepted: Counter,
    /// Upgrades the balancer refused itself.
    refused: Family<RefusedLabels, Counter>,
    /// Bytes and messages relayed.
    traffic: Arc<Traffic>,
    /// Failed lookups of `discovery.dns`.
    discovery_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers the balancer's metrics. The scrape-time ones (pods,
    /// draining) follow with [`Metrics::watch`].
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        registry.register(
            "build",
            "Version of this balancer, as the `version` label",
            Info::new([("version", env!("CARGO_PKG_VERSION"))]),
        );
        let handshake = Histogram::new(HANDSHAKE_BUCKETS);
        registry.register_with_unit(
            "handshake_duration",
            "From a client's upgrade request to its 101 written, pod dials (and failovers) included",
            Unit::Seconds,
            handshake.clone(),
        );
        let connection = Histogram::new(CONNECTION_BUCKETS);
        registry.register_with_unit(
            "connection_duration",
            "Lifetime of relayed connections, from the relay's start to its end",
            Unit::Seconds,
            connection.clone(),
        );
        let active = Gauge::default();
        registry.register(
            "connections_active",
            "WebSocket connections being dialled or relayed now (what maxConnections counts)",
            active.clone(),
        );
        let accepted = Counter::default();
        registry.register(
            "client_connections_accepted",
            "TCP connections accepted on the WebSocket listener",
            accepted.clone(),
        );
        let refused = Family::default();
        registry.register(
            "handshakes_refused",
            "Upgrades the balancer answered itself with an error status, by status and reason \
             (invalid, too_large, draining, origin, max_connections, pods_full, no_pod, unreachable)",
            refused.clone(),
        );
        let pods = PodFamilies::default();
        registry.register(
            "pod_connections_opened",
            "Connections relayed to the pod (its 101 reached the client)",
            pods.opened.clone(),
        );
        registry.register(
            "pod_connections_failed",
            "Dials of the pod that failed before a 101, by reason (refused, connect, timeout, tls, \
             handshake, or status_Nxx when the pod answered another status)",
            pods.failed.clone(),
        );
        registry.register(
            "pod_connections_closed",
            "Relayed connections that ended, by the code of the Close frame that ended them \
             (1000-1015, 3xxx, 4xxx, none, other) and the side that sent it (client, pod, or \
             balancer for its own drain, idle and 1014 Closes)",
            pods.closed.clone(),
        );
        registry.register(
            "pod_failovers",
            "Dials that moved on to the next pod after this pod failed",
            pods.failovers.clone(),
        );
        registry.register(
            "pod_poll_errors",
            "Failed polls of the pod's load report",
            pods.poll_errors.clone(),
        );
        let discovery_errors = Counter::default();
        registry.register(
            "discovery_errors",
            "Times DNS lookups of discovery.dns started failing (once per streak; the last pod set is kept)",
            discovery_errors.clone(),
        );
        Metrics {
            registry,
            pods,
            handshake,
            connection,
            active,
            accepted,
            refused,
            traffic: Arc::new(Traffic::default()),
            discovery_errors,
        }
    }

    /// DNS lookups of `discovery.dns` started failing.
    pub fn discovery_failed(&self) {
        self.discovery_errors.inc();
    }

    /// The families new pods' counters are made from.
    pub fn pod_families(&self) -> &PodFamilies {
        &self.pods
    }

    /// Adds the series read at scrape time: every pod of `registry`, the
    /// draining flag (`draining` is cancelled when the balancer drains),
    /// and the relayed bytes and messages.
    pub fn watch(&mut self, registry: Arc<PodRegistry>, draining: CancellationToken) {
        self.registry.register_collector(Box::new(ScrapeTime {
            registry,
            draining,
            traffic: self.traffic.clone(),
        }));
    }

    /// The live count of connections being dialled or relayed.
    pub fn active(&self) -> &Gauge<u64, AtomicU64> {
        &self.active
    }

    /// What the relay adds its bytes and messages to.
    pub fn traffic(&self) -> &Traffic {
        &self.traffic
    }

    /// A client connection was accepted.
    pub fn accepted(&self) {
        self.accepted.inc();
    }

    /// The balancer refused an upgrade with `status`.
    pub fn refused(&self, status: u16, why: Refusal) {
        self.refused
            .get_or_create(&RefusedLabels {
                status,
                reason: why.as_str(),
            })
            .inc();
    }

    /// A client got its 101 `took` after its request arrived.
    pub fn handshake_done(&self, took: Duration) {
        self.handshake.observe(took.as_secs_f64());
    }

    /// A relayed connection ended after `lived`.
    pub fn connection_ended(&self, lived: Duration) {
        self.connection.observe(lived.as_secs_f64());
    }

    /// Everything, in the Prometheus text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> Result<String, fmt::Error> {
        let mut text = String::with_capacity(16 * 1024);
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// Series computed when scraped.
#[derive(Debug)]
struct ScrapeTime {
    registry: Arc<PodRegistry>,
    draining: CancellationToken,
    traffic: Arc<Traffic>,
}

impl Collector for ScrapeTime {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let draining = u64::from(self.draining.is_cancelled());
        let metric = encoder.encode_descriptor(
            "draining",
            "1 once the balancer drains (readiness is 503 then), else 0.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(draining).encode(metric)?;

        let (bytes, messages) = self.traffic.totals();
        per_direction(
            &mut encoder,
            "relayed",
            "Bytes relayed, by direction, counted as they are written (live, not at close).",
            Some(&Unit::Bytes),
            bytes,
        )?;
        per_direction(
            &mut encoder,
            "relayed_messages",
            "Complete WebSocket data messages relayed, by direction, counted as they pass.",
            None,
            messages,
        )?;

        let pods = self.registry.snapshots();
        // A pod that left the set is still counted until its last relayed
        // connection ends (added to the pod of the same URL if it is back).
        let mut active = pods.clone();
        for gone in self.registry.leaving_snapshots() {
            match active.iter_mut().find(|pod| pod.url == gone.url) {
                Some(pod) => pod.relayed += gone.relayed,
                None => active.push(gone),
            }
        }
        per_pod(
            &mut encoder,
            "pod_connections_active",
            "Connections this balancer relays to the pod now, those being dialled included; a pod \
             that left the pod set is listed until its last connection ends.",
            None,
            &active,
            |pod| Some(pod.relayed),
        )?;
        per_pod(
            &mut encoder,
            "pod_connections_reported",
            "The pod's last reported agentsConnections (absent before its first report).",
            None,
            &pods,
            |pod| pod.reported,
        )?;
        per_pod(
            &mut encoder,
            "pod_connections_effective",
            "The count selection uses: the last report plus this balancer's opens and closes since.",
            None,
            &pods,
            |pod| Some(pod.effective),
        )?;
        per_pod(
            &mut encoder,
            "pod_report_age",
            "Age of the pod's last good report (absent before its first report).",
            Some(&Unit::Seconds),
            &pods,
            |pod| pod.report_age.map(|age| age.as_secs_f64()),
        )?;
        per_pod(
            &mut encoder,
            "pod_healthy",
            "1 when the pod has a fresh report, accepts new connections and is not ejected.",
            None,
            &pods,
            |pod| Some(u64::from(pod.health == Health::Healthy && pod.accepting)),
        )?;
        let mut metric = encoder.encode_descriptor(
            "pod_state",
            "1 for the pod's state, 0 for the others: ready, drain or maint as reported; unknown \
             before a first report or for a state this version does not know; stale when the \
             last report is older than cacheTTL; ejected after repeated failures.",
            None,
            MetricType::Gauge,
        )?;
        for pod in &pods {
            for state in Condition::ALL {
                let labels = [
                    ("pod", pod.url.as_str()),
                    ("pod_name", pod.pod_name.as_deref().unwrap_or_default()),
                    ("state", state.as_str()),
                ];
                ConstGauge::new(u64::from(pod.condition == state))
                    .encode(metric.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// One counter series per [`Direction`], labelled `direction`.
fn per_direction(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    values: [u64; 2],
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for (value, direction) in values.into_iter().zip(DIRECTION_LABELS) {
        ConstCounter::new(value).encode(metric.encode_family(&[("direction", direction)])?)?;
    }
    Ok(())
}

/// One gauge series per pod, labelled `pod` and `pod_name`, with the value
/// `value` gives (none when it gives `None`).
fn per_pod<V: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    pods: &[PodSnapshot],
    value: impl Fn(&PodSnapshot) -> Option<V>,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for pod in pods {
        if let Some(v) = value(pod) {
            let labels = [
                ("pod", pod.url.as_str()),
                ("pod_name", pod.pod_name.as_deref().unwrap_or_default()),
            ];
            ConstGauge::new(v).encode(metric.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn code_labels_are_bounded() {
        let labels: HashSet<&str> = (0..=u16::MAX)
            .map(Some)
            .chain([None])
            .map(code_label)
            .collect();
        assert_eq!(labels.len(), CODE_LABELS.len());
        assert!(labels.iter().all(|l| CODE_LABELS.contains(l)));
        for (code, label) in [
            (Some(1000), "1000"),
            (Some(1015), "1015"),
            (Some(1016), "other"),
            (Some(999), "other"),
            (Some(2999), "other"),
            (Some(3000), "3xxx"),
            (Some(3999), "3xxx"),
            (Some(4001), "4xxx"),
            (Some(4999), "4xxx"),
            (Some(5000), "other"),
            (Some(0), "other"),
            (None, "none"),
        ] {
            assert_eq!(code_label(code), label, "{code:?}");
        }
    }

    #[test]
    fn failure_reasons_are_bounded() {
        let reasons: HashSet<usize> = (0..=u16::MAX).map(status_index).collect();
        assert!(reasons.iter().all(|&i| i < FAIL_REASONS.len()));
        assert_eq!(FAIL_REASONS[status_index(404)], "status_4xx");
        assert_eq!(FAIL_REASONS[status_index(503)], "status_5xx");
        assert_eq!(FAIL_REASONS[status_index(200)], "status_2xx");
        assert_eq!(FAIL_REASONS[status_index(42)], "other");
        assert_eq!(FAIL_REASONS[reason_index("refused")], "refused");
        assert_eq!(FAIL_REASONS[reason_index("made up")], "other");
    }

    #[test]
    fn pod_counters_export_what_happened_only() {
        let mut metrics = Metrics::new();
        let counters = metrics.pod_families().for_pod("http://a:1");
        counters.opened();
        counters.dial_failed("refused");
        counters.dial_failed("refused");
        counters.answered_status(403);
        counters.closed(Some(4001), Closer::Client);
        counters.closed(None, Closer::Pod);
        metrics.watch(
            Arc::new(PodRegistry::new(
                Vec::new(),
                crate::registry::Settings::from_config(&common::Config::default()),
                metrics.pod_families(),
            )),
            CancellationToken::new(),
        );
        let text = metrics.encode().unwrap();
        for line in [
            r#"wsbalancer_pod_connections_opened_total{pod="http://a:1"} 1"#,
            r#"wsbalancer_pod_connections_failed_total{pod="http://a:1",reason="refused"} 2"#,
            r#"wsbalancer_pod_connections_failed_total{pod="http://a:1",reason="status_4xx"} 1"#,
            r#"wsbalancer_pod_connections_closed_total{pod="http://a:1",code="4xxx",side="client"} 1"#,
            r#"wsbalancer_pod_connections_closed_total{pod="http://a:1",code="none",side="pod"} 1"#,
            r#"wsbalancer_pod_failovers_total{pod="http://a:1"} 0"#,
            r#"wsbalancer_draining 0"#,
            concat!(
                r#"wsbalancer_build_info{version=""#,
                env!("CARGO_PKG_VERSION"),
                r#""} 1"#
            ),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        let closed_series = text
            .lines()
            .filter(|l| l.starts_with("wsbalancer_pod_connections_closed_total{"))
            .count();
        assert_eq!(closed_series, 2, "no zero series for what never happened");
    }

    #[test]
    fn traffic_sums_every_threads_stripe() {
        let traffic = Arc::new(Traffic::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let traffic = traffic.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        traffic.add_bytes(Direction::ClientToPod, 3);
                        traffic.add_messages(Direction::PodToClient, 1);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(traffic.totals(), ([12_000, 0], [0, 4_000]));
    }
}
