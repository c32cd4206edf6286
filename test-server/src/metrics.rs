//! A pod's own Prometheus metrics, served at `GET /metrics`.
//!
//! Each [`crate::Pod`] owns one [`PodMetrics`] with its own registry, so a
//! process running many pods still gives every pod its own scrape target.
//! The live connection gauge here is the very number `/metric` reports as
//! `agentsConnections`: the two endpoints cannot disagree.
//!
//! Every series is named `test_server_*` and no label carries a per-client
//! value, so a demo can be scraped for hours without the series count
//! growing: the `code` label of close frames is capped at
//! [`MAX_CLOSE_CODE_SERIES`] distinct codes, the rest count as `other`.

use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, PoisonError};

use common::PodState;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

/// Prefix of every metric a pod exports.
pub const METRIC_PREFIX: &str = "test_server";

/// `Content-Type` of a `/metrics` answer: the Prometheus text format 0.0.4
/// that [`PodMetrics::encode`] writes.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Distinct close codes that get their own `code` label value; later new
/// codes are counted under `code="other"`. Clients choose close codes, so
/// without a cap they would choose the series count too.
pub const MAX_CLOSE_CODE_SERIES: usize = 32;

/// Every state a pod can report, each exported as one `pod_state` series.
const STATES: [PodState; 4] = [
    PodState::Ready,
    PodState::Drain,
    PodState::Maint,
    PodState::Unknown,
];

/// The metrics of one pod and the registry that exports them.
#[derive(Debug)]
pub struct PodMetrics {
    /// Owns the exported series; encoded on every scrape.
    registry: Registry,
    /// Pod name, the `pod` label of `pod_state`.
    pod: String,
    /// Live connections, counted from the 101 on (`/metric`'s count).
    active: Gauge<u64, AtomicU64>,
    /// Connections answered 101 since start.
    accepted: Counter,
    /// Text and binary messages sent back to clients.
    echoed_messages: Counter,
    /// Payload bytes of the echoed messages.
    echoed_bytes: Counter,
    /// Close frames received from clients, by close code.
    close_frames: Family<CloseLabels, Counter>,
    /// Codes that have their own `close_frames` series (at most
    /// [`MAX_CLOSE_CODE_SERIES`]); the lock makes the cap exact.
    labelled_codes: Mutex<Vec<u16>>,
    /// 1 for the state the pod reports, 0 for the others.
    state: Family<StateLabels, Gauge>,
}

impl PodMetrics {
    /// Registers a pod's metrics, reporting `ready`.
    pub fn new(pod: &str) -> Self {
        let mut registry = Registry::with_prefix(METRIC_PREFIX);
        let active = Gauge::default();
        registry.register(
            "connections_active",
            "Live WebSocket connections, the count /metric reports as agentsConnections",
            active.clone(),
        );
        let accepted = Counter::default();
        registry.register(
            "connections_accepted",
            "WebSocket connections answered 101 since the pod started",
            accepted.clone(),
        );
        let echoed_messages = Counter::default();
        registry.register(
            "echoed_messages",
            "Text and binary messages echoed back to clients",
            echoed_messages.clone(),
        );
        let echoed_bytes = Counter::default();
        registry.register_with_unit(
            "echoed",
            "Payload bytes of the messages echoed back to clients",
            Unit::Bytes,
            echoed_bytes.clone(),
        );
        let close_frames = Family::default();
        registry.register(
            "close_frames_received",
            "Close frames received from clients, by close code (1005: no code)",
            close_frames.clone(),
        );
        let state = Family::default();
        registry.register(
            "pod_state",
            "1 for the state the pod reports at /metric, 0 for the others",
            state.clone(),
        );
        let metrics = PodMetrics {
            registry,
            pod: pod.to_owned(),
            active,
            accepted,
            echoed_messages,
            echoed_bytes,
            close_frames,
            labelled_codes: Mutex::new(Vec::new()),
            state,
        };
        metrics.set_state(PodState::Ready);
        metrics
    }

