//! Prometheus metrics of the balancer, served at `/metrics` on the admin
//! listener in the text format.
//!
//! Two kinds of series. What changes on the data path is counted as it
//! happens, at the cost of an atomic add, into the [`counters`] (a leaf the
//! data path and the pod registry write to). What the registry already
//! knows (each pod's count, report age and health) and the draining flag
//! are read at [`scrape`] time instead, from the same snapshots
//! `/balancer-metrics` shows. [`Metrics`] owns the Prometheus registry that
//! holds both and encodes them.
//!
//! Cardinality is bounded: labels carry pod URLs (from the configuration
//! or discovery: the pods of now, plus those that left and still carry
//! connections), pod names (one per pod), and values from fixed sets
//! (close-code classes, failure reasons, sides, states), never anything a
//! client chooses.

pub mod counters;
mod scrape;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use tokio_util::sync::CancellationToken;

use self::counters::{HttpVersion, PROTOCOL_LABELS, PodFamilies, Refusal, RefusedLabels, Traffic};
use self::scrape::ScrapeTime;
use crate::pods::registry::PodRegistry;

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
    /// Client connections, by the HTTP version they speak (known after
    /// TLS for a TLS listener), in [`HttpVersion`] order.
    by_protocol: [Counter; 2],
    /// WebSocket handshakes completed, by the HTTP version they came
    /// over, in [`HttpVersion`] order.
    handshakes_by_protocol: [Counter; 2],
    /// Upgrades the balancer refused itself.
    refused: Family<RefusedLabels, Counter>,
    /// Plain HTTP requests being proxied now: what `maxHttpRequests`
    /// counts.
    http_active: Gauge<u64, AtomicU64>,
    /// Plain HTTP requests the balancer refused itself.
    http_refused: Family<RefusedLabels, Counter>,
    /// Client connections answered 503 at accept because the process had
    /// run out of file descriptors.
    out_of_descriptors: Counter,
    /// Bytes and messages relayed.
    traffic: Arc<Traffic>,
    /// Failed lookups of `discovery.dns`.
    discovery_errors: Counter,
    /// The registry [`Metrics::watch`] reads, swept of departed pods before
    /// every scrape.
    watched: Option<Arc<PodRegistry>>,
}

