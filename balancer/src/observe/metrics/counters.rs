//! The counters the data path and the registry write to, and the label
//! values they carry. A leaf: it knows no pod registry and no scrape; the
//! `scrape` side reads the registry, and [`super::Metrics`] owns the
//! families these counters belong to.
//!
//! A pod's counters are resolved when the pod joins the registry
//! ([`PodCounters`], kept in its `Pod`), so a connection never looks a
//! label up, and the bytes and messages the relay moves go to per-thread
//! stripes ([`Traffic`]), so relays on different threads rarely share a
//! cache line. A pod that has left the registry, once nothing holds it any
//! more, has its series removed ([`PodFamilies::retire`]): with DNS
//! discovery every restarted pod is a new URL, and the scrape must not
//! grow with each.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::connection::dial::DialFailure;
use crate::connection::relay::outcome::Closer;
use common::rebalance::ShedReason;

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
#[cfg(test)]
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
/// Labels of the per-pod counters: the URL alone, so that a pod renamed
/// behind the same URL keeps its series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct PodLabel {
    pod: Arc<str>,
}

/// Labels of failed dials.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct FailedLabels {
    pod: Arc<str>,
    reason: DialFailure,
}

/// Labels of connections shed by rebalancing.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ShedLabels {
    pod: Arc<str>,
    reason: ShedReason,
}

/// Labels of closed connections.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ClosedLabels {
    pod: Arc<str>,
    code: &'static str,
    side: &'static str,
}

/// Labels of handshakes the balancer refused itself.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct RefusedLabels {
    /// The status the client got; the balancer's own refusals come from a
    /// handful of constants, so this stays bounded.
    pub(super) status: u16,
    /// Why, from a fixed set (see [`Refusal`]).
    pub(super) reason: &'static str,
}

/// Why the balancer itself refused an upgrade or a plain HTTP request (a
/// pod's own answer is counted per pod instead).
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
    /// The client address is past `rateLimit` (429).
    RateLimited,
    /// `maxHttpRequests` plain requests are in flight (503).
    MaxHttpRequests,
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
            Refusal::MaxHttpRequests => "max_http_requests",
            Refusal::PodsFull => "pods_full",
            Refusal::NoPod => "no_pod",
            Refusal::Unreachable => "unreachable",
        }
    }
}

/// The HTTP version a client connection speaks: the `protocol` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpVersion {
    /// HTTP/1.1 (plain TCP, or TLS that did not pick `h2`).
    Http1 = 0,
    /// HTTP/2, picked by ALPN on the TLS listener.
    Http2 = 1,
}

/// Values of the `protocol` label, in [`HttpVersion`] order.
pub(super) const PROTOCOL_LABELS: [&str; 2] = ["http1", "http2"];

/// Which way relayed bytes went: the `direction` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the client to the pod.
    ClientToPod = 0,
    /// From the pod to the client.
    PodToClient = 1,
}

