//! The `/metric` report a pod serves and the balancer reads: the pod's own
//! count of live WebSocket connections, plus optional identity, capacity and
//! state. Parsing is strict about what matters (`agentsConnections` must be a
//! non-negative integer) and lenient about the rest (unknown fields ignored).

use serde::{Deserialize, Serialize};

/// Largest report body accepted; a longer one is a failed report.
pub const MAX_REPORT_BYTES: usize = 64 * 1024;

/// Whether a pod wants new connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PodState {
    /// Accepting connections (also assumed when the pod reports no state).
    #[default]
    Ready,
    /// Shutting down: existing connections stay, new ones go elsewhere.
    Drain,
    /// Under maintenance: no new connections.
    Maint,
    /// A state this version does not know; treated like `ready` so that a
    /// newer pod does not starve an older balancer.
    #[serde(other)]
    Unknown,
}

impl PodState {
    /// Whether new connections may be sent to a pod in this state.
    pub fn accepts_new(self) -> bool {
        matches!(self, PodState::Ready | PodState::Unknown)
    }
}

/// One report from one pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Live WebSocket connections on the pod, as the pod counts them.
    pub agents_connections: u64,
    /// Kubernetes pod name, shown in logs and the status page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// The pod's IP, informational.
    #[serde(default, rename = "podIP", skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<String>,
    /// The node the pod runs on, informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// How many connections the pod is willing to hold, when it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u64>,
    /// Whether it wants new connections.
    #[serde(default)]
    pub state: PodState,
}

/// Why a report body was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Body longer than [`MAX_REPORT_BYTES`].
    #[error("report larger than {MAX_REPORT_BYTES} bytes")]
    TooLarge,
    /// Not JSON, or `agentsConnections` missing or not a non-negative integer.
    #[error("malformed report: {0}")]
    Malformed(#[from] serde_json::Error),
}

impl Report {
    /// Parses a report body.
    pub fn parse(body: &[u8]) -> Result<Report, ReportError> {
        if body.len() > MAX_REPORT_BYTES {
            return Err(ReportError::TooLarge);
        }
        Ok(serde_json::from_slice(body)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_original_report_parses() {
        let r = Report::parse(br#"{"agentsConnections": 12}"#).unwrap();
        assert_eq!(r.agents_connections, 12);
        assert_eq!(r.state, PodState::Ready);
        assert_eq!(r.pod_name, None);
    }

    #[test]
    fn full_report_with_unknown_fields() {
        let r = Report::parse(
            br#"{"agentsConnections":3,"podName":"chat-1","podIP":"10.1.2.3","nodeName":"n",
                "capacity":1000,"state":"drain","future":{"x":1}}"#,
        )
        .unwrap();
        assert_eq!(r.pod_name.as_deref(), Some("chat-1"));
        assert_eq!(r.pod_ip.as_deref(), Some("10.1.2.3"));
        assert_eq!(r.capacity, Some(1000));
        assert!(!r.state.accepts_new());
    }

    #[test]
    fn unknown_state_still_accepts() {
        let r = Report::parse(br#"{"agentsConnections":0,"state":"warming"}"#).unwrap();
        assert_eq!(r.state, PodState::Unknown);
        assert!(r.state.accepts_new());
    }

    #[test]
    fn rejects_bad_bodies() {
        for body in [
            &br#"{"agentsConnections": -5}"#[..],
            br#"{"agentsConnections": "7"}"#,
            br#"{"podName": "x"}"#,
            b"<html>oops</html>",
            b"",
        ] {
            assert!(
                Report::parse(body).is_err(),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        let big = vec![b' '; MAX_REPORT_BYTES + 1];
        assert!(matches!(Report::parse(&big), Err(ReportError::TooLarge)));
    }
}
