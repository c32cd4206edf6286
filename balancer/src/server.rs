//! The running balancer: [`Balancer::start`] wires the connection path, the
//! pods' registry and pollers, discovery, the admin listener and the
//! certificate reload together; [`Balancer::reload`] applies a new config
//! while connections run; [`Balancer::drain`] and [`Balancer::shutdown`]
//! stop it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Config, ConfigError};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connection::listener;
use crate::connection::listener_tls::{ServerTls, ServerTlsError};
use crate::connection::pod_client::PodClient;
use crate::connection::pod_tls::{self, TlsSetupError};
use crate::connection::settings::ConnectionSettings;
use crate::connection::shared::{Lifecycle, Shared};
use crate::control::cert_reload;
use crate::control::reload::{self, ReloadError, ReloadReport};
use crate::observe::admin;
use crate::observe::metrics::Metrics;
use crate::pods::discovery::{self, DiscoveryError};
use crate::pods::poller::{self, PollWith, Pollers};
use crate::pods::rebalancer;
use crate::pods::registry::PodRegistry;
use crate::pods::settings::Settings as SelectionSettings;

/// Why the balancer could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener could not bind.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// `listen` or `adminListen`.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// TLS toward pods could not be set up.
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    /// The listener's certificate or key could not be loaded.
    #[error(transparent)]
    ServerTls(#[from] ServerTlsError),
    /// The DNS resolver for `discovery` could not be set up.
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    /// The polling HTTP client could not be built.
    #[error("http client: {0}")]
    HttpClient(#[from] reqwest::Error),
}

/// A running balancer.
pub struct Balancer {
    listen_addr: SocketAddr,
    admin_addr: SocketAddr,
    registry: Arc<PodRegistry>,
    /// What every connection reads its settings from.
    shared: Arc<Shared>,
    /// Starts pollers for pods that join.
    pollers: Pollers,
    /// The config in force, which a reload is compared with.
    config: Mutex<Config>,
    /// Cancelled when draining starts: no new connections, relays close.
    drain: CancellationToken,
    /// Cancelled to stop at once.
    stop: CancellationToken,
    /// Listener, per-connection, admin and poller tasks.
    tasks: TaskTracker,
    /// Relayed connections, which a drain waits for.
    relays: TaskTracker,
    /// HTTP/2 client connections, which a drain waits for until each has
    /// sent its GOAWAY.
    http2: TaskTracker,
}

/// How a drain went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Connections still open when the drain gave up (0 when all closed).
    pub left_open: usize,
    /// How long it took.
    pub took: Duration,
}

impl Balancer {
    /// Binds both listeners, starts polling and starts accepting.
    pub async fn start(config: Config) -> Result<Balancer, StartError> {
        config.validate()?;
        let (listener, listen_addr) = bind_listener(&config)?;
        let (admin_listener, admin_addr) = bind_admin(&config).await?;
        let clients = PodClients::build::<StartError>(&config)?;
        let mut metrics = Metrics::new();
        let registry = Arc::new(PodRegistry::new(
            config.pod_addresses()?,
            SelectionSettings::from_config(&config),
            metrics.pod_families(),
        ));
        let stop = CancellationToken::new();
        // Stopping implies draining: whatever waits for a drain also ends
        // on a stop.
        let drain = stop.child_token();
        metrics.watch(registry.clone(), drain.clone());
        let metrics = Arc::new(metrics);
        let tasks = TaskTracker::new();
        let relays = TaskTracker::new();
        let http2 = TaskTracker::new();

        let pollers = Pollers {
            registry: registry.clone(),
            with: Arc::new(std::sync::RwLock::new(PollWith::new(clients.poll, &config))),
            tracker: tasks.clone(),
            stop: stop.clone(),
        };
        pollers.spawn_all();
        tasks.spawn(rebalancer::run(registry.clone(), stop.clone()));
        if let Some(found) = &config.discovery {
            let resolver = discovery::resolver(found)?;
            tasks.spawn(discovery::run(
                found.clone(),
                config.metric_path.clone(),
                resolver,
                pollers.clone(),
                metrics.clone(),
                stop.clone(),
            ));
        }

        let shared = Arc::new(Shared::new(
            &config,
            registry.clone(),
            ConnectionSettings::from_config(&config, clients.tls, clients.http),
            server_tls(&config, &tasks, &stop)?,
            Lifecycle {
                drain: drain.clone(),
                stop: stop.clone(),
                relays: relays.clone(),
                http2: http2.clone(),
            },
            metrics.clone(),
        ));
        shared.set_listener(&listener);
        tasks.spawn(listener::accept_loop(
            listener,
            shared.clone(),
            tasks.clone(),
            drain.clone(),
            stop.clone(),
        ));
        let admin = admin::router(admin::AdminState {
            registry: registry.clone(),
            draining: drain.clone(),
            metrics,
            out_of_descriptors: shared.out_of_descriptors.clone(),
        });
        let admin_listener = admin::AdminListener {
            listener: admin_listener,
            out_of_descriptors: shared.out_of_descriptors.clone(),
        };
        tasks.spawn(serve_admin(admin_listener, admin, stop.clone()));

        tracing::info!(listen = %listen_addr, admin = %admin_addr, pods = config.pods.len(), "wsbalancer started");
        Ok(Balancer {
            listen_addr,
            admin_addr,
            registry,
            shared,
            pollers,
            drain,
            stop,
            tasks,
            relays,
            http2,
            config: Mutex::new(config),
        })
    }

