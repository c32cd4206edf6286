//! What a pod is, in one word, and each change of it, logged once.

use common::PodState;
use common::selection::Health;

/// What a pod is, in one word: the `state` label of `wsbalancer_pod_state`
/// and the `from`/`to` of state-change logs. An ejected pod is `ejected`
/// whatever it reports, a pod without a fresh report is `unknown` (never
/// reported) or `stale`, and the others are in the state they report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Condition {
    /// Reporting `ready` (or no state), fresh, not ejected.
    Ready,
    /// Reporting `drain`: no new connections.
    Drain,
    /// Reporting `maint`: no new connections.
    Maint,
    /// No report yet, or a state this version does not know (treated like
    /// `ready`).
    #[default]
    Unknown,
    /// The last report is older than `cacheTTL`.
    Stale,
    /// Failed too many polls or dials in a row.
    Ejected,
}

impl Condition {
    /// Every condition, in label order.
    pub const ALL: [Condition; 6] = [
        Condition::Ready,
        Condition::Drain,
        Condition::Maint,
        Condition::Unknown,
        Condition::Stale,
        Condition::Ejected,
    ];

    /// The label and log value.
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Ready => "ready",
            Condition::Drain => "drain",
            Condition::Maint => "maint",
            Condition::Unknown => "unknown",
            Condition::Stale => "stale",
            Condition::Ejected => "ejected",
        }
    }

    /// The condition of a pod with this `health`, report freshness and
    /// reported `state` (`has_report`: any report at all).
    pub(super) fn of(health: Health, has_report: bool, stale: bool, state: PodState) -> Condition {
        if health == Health::Ejected {
            Condition::Ejected
        } else if !has_report {
            Condition::Unknown
        } else if stale {
            Condition::Stale
        } else {
            match state {
                PodState::Ready => Condition::Ready,
                PodState::Drain => Condition::Drain,
                PodState::Maint => Condition::Maint,
                PodState::Unknown => Condition::Unknown,
            }
        }
    }
}

/// A pod's condition changed since it was last looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionChange {
    /// What it was.
    pub from: Condition,
    /// What it is now.
    pub to: Condition,
    /// `podName` from its last report.
    pub pod_name: Option<String>,
}

impl ConditionChange {
    /// Logs the change of the pod at `url`: a warning when it left the
    /// rotation by failing, else an info line.
    pub fn log(&self, url: &str) {
        let pod_name = self.pod_name.as_deref().unwrap_or_default();
        let (from, to) = (self.from.as_str(), self.to.as_str());
        match self.to {
            Condition::Ejected | Condition::Stale => {
                tracing::warn!(pod = url, pod_name, from, to, "pod state changed");
            }
            _ => tracing::info!(pod = url, pod_name, from, to, "pod state changed"),
        }
    }
}
