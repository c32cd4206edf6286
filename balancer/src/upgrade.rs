//! One client's upgrade, from request to relay: check the handshake, rank
//! the pods, dial them in order until one answers, return its answer, and
//! relay the connection in its own task for its whole life.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use prometheus_client::metrics::gauge::Gauge;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::dial::{self, PodAnswer};
use crate::ends;
use crate::forward;
use crate::handshake::{self, Body, plain_response};
use crate::head::{Fields, RequestHead, ResponseHead};
use crate::http_proxy::{self, HttpProxyError, PodClient};
use crate::metrics::{Metrics, Refusal};
use crate::rate_limit::RateLimiter;
use crate::registry::{Lease, Pod, PodRegistry};
use crate::relay::{self, DrainSignal, RelayLimits};
use common::{Config, HttpMode};
use http_body_util::{Either, Empty};

/// The settings a new connection reads once, at its start; a reload
/// replaces them whole, so connections already relayed keep theirs.
#[derive(Debug)]
pub struct ConnectionSettings {
    /// TLS settings toward `https`/`wss` pods.
    pub tls: Arc<rustls::ClientConfig>,
    /// Bound on connect + TLS + handshake to one pod.
    pub dial_timeout: std::time::Duration,
    /// Idle and write limits of relayed connections.
    pub limits: RelayLimits,
    /// Headers added to forwarded requests.
    pub forward: forward::ForwardPolicy,
    /// `allowedOrigins`, lowercased; empty allows all.
    pub allowed_origins: Vec<String>,
    /// `maxConnections` (0 = unlimited).
    pub max_connections: u64,
    /// `rateLimit`: new connections per second per client IP (0 = none).
    pub rate_limit: u32,
    /// What plain HTTP requests get.
    pub http_mode: HttpMode,
    /// Pooled client for plain HTTP requests, with the same TLS settings
    /// and `dialTimeout` as the WebSocket dials (a reload that changes them
    /// builds a new one, so both always agree).
    pub http: PodClient,
}

impl ConnectionSettings {
    /// The settings of `config`, dialling pods with `tls` and proxying
    /// plain HTTP with `http` (built from the same TLS settings).
    pub fn from_config(config: &Config, tls: Arc<rustls::ClientConfig>, http: PodClient) -> Self {
        ConnectionSettings {
            tls,
            dial_timeout: config.dial_timeout,
            limits: RelayLimits {
                idle: config.read_timeout,
                write: config.write_timeout,
            },
            forward: forward::ForwardPolicy::from_config(config),
            allowed_origins: config
                .allowed_origins
                .iter()
                .map(|o| o.to_ascii_lowercase())
                .collect(),
            max_connections: config.max_connections,
            rate_limit: config.rate_limit,
            http_mode: config.http_mode,
            http,
        }
    }

    /// Whether the request's `Origin` is allowed (absent is: not a browser).
    fn origin_allowed(&self, fields: &Fields) -> bool {
        if self.allowed_origins.is_empty() {
            return true;
        }
        let mut origins = fields.values("origin");
        match (origins.next(), origins.next()) {
            (None, _) => true,
            (Some(origin), None) => self
                .allowed_origins
                .iter()
                .any(|a| a.as_bytes().eq_ignore_ascii_case(origin)),
            (Some(_), Some(_)) => false,
        }
    }
}

/// Everything a connection needs from the running balancer.
pub struct Proxy {
    /// Pods and their loads.
    pub registry: Arc<PodRegistry>,
    /// What a reload can change; read once per connection.
    settings: RwLock<Arc<ConnectionSettings>>,
    /// `X-Forwarded-Proto` value for this listener.
    pub scheme: &'static str,
    /// Cancelled when the balancer stops at once.
    pub stop: CancellationToken,
    /// How a drain closes relayed connections.
    pub drain: DrainSignal,
    /// Counts relayed connections, so drain and shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Time a client has to send its request head.
    pub handshake_timeout: std::time::Duration,
    /// Largest request head accepted (431 beyond).
    pub max_header_bytes: usize,
    /// TLS termination on the listener, when configured.
    pub server_tls: Option<Arc<crate::tls_listener::ServerTls>>,
    /// Counters, histograms, and what `/metrics` shows.
    pub metrics: Arc<Metrics>,
    /// Connections being dialled or relayed now, against `max_connections`
    /// (exported as `wsbalancer_connections_active`).
    active: Gauge<u64, AtomicU64>,
    /// Source of connection ids for logs.
    next_id: AtomicU64,
    /// `rateLimit` buckets, one per client address.
    rate_limiter: RateLimiter,
}