    /// Address the WebSocket listener is bound to.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen_addr
    }

    /// Address the admin listener is bound to.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The pods and what is known of them.
    pub fn registry(&self) -> &Arc<PodRegistry> {
        &self.registry
    }

    /// Applies a new configuration to new connections, polls and drains:
    /// pods (those that left get no new connections, their relayed ones run
    /// on), selection settings, timeouts, limits, origins, forwarded
    /// headers, `drainTimeout` and pod TLS (dials, polls and plain HTTP
    /// alike). An invalid one is rejected (the error names the key) and the
    /// running config stays, untouched. Keys that need a restart keep their
    /// running value and are listed in the report (and logged), at every
    /// reload until a restart. No relayed connection is touched.
    pub fn reload(&self, new: Config) -> Result<ReloadReport, ReloadError> {
        let outcome = self.apply(new);
        match &outcome {
            Ok(report) => tracing::info!(
                added = report.added.len(),
                removed = report.removed.len(),
                "config reloaded"
            ),
            Err(error) => {
                tracing::error!(key = error.key(), %error, "config reload rejected, running config kept")
            }
        }
        outcome
    }

    /// Loads the configuration again from `sources` (as at start) and
    /// reloads it, see [`Balancer::reload`].
    pub fn reload_from(
        &self,
        sources: &common::ConfigSources,
    ) -> Result<ReloadReport, ReloadError> {
        match sources.load() {
            Ok(config) => self.reload(config),
            Err(error) => {
                let error = ReloadError::from(error);
                tracing::error!(key = error.key(), %error, "config reload rejected, running config kept");
                Err(error)
            }
        }
    }

    fn apply(&self, mut new: Config) -> Result<ReloadReport, ReloadError> {
        new.validate()?;
        // Held to the end: reloads (SIGHUP, file watcher) apply one at a
        // time, each against what the one before left running.
        let mut config = self.config.lock().unwrap_or_else(|p| p.into_inner());
        // What needs a restart keeps its running value, so that nothing
        // below (poll pace, staleness, metric URLs) takes it half-way, and
        // the next reload is compared against what really runs.
        let restart_needed = reload::keep_running(&config, &mut new);
        new.validate()?;
        let addresses = new.pod_addresses()?;
        // Clients toward pods are rebuilt only when what shapes them may
        // have changed: a rebuild drops their kept-alive connections.
        let clients = if reload::pod_clients_change(&config, &new) {
            PodClients::build::<ReloadError>(&new)?
        } else {
            let running = self.shared.settings();
            PodClients {
                poll: self.pollers.client(),
                http: running.http.clone(),
                tls: running.tls.clone(),
            }
        };
        // Nothing fails past this point: the reload applies whole or not
        // at all.
        for key in &restart_needed {
            tracing::warn!(key, "config key changed: takes effect after a restart");
        }
        self.registry
            .set_settings(SelectionSettings::from_config(&new));
        self.pollers.set_with(PollWith::new(clients.poll, &new));
        self.shared.set_settings(ConnectionSettings::from_config(
            &new,
            clients.tls,
            clients.http,
        ));
        // With discovery, the pod set is discovery's (a change of it needs
        // a restart).
        let change = if new.discovery.is_none() {
            self.pollers.set_pods(addresses)
        } else {
            Default::default()
        };
        *config = new;
        Ok(ReloadReport {
            added: change.added.iter().map(|p| p.address.url.clone()).collect(),
            removed: change
                .removed
                .iter()
                .map(|p| p.address.url.clone())
                .collect(),
            restart_needed,
        })
    }

    /// A handle that stops the balancer at once when cancelled (a second
    /// signal during a drain).
    pub fn stop_handle(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Connections relayed right now, counting those whose pod is being
    /// dialled.
    pub fn relayed(&self) -> usize {
        self.relays.len()
    }

    /// Drains: readiness turns 503 and the listener stops accepting at once;
    /// every relayed connection gets a Close frame (the configured code)
    /// toward both sides at a random moment of `drainWindow`; returns once
    /// all are closed or `drainTimeout` has passed, then stops the rest.
    pub async fn drain(self) -> DrainReport {
        let started = tokio::time::Instant::now();
        // As last reloaded.
        let drain_timeout = self
            .config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain_timeout;
        tracing::info!(connections = self.relays.len(), "draining");
        self.drain.cancel();
        self.relays.close();
        self.http2.close();
        let closed = async {
            self.relays.wait().await;
            // Each HTTP/2 connection sends its GOAWAY once its WebSockets
            // are closed.
            self.http2.wait().await;
        };
        tokio::select! {
            () = closed => {}
            () = tokio::time::sleep(drain_timeout) => {}
            () = self.stop.cancelled() => {}
        }
        let left_open = self.relays.len();
        let took = started.elapsed();
        tracing::info!(
            left_open,
            took_ms = took.as_millis() as u64,
            "drain finished"
        );
        self.shutdown(Duration::from_secs(2)).await;
        DrainReport { left_open, took }
    }

    /// Stops at once: every relayed connection is dropped. Waits (at most
    /// `grace`) for all tasks to finish.
    pub async fn shutdown(self, grace: Duration) {
        self.drain.cancel();
        self.stop.cancel();
        self.tasks.close();
        self.relays.close();
        let all = async {
            self.tasks.wait().await;
            self.relays.wait().await;
        };
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!(
                remaining = self.tasks.len() + self.relays.len(),
                "tasks still running at shutdown"
            );
        }
    }
}

