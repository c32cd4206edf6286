//! Dialling the pods of one new connection in turn: the registry ranks
//! them, and each is dialled until one answers. A pod that cannot be
//! reached (refused, timeout, TLS failure, a broken exchange) is skipped
//! and counted toward its ejection; the client never sees it. A pod that
//! answers with an HTTP status is the application speaking: that answer
//! is the client's.

use std::net::SocketAddr;
use std::sync::Arc;

use http::StatusCode;

use crate::connection::dial::{self, DialFailure, PodAnswer};
use crate::connection::ends;
use crate::connection::forward;
use crate::connection::handshake::Body;
use crate::connection::head::{RequestHead, ResponseHead};
use crate::connection::refusal::Refused;
use crate::connection::settings::ConnectionSettings;
use crate::connection::shared::Shared;
use crate::observe::metrics::counters::Refusal;
use crate::pods::pod::{Lease, Pod};
use crate::pods::registry::Fault;

/// Pods tried for one connection before the client gets a 502: a client
/// never waits for more than a few dial timeouts when many pods are black
/// holes.
pub const MAX_ATTEMPTS: usize = 3;

/// What the first pod that answered said.
pub enum Dialled {
    /// It switched protocols: its side of the connection, counted against
    /// it by the lease.
    Upgraded {
        /// The pod's 101 (what the client's 101 is written from).
        pod_head: ResponseHead,
        /// The pod's end, and any bytes it sent past its 101.
        pod: ends::Arrived,
        /// Counts the connection against the pod until it ends.
        lease: Lease,
    },
    /// It answered with a status: passed to the client as is.
    Status(http::Response<Body>),
}

/// Dials the ranked pods for the upgrade `head` of `client` until one
/// answers; a refusal when none can take it or none could be reached.
pub async fn dial_pods(
    shared: &Shared,
    settings: &ConnectionSettings,
    conn_id: u64,
    client: SocketAddr,
    head: &RequestHead,
) -> Result<Dialled, Refused> {
    let candidates = shared.registry.candidates();
    if candidates.all_full {
        let text = "every pod is at its connection limit";
        return Err(Refused::unavailable(Refusal::PodsFull, text));
    }
    if candidates.pods.is_empty() {
        let text = "no pod accepts new connections";
        return Err(Refused::unavailable(Refusal::NoPod, text));
    }
    // `handshake::check` saw exactly one key.
    let key = head
        .fields()
        .single("sec-websocket-key")
        .unwrap_or_default();
    let accept = dial::accept_key(key);
    // The pod whose dial failed last: the next dial is a failover.
    let mut failed: Option<Arc<Pod>> = None;
    // Read once per connection, not once per attempt: it takes the
    // registry's settings lock and the replica estimate's.
    let early_refresh = shared.registry.settings().early_refresh();
    for pod in candidates.pods.into_iter().take(MAX_ATTEMPTS) {
        if let Some(previous) = failed.take() {
            previous.metrics.failed_over();
        }
        let mut lease = pod.lease(early_refresh);
        let forwarded =
            forward::pod_upgrade_head(head, &pod.address, shared.origin(client), &settings.forward);
        let dial = dial::open(
            &pod.address,
            &settings.tls,
            settings.liveness,
            &forwarded,
            &accept,
        );
        let answer = match tokio::time::timeout(settings.dial_timeout, dial).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(error)) => {
                let fault = if error.pod_answered() {
                    Fault::Misbehaved
                } else {
                    Fault::Unreachable
                };
                unreachable(shared, &pod, conn_id, client, error.reason(), &error, fault);
                failed = Some(pod);
                continue;
            }
            Err(_) => {
                let fault = Fault::Unreachable;
                unreachable(
                    shared,
                    &pod,
                    conn_id,
                    client,
                    DialFailure::timeout,
                    &"dial timed out",
                    fault,
                );
                failed = Some(pod);
                continue;
            }
        };
        lease.settle();
        return Ok(answered(shared, pod, lease, answer, conn_id, client));
    }
    Err(if candidates.usable == 0 {
        Refused::unavailable(Refusal::Unreachable, "no healthy pod")
    } else {
        Refused::with_status(
            Refusal::Unreachable,
            StatusCode::BAD_GATEWAY,
            "no pod could be reached",
        )
    })
}

/// `pod` could not be dialled: counted, logged, and held against it.
fn unreachable(
    shared: &Shared,
    pod: &Pod,
    conn_id: u64,
    client: SocketAddr,
    reason: DialFailure,
    error: &dyn std::fmt::Display,
    fault: Fault,
) {
    pod.metrics.dial_failed(reason);
    tracing::warn!(conn_id, %client, pod = %pod.address.url, reason = ?reason, %error, "pod unreachable, trying the next");
    shared.registry.record_fault(pod, fault);
}

/// What the client gets from a pod that answered.
///
/// A 101, or a 4xx (the application refusing this client), is a working
/// pod. Any other answer to an upgrade (5xx, or a 2xx or 3xx from
/// something that is not a WebSocket server) counts toward ejection like a
/// failed dial: such a pod's count never rises, and least-connections
/// would otherwise send it every new connection.
fn answered(
    shared: &Shared,
    pod: Arc<Pod>,
    lease: Lease,
    answer: PodAnswer,
    conn_id: u64,
    client: SocketAddr,
) -> Dialled {
    let working = match &answer {
        PodAnswer::Upgraded { .. } => true,
        PodAnswer::Status { head, .. } => head.status().is_client_error(),
    };
    if working {
        shared.registry.record_success(&pod);
    } else {
        shared.registry.record_fault(&pod, Fault::Misbehaved);
    }
    match answer {
        PodAnswer::Upgraded { head, io, early } => Dialled::Upgraded {
            pod_head: head,
            pod: ends::pod_end(io, early),
            lease,
        },
        PodAnswer::Status { head, body } => {
            let status = head.status().as_u16();
            pod.metrics.dial_failed(DialFailure::of_status(status));
            // The application's answer, passed on as is.
            tracing::info!(conn_id, %client, pod = %pod.address.url, reason = "pod_status", status, "connection failed");
            Dialled::Status(forward::pod_status(&head, body))
        }
    }
}