/// One slot of `maxConnections`, released on drop.
struct Slot(Gauge<u64, AtomicU64>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Proxy {
    /// Bundles the parts a connection needs; `settings` are the first of
    /// what a reload may replace.
    pub fn new(
        config: &Config,
        registry: Arc<PodRegistry>,
        settings: ConnectionSettings,
        drain: CancellationToken,
        stop: CancellationToken,
        tasks: TaskTracker,
        metrics: Arc<Metrics>,
    ) -> Self {
        Proxy {
            active: metrics.active().clone(),
            metrics,
            registry,
            settings: RwLock::new(Arc::new(settings)),
            scheme: "http",
            stop,
            drain: DrainSignal {
                started: drain,
                window: config.drain_window,
                code: config.drain_close_code,
            },
            tasks,
            handshake_timeout: config.handshake_timeout,
            max_header_bytes: config.max_handshake_header_bytes,
            server_tls: None,
            next_id: AtomicU64::new(1),
            rate_limiter: RateLimiter::default(),
        }
    }

    /// The settings for a new connection: one lock-free-in-practice read
    /// and one reference count.
    pub fn settings(&self) -> Arc<ConnectionSettings> {
        self.settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the settings (a reload): new connections get them, those
    /// already relayed keep the ones they started with.
    pub fn set_settings(&self, settings: ConnectionSettings) {
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(settings);
    }

    /// How the pod is told who the client is.
    fn origin(&self, client: SocketAddr) -> forward::Origin {
        forward::Origin {
            addr: client,
            scheme: self.scheme,
        }
    }

    /// Connections being dialled or relayed now.
    pub fn active(&self) -> u64 {
        self.active.get()
    }

    /// Takes a `maxConnections` slot, or `None` when the balancer is full.
    fn slot(&self, max_connections: u64) -> Option<Slot> {
        let before = self.active.inc();
        let slot = Slot(self.active.clone());
        (max_connections == 0 || before < max_connections).then_some(slot)
    }

    /// Bound on one blocked write toward a client (`writeTimeout`).
    pub fn write_timeout(&self) -> std::time::Duration {
        self.settings().limits.write
    }

    /// A new connection id, for logs.
    pub fn next_conn_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Answers one HTTP request that hyper parsed on the listener: plain
    /// HTTP is proxied (or refused), an upgrade is answered and, once hyper
    /// hands the connection over, relayed in a task of its own.
    pub async fn handle(
        self: Arc<Self>,
        client: SocketAddr,
        mut request: Request<Incoming>,
    ) -> Result<Response<Body>, Infallible> {
        let conn_id = self.next_conn_id();
        if self.settings().http_mode == HttpMode::Proxy
            && !request.headers().contains_key(http::header::UPGRADE)
        {
            return Ok(self.proxy_http(conn_id, client, request).await);
        }
        let on_upgrade = hyper::upgrade::on(&mut request);
        let (parts, _) = request.into_parts();
        let head = RequestHead::from_parts(&parts);
        Ok(match self.answer_upgrade(conn_id, client, &head).await {
            Answer::Respond(response) => response,
            Answer::Switch { pod_head, relay } => {
                // Counted as relayed by the token the job holds.
                tokio::spawn(self.clone().relay_after_upgrade(on_upgrade, relay));
                forward::switching_protocols(&pod_head)
            }
        })
    }

    /// Checks an upgrade request, picks pods and dials them in order until
    /// one answers; the client gets that answer (or the refusal).
    pub async fn answer_upgrade(
        &self,
        conn_id: u64,
        client: SocketAddr,
        head: &RequestHead,
    ) -> Answer {
        // The request head has just arrived: the handshake's clock starts.
        let received = Instant::now();
        let settings = self.settings();
        if let Err(rejection) = handshake::check(head) {
            tracing::debug!(conn_id, %client, status = rejection.status.as_u16(), reason = Refusal::Invalid.as_str(), detail = rejection.reason, "connection failed");
            self.metrics
                .refused(rejection.status.as_u16(), Refusal::Invalid);
            return Answer::Respond(rejection.into_response());
        }
        if self.drain.started.is_cancelled() {
            // A kept-alive connection may still send an upgrade while the
            // balancer drains: it goes elsewhere, and this connection closes.
            let mut response = unavailable("draining");
            response.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
            return self.refuse(conn_id, client, Refusal::Draining, response);
        }
        if let Err(wait) = self
            .rate_limiter
            .allow(client.ip(), settings.rate_limit, received)
        {
            let mut response = plain_response(
                StatusCode::TOO_MANY_REQUESTS,
                "too many new connections from this address",
            );
            let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from(seconds));
            return self.refuse(conn_id, client, Refusal::RateLimited, response);
        }
        if !settings.origin_allowed(head.fields()) {
            let response = plain_response(StatusCode::FORBIDDEN, "origin not allowed");
            return self.refuse(conn_id, client, Refusal::Origin, response);
        }
        let Some(slot) = self.slot(settings.max_connections) else {
            let response = unavailable("the balancer is at maxConnections");
            return self.refuse(conn_id, client, Refusal::MaxConnections, response);
        };
        // Counted from here: a drain that starts during the dial waits for
        // this connection too (and closes it within the window).
        let tracked = self.tasks.token();
        let candidates = self.registry.candidates();
        if candidates.all_full {
            let response = unavailable("every pod is at its connection limit");
            return self.refuse(conn_id, client, Refusal::PodsFull, response);
        }
        if candidates.pods.is_empty() {
            let response = unavailable("no pod accepts new connections");
            return self.refuse(conn_id, client, Refusal::NoPod, response);
        }
        // `check` saw exactly one key.
        let key = head
            .fields()
            .single("sec-websocket-key")
            .unwrap_or_default();
        let accept = dial::accept_key(key);
        // The pod whose dial failed last: the next dial is a failover.
        let mut failed: Option<Arc<Pod>> = None;
        // Bounded, so a client never waits for more than a few dial
        // timeouts when many pods are black holes.
        for pod in candidates.pods.into_iter().take(MAX_ATTEMPTS) {
            if let Some(previous) = failed.take() {
                previous.metrics.failed_over();
            }
            let mut lease = pod.lease(self.registry.settings().early_refresh());
            let forwarded = forward::pod_upgrade_head(
                head,
                &pod.address,
                self.origin(client),
                &settings.forward,
            );
            let dial = dial::open(&pod.address, &settings.tls, &forwarded, &accept);
            let answer = match tokio::time::timeout(settings.dial_timeout, dial).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(error)) => {
                    pod.metrics.dial_failed(error.reason());
                    self.dial_failed(&pod, conn_id, client, error.reason(), &error.to_string());
                    let fault = if error.pod_answered() {
                        Fault::Misbehaved
                    } else {
                        Fault::Unreachable
                    };
                    self.pod_failed(&pod, fault);
                    failed = Some(pod);
                    continue;
                }
                Err(_) => {
                    pod.metrics.dial_failed("timeout");
                    self.dial_failed(&pod, conn_id, client, "timeout", "dial timed out");
                    self.pod_failed(&pod, Fault::Unreachable);
                    failed = Some(pod);
                    continue;
                }
            };
            lease.settle();
            // A 101, or a 4xx (the application refusing this client), is a
            // working pod. Any other answer to an upgrade (5xx, or a 2xx or
            // 3xx from something that is not a WebSocket server) counts
            // toward ejection like a failed dial: such a pod's count never
            // rises, and least-connections would otherwise send it every
            // new connection.
            let working = match &answer {
                PodAnswer::Upgraded { .. } => true,
                PodAnswer::Status { head, .. } => head.status().is_client_error(),
            };
            if working {
                if pod.record_dial_success() {
                    self.log_condition(&pod);
                }
            } else {
                self.pod_failed(&pod, Fault::Misbehaved);
            }
            return match answer {
                PodAnswer::Upgraded { head, io, early } => Answer::Switch {
                    pod_head: head,
                    relay: RelayJob {
                        conn_id,
                        client,
                        received,
                        pod: ends::pod_end(io, early),
                        lease,
                        _slot: slot,
                        _tracked: tracked,
                    },
                },
                PodAnswer::Status { head, body } => {
                    let status = head.status().as_u16();
                    pod.metrics.answered_status(status);
                    // The application's answer, passed on as is.
                    tracing::info!(conn_id, %client, pod = %pod.address.url, reason = "pod_status", status, "connection failed");
                    Answer::Respond(forward::pod_status(&head, body))
                }
            };
        }
        let response = if candidates.usable == 0 {
            unavailable("no healthy pod")
        } else {
            plain_response(StatusCode::BAD_GATEWAY, "no pod could be reached")
        };
        self.refuse(conn_id, client, Refusal::Unreachable, response)
    }

    /// Answers an upgrade with the balancer's own refusal: counted, and
    /// logged as the connection's one event.
    fn refuse(
        &self,
        conn_id: u64,
        client: SocketAddr,
        why: Refusal,
        response: Response<Body>,
    ) -> Answer {
        let status = response.status().as_u16();
        self.metrics.refused(status, why);
        let reason = why.as_str();
        match why {
            // Routine while draining; a client's choice for the origin.
            Refusal::Draining | Refusal::Invalid | Refusal::TooLarge => {
                tracing::debug!(conn_id, %client, reason, status, "connection failed");
            }
            // A client's doing, worth seeing but not a fault of ours.
            Refusal::Origin | Refusal::RateLimited => {
                tracing::info!(conn_id, %client, reason, status, "connection failed")
            }
            Refusal::MaxConnections | Refusal::PodsFull | Refusal::NoPod | Refusal::Unreachable => {
                tracing::warn!(conn_id, %client, reason, status, "connection failed");
            }
        }
        Answer::Respond(response)
    }

    /// Reverse-proxies a plain HTTP request to the least-loaded pod. A
    /// request without a body is sent again to the next pod when one cannot
    /// be reached; one with a body is sent once (it cannot be replayed).
    async fn proxy_http(
        &self,
        conn_id: u64,
        client: SocketAddr,
        request: Request<Incoming>,
    ) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let settings = self.settings();
        // `None` when empty: then the request can be sent again.
        let mut body = (!hyper::body::Body::is_end_stream(&body)).then_some(body);
        let candidates = self.registry.candidates();
        if candidates.pods.is_empty() {
            tracing::warn!(conn_id, %client, "no pod accepts requests");
            return unavailable("no pod accepts new connections");
        }
        for pod in candidates.pods.into_iter().take(MAX_ATTEMPTS) {
            let (pod_body, resendable) = match body.take() {
                Some(body) => (Either::Left(body), false),
                None => (Either::Right(Empty::new()), true),
            };
            let request = forward::pod_http_request(
                &parts,
                &pod.address,
                self.origin(client),
                &settings.forward,
                pod_body,
            );
            match settings.http.send(request, settings.limits.idle).await {
                Ok(mut response) => {
                    if pod.record_dial_success() {
                        self.log_condition(&pod);
                    }
                    tracing::debug!(conn_id, %client, pod = %pod.address.url, method = %parts.method, status = response.status().as_u16(), "http request proxied");
                    if self.drain.started.is_cancelled() {
                        response.headers_mut().insert(
                            http::header::CONNECTION,
                            http::HeaderValue::from_static("close"),
                        );
                    }
                    return response;
                }
                Err(error @ HttpProxyError::Connect(_)) => {
                    self.dial_failed(&pod, conn_id, client, error.reason(), &error.to_string());
                    self.pod_failed(&pod, Fault::Unreachable);
                    if !resendable {
                        return http_proxy::bad_gateway();
                    }
                }
                Err(error) => {
                    tracing::warn!(conn_id, %client, pod = %pod.address.url, reason = error.reason(), %error, "http request failed");
                    return match error {
                        HttpProxyError::Timeout(_) => plain_response(
                            StatusCode::GATEWAY_TIMEOUT,
                            "the pod did not answer in time",
                        ),
                        _ => http_proxy::bad_gateway(),
                    };
                }
            }
        }
        http_proxy::bad_gateway()
    }

    fn dial_failed(&self, pod: &Pod, conn_id: u64, client: SocketAddr, reason: &str, error: &str) {
        tracing::warn!(conn_id, %client, pod = %pod.address.url, reason, error, "pod unreachable, trying the next");
    }

    /// Counts a failure against `pod` toward its ejection, and logs the
    /// ejection. A pod that answered, but not with a WebSocket switch,
    /// stays out past its next good poll; one that could not be reached
    /// (down, restarting) is back as soon as it reports again.
    fn pod_failed(&self, pod: &Pod, fault: Fault) {
        let settings = self.registry.settings();
        let ejected = match fault {
            Fault::Misbehaved => pod.record_dial_failure(settings.eject_after, settings.cache_ttl),
            Fault::Unreachable => pod.record_failure(settings.eject_after),
        };
        if ejected {
            self.log_condition(pod);
        }
    }

    /// Logs the pod's change of condition (ejected by dials, or back after
    /// one succeeded), unless the poller logged it first.
    fn log_condition(&self, pod: &Pod) {
        if let Some(change) = pod.condition_change(&self.registry.settings()) {
            change.log(&pod.address.url);
        }
    }

    /// Waits for hyper to hand over the client's side of the upgrade, then
    /// relays until done.
    async fn relay_after_upgrade(self: Arc<Self>, on_upgrade: OnUpgrade, job: RelayJob) {
        // Bounded: a client that never takes its 101 must not hold the pod
        // connection, its count and a maxConnections slot.
        let upgraded = tokio::select! {
            r = tokio::time::timeout(self.handshake_timeout, on_upgrade) => r,
            () = self.stop.cancelled() => return,
        };
        match upgraded {
            Ok(Ok(io)) => self.start_relay(ends::client_end(io), job),
            Ok(Err(error)) => job.client_gone("client_upgrade_failed", Some(&error)),
            Err(_) => job.client_gone("client_upgrade_timeout", None),
        }
    }

    /// Relays between the client and the pod in a task of its own, sized
    /// for nothing but the relay: an idle connection costs that task, its
    /// two sockets, and nothing else.
    ///
    /// Called once the client's 101 is written: the connection is open.
    pub fn start_relay(self: &Arc<Self>, client_end: ends::Arrived, job: RelayJob) {
        let RelayJob {
            conn_id,
            client,
            received,
            pod,
            lease,
            _slot,
            _tracked,
        } = job;
        let handshake = received.elapsed();
        self.metrics.handshake_done(handshake);
        lease.pod().metrics.opened();
        tracing::info!(
            conn_id,
            %client,
            pod = lease.pod_url(),
            handshake_ms = handshake.as_secs_f64() * 1000.0,
            "connection opened"
        );
        // Boxed: an async fn stores its arguments twice (as given and as
        // bound), which for the connection's state would double it.
        let relayed = Box::new(Relayed {
            conn: relay::Connection::new(client_end, pod),
            meta: RelayMeta {
                conn_id,
                client,
                lease,
                _slot,
                _tracked,
            },
        });
        tokio::spawn(self.clone().relay(relayed));
    }

    /// Relays until done, and counts and logs how it went.
    async fn relay(self: Arc<Self>, mut relayed: Box<Relayed>) {
        let started = Instant::now();
        // Read before the relay, so the settings are not held for its life.
        let limits = self.settings().limits;
        let outcome = relay::run(
            &mut relayed.conn,
            limits,
            &self.drain,
            &self.stop,
            self.metrics.traffic(),
        )
        .await;
        let Relayed { conn, meta } = *relayed;
        drop(conn);
        let RelayMeta {
            conn_id,
            client,
            lease,
            ..
        } = meta;
        let lived = started.elapsed();
        self.metrics.connection_ended(lived);
        lease
            .pod()
            .metrics
            .closed(outcome.close_code, outcome.closer);
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
}

