//! The life of one relayed connection, from the pod's 101 to its one
//! "connection closed" log line: the relay runs in a task of its own, and
//! when it ends the pod's count is released and the outcome is counted and
//! logged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use hyper::upgrade::OnUpgrade;
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::connection::admission::Slot;
use crate::connection::ends;
use crate::connection::relay::outcome::Ending;
use crate::connection::relay::{self, RelayLimits};
use crate::connection::shared::Shared;
use crate::observe::metrics::counters::HttpVersion;
use crate::pods::pod::Lease;
use crate::pods::shed::RebalanceSettings;

/// A connection the pod has accepted, waiting for the client's side.
pub struct Session {
    /// The connection's id in logs.
    pub(super) conn_id: u64,
    /// The client's address.
    pub(super) client: SocketAddr,
    /// When the client's upgrade request arrived.
    pub(super) received: Instant,
    /// The pod's end, and any bytes it sent past its 101.
    pub(super) pod: ends::Arrived,
    /// Counts the connection against the pod until it ends.
    pub(super) lease: Lease,
    /// Its `maxConnections` slot.
    pub(super) slot: Slot,
    /// Counts the connection (drain and shutdown wait for it) from its dial
    /// until the relay ends.
    pub(super) tracked: TaskTrackerToken,
    /// Idle and write limits, from the settings the connection started
    /// with.
    pub(super) limits: RelayLimits,
    /// How rebalancing may close it, from the same read.
    pub(super) rebalance: RebalanceSettings,
    /// The HTTP version the client's side came over.
    pub(super) version: HttpVersion,
    /// Over HTTP/2, counts the stream against its connection until the
    /// relay ends: a draining connection sends GOAWAY once its WebSockets
    /// are closed.
    pub(super) stream: Option<TaskTrackerToken>,
}

/// What a relay task keeps besides the connection: for the log line, the
/// pod's count and the balancer's limits.
struct Held {
    conn_id: u64,
    client: SocketAddr,
    lease: Lease,
    limits: RelayLimits,
    shed_rules: relay::ShedRules,
    _slot: Slot,
    _tracked: TaskTrackerToken,
    _stream: Option<TaskTrackerToken>,
}

/// What a relay task holds.
struct Relayed {
    conn: relay::Connection,
    held: Held,
}

impl Session {
    /// The client went away (or never took its 101) after the pod accepted:
    /// the connection's one event. Dropping the session releases the pod.
    pub fn client_gone(self, reason: &'static str, error: Option<&hyper::Error>) {
        let error = error.map(tracing::field::display);
        let (conn_id, client) = (self.conn_id, self.client);
        tracing::info!(conn_id, %client, pod = self.lease.pod_url(), reason, error, "connection failed");
    }

    /// The same connection, its client's side a stream of an HTTP/2
    /// connection that `stream` counts it against.
    pub fn over_http2(mut self, stream: TaskTrackerToken) -> Self {
        self.version = HttpVersion::Http2;
        self.stream = Some(stream);
        self
    }

    /// Waits for hyper to hand over the client's side of the upgrade, then
    /// relays until done.
    pub async fn after_upgrade(self, shared: Arc<Shared>, on_upgrade: OnUpgrade) {
        // Bounded: a client that never takes its 101 must not hold the pod
        // connection, its count and a maxConnections slot.
        let upgraded = tokio::select! {
            r = tokio::time::timeout(shared.handshake_timeout, on_upgrade) => r,
            () = shared.drain.stop.cancelled() => return,
        };
        match upgraded {
            Ok(Ok(io)) => self.start(&shared, ends::client_end(io)),
            Ok(Err(error)) => self.client_gone("client_upgrade_failed", Some(&error)),
            Err(_) => self.client_gone("client_upgrade_timeout", None),
        }
    }

    /// Relays between the client and the pod in a task of its own, sized
    /// for nothing but the relay: an idle connection costs that task, its
    /// two sockets, and nothing else.
    ///
    /// Called once the client's 101 is written: the connection is open.
    pub fn start(self, shared: &Arc<Shared>, client_end: ends::Arrived) {
        let handshake = self.received.elapsed();
        shared.metrics.handshake_done(handshake, self.version);
        self.lease.pod().metrics.opened();
        tracing::info!(
            conn_id = self.conn_id,
            client = %self.client,
            pod = self.lease.pod_url(),
            handshake_ms = handshake.as_secs_f64() * 1000.0,
            "connection opened"
        );
        // Boxed: an async fn stores its arguments twice (as given and as
        // bound), which for the connection's state would double it.
        let relayed = Box::new(Relayed {
            conn: relay::Connection::new(client_end, self.pod),
            held: Held {
                conn_id: self.conn_id,
                client: self.client,
                lease: self.lease,
                limits: self.limits,
                shed_rules: relay::ShedRules {
                    min_age: self.rebalance.min_age,
                    code: self.rebalance.close_code,
                },
                _slot: self.slot,
                _tracked: self.tracked,
                _stream: self.stream,
            },
        });
        tokio::spawn(relay(shared.clone(), relayed));
    }
}

/// Relays until done, and counts and logs how it went.
async fn relay(shared: Arc<Shared>, mut relayed: Box<Relayed>) {
    let Relayed { conn, held } = &mut *relayed;
    let (limits, shed_rules) = (held.limits, held.shed_rules);
    let outcome = relay::run(
        conn,
        limits,
        &shared.drain,
        shared.metrics.traffic(),
        &held.lease.pod().shed,
        shed_rules,
    )
    .await;
    let Relayed { conn, held } = *relayed;
    drop(conn);
    let Held {
        conn_id,
        client,
        lease,
        ..
    } = held;
    let lived = outcome.lived;
    shared.metrics.connection_ended(lived);
    let counters = &lease.pod().metrics;
    counters.closed(outcome.close_code, outcome.closer);
    if let Ending::Shed(reason) = outcome.ending {
        counters.shed(reason);
    }
    // Logged once the pod's count is released.
    let pod = lease.pod_url().to_owned();
    drop(lease);
    tracing::info!(
        conn_id,
        %client,
        pod,
        duration_ms = lived.as_millis() as u64,
        bytes_in = outcome.client_to_pod,
        bytes_out = outcome.pod_to_client,
        messages_in = outcome.messages_in,
        messages_out = outcome.messages_out,
        side = outcome.closer.as_str(),
        code = outcome.close_code,
        client_close = outcome.client_close,
        pod_close = outcome.pod_close,
        closed_by = %outcome.ending,
        "connection closed"
    );
}
