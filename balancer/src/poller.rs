//! Background polling of every pod's `/metric` report. Never on the request
//! path: a connection only ever reads what the poller last stored.
//!
//! Each pod has its own task, so one slow pod delays nobody else's reports.
//! Polls are spaced at half of `cacheTTL` with ±10% jitter, so a live pod's
//! report never gets older than `cacheTTL` and many balancer replicas do not
//! poll in lockstep.

use std::sync::Arc;
use std::time::Duration;

use common::report::MAX_REPORT_BYTES;
use common::{Report, ReportError};
use rand::Rng;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::registry::Pod;

/// Why one poll failed.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    /// Connect, TLS or HTTP failure.
    #[error("request failed: {0}")]
    Request(#[from] reqwest::Error),
    /// The pod answered with a non-2xx status.
    #[error("status {0}")]
    Status(u16),
    /// No complete answer within the poll timeout.
    #[error("timed out")]
    Timeout,
    /// The body was not a valid report.
    #[error(transparent)]
    Report(#[from] ReportError),
}

/// How polling is paced.
#[derive(Debug, Clone, Copy)]
pub struct PollSchedule {
    /// Mean time between two polls of one pod.
    pub interval: Duration,
    /// Bound on one whole poll (connect, headers and body).
    pub timeout: Duration,
}

impl PollSchedule {
    /// Derives the schedule from `cacheTTL` and `dialTimeout`.
    pub fn from_ttl(cache_ttl: Duration, dial_timeout: Duration) -> Self {
        PollSchedule {
            interval: cache_ttl / 2,
            timeout: dial_timeout.min(cache_ttl),
        }
    }

    fn next_delay(&self) -> Duration {
        self.interval.mul_f64(rand::rng().random_range(0.9..1.1))
    }
}

/// Starts one polling task per pod, tracked by `tracker`, ending when `stop`
/// is cancelled.
pub fn spawn_all(
    pods: Vec<Arc<Pod>>,
    client: reqwest::Client,
    schedule: PollSchedule,
    tracker: &TaskTracker,
    stop: &CancellationToken,
) {
    for pod in pods {
        tracker.spawn(poll_loop(pod, client.clone(), schedule, stop.clone()));
    }
}

async fn poll_loop(
    pod: Arc<Pod>,
    client: reqwest::Client,
    schedule: PollSchedule,
    stop: CancellationToken,
) {
    let mut last_error: Option<String> = None;
    loop {
        let base = pod.poll_base();
        let outcome = tokio::select! {
            r = tokio::time::timeout(schedule.timeout, poll_once(&client, &pod.address.metric_url)) => r,
            () = stop.cancelled() => return,
        };
        match outcome.unwrap_or(Err(PollError::Timeout)) {
            Ok(report) => {
                tracing::debug!(pod = %pod.address.url, connections = report.agents_connections, "report");
                if pod.record_report(base, report) {
                    tracing::info!(pod = %pod.address.url, "pod reporting again, back in rotation");
                }
                last_error = None;
            }
            Err(error) => {
                let error = error.to_string();
                if last_error.as_deref() != Some(error.as_str()) {
                    tracing::warn!(pod = %pod.address.url, %error, "poll failed");
                }
                if pod.record_failure() {
                    tracing::warn!(pod = %pod.address.url, %error, "pod ejected after repeated failures");
                }
                last_error = Some(error);
            }
        }
        tokio::select! {
            () = tokio::time::sleep(schedule.next_delay()) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// Fetches and parses one report, refusing bodies over the size limit
/// without reading them whole.
pub async fn poll_once(client: &reqwest::Client, url: &str) -> Result<Report, PollError> {
    let mut response = client.get(url).send().await?;
    if !response.status().is_success() {
        return Err(PollError::Status(response.status().as_u16()));
    }
    if response
        .content_length()
        .is_some_and(|len| len > MAX_REPORT_BYTES as u64)
    {
        return Err(ReportError::TooLarge.into());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > MAX_REPORT_BYTES {
            return Err(ReportError::TooLarge.into());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Report::parse(&body)?)
}

/// The HTTP client used for polls, sharing the pods' TLS settings.
pub fn http_client(tls: Arc<rustls::ClientConfig>) -> Result<reqwest::Client, reqwest::Error> {
    let mut tls = (*tls).clone();
    tls.alpn_protocols.clear();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(1)
        .user_agent(concat!("wsbalancer/", env!("CARGO_PKG_VERSION")))
        .build()
}
