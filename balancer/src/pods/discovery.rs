//! DNS discovery: the pod set follows the A/AAAA records of a name (a
//! headless Service gives one per ready pod), resolved every `interval`.
//! Pods that appear are polled and join the rotation; pods that disappear
//! get no new connections while their relayed ones run on (see
//! [`PodRegistry::set_pods`](crate::pods::registry::PodRegistry::set_pods)).
//! A failed resolution keeps the last known set, and is logged once per
//! streak of failures, not once per interval.

use std::net::IpAddr;
use std::sync::Arc;

use common::{Discovery, PodAddress};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use tokio_util::sync::CancellationToken;

use crate::observe::metrics::Metrics;
use crate::pods::poller::Pollers;

/// Why discovery could not start.
#[derive(Debug, thiserror::Error)]
#[error("discovery: cannot set up the DNS resolver: {0}")]
pub struct DiscoveryError(String);

/// A resolver for `discovery`: its `nameserver` when set, else the
/// system's (`/etc/resolv.conf`). Its cache is off: the records are the pod
/// set, and each interval must see them as they are.
pub fn resolver(discovery: &Discovery) -> Result<TokioResolver, DiscoveryError> {
    let error = |e: &dyn std::fmt::Display| DiscoveryError(e.to_string());
    let mut builder = match discovery.nameserver {
        Some(server) => {
            let mut ns = NameServerConfig::udp_and_tcp(server.ip());
            for connection in &mut ns.connections {
                connection.port = server.port();
            }
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![ns]),
                TokioRuntimeProvider::default(),
            )
        }
        None => TokioResolver::builder_tokio().map_err(|e| error(&e))?,
    };
    let options = builder.options_mut();
    options.cache_size = 0;
    options.timeout = discovery.interval.min(std::time::Duration::from_secs(5));
    builder.build().map_err(|e| error(&e))
}

/// Resolves `discovery.dns` every interval and makes the result the pod
/// set, until `stop` is cancelled. A failure is logged and counted in
/// `metrics` once, when lookups start failing, not once per lookup.
pub async fn run(
    discovery: Discovery,
    metric_path: String,
    resolver: TokioResolver,
    pollers: Pollers,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut failing = false;
    let mut ticks = tokio::time::interval(discovery.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stop.cancelled() => return,
        }
        let lookup = tokio::select! {
            r = resolver.lookup_ip(discovery.dns.as_str()) => r,
            () = stop.cancelled() => return,
        };
        let ips: Vec<IpAddr> = match lookup {
            Ok(found) => found.iter().collect(),
            Err(error) => {
                if !std::mem::replace(&mut failing, true) {
                    metrics.discovery_failed();
                    tracing::warn!(dns = %discovery.dns, %error, pods = pollers.registry.pods().len(), "discovery failed, keeping the last pod set");
                }
                continue;
            }
        };
        if std::mem::replace(&mut failing, false) {
            tracing::info!(dns = %discovery.dns, "discovery works again");
        }
        let change = pollers.set_pods(addresses(&discovery, &metric_path, ips));
        if !change.is_empty() {
            tracing::info!(
                dns = %discovery.dns,
                added = change.added.len(),
                removed = change.removed.len(),
                pods = pollers.registry.pods().len(),
                "discovered pods changed"
            );
        }
    }
}

/// The pod addresses of the resolved `ips`, sorted so that the order does
/// not depend on the DNS server's rotation.
pub fn addresses(
    discovery: &Discovery,
    metric_path: &str,
    mut ips: Vec<IpAddr>,
) -> Vec<PodAddress> {
    ips.sort();
    ips.dedup();
    ips.into_iter()
        .filter_map(|ip| {
            let url = discovery.pod_url(ip);
            match PodAddress::parse(&url, metric_path) {
                Ok(address) => Some(address),
                Err(error) => {
                    tracing::warn!(%url, %error, "discovered pod skipped");
                    None
                }
            }
        })
        .collect()
}