/// What a relay task holds.
struct Relayed {
    conn: relay::Connection,
    meta: RelayMeta,
}

/// What a relay task keeps besides the connection: for the log line, the
/// pod's count and the balancer's limits.
struct RelayMeta {
    conn_id: u64,
    client: SocketAddr,
    lease: Lease,
    _slot: Slot,
    _tracked: tokio_util::task::task_tracker::TaskTrackerToken,
}

/// What an upgrade request gets.
pub enum Answer {
    /// A response, and then nothing (a refusal, or the pod's own status).
    Respond(Response<Body>),
    /// The pod switched protocols: send the client its 101, then relay.
    Switch {
        /// The pod's 101 (what the client's 101 is written from).
        pod_head: ResponseHead,
        /// The pod's side, its count and its slot.
        relay: RelayJob,
    },
}

/// A connection the pod has accepted, waiting for the client's side.
pub struct RelayJob {
    conn_id: u64,
    client: SocketAddr,
    /// When the client's upgrade request arrived.
    received: Instant,
    pod: ends::Arrived,
    lease: Lease,
    _slot: Slot,
    /// Counts the connection (drain and shutdown wait for it) from its dial
    /// until the relay ends.
    _tracked: tokio_util::task::task_tracker::TaskTrackerToken,
}

impl RelayJob {
    /// The client went away (or never took its 101) after the pod accepted:
    /// the connection's one event. Dropping the job releases the pod.
    pub fn client_gone(self, reason: &'static str, error: Option<&hyper::Error>) {
        let error = error.map(tracing::field::display);
        let (conn_id, client) = (self.conn_id, self.client);
        tracing::info!(conn_id, %client, pod = self.lease.pod_url(), reason, error, "connection failed");
    }
}

/// How a dial failed, for ejection.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Down or unreachable: back with its next good report.
    Unreachable,
    /// Answered without switching to WebSocket: held out for `cacheTTL`.
    Misbehaved,
}

/// Pods tried for one connection before the client gets a 502.
pub const MAX_ATTEMPTS: usize = 3;

fn unavailable(reason: &str) -> Response<Body> {
    let mut response = plain_response(StatusCode::SERVICE_UNAVAILABLE, reason);
    response.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("1"),
    );
    response
}