    /// The pod's metrics in the Prometheus text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)?;
        Ok(text)
    }

    /// A connection was answered 101.
    pub fn connection_opened(&self) {
        self.active.inc();
        self.accepted.inc();
    }

    /// A connection counted by [`PodMetrics::connection_opened`] ended.
    pub fn connection_closed(&self) {
        self.active.dec();
    }

    /// Live connections.
    pub fn active(&self) -> u64 {
        self.active.get()
    }

    /// Connections answered 101 since start.
    pub fn accepted(&self) -> u64 {
        self.accepted.get()
    }

    /// One message of `bytes` payload bytes was echoed.
    pub fn echoed(&self, bytes: usize) {
        self.echoed_messages.inc();
        self.echoed_bytes
            .inc_by(u64::try_from(bytes).unwrap_or(u64::MAX));
    }

    /// A client sent a close frame with `code`.
    pub fn close_received(&self, code: u16) {
        let label = {
            let mut labelled = self
                .labelled_codes
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if labelled.contains(&code) {
                CloseCode::Code(code)
            } else if labelled.len() < MAX_CLOSE_CODE_SERIES {
                labelled.push(code);
                CloseCode::Code(code)
            } else {
                CloseCode::Other
            }
        };
        self.close_frames
            .get_or_create(&CloseLabels { code: label })
            .inc();
    }

    /// Exports `state` as the reported one. Callers serialise calls, so the
    /// gauges end on the state set last.
    pub fn set_state(&self, state: PodState) {
        for candidate in STATES {
            let labels = StateLabels {
                pod: self.pod.clone(),
                state: state_label(candidate),
            };
            self.state
                .get_or_create(&labels)
                .set(i64::from(candidate == state));
        }
    }
}

/// Labels of `close_frames_received`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CloseLabels {
    /// The close code, or `other` past the cap.
    code: CloseCode,
}

/// Value of the `code` label.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum CloseCode {
    /// A code with its own series.
    Code(u16),
    /// Any code that arrived once [`MAX_CLOSE_CODE_SERIES`] were taken.
    Other,
}

impl EncodeLabelValue for CloseCode {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        match self {
            CloseCode::Code(code) => write!(encoder, "{code}"),
            CloseCode::Other => encoder.write_str("other"),
        }
    }
}

/// Labels of `pod_state`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    /// The pod's name, as `/metric` reports it in `podName`.
    pod: String,
    /// The state as `/metric` spells it.
    state: &'static str,
}

/// `state` as the `/metric` JSON spells it.
fn state_label(state: PodState) -> &'static str {
    match state {
        PodState::Ready => "ready",
        PodState::Drain => "drain",
        PodState::Maint => "maint",
        PodState::Unknown => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_labels_match_the_metric_json() {
        for state in STATES {
            let json = serde_json::to_value(state).expect("PodState serialises");
            assert_eq!(json, state_label(state), "{state:?}");
        }
    }

    #[test]
    fn close_codes_past_the_cap_count_as_other() {
        let metrics = PodMetrics::new("p");
        let extra = 5;
        for code in (4000..).take(MAX_CLOSE_CODE_SERIES + extra) {
            metrics.close_received(code);
        }
        metrics.close_received(4000);
        let text = metrics.encode().expect("encoding into a String");
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("test_server_close_frames_received_total{"))
            .collect();
        assert_eq!(series.len(), MAX_CLOSE_CODE_SERIES + 1, "{text}");
        assert!(series.contains(&r#"test_server_close_frames_received_total{code="4000"} 2"#));
        let other = format!(r#"test_server_close_frames_received_total{{code="other"}} {extra}"#);
        assert!(series.contains(&other.as_str()), "{text}");
    }

    #[test]
    fn set_state_moves_the_one() {
        let metrics = PodMetrics::new("p-0");
        metrics.set_state(PodState::Drain);
        let text = metrics.encode().expect("encoding into a String");
        assert!(text.contains(r#"test_server_pod_state{pod="p-0",state="drain"} 1"#));
        assert!(text.contains(r#"test_server_pod_state{pod="p-0",state="ready"} 0"#));
    }
}