/// A counter per [`HttpVersion`] as one family, both series shown from
/// the start.
fn protocol_counters(registry: &mut Registry, name: &str, help: &str) -> [Counter; 2] {
    let family = Family::<Vec<(&'static str, &'static str)>, Counter>::default();
    registry.register(name, help, family.clone());
    PROTOCOL_LABELS.map(|protocol| family.get_or_create_owned(&vec![("protocol", protocol)]))
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
             (invalid, too_large, draining, origin, rate_limited, max_connections, pods_full, \
             no_pod, unreachable)",
            refused.clone(),
        );
        let http_active = Gauge::default();
        registry.register(
            "http_requests_active",
            "Plain HTTP requests (httpMode: proxy) being proxied now, until their response is \
             sent whole (what maxHttpRequests counts)",
            http_active.clone(),
        );
        let http_refused = Family::default();
        registry.register(
            "http_requests_refused",
            "Plain HTTP requests the balancer answered itself before any pod, by status and reason \
             (rate_limited: 429 past rateLimit; max_http_requests: 503 past maxHttpRequests)",
            http_refused.clone(),
        );
        let out_of_descriptors = Counter::default();
        registry.register(
            "out_of_descriptors_refusals",
            "Client connections answered 503 as soon as accepted, before their request was read, \
             because the process had run out of file descriptors (EMFILE or ENFILE; a spare \
             descriptor kept for this lets the balancer accept and refuse them)",
            out_of_descriptors.clone(),
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
            "Dials that moved on to the next pod after this pod failed, or was not connected after hedgeDelay",
            pods.failovers.clone(),
        );
        registry.register(
            "pod_connections_shed",
            "Relayed connections closed by live rebalancing (rebalance: true) so that their \
             clients reconnect elsewhere, by reason (imbalance: the pod was above the mean; \
             drain: the pod reported state drain)",
            pods.shed.clone(),
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
        let by_protocol = protocol_counters(
            &mut registry,
            "client_connections_by_protocol",
            "Client connections by the HTTP version they speak: http2 when TLS picked h2 by ALPN, \
             http1 otherwise (counted once the TLS handshake is done)",
        );
        let handshakes_by_protocol = protocol_counters(
            &mut registry,
            "handshakes_by_protocol",
            "WebSocket handshakes completed (101 over HTTP/1.1, 200 to an extended CONNECT over \
             HTTP/2), by HTTP version",
        );
        Metrics {
            registry,
            pods,
            handshake,
            connection,
            active,
            accepted,
            by_protocol,
            handshakes_by_protocol,
            refused,
            http_active,
            http_refused,
            out_of_descriptors,
            traffic: Arc::new(Traffic::default()),
            discovery_errors,
            watched: None,
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
        self.watched = Some(registry.clone());
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

    /// The live count of plain HTTP requests being proxied.
    pub fn http_active(&self) -> &Gauge<u64, AtomicU64> {
        &self.http_active
    }

    /// The balancer refused a plain HTTP request with `status`.
    pub fn http_refused(&self, status: u16, why: Refusal) {
        self.http_refused
            .get_or_create(&RefusedLabels {
                status,
                reason: why.as_str(),
            })
            .inc();
    }

    /// A client connection was accepted with the spare descriptor and
    /// answered 503: the process had run out of descriptors.
    pub fn refused_out_of_descriptors(&self) {
        self.out_of_descriptors.inc();
    }

    /// A client connection speaks `version` (after TLS, for TLS).
    pub fn speaks(&self, version: HttpVersion) {
        self.by_protocol[version as usize].inc();
    }

    /// A client got its 101 (or its 200, over HTTP/2) `took` after its
    /// request arrived.
    pub fn handshake_done(&self, took: Duration, version: HttpVersion) {
        self.handshake.observe(took.as_secs_f64());
        self.handshakes_by_protocol[version as usize].inc();
    }

    /// A relayed connection ended after `lived`.
    pub fn connection_ended(&self, lived: Duration) {
        self.connection.observe(lived.as_secs_f64());
    }

    /// Everything, in the Prometheus text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> Result<String, fmt::Error> {
        // Pods gone since the last scrape leave no series behind.
        if let Some(registry) = &self.watched {
            registry.sweep_departed();
        }
        let mut text = String::with_capacity(16 * 1024);
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::dial::DialFailure;
    use crate::connection::relay::outcome::Closer;

    #[test]
    fn pod_counters_export_what_happened_only() {
        let mut metrics = Metrics::new();
        let counters = metrics.pod_families().for_pod("http://a:1");
        counters.opened();
        counters.dial_failed(DialFailure::refused);
        counters.dial_failed(DialFailure::refused);
        counters.dial_failed(DialFailure::of_status(403));
        counters.closed(Some(4001), Closer::Client);
        counters.closed(None, Closer::Pod);
        metrics.watch(
            Arc::new(PodRegistry::new(
                Vec::new(),
                crate::pods::settings::Settings::from_config(&common::Config::default()),
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

    /// The `pod` label values of every series in `text`.
    fn pods_in(text: &str) -> std::collections::BTreeSet<String> {
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.split_once("pod=\"")?.1.split_once('"'))
            .map(|(pod, _)| pod.to_owned())
            .collect()
    }

    /// Every kind of per-pod series: each family, lazy ones included.
    fn use_every_counter(pod: &crate::pods::pod::Pod) {
        let counters = &pod.metrics;
        counters.opened();
        counters.failed_over();
        counters.poll_failed();
        counters.dial_failed(DialFailure::timeout);
        counters.closed(Some(1000), Closer::Client);
        counters.shed(common::rebalance::ShedReason::imbalance);
    }

    #[test]
    fn departed_pods_series_go_with_their_last_connection() {
        use common::PodAddress;
        use std::collections::BTreeSet;

        let url = |i: usize| format!("http://10.1.{}.{}:8080", i / 250, i % 250 + 1);
        let set = |urls: &[String]| -> Vec<PodAddress> {
            urls.iter()
                .map(|u| PodAddress::parse(u, "/metric").unwrap())
                .collect()
        };
        let mut metrics = Metrics::new();
        let registry = Arc::new(PodRegistry::new(
            set(&[url(0), url(1)]),
            crate::pods::settings::Settings::from_config(&common::Config::default()),
            metrics.pod_families(),
        ));
        metrics.watch(registry.clone(), CancellationToken::new());

        // A hundred changes of the pod set, as discovery sees pods restart
        // with new addresses: each time one pod leaves and one joins. Two of
        // those that leave still carry a connection.
        let mut held = Vec::new();
        for i in 0..100 {
            for pod in registry.pods() {
                use_every_counter(&pod);
            }
            let leaving = registry.pods()[0].clone();
            if i == 10 || i == 60 {
                let mut lease = leaving.lease(None);
                lease.settle();
                held.push(lease);
            }
            drop(leaving);
            let change = registry.set_pods(set(&[url(i + 1), url(i + 2)]));
            assert_eq!((change.added.len(), change.removed.len()), (1, 1));
        }
        let text = metrics.encode().unwrap();
        let expected: BTreeSet<String> = [url(10), url(60), url(100), url(101)].into();
        assert_eq!(pods_in(&text), expected, "in\n{text}");
        // The departed pods with a connection still show every series.
        for family in [
            "wsbalancer_pod_connections_opened_total",
            "wsbalancer_pod_connections_failed_total",
            "wsbalancer_pod_connections_closed_total",
            "wsbalancer_pod_failovers_total",
            "wsbalancer_pod_poll_errors_total",
            "wsbalancer_pod_connections_shed_total",
            "wsbalancer_pod_connections_active",
        ] {
            let series = format!("{family}{{pod=\"{}\"", url(10));
            assert!(text.contains(&series), "{series} missing in\n{text}");
        }

        // Its connection closes: its series go with the next scrape.
        let lease = held.remove(0);
        assert_eq!(lease.pod_url(), url(10));
        drop(lease);
        let text = metrics.encode().unwrap();
        let expected: BTreeSet<String> = [url(60), url(100), url(101)].into();
        assert_eq!(pods_in(&text), expected, "in\n{text}");

        // A URL that leaves and comes back counts from zero in fresh
        // series; one still in the set keeps its own across changes.
        registry.pods()[1].metrics.opened();
        registry.set_pods(set(&[url(10), url(101)]));
        let back = registry.pods()[0].clone();
        back.metrics.opened();
        drop(back);
        let text = metrics.encode().unwrap();
        let line = |pod: &str| format!("wsbalancer_pod_connections_opened_total{{pod=\"{pod}\"}}");
        assert!(text.contains(&format!("{} 1\n", line(&url(10)))), "{text}");
        assert!(text.contains(&format!("{} 1\n", line(&url(101)))), "{text}");
        let expected: BTreeSet<String> = [url(10), url(60), url(101)].into();
        assert_eq!(pods_in(&text), expected, "url(100) left with nothing held");

        // A URL that comes back while its departed pod still has a
        // connection shares that pod's series: they stay when it goes.
        registry.set_pods(set(&[url(10), url(60), url(101)]));
        drop(held);
        let rejoined = registry.pods()[1].clone();
        assert_eq!(rejoined.address.url, url(60));
        rejoined.metrics.opened();
        drop(rejoined);
        let text = metrics.encode().unwrap();
        let expected: BTreeSet<String> = [url(10), url(60), url(101)].into();
        assert_eq!(pods_in(&text), expected, "in\n{text}");
        // Opened twice while it was first in the set, once since.
        assert!(text.contains(&format!("{} 3\n", line(&url(60)))), "{text}");

        registry.set_pods(set(&[url(10), url(101)]));
        let text = metrics.encode().unwrap();
        let expected: BTreeSet<String> = [url(10), url(101)].into();
        assert_eq!(pods_in(&text), expected, "in\n{text}");
    }
}
