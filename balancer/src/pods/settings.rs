//! The selection-related settings a reload replaces whole (what the
//! registry, its pods and their pollers read), and the early-refresh rule
//! derived from them.

use std::time::Duration;

use common::{Config, Strategy};

use super::shed::RebalanceSettings;

/// Own opens on a pod since its last report that trigger an early poll, at
/// least; larger pods allow 5% of their count.
const EARLY_REFRESH_OPENS: u64 = 8;

/// The same while this balancer believes it is alone: a probe, so that it
/// finds out within a burst when it is not, rare enough that the few
/// handshakes in flight at a poll (counted by the pod and still in this
/// balancer's adjustment) cannot unbalance a lone balancer's burst.
const PROBE_OPENS: u64 = 64;

/// The selection-related settings, taken from [`Config`].
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Report age past which a pod is stale.
    pub cache_ttl: Duration,
    /// Failures in a row that eject a pod.
    pub eject_after: u32,
    /// `maxConnectionsPerPod` (0 = none).
    pub max_per_pod: u64,
    /// Slow-start ramp (zero = off).
    pub slow_start: Duration,
    /// Balancer replicas sharing the pods, this one included: as configured
    /// (`replicas`, a starting hint) in the settings the registry keeps,
    /// as learned from the reports (see `pods::replicas`) in those it hands
    /// out.
    pub replicas: u32,
    /// Selection strategy.
    pub strategy: Strategy,
    /// Live rebalancing.
    pub rebalance: RebalanceSettings,
}

impl Settings {
    /// `cacheTTL` in nanoseconds, as report ages are compared.
    pub fn cache_ttl_nanos(&self) -> u64 {
        u64::try_from(self.cache_ttl.as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether a pod is polled early once this balancer opened many
    /// connections on it since its last report: how a balancer learns, in
    /// the middle of a burst, that other replicas place connections on the
    /// same pods (and how many there are). The comparison strategies never
    /// do it: they replay rules that lack it.
    pub fn early_refresh(&self) -> Option<EarlyRefresh> {
        let compared = !matches!(
            self.strategy,
            Strategy::LeastConnections | Strategy::PowerOfTwo
        );
        if compared {
            None
        } else if self.replicas > 1 {
            Some(EarlyRefresh {
                at_least: EARLY_REFRESH_OPENS,
                share: 20,
            })
        } else {
            Some(EarlyRefresh {
                at_least: PROBE_OPENS,
                share: 5,
            })
        }
    }

    /// The settings of `config`.
    pub fn from_config(config: &Config) -> Self {
        Settings {
            cache_ttl: config.cache_ttl,
            eject_after: config.eject_after.max(1),
            max_per_pod: config.max_connections_per_pod,
            slow_start: config.slow_start,
            replicas: config.replicas.max(1),
            strategy: config.selection,
            rebalance: RebalanceSettings::from_config(config),
        }
    }
}

/// When a pod is polled early: once this balancer opened `at_least`
/// connections there since its last report, or 1/`share` of its reported
/// count if that is more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EarlyRefresh {
    /// Own opens since the last report, at least.
    pub at_least: u64,
    /// Or this fraction (1/share) of the reported count.
    pub share: u64,
}
