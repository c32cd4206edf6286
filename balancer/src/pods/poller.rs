//! Background polling of every pod's `/metric` report. Never on the request
//! path: a connection only ever reads what the poller last stored.
//!
//! Each pod has its own task, so one slow pod delays nobody else's reports.
//! Polls are spaced at half of `cacheTTL` with ±10% jitter, so a live pod's
//! report never gets older than `cacheTTL` and many balancer replicas do not
//! poll in lockstep; after the first poll (all at once, at start) each pod
//! takes a random phase within the interval, so a thousand pods' polls are
//! spread evenly rather than bunched once per interval. A pod is polled early (at most every `min_gap`) when
//! this balancer opened many connections on it since its last report, and
//! a failing pod is re-checked sooner, then backed off once ejected. After
//! every poll the pod's condition (ready, drain, maint, stale, ejected...)
//! is compared with the last one seen, so each change is logged once.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use common::report::MAX_REPORT_BYTES;
use common::{Report, ReportError};
use rand::Rng;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::pods::pod::Pod;
use crate::pods::registry::{PodRegistry, PodSetChange};

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
    /// Mean time between two polls of one healthy pod.
    pub interval: Duration,
    /// Bound on one whole poll (connect, headers and body).
    pub timeout: Duration,
    /// Time between the starts of two polls of a pod whose last poll
    /// failed (a poll that timed out is followed at once).
    pub retry: Duration,
    /// Shortest gap between two polls of one pod (early refreshes included).
    pub min_gap: Duration,
    /// Longest wait between two probes of an ejected pod: `cacheTTL`, so a
    /// pod that comes back is in rotation again within about that long.
    pub max_backoff: Duration,
}

/// The shortest poll timeout: below it a loaded node's pods would be
/// ejected for answering slowly rather than for being gone.
const MIN_POLL_TIMEOUT: Duration = Duration::from_secs(1);

impl PollSchedule {
    /// Derives the schedule from `cacheTTL` and `dialTimeout`.
    ///
    /// A silent pod host (packets vanish, no reset) must be ejected without
    /// traffic within about `cacheTTL / 2` of its first missed poll: each
    /// poll times out after `cacheTTL / 20` (at least a second, at most
    /// `dialTimeout`) and a failed poll is retried after `cacheTTL / 40`,
    /// so `ejectAfter` (3) failures take about `0.15 × cacheTTL`
    /// (4.5 s at the default 30 s), where they took up to `1.2 × cacheTTL`
    /// with the poll bounded by `dialTimeout` alone.
    pub fn from_ttl(cache_ttl: Duration, dial_timeout: Duration) -> Self {
        let interval = cache_ttl / 2;
        PollSchedule {
            interval,
            timeout: (cache_ttl / 20).max(MIN_POLL_TIMEOUT).min(dial_timeout),
            retry: cache_ttl / 40,
            min_gap: (interval / 10).min(Duration::from_millis(25)),
            max_backoff: cache_ttl,
        }
    }

    /// Delay before a healthy pod's second poll: a random phase within one
    /// interval. Every pod is polled at once at start (selection needs its
    /// count); from then on the polls of many pods are spread evenly over
    /// the interval instead of coming in one burst per interval, whatever
    /// the pod count.
    pub fn first_delay(&self) -> Duration {
        self.interval.mul_f64(rand::rng().random_range(0.0..1.0))
    }

    /// Delay before the next poll, from the start of the last one. A pod
    /// whose poll just failed is re-checked after [`PollSchedule::retry`];
    /// an ejected pod is probed with exponential backoff from a quarter
    /// interval up to `max_backoff`.
    pub fn next_delay(&self, failures: u32, ejected: bool, eject_after: u32) -> Duration {
        let base = if ejected {
            let quick = self.interval / 4;
            let doublings = failures.saturating_sub(eject_after).min(16);
            quick.saturating_mul(1 << doublings).min(self.max_backoff)
        } else if failures > 0 {
            self.retry
        } else {
            self.interval
        };
        base.mul_f64(rand::rng().random_range(0.9..1.1))
    }
}

/// What every poll goes with: the HTTP client (the pods' TLS settings) and
/// the pacing. Each poller reads it at the start of each round, so a reload
/// that changes `tlsVerify`, `caFile` or `dialTimeout` reaches the polls as
/// it reaches the dials.
#[derive(Debug, Clone)]
pub struct PollWith {
    /// Client shared by every poll.
    pub client: reqwest::Client,
    /// Pacing of every poller.
    pub schedule: PollSchedule,
}

impl PollWith {
    /// Polls with `client`, paced by `config`'s `cacheTTL` and
    /// `dialTimeout`.
    pub fn new(client: reqwest::Client, config: &common::Config) -> Self {
        PollWith {
            client,
            schedule: PollSchedule::from_ttl(config.cache_ttl, config.dial_timeout),
        }
    }
}

