//! The admin listener: liveness, readiness, Prometheus metrics, the
//! original plugin's JSON status and a live HTML view of it, on an address
//! of its own so it is never exposed with the WebSocket port by accident.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use common::PodState;
use common::selection::Health;

use crate::connection::out_of_descriptors::{self, Exhaustion};
use crate::observe::metrics::{self, Metrics};
use crate::pods::registry::PodRegistry;

/// What the admin handlers read.
#[derive(Clone)]
pub struct AdminState {
    /// Pods and loads.
    pub registry: Arc<PodRegistry>,
    /// Cancelled when the balancer drains or stops: readiness turns 503.
    pub draining: CancellationToken,
    /// What `/metrics` encodes.
    pub metrics: Arc<Metrics>,
    /// Whether the listener is failing to accept for lack of file
    /// descriptors: readiness turns 503.
    pub out_of_descriptors: Arc<Exhaustion>,
}

/// The live dashboard: one self-contained page that polls
/// `/balancer-metrics` from the browser, so the balancer does no work for it
/// beyond serving this text.
const DASHBOARD_HTML: &str = include_str!("dashboard.html");

/// What the dashboard may do in a browser: run its own inline script and
/// style and fetch from the admin listener, nothing else. Pod names are
/// inserted as text anyway; this makes a slip there unable to load or send
/// anything elsewhere.
const DASHBOARD_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// Pause after the admin listener failed to accept for lack of file
/// descriptors: a probe waits that much longer once they are back.
const OUT_OF_DESCRIPTORS_BACKOFF: Duration = Duration::from_millis(250);

/// Pause after another failed accept.
const ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// The admin listener as axum serves it. An accept that fails for lack of
/// file descriptors is reported to readiness and logged once per streak
/// (axum's own listener logs an error every second), and retried after a
/// pause; it has no spare descriptor of its own, so a new admin connection
/// waits until one is free, while open ones keep working.
#[derive(Debug)]
pub struct AdminListener {
    /// The bound `adminListen` socket.
    pub listener: TcpListener,
    /// What readiness reads.
    pub out_of_descriptors: Arc<Exhaustion>,
}

impl axum::serve::Listener for AdminListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            let error = match self.listener.accept().await {
                Ok(accepted) => return accepted,
                Err(error) => error,
            };
            if out_of_descriptors::is_out_of_descriptors(&error) {
                self.out_of_descriptors.ran_out(&error);
                tokio::time::sleep(OUT_OF_DESCRIPTORS_BACKOFF).await;
            } else if !matches!(
                error.kind(),
                std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset
            ) {
                tracing::warn!(%error, "admin accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// Routes of the admin listener.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/dashboard", get(dashboard))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(prometheus))
        .route("/balancer-metrics", get(balancer_metrics))
        .with_state(state)
}

async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Always the page of the running version, never a cached one
            // from before an upgrade.
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, DASHBOARD_CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        DASHBOARD_HTML,
    )
        .into_response()
}

async fn readyz(State(state): State<AdminState>) -> Response {
    if state.draining.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: draining\n").into_response()
    } else if state.out_of_descriptors.is_out() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: out of file descriptors (new clients get 503)\n",
        )
            .into_response()
    } else if !state.registry.has_usable_pod() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no usable pod\n",
        )
            .into_response()
    } else {
        "ready\n".into_response()
    }
}

/// Every metric in the Prometheus text format.
async fn prometheus(State(state): State<AdminState>) -> Response {
    match state.metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Err(error) => {
            tracing::error!(%error, "encoding metrics failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// The original plugin's status document, extended per pod.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// When this was taken (RFC 3339).
    pub timestamp: String,
    /// One entry per pod, in configuration order.
    pub services: Vec<ServiceStatus>,
    /// Sum of the pods' connections.
    pub total_connections: u64,
    /// Same as `totalConnections`, so a balancer can be polled as a pod.
    pub agents_connections: u64,
}

/// One pod in [`Status`].
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    /// Configured URL.
    pub url: String,
    /// Effective connection count (reported, adjusted by this balancer).
    pub connections: u64,
    /// `podName` from the pod's report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// `ready`, `drain` or `maint` as reported.
    pub state: PodState,
    /// True when there is no report younger than `cacheTTL`.
    pub stale: bool,
    /// Seconds since the last good report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report_age: Option<f64>,
    /// Whether the pod is in rotation.
    pub healthy: bool,
    /// Connections this balancer relays to the pod now.
    pub relayed: u64,
    /// Connections rebalancing moved away from the pod, ever.
    pub shed: u64,
}

/// Builds the status document from the registry.
pub fn status(registry: &PodRegistry) -> Status {
    let services: Vec<ServiceStatus> = registry
        .pods()
        .iter()
        .map(|pod| (pod.snapshot(&registry.settings()), pod.shed.taken()))
        .map(|(s, shed)| ServiceStatus {
            url: s.url,
            connections: s.effective,
            pod_name: s.pod_name,
            state: s.state,
            stale: s.stale,
            report_age: s.report_age.map(|a| a.as_secs_f64()),
            healthy: s.health != Health::Ejected,
            relayed: s.relayed,
            shed,
        })
        .collect();
    let total = services.iter().map(|s| s.connections).sum();
    Status {
        timestamp: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        services,
        total_connections: total,
        agents_connections: total,
    }
}

async fn balancer_metrics(State(state): State<AdminState>) -> Json<Status> {
    Json(status(&state.registry))
}
