//! What every connection shares with the running balancer: the pods, the
//! settings a reload swaps, admission's state, the drain and stop signals,
//! the tracker a drain waits on, and the metrics. Built whole at start;
//! only the settings change afterwards.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use common::Config;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connection::admission::Admission;
use crate::connection::forward;
use crate::connection::listener_tls::ServerTls;
use crate::connection::out_of_descriptors::Exhaustion;
use crate::connection::relay::DrainSignal;
use crate::connection::settings::ConnectionSettings;
use crate::observe::metrics::Metrics;
use crate::pods::registry::PodRegistry;

/// The running balancer's signals and trackers that connections obey.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    /// Cancelled when draining starts: no new connections, relays close.
    pub drain: CancellationToken,
    /// Cancelled to stop at once.
    pub stop: CancellationToken,
    /// Counts dialled and relayed connections, so drain and shutdown can
    /// wait for them.
    pub relays: TaskTracker,
    /// Counts HTTP/2 client connections, so a drain waits until each has
    /// closed its WebSockets and sent its GOAWAY.
    pub http2: TaskTracker,
}

/// Everything a connection needs from the running balancer.
#[derive(Debug)]
pub struct Shared {
    /// Pods and their loads.
    pub registry: Arc<PodRegistry>,
    /// What a reload can change; read once per connection.
    settings: RwLock<Arc<ConnectionSettings>>,
    /// TLS termination on the listener, when configured.
    pub server_tls: Option<Arc<ServerTls>>,
    /// `X-Forwarded-Proto` value for this listener.
    pub scheme: &'static str,
    /// How a drain closes relayed connections, and the stop token
    /// (`drain.stop`) that ends everything at once.
    pub drain: DrainSignal,
    /// Counts relayed connections, so drain and shutdown can wait for them.
    pub relays: TaskTracker,
    /// Counts HTTP/2 client connections (see [`Lifecycle::http2`]).
    pub http2: TaskTracker,
    /// Time a client has to send its request head (and finish TLS).
    pub handshake_timeout: Duration,
    /// Largest request head accepted (431 beyond).
    pub max_header_bytes: usize,
    /// Limits on new connections, and what they count.
    pub admission: Admission,
    /// Counters, histograms, and what `/metrics` shows.
    pub metrics: Arc<Metrics>,
    /// Whether accepts are failing for lack of file descriptors, for
    /// `/readyz`.
    pub out_of_descriptors: Arc<Exhaustion>,
    /// Source of connection ids for logs.
    next_id: AtomicU64,
    /// A second handle on the WebSocket listener's socket (the same
    /// socket): its keepalive and `TCP_USER_TIMEOUT` are what every
    /// accepted socket inherits (Linux), so a reload that changes them sets
    /// them here, and no accepted connection pays a system call for them.
    /// Dropped with the listener (see [`Shared::forget_listener`]): while
    /// it is open, the kernel would go on completing clients' handshakes.
    listening: Mutex<Option<socket2::Socket>>,
}

impl Shared {
    /// The context of every connection of a balancer started with `config`;
    /// `settings` are the first of what a reload may replace.
    pub fn new(
        config: &Config,
        registry: Arc<PodRegistry>,
        settings: ConnectionSettings,
        server_tls: Option<Arc<ServerTls>>,
        lifecycle: Lifecycle,
        metrics: Arc<Metrics>,
    ) -> Self {
        Shared {
            registry,
            settings: RwLock::new(Arc::new(settings)),
            scheme: if server_tls.is_some() {
                "https"
            } else {
                "http"
            },
            server_tls,
            drain: DrainSignal {
                started: lifecycle.drain,
                stop: lifecycle.stop,
                window: config.drain_window,
                code: config.drain_close_code,
            },
            relays: lifecycle.relays,
            http2: lifecycle.http2,
            handshake_timeout: config.handshake_timeout,
            max_header_bytes: config.max_handshake_header_bytes,
            admission: Admission::new(metrics.active().clone(), metrics.http_active().clone()),
            metrics,
            out_of_descriptors: Arc::default(),
            next_id: AtomicU64::new(1),
            listening: Mutex::new(None),
        }
    }

    /// Gives the settings' socket liveness to `listener`, now and at every
    /// reload, for its accepted sockets to inherit.
    pub fn set_listener(&self, listener: &tokio::net::TcpListener) {
        match socket2::SockRef::from(listener).try_clone() {
            Ok(socket) => {
                self.settings().liveness.apply(&socket);
                *self.listening() = Some(socket);
            }
            Err(error) => {
                tracing::warn!(%error, "listener socket not shared: accepted sockets keep the kernel's keepalive defaults");
            }
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
        let mut current = self.settings.write().unwrap_or_else(|p| p.into_inner());
        if let Some(listening) = self.listening().as_ref()
            && current.liveness != settings.liveness
        {
            settings.liveness.apply(listening);
        }
        *current = Arc::new(settings);
    }

    /// Closes the second handle on the listening socket: the accept loop
    /// has stopped (a drain), and with no handle left the socket closes,
    /// so new clients are refused at once.
    pub fn forget_listener(&self) {
        self.listening().take();
    }

    fn listening(&self) -> std::sync::MutexGuard<'_, Option<socket2::Socket>> {
        self.listening.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the balancer drains (no new connections).
    pub fn draining(&self) -> bool {
        self.drain.started.is_cancelled()
    }

    /// How the pod is told who the client is.
    pub fn origin(&self, client: SocketAddr) -> forward::Origin {
        forward::Origin {
            addr: client,
            scheme: self.scheme,
        }
    }

    /// A new connection id, for logs.
    pub fn next_conn_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}