/// Values of the `direction` label, in [`Direction`] order.
pub(super) const DIRECTION_LABELS: [&str; 2] = ["client_to_pod", "pod_to_client"];

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
    pub(super) opened: Family<PodLabel, Counter>,
    pub(super) failed: Family<FailedLabels, Counter>,
    pub(super) closed: Family<ClosedLabels, Counter>,
    pub(super) failovers: Family<PodLabel, Counter>,
    pub(super) poll_errors: Family<PodLabel, Counter>,
    pub(super) shed: Family<ShedLabels, Counter>,
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
                shed_family: self.shed.clone(),
                failed: std::array::from_fn(|_| OnceLock::new()),
                closed: std::array::from_fn(|_| OnceLock::new()),
                retired: AtomicBool::new(false),
            }),
        }
    }

    /// Removes every series of the pod `counters` belong to, of every
    /// family, and keeps them from coming back: a late use of `counters`
    /// counts into nothing. For a pod that left the registry and that
    /// nothing holds any more; never for a URL still in the pod set, whose
    /// pod shares these series.
    pub fn retire(&self, counters: &PodCounters) {
        let lazy = &*counters.lazy;
        // First, so that a lazy counter created meanwhile is not exported.
        lazy.retired.store(true, Ordering::SeqCst);
        let pod = lazy.pod.clone();
        let label = PodLabel { pod: pod.clone() };
        self.opened.remove(&label);
        self.failovers.remove(&label);
        self.poll_errors.remove(&label);
        for reason in DialFailure::ALL {
            self.failed.remove(&FailedLabels {
                pod: pod.clone(),
                reason,
            });
        }
        for code in CODE_LABELS {
            for side in SIDE_LABELS {
                self.closed.remove(&ClosedLabels {
                    pod: pod.clone(),
                    code,
                    side,
                });
            }
        }
        for reason in ShedReason::ALL {
            self.shed.remove(&ShedLabels {
                pod: pod.clone(),
                reason,
            });
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
    shed_family: Family<ShedLabels, Counter>,
    /// By [`DialFailure`] (in [`DialFailure::ALL`] order).
    failed: [OnceLock<Counter>; DialFailure::ALL.len()],
    /// By [`CODE_LABELS`] index times 3 plus side index.
    closed: [OnceLock<Counter>; CODE_LABELS.len() * SIDE_LABELS.len()],
    /// Set once the pod's series were removed ([`PodFamilies::retire`]):
    /// a counter first used after that is not added to its family.
    retired: AtomicBool,
}

impl LazyCounters {
    /// `labels`' counter of `family`, or a detached one once retired.
    fn counter<L>(&self, family: &Family<L, Counter>, labels: &L) -> Counter
    where
        L: Clone + std::hash::Hash + Eq,
    {
        if self.retired.load(Ordering::SeqCst) {
            Counter::default()
        } else {
            family.get_or_create_owned(labels)
        }
    }
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
    /// The URL of the pod these count for: their `pod` label.
    pub fn url(&self) -> &str {
        &self.lazy.pod
    }

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

    /// A dial failed for `reason` (for a pod's non-101 status, see
    /// [`DialFailure::of_status`]).
    pub fn dial_failed(&self, reason: DialFailure) {
        let lazy = &*self.lazy;
        // `ALL` lists every variant in declaration order.
        lazy.failed[reason as usize]
            .get_or_init(|| {
                let labels = FailedLabels {
                    pod: lazy.pod.clone(),
                    reason,
                };
                lazy.counter(&lazy.failed_family, &labels)
            })
            .inc();
    }

    /// Rebalancing closed a relayed connection, for `reason`.
    pub fn shed(&self, reason: ShedReason) {
        let lazy = &*self.lazy;
        let labels = ShedLabels {
            pod: lazy.pod.clone(),
            reason,
        };
        lazy.counter(&lazy.shed_family, &labels).inc();
    }

    /// A relayed connection ended: `code` is the ending Close's code (see
    /// [`Closer`]), `None` when no Close frame ended it.
    pub fn closed(&self, code: Option<u16>, closer: Closer) {
        let lazy = &*self.lazy;
        let (code, side) = (code_index(code), side_index(closer));
        lazy.closed[code * SIDE_LABELS.len() + side]
            .get_or_init(|| {
                let labels = ClosedLabels {
                    pod: lazy.pod.clone(),
                    code: CODE_LABELS[code],
                    side: SIDE_LABELS[side],
                };
                lazy.counter(&lazy.closed_family, &labels)
            })
            .inc();
    }
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
    fn failure_reasons_are_bounded_and_in_label_order() {
        let reasons: HashSet<DialFailure> = (0..=u16::MAX).map(DialFailure::of_status).collect();
        assert_eq!(reasons.len(), 6, "five status classes and other");
        assert_eq!(DialFailure::of_status(404), DialFailure::status_4xx);
        assert_eq!(DialFailure::of_status(503), DialFailure::status_5xx);
        assert_eq!(DialFailure::of_status(200), DialFailure::status_2xx);
        assert_eq!(DialFailure::of_status(42), DialFailure::other);
        for (i, reason) in DialFailure::ALL.into_iter().enumerate() {
            assert_eq!(reason as usize, i, "ALL is in declaration order");
        }
        assert_eq!(format!("{:?}", DialFailure::status_4xx), "status_4xx");
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