/// What it takes to start a pod's poller, kept so that pods joining later
/// (reload, discovery) are polled like the first ones.
#[derive(Debug, Clone)]
pub struct Pollers {
    /// The registry the pods belong to.
    pub registry: Arc<PodRegistry>,
    /// Client and pacing, replaced as a whole by a reload.
    pub with: Arc<RwLock<PollWith>>,
    /// Tracks the polling tasks, so shutdown waits for them.
    pub tracker: TaskTracker,
    /// Stops every poller.
    pub stop: CancellationToken,
}

impl Pollers {
    /// Starts polling `pod` until the balancer stops or the pod leaves the
    /// registry.
    pub fn spawn(&self, pod: Arc<Pod>) {
        self.tracker.spawn(poll_loop(
            self.registry.clone(),
            pod,
            self.with.clone(),
            self.stop.clone(),
        ));
    }

    /// The client polls use now.
    pub fn client(&self) -> reqwest::Client {
        self.with
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .client
            .clone()
    }

    /// Polls from their next round on go with `with` (a reload).
    pub fn set_with(&self, with: PollWith) {
        *self.with.write().unwrap_or_else(|p| p.into_inner()) = with;
    }

    /// Makes `addresses` the registry's pod set and polls the pods that
    /// joined (those that left stop being polled on their own); the one
    /// entry point for reloads and discovery alike.
    pub fn set_pods(&self, addresses: Vec<common::PodAddress>) -> PodSetChange {
        let change = self.registry.set_pods(addresses);
        for pod in &change.added {
            self.spawn(pod.clone());
        }
        change
    }

    /// Starts polling every pod of the registry.
    pub fn spawn_all(&self) {
        for pod in self.registry.pods() {
            self.spawn(pod);
        }
    }
}

async fn poll_loop(
    registry: Arc<PodRegistry>,
    pod: Arc<Pod>,
    with: Arc<RwLock<PollWith>>,
    stop: CancellationToken,
) {
    let mut last_error: Option<String> = None;
    let mut first = true;
    loop {
        // Read each round: a reload may change them.
        let settings = registry.settings();
        let eject_after = settings.eject_after;
        let PollWith { client, schedule } = with.read().unwrap_or_else(|p| p.into_inner()).clone();
        let started = tokio::time::Instant::now();
        let start = pod.poll_start();
        let outcome = tokio::select! {
            r = tokio::time::timeout(schedule.timeout, poll_once(&client, &pod.address.metric_url)) => r,
            () = stop.cancelled() => return,
            () = pod.removed() => return,
        };
        // Not kept through the sleep: a reload may replace it meanwhile.
        drop(client);
        match outcome.unwrap_or(Err(PollError::Timeout)) {
            Ok(report) => {
                tracing::trace!(pod = %pod.address.url, connections = report.agents_connections, "report");
                let base = pod.poll_base(start, settings.replicas == 1);
                if let Some(moved) = pod.record_report(base, report, registry.joined_late(&pod)) {
                    registry.report_moved(moved);
                }
                last_error = None;
            }
            Err(error) => {
                pod.metrics.poll_failed();
                let error = error.to_string();
                // Once per distinct error, not once per poll.
                if last_error.as_deref() != Some(error.as_str()) {
                    tracing::warn!(pod = %pod.address.url, %error, "poll failed");
                }
                pod.record_failure(eject_after);
                last_error = Some(error);
            }
        }
        // Ejected, back, draining, stale...: logged once per change.
        if let Some(change) = pod.condition_change(&settings) {
            change.log(&pod.address.url);
        }
        let (failures, ejected) = pod.failures();
        let delay = if std::mem::take(&mut first) && failures == 0 {
            schedule.first_delay()
        } else {
            schedule.next_delay(failures, ejected, eject_after)
        };
        let next = on_grid(started + delay);
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            // Early refresh, wanted when this balancer opened many
            // connections on the pod since its last report.
            () = pod.refresh_wanted(), if !ejected => {
                tokio::time::sleep_until(started + schedule.min_gap).await;
            }
            () = stop.cancelled() => return,
            () = pod.removed() => return,
        }
    }
}

/// Granularity of scheduled polls: polls due within the same slot start
/// together, so the runtime wakes once for them all rather than once per
/// poll (at a thousand pods, most of an idle balancer's CPU was waking up).
/// Far below any poll interval; early refreshes are not rounded.
const POLL_GRID: Duration = Duration::from_millis(50);

