//! Dialling the pods of one new connection in turn: the registry ranks
//! them, and each is dialled until one answers. A pod that cannot be
//! reached (refused, timeout, TLS failure, a broken exchange) is skipped
//! and counted toward its ejection; the client never sees it. A pod that
//! answers with an HTTP status is the application speaking: that answer
//! is the client's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http::StatusCode;
use tokio::time::Instant;

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
use crate::pods::shed::RebalanceSettings;

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
        /// How rebalancing may close it (the settings it was chosen with).
        rebalance: RebalanceSettings,
    },
    /// It answered with a status: passed to the client as is.
    Status(http::Response<Body>),
}

/// One dial in flight.
struct Attempt {
    pod: Arc<Pod>,
    /// Dropped unsettled when the dial loses or fails: the count is undone.
    lease: Lease,
    /// Set by the dial once its TCP connection is up.
    connected: Arc<AtomicBool>,
    started: Instant,
    /// Already counted as a failover, when the next pod was dialled beside
    /// it: its own failure later is not counted again.
    hedged: bool,
}

/// Dials the ranked pods for the upgrade `head` of `client` until one
/// answers; a refusal when none can take it or none could be reached.
///
/// Pods are dialled in rank, one at a time, except that a dial whose TCP
/// connect has not completed after `hedgeDelay` gets the next pod dialled
/// beside it (a hedged dial: a silent pod host costs a new connection that
/// delay, not `dialTimeout`). The first pod to answer wins; the others are
/// dropped, their leases undone, and one abandoned before it even connected
/// is held against its pod, so a pod whose connects keep stalling is
/// ejected. A failed dial starts the next pod at once. At most
/// [`MAX_ATTEMPTS`] pods are dialled in all.
pub async fn dial_pods(
    shared: &Shared,
    settings: &ConnectionSettings,
    conn_id: u64,
    client: SocketAddr,
    head: &RequestHead,
) -> Result<Dialled, Refused> {
    let candidates = shared.registry.candidates(MAX_ATTEMPTS);
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
    let early_refresh = candidates.settings.early_refresh();
    let rebalance = candidates.settings.rebalance;
    let origin = shared.origin(client);
    let mut ranked = candidates.pods.into_iter();
    // Indexed by the dials' futures, which yield their index.
    let mut attempts: Vec<Option<Attempt>> = Vec::with_capacity(MAX_ATTEMPTS);
    let mut in_flight = FuturesUnordered::new();
    let mut start_next = |attempts: &mut Vec<Option<Attempt>>| {
        let pod = ranked.next()?;
        let lease = pod.lease(early_refresh);
        let forwarded = forward::pod_upgrade_head(head, &pod.address, origin, &settings.forward);
        let connected = Arc::new(AtomicBool::new(false));
        let index = attempts.len();
        let dial = {
            let pod = pod.clone();
            let connected = connected.clone();
            let accept = &accept;
            async move {
                let dial = dial::open(
                    &pod.address,
                    &settings.tls,
                    settings.liveness,
                    &forwarded,
                    accept,
                    &connected,
                );
                (
                    index,
                    tokio::time::timeout(settings.dial_timeout, dial).await,
                )
            }
        };
        attempts.push(Some(Attempt {
            pod,
            lease,
            connected,
            started: Instant::now(),
            hedged: false,
        }));
        Some(dial)
    };
    // When to dial the next pod beside the last one, if that one has not
    // connected by then (`None`: no hedge due).
    let hedge_after =
        |now: Instant| (!settings.hedge_delay.is_zero()).then(|| now + settings.hedge_delay);
    in_flight.extend(start_next(&mut attempts));
    let mut hedge_at = hedge_after(Instant::now());
    loop {
        let hedge_due = hedge_at.filter(|_| attempts.len() < MAX_ATTEMPTS);
        let (index, outcome) = tokio::select! {
            biased;
            done = in_flight.next() => match done {
                Some(done) => done,
                None => break,
            },
            () = sleep_until(hedge_due), if hedge_due.is_some() => {
                hedge_at = None;
                let last = attempts.iter_mut().flatten().last();
                if let Some(slow) = last.filter(|a| !a.connected.load(Ordering::Relaxed)) {
                    slow.hedged = true;
                    let slow = slow.pod.clone();
                    if let Some(dial) = start_next(&mut attempts) {
                        slow.metrics.failed_over();
                        tracing::debug!(conn_id, %client, pod = %slow.address.url, "pod not connected after hedgeDelay, dialling the next beside it");
                        in_flight.push(dial);
                        hedge_at = hedge_after(Instant::now());
                    }
                }
                continue;
            }
        };
        let Some(mut attempt) = attempts.get_mut(index).and_then(Option::take) else {
            continue;
        };
        let (reason, error, fault): (DialFailure, &dyn std::fmt::Display, Fault) = match outcome {
            Ok(Ok(answer)) => {
                attempt.lease.settle();
                abandon(shared, settings, attempts, conn_id, client);
                return Ok(answered(
                    shared,
                    attempt.pod,
                    (attempt.lease, rebalance),
                    answer,
                    conn_id,
                    client,
                ));
            }
            Ok(Err(ref error)) => {
                let fault = if error.pod_answered() {
                    Fault::Misbehaved
                } else {
                    Fault::Unreachable
                };
                (error.reason(), error, fault)
            }
            Err(_) => (DialFailure::timeout, &"dial timed out", Fault::Unreachable),
        };
        unreachable(shared, &attempt.pod, conn_id, client, reason, error, fault);
        if let Some(dial) = start_next(&mut attempts) {
            if !attempt.hedged {
                attempt.pod.metrics.failed_over();
            }
            in_flight.push(dial);
            hedge_at = hedge_after(Instant::now());
        }
        // The failed dial's lease goes with it: its count is undone.
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

/// Sleeps until `at` (forever when `None`; the caller's guard keeps that
/// branch off then).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The dials that lost to another pod's answer: dropped, their leases
/// undone. One whose TCP connect was still pending after `hedgeDelay` is
/// held against its pod, as a timed-out dial would have been.
fn abandon(
    shared: &Shared,
    settings: &ConnectionSettings,
    attempts: Vec<Option<Attempt>>,
    conn_id: u64,
    client: SocketAddr,
) {
    for attempt in attempts.into_iter().flatten() {
        let stalled = !attempt.connected.load(Ordering::Relaxed)
            && attempt.started.elapsed() >= settings.hedge_delay;
        if stalled {
            let error = &"not connected after hedgeDelay";
            let (pod, reason) = (&attempt.pod, DialFailure::slow_connect);
            unreachable(
                shared,
                pod,
                conn_id,
                client,
                reason,
                error,
                Fault::Unreachable,
            );
        }
    }
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
    (lease, rebalance): (Lease, RebalanceSettings),
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
            rebalance,
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
