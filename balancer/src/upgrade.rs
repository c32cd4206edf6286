//! One client's upgrade, from request to relay: check the handshake, rank
//! the pods, dial them in order until one answers, return its answer, and
//! relay the connection in its own task for its whole life.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::dial::{self, PodAnswer};
use crate::forward;
use crate::handshake::{self, Body, plain_response};
use crate::registry::{Lease, Pod, PodRegistry};
use crate::relay::{self, RelayLimits};

/// Everything a connection needs from the running balancer.
pub struct Proxy {
    /// Pods and their loads.
    pub registry: Arc<PodRegistry>,
    /// TLS settings toward `https`/`wss` pods.
    pub tls: Arc<rustls::ClientConfig>,
    /// Bound on connect + TLS + handshake to one pod.
    pub dial_timeout: std::time::Duration,
    /// Idle and write limits of relayed connections.
    pub limits: RelayLimits,
    /// `X-Forwarded-Proto` value for this listener.
    pub scheme: &'static str,
    /// Cancelled when the balancer stops.
    pub stop: CancellationToken,
    /// Tracks relay tasks so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Source of connection ids for logs.
    next_id: AtomicU64,
}

impl Proxy {
    /// Bundles the parts a connection needs.
    pub fn new(
        registry: Arc<PodRegistry>,
        tls: Arc<rustls::ClientConfig>,
        dial_timeout: std::time::Duration,
        limits: RelayLimits,
        stop: CancellationToken,
        tasks: TaskTracker,
    ) -> Self {
        Proxy {
            registry,
            tls,
            dial_timeout,
            limits,
            scheme: "http",
            stop,
            tasks,
            next_id: AtomicU64::new(1),
        }
    }

    /// Answers one HTTP request on the listener.
    pub async fn handle(
        self: Arc<Self>,
        client: SocketAddr,
        mut request: Request<Incoming>,
    ) -> Result<Response<Body>, Infallible> {
        let conn_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Err(rejection) = handshake::check(&request) {
            tracing::debug!(conn_id, %client, status = rejection.status.as_u16(), reason = rejection.reason, "request refused");
            return Ok(rejection.into_response());
        }
        let on_upgrade = hyper::upgrade::on(&mut request);
        let (parts, _) = request.into_parts();
        let started = Instant::now();
        let candidates = self.registry.candidates();
        if candidates.pods.is_empty() {
            tracing::warn!(conn_id, %client, "no pod accepts connections");
            return Ok(unavailable("no pod accepts new connections"));
        }
        for pod in candidates.pods {
            let lease = pod.lease();
            let forwarded = forward::pod_request(&parts, &pod.address, client, self.scheme);
            let dial = dial::open(&pod.address, &self.tls, forwarded);
            let answer = match tokio::time::timeout(self.dial_timeout, dial).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(error)) => {
                    self.dial_failed(&pod, conn_id, client, error.reason(), &error.to_string());
                    continue;
                }
                Err(_) => {
                    self.dial_failed(&pod, conn_id, client, "timeout", "dial timed out");
                    continue;
                }
            };
            pod.record_dial_success();
            return Ok(match answer {
                PodAnswer::Upgraded { head, io } => {
                    tracing::debug!(conn_id, %client, pod = %pod.address.url, handshake_ms = started.elapsed().as_millis() as u64, "upgraded");
                    let response = forward::switching_protocols(&head);
                    let this = self.clone();
                    self.tasks
                        .spawn(this.relay(conn_id, client, on_upgrade, io, lease));
                    response
                }
                PodAnswer::Status { head, body } => {
                    tracing::info!(conn_id, %client, pod = %pod.address.url, status = head.status.as_u16(), "pod refused the upgrade");
                    forward::pod_status(&head, body)
                }
            });
        }
        if candidates.usable == 0 {
            Ok(unavailable("no healthy pod"))
        } else {
            Ok(plain_response(
                StatusCode::BAD_GATEWAY,
                "no pod could be reached",
            ))
        }
    }

    fn dial_failed(&self, pod: &Pod, conn_id: u64, client: SocketAddr, reason: &str, error: &str) {
        tracing::warn!(conn_id, %client, pod = %pod.address.url, reason, error, "pod unreachable, trying the next");
        if pod.record_failure() {
            tracing::warn!(pod = %pod.address.url, "pod ejected after repeated failures");
        }
    }

    /// Waits for the client's side of the upgrade, then relays until done.
    async fn relay(
        self: Arc<Self>,
        conn_id: u64,
        client: SocketAddr,
        on_upgrade: OnUpgrade,
        pod_io: Upgraded,
        lease: Lease,
    ) {
        let started = Instant::now();
        let client_io = match on_upgrade.await {
            Ok(io) => io,
            Err(error) => {
                tracing::warn!(conn_id, %client, %error, "client upgrade failed");
                return;
            }
        };
        let outcome = relay::relay(
            TokioIo::new(client_io),
            TokioIo::new(pod_io),
            self.limits,
            self.stop.clone(),
        )
        .await;
        let pod = lease.pod_url().to_owned();
        drop(lease);
        tracing::info!(
            conn_id,
            %client,
            pod,
            duration_ms = started.elapsed().as_millis() as u64,
            bytes_in = outcome.client_to_pod,
            bytes_out = outcome.pod_to_client,
            closed_by = %outcome.ending,
            "connection closed"
        );
    }
}

fn unavailable(reason: &str) -> Response<Body> {
    let mut response = plain_response(StatusCode::SERVICE_UNAVAILABLE, reason);
    response.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("1"),
    );
    response
}
