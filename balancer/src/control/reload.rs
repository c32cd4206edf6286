//! Config reload without restart: on SIGHUP, or when the config file
//! changes (`watchConfig`), the config is loaded again by the same loader,
//! and a valid one applies to new connections ([`crate::Balancer::reload`]).
//! Connections already relayed keep the settings they started with, and a
//! pod that left keeps its relayed connections until they end.
//!
//! This module holds what a reload reports and the file watch; the swap
//! itself happens in the registry (pods, selection settings) and the proxy
//! (per-connection settings).

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::time::Duration;

use common::{Config, ConfigError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::connection::liveness::Liveness;
use crate::connection::pod_tls::TlsSetupError;

/// Why a reload was rejected; the running config stays in force.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new configuration is invalid (the message names the key).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// TLS toward pods could not be set up from it (`caFile`).
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    /// The HTTP client for polls could not be built with its TLS settings.
    #[error("building the poll client: {0}")]
    PollClient(#[from] reqwest::Error),
}

impl ReloadError {
    /// The config key the rejection is about, when there is one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ReloadError::Config(error) => error.key(),
            ReloadError::Tls(TlsSetupError::CaFile { .. }) => Some("caFile"),
            ReloadError::Tls(_) | ReloadError::PollClient(_) => None,
        }
    }
}

/// What an accepted reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// URLs of pods that joined.
    pub added: Vec<String>,
    /// URLs of pods that left (their relayed connections run on).
    pub removed: Vec<String>,
    /// Keys whose new value only takes effect after a restart.
    pub restart_needed: Vec<&'static str>,
}

/// The keys that need a restart whose values differ between `old` and
/// `new`.
#[cfg(test)]
pub fn restart_needed(old: &Config, new: &Config) -> Vec<&'static str> {
    keep_running(old, &mut new.clone())
}

/// Copies into `new` the running value of every key that needs a restart
/// (the restart-only rows of the key table: the listeners are bound, and the
/// rest shapes what is set up once), so a reload applies none of them, not
/// even in part; returns those whose value `new` had changed, in the
/// table's order.
pub fn keep_running(running: &Config, new: &mut Config) -> Vec<&'static str> {
    match common::config::keys::keep_restart_only(running, new) {
        Ok(changed) => changed,
        Err(error) => {
            // Only a config that does not serialize gets here, which loading
            // never produces; applying nothing keeps the promise above.
            tracing::error!(%error, "the reload applies nothing");
            new.clone_from(running);
            Vec::new()
        }
    }
}

/// Whether the clients toward pods (dials' TLS, polls, plain HTTP) must be
/// built again for `new`: their TLS settings, `dialTimeout` or socket
/// liveness settings changed, or they trust a `caFile`, whose content may
/// have changed behind its name.
pub fn pod_clients_change(running: &Config, new: &Config) -> bool {
    running.tls_verify != new.tls_verify
        || running.ca_file != new.ca_file
        || new.ca_file.is_some()
        || running.dial_timeout != new.dial_timeout
        || Liveness::from_config(running) != Liveness::from_config(new)
}

/// Watches `path` and sends a message each time its content changes,
/// checking every `every` until `stop` is cancelled. The content is
/// compared, not only the modification time, and the path is read through
/// symlinks, so a Kubernetes ConfigMap update (an atomic symlink swap,
/// whose file times may not move) is seen too. Changes count from the
/// call: the first fingerprint is taken before it returns.
pub fn file_changes(path: PathBuf, every: Duration, stop: CancellationToken) -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel(1);
    let mut last = std::fs::read(&path).ok().map(|content| hash(&content));
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = stop.cancelled() => return,
            }
            let now = fingerprint(&path).await;
            // An unreadable file (mid-swap) is not a change: the next read
            // that succeeds is compared with the last good one.
            if now.is_some() && now != last {
                last = now;
                tracing::info!(path = %path.display(), "config file changed");
                // Full means a reload is already pending: it reads the
                // latest file anyway.
                if tx.try_send(()).is_err() && tx.is_closed() {
                    return;
                }
            }
        }
    });
    rx
}

/// A hash of the file's content, or `None` when it cannot be read.
async fn fingerprint(path: &std::path::Path) -> Option<u64> {
    Some(hash(&tokio::fs::read(path).await.ok()?))
}

fn hash(content: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    content.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bound_and_started_settings_need_a_restart() {
        let old = Config::default();
        let mut new = old.clone();
        new.pods = vec!["http://10.0.0.1:8080".into()];
        new.dial_timeout = Duration::from_secs(1);
        new.max_connections = 5;
        new.drain_timeout = Duration::from_secs(3);
        new.tls_verify = !old.tls_verify;
        assert!(restart_needed(&old, &new).is_empty());
        new.listen = "127.0.0.1:1".parse().unwrap();
        new.cache_ttl = Duration::from_secs(1);
        new.metric_path = "/other".into();
        new.watch_config = !old.watch_config;
        new.discovery = Some(common::config::Discovery {
            dns: "pods.example".into(),
            port: 8080,
            scheme: "http".into(),
            interval: Duration::from_secs(5),
            nameserver: None,
        });
        assert_eq!(
            restart_needed(&old, &new),
            [
                "metricPath",
                "cacheTTL",
                "listen",
                "watchConfig",
                "discovery"
            ]
        );
        // Kept at their running values, they are no change at all.
        keep_running(&old, &mut new);
        assert!(restart_needed(&old, &new).is_empty());
        assert_eq!(new.max_connections, 5, "the rest is the new config's");
        assert_eq!(new.drain_timeout, Duration::from_secs(3));
    }

    #[test]
    fn pod_clients_are_rebuilt_only_when_what_shapes_them_changes() {
        let old = Config::default();
        let mut new = old.clone();
        new.max_connections = 5;
        new.pods = vec!["http://10.0.0.1:8080".into()];
        assert!(!pod_clients_change(&old, &new));
        new.dial_timeout = old.dial_timeout * 2;
        assert!(pod_clients_change(&old, &new));
        let mut new = old.clone();
        new.tls_verify = !old.tls_verify;
        assert!(pod_clients_change(&old, &new));
        let mut new = old.clone();
        new.ca_file = Some("/etc/ca.pem".into());
        let running = new.clone();
        assert!(
            pod_clients_change(&running, &new),
            "the file may have changed"
        );
    }

    #[tokio::test]
    async fn a_changed_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "a: 1").unwrap();
        let stop = CancellationToken::new();
        let mut changes = file_changes(path.clone(), Duration::from_millis(10), stop.clone());
        // Written at once: the first fingerprint was taken in the call.
        std::fs::write(&path, "a: 2").unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), changes.recv()).await;
        assert_eq!(got, Ok(Some(())), "the change right after the call is seen");
        stop.cancel();
    }
}