/// `at`, rounded up to the next [`POLL_GRID`] slot (slots counted from
/// one instant for the whole process, so every pod's poller shares them).
fn on_grid(at: tokio::time::Instant) -> tokio::time::Instant {
    static BASE: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(tokio::time::Instant::now);
    if at <= base {
        return at;
    }
    let since = at.saturating_duration_since(base).as_nanos();
    let grid = POLL_GRID.as_nanos();
    let slots = since.div_ceil(grid);
    let rounded = u64::try_from(slots.saturating_mul(grid)).unwrap_or(u64::MAX);
    base + Duration::from_nanos(rounded)
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
        if body.len().saturating_add(chunk.len()) > MAX_REPORT_BYTES {
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
        // A pod's report comes from the pod: never follow it elsewhere.
        .redirect(reqwest::redirect::Policy::none())
        .tcp_nodelay(true)
        .pool_max_idle_per_host(1)
        .user_agent(concat!("wsbalancer/", env!("CARGO_PKG_VERSION")))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The longest time from a silent pod's first missed poll to its
    /// ejection: `eject_after` polls that each time out, every retry
    /// starting at the latest moment its jitter allows.
    fn worst_ejection(schedule: &PollSchedule, eject_after: u32) -> Duration {
        let mut total = Duration::ZERO;
        for failures in 1..=eject_after {
            total += schedule.timeout;
            if failures < eject_after {
                let gap = schedule.retry.mul_f64(1.1);
                total += gap.saturating_sub(schedule.timeout);
            }
        }
        total
    }

    #[test]
    fn a_silent_pod_is_ejected_within_half_the_ttl_of_its_first_missed_poll() {
        // Above 20 s (below it the one-second floor on the timeout binds).
        for ttl_secs in [20, 30, 120, 600] {
            let ttl = Duration::from_secs(ttl_secs);
            let schedule = PollSchedule::from_ttl(ttl, Duration::from_secs(10));
            let worst = worst_ejection(&schedule, 3);
            assert!(
                worst <= ttl / 2,
                "cacheTTL {ttl:?}: ejected after {worst:?}"
            );
        }
        let default = PollSchedule::from_ttl(Duration::from_secs(30), Duration::from_secs(10));
        assert_eq!(default.timeout, Duration::from_millis(1500));
    }

    #[test]
    fn the_poll_timeout_stays_between_a_second_and_the_dial_timeout() {
        let short = PollSchedule::from_ttl(Duration::from_secs(2), Duration::from_secs(10));
        assert_eq!(short.timeout, MIN_POLL_TIMEOUT);
        let long = PollSchedule::from_ttl(Duration::from_secs(600), Duration::from_secs(10));
        assert_eq!(long.timeout, Duration::from_secs(10));
        // A dial timeout under a second wins over the floor (no panic).
        let quick = PollSchedule::from_ttl(Duration::from_secs(30), Duration::from_millis(300));
        assert_eq!(quick.timeout, Duration::from_millis(300));
    }

    #[test]
    fn scheduled_polls_fall_on_a_shared_grid_never_early() {
        let now = tokio::time::Instant::now();
        for ms in [0u64, 1, 49, 50, 51, 1234] {
            let at = now + Duration::from_millis(ms);
            let rounded = on_grid(at);
            assert!(rounded >= at && rounded < at + POLL_GRID, "{ms}ms");
            // Two instants in the same slot land on the same one.
            assert_eq!(on_grid(rounded), rounded);
        }
    }

    #[test]
    fn second_polls_are_spread_over_the_whole_interval() {
        let schedule = PollSchedule::from_ttl(Duration::from_secs(30), Duration::from_secs(10));
        let mut buckets = [0usize; 10];
        for _ in 0..5000 {
            let delay = schedule.first_delay();
            assert!(delay < schedule.interval);
            let bucket = (delay.as_secs_f64() / schedule.interval.as_secs_f64() * 10.0) as usize;
            buckets[bucket.min(9)] += 1;
        }
        // Even: every tenth of the interval gets about a tenth.
        assert!(
            buckets.iter().all(|&n| (350..650).contains(&n)),
            "{buckets:?}"
        );
    }

    #[test]
    fn failed_pods_are_retried_sooner_and_ejected_ones_backed_off() {
        let schedule = PollSchedule::from_ttl(Duration::from_secs(30), Duration::from_secs(10));
        let healthy = schedule.next_delay(0, false, 3);
        let failing = schedule.next_delay(1, false, 3);
        assert!(healthy >= schedule.interval.mul_f64(0.9));
        assert!(failing <= schedule.retry.mul_f64(1.1));
        let first = schedule.next_delay(3, true, 3);
        let later = schedule.next_delay(20, true, 3);
        assert!(first < later);
        assert!(later <= schedule.max_backoff.mul_f64(1.1));
    }
}
