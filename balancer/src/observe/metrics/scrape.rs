//! The series computed when `/metrics` is scraped, from what the pod
//! registry already knows (each pod's count, report age and health), the
//! draining flag and the relayed traffic totals: the same snapshots
//! `/balancer-metrics` shows, so both always agree.

use std::fmt;
use std::sync::Arc;

use common::selection::Health;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;
use tokio_util::sync::CancellationToken;

use super::counters::{DIRECTION_LABELS, Traffic};
use crate::pods::condition::Condition;
use crate::pods::pod::PodSnapshot;
use crate::pods::registry::PodRegistry;

/// Series computed when scraped.
#[derive(Debug)]
pub(super) struct ScrapeTime {
    /// The pods, read on every scrape.
    pub(super) registry: Arc<PodRegistry>,
    /// Cancelled once the balancer drains.
    pub(super) draining: CancellationToken,
    /// The relay's totals.
    pub(super) traffic: Arc<Traffic>,
}

impl Collector for ScrapeTime {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        self.encode_balancer(&mut encoder)?;
        self.encode_pods(&mut encoder)
    }
}

impl ScrapeTime {
    /// The balancer-wide series: draining, traffic, imbalance, replicas.
    fn encode_balancer(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
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
            encoder,
            "relayed",
            "Bytes relayed, by direction, counted as they are written (live, not at close).",
            Some(&Unit::Bytes),
            bytes,
        )?;
        per_direction(
            encoder,
            "relayed_messages",
            "Complete WebSocket data messages relayed, by direction, counted as they pass.",
            None,
            messages,
        )?;

        let metric = encoder.encode_descriptor(
            "imbalance",
            "The largest relative excess of a pod's reported load over its share of the mean \
             (0.25: a pod 25% above), as the last rebalancing round saw it.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.registry.imbalance().get()).encode(metric)?;
        let metric = encoder.encode_descriptor(
            "replicas",
            "Balancer replicas sharing the pods, this one included, as it learned from the \
             pods' reports (the multiplier of its own opens and closes between reports).",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(u64::from(self.registry.settings().replicas)).encode(metric)
    }

    /// The per-pod series, from the registry's snapshots.
    fn encode_pods(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
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
            encoder,
            "pod_connections_active",
            "Connections this balancer relays to the pod now, those being dialled included; a pod \
             that left the pod set is listed until its last connection ends.",
            None,
            &active,
            |pod| Some(pod.relayed),
        )?;
        per_pod(
            encoder,
            "pod_connections_reported",
            "The pod's last reported agentsConnections (absent before its first report).",
            None,
            &pods,
            |pod| pod.reported,
        )?;
        per_pod(
            encoder,
            "pod_connections_effective",
            "The count selection uses: the last report plus this balancer's opens and closes since.",
            None,
            &pods,
            |pod| Some(pod.effective),
        )?;
        per_pod(
            encoder,
            "pod_report_age",
            "Age of the pod's last good report (absent before its first report).",
            Some(&Unit::Seconds),
            &pods,
            |pod| pod.report_age.map(|age| age.as_secs_f64()),
        )?;
        per_pod(
            encoder,
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