/// Binds the WebSocket listener (`listen`).
fn bind_listener(config: &Config) -> Result<(TcpListener, SocketAddr), StartError> {
    let bind_error = |source| StartError::Bind {
        what: "listen",
        addr: config.listen,
        source,
    };
    let listener = listener::bind(config.listen).map_err(bind_error)?;
    let addr = listener.local_addr().map_err(bind_error)?;
    Ok((listener, addr))
}

/// Binds the admin listener (`adminListen`).
async fn bind_admin(config: &Config) -> Result<(TcpListener, SocketAddr), StartError> {
    let bind_error = |source| StartError::Bind {
        what: "adminListen",
        addr: config.admin_listen,
        source,
    };
    let listener = TcpListener::bind(config.admin_listen)
        .await
        .map_err(bind_error)?;
    let addr = listener.local_addr().map_err(bind_error)?;
    Ok((listener, addr))
}

/// TLS termination on the listener when `tlsCert` and `tlsKey` are set,
/// with its certificate reloaded (a task of `tasks`) until `stop`.
fn server_tls(
    config: &Config,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) -> Result<Option<Arc<ServerTls>>, StartError> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let tls = Arc::new(ServerTls::load(cert, key, config.http2_enabled())?);
    tasks.spawn(cert_reload::watch(tls.clone(), stop.clone()));
    Ok(Some(tls))
}

/// Serves the admin endpoints until `stop`.
async fn serve_admin(listener: admin::AdminListener, admin: axum::Router, stop: CancellationToken) {
    let serve = axum::serve(listener, admin).with_graceful_shutdown(stop.cancelled_owned());
    if let Err(error) = serve.await {
        tracing::error!(%error, "admin listener failed");
    }
}

/// The clients toward pods, built together from the same TLS settings and
/// `dialTimeout` (at start, and by a reload that changes them).
struct PodClients {
    /// TLS settings of WebSocket dials.
    tls: Arc<rustls::ClientConfig>,
    /// `/metric` polls.
    poll: reqwest::Client,
    /// Plain HTTP proxying.
    http: PodClient,
}

impl PodClients {
    /// Builds them for `config`; `E` is the caller's error ([`StartError`]
    /// or [`ReloadError`]).
    fn build<E>(config: &Config) -> Result<Self, E>
    where
        E: From<TlsSetupError> + From<reqwest::Error>,
    {
        let tls = pod_tls::client_config(config)?;
        Ok(PodClients {
            poll: poller::http_client(tls.clone())?,
            http: PodClient::new(tls.clone(), config),
            tls,
        })
    }
}
