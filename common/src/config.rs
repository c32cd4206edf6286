//! The configuration model: every key the balancer understands, its default,
//! and the checks a value must pass before the balancer starts.
//!
//! Key names are the original plugin's camelCase names (`cacheTTL`,
//! `dialTimeout`, ...) so that existing YAML files load unchanged. Loading and
//! layering (file, environment, flags) lives in [`crate::load`]; this module
//! only knows what a valid configuration looks like. Every key is one row
//! of [`keys::TABLE`] (how it is given, its default, whether a reload
//! applies it), and the checks a value must pass are in `checks.rs`, one
//! small function per key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::ConfigError;
use crate::pod_address::PodAddress;

mod checks;
pub mod keys;

/// The balancer's whole configuration, after all layers are merged.
/// Every field is one row of [`keys::TABLE`]; see there for adding a key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Path of each pod's load report, appended to the pod URL.
    #[serde(rename = "metricPath")]
    pub metric_path: String,

    /// Pod base URLs (`http`, `https`, `ws` or `wss`). A comma-separated
    /// string is accepted too, so `WSB_PODS=a,b` works from the environment.
    #[serde(rename = "pods", deserialize_with = "string_or_list")]
    pub pods: Vec<String>,

    /// Verify the certificates of `https`/`wss` pods. Turning this off is
    /// for test clusters only.
    #[serde(rename = "tlsVerify")]
    pub tls_verify: bool,

    /// Extra PEM file of CA certificates trusted for pods, on top of the
    /// system roots (a private cluster CA, typically).
    #[serde(rename = "caFile", default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,

    /// How old a pod's report may get before it is treated as unknown. Pods
    /// are polled often enough that a live pod's report never gets this old.
    #[serde(rename = "cacheTTL", with = "humantime_serde")]
    pub cache_ttl: Duration,

    /// Bound on connect + TLS + WebSocket handshake to one pod; past it the
    /// next pod is tried.
    #[serde(rename = "dialTimeout", with = "humantime_serde")]
    pub dial_timeout: Duration,

    /// A dial whose TCP connect has not completed after this long starts
    /// the next pod in rank beside it (a hedged dial), and the first pod to
    /// answer wins: a silent pod host costs a new connection this long, not
    /// `dialTimeout`. 0 turns hedging off (pods are tried one at a time).
    #[serde(rename = "hedgeDelay", with = "humantime_serde")]
    pub hedge_delay: Duration,

    /// Bound on one blocked write toward either side of a relayed connection.
    #[serde(rename = "writeTimeout", with = "humantime_serde")]
    pub write_timeout: Duration,

    /// Idle limit of a relayed connection: no byte in either direction for
    /// this long closes it.
    #[serde(rename = "readTimeout", with = "humantime_serde")]
    pub read_timeout: Duration,

    /// TCP keepalive on both sockets of every relayed connection: the
    /// first probe after this long without a byte; 0 turns keepalive off.
    /// With `tcpKeepaliveInterval` and `tcpKeepaliveProbes` it bounds how
    /// long an idle connection to a host that vanished (a node failure, a
    /// partition: no reset ever comes) is kept: 30s + 3 x 5s by default,
    /// instead of the kernel's two hours.
    #[serde(rename = "tcpKeepalive", with = "humantime_serde")]
    pub tcp_keepalive: Duration,

    /// Time between two unanswered keepalive probes.
    #[serde(rename = "tcpKeepaliveInterval", with = "humantime_serde")]
    pub tcp_keepalive_interval: Duration,

    /// Unanswered keepalive probes after which the socket is dropped.
    #[serde(rename = "tcpKeepaliveProbes")]
    pub tcp_keepalive_probes: u32,

    /// Address the WebSocket listener binds.
    #[serde(rename = "listen")]
    pub listen: SocketAddr,

    /// Address of the admin listener (health, readiness, status). Loopback by
    /// default so it is not exposed by accident.
    #[serde(rename = "adminListen")]
    pub admin_listen: SocketAddr,

    /// How a pod is chosen for a new connection.
    #[serde(rename = "selection")]
    pub selection: Strategy,

    /// Consecutive failed polls or dials after which a pod is ejected.
    #[serde(rename = "ejectAfter")]
    pub eject_after: u32,

    /// Hard cap on one pod's connections (as reported plus this balancer's
    /// adjustments); 0 means no cap beyond what the pod reports as
    /// `capacity`.
    #[serde(rename = "maxConnectionsPerPod")]
    pub max_connections_per_pod: u64,

    /// Hard cap on the connections this balancer relays at once; 0 means
    /// unlimited. Past it clients get 503 with `Retry-After`.
    #[serde(rename = "maxConnections")]
    pub max_connections: u64,

    /// New connections (and plain HTTP requests) per second one client
    /// address may open (a burst of one second's worth, then this rate); 0
    /// means unlimited. Past it clients get 429 with `Retry-After`, before
    /// any pod is dialled. An address is an IPv4 address or an IPv6 /64;
    /// with `trustForwardedHeaders`, the one the proxy in front appended to
    /// `X-Forwarded-For`.
    #[serde(rename = "rateLimit")]
    pub rate_limit: u32,

    /// A pod that joins or comes back gets a share rising linearly from
    /// almost nothing to its full share over this long; 0 turns it off.
    #[serde(rename = "slowStart", with = "humantime_serde")]
    pub slow_start: Duration,

    /// Where the estimate of how many balancer replicas share these pods
    /// starts. Between two reports each replica assumes the others are
    /// opening connections at its own pace, so its own opens and closes
    /// count as many times as there are replicas; that number is learned
    /// from the pods' reports, so this is only a starting hint.
    #[serde(rename = "replicas")]
    pub replicas: u32,

    /// On SIGTERM, relayed connections are closed at random moments spread
    /// over this window, so clients do not all reconnect at once.
    #[serde(rename = "drainWindow", with = "humantime_serde")]
    pub drain_window: Duration,

    /// The process exits once every connection is closed, or after this
    /// long, whichever comes first.
    #[serde(rename = "drainTimeout", with = "humantime_serde")]
    pub drain_timeout: Duration,

    /// Close code sent to both sides when draining: 1001 (going away) or
    /// 1012 (service restart).
    #[serde(rename = "drainCloseCode")]
    pub drain_close_code: u16,

    /// Move live connections toward the least-loaded pods: every round,
    /// close a few of this replica's connections on pods above the mean,
    /// so their clients reconnect elsewhere. Without it, pods added by a
    /// scale-up stay empty while long-lived connections never end.
    #[serde(rename = "rebalance")]
    pub rebalance: bool,

    /// How far above its share of the cluster mean (a fraction of that
    /// share) a pod may be before it sheds. The band keeps a pod near the
    /// mean from shedding, and shedding stops at the mean, so it does not
    /// oscillate.
    #[serde(rename = "rebalanceTolerance")]
    pub rebalance_tolerance: f64,

    /// Most connections per second this replica closes to rebalance, so
    /// reconnecting clients do not arrive in a burst.
    #[serde(rename = "rebalanceRate")]
    pub rebalance_rate: u32,

    /// A connection younger than this is never closed to rebalance: a
    /// client that has just moved is not moved again.
    #[serde(rename = "rebalanceMinAge", with = "humantime_serde")]
    pub rebalance_min_age: Duration,

    /// Close code sent to both sides of a connection closed to rebalance:
    /// 1012 (service restart, which clients take as "reconnect"), or a
    /// private code in 4000-4999 for clients that expect one.
    #[serde(rename = "rebalanceCloseCode")]
    pub rebalance_close_code: u16,

    /// Origins allowed to open connections (`https://app.example.com`);
    /// others get 403 before any pod is dialled. Empty allows every origin,
    /// and a request without `Origin` (not from a browser) is always allowed.
    #[serde(
        rename = "allowedOrigins",
        default,
        deserialize_with = "string_or_list"
    )]
    pub allowed_origins: Vec<String>,

    /// Extra headers set on every request forwarded to a pod.
    #[serde(rename = "forwardHeaders", default)]
    pub forward_headers: BTreeMap<String, String>,

    /// Append the client's address to an incoming `X-Forwarded-For` (and keep
    /// an incoming `X-Forwarded-Proto`/`-Host`) instead of replacing them.
    /// Only for a balancer behind a proxy that sets them itself.
    #[serde(rename = "trustForwardedHeaders")]
    pub trust_forwarded_headers: bool,

    /// Largest request head a client may send; a larger one gets 431.
    #[serde(rename = "maxHandshakeHeaderBytes")]
    pub max_handshake_header_bytes: usize,

    /// Time a client has to send its whole request head (slowloris guard).
    #[serde(rename = "handshakeTimeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,

    /// PEM certificate chain for TLS on the listener (with `tlsKey`);
    /// reloaded when the file changes.
    #[serde(rename = "tlsCert", default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for `tlsCert`.
    #[serde(rename = "tlsKey", default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,

    /// Offer HTTP/2 (`h2`) beside HTTP/1.1 by ALPN on the TLS listener, so
    /// that browsers carry WebSockets as streams of one connection (RFC
    /// 8441). Unset means on when `tlsCert` is set; see
    /// [`Config::http2_enabled`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2: Option<bool>,

    /// What happens to plain HTTP requests (no `Upgrade` header).
    #[serde(rename = "httpMode")]
    pub http_mode: HttpMode,

    /// Most plain HTTP requests (`httpMode: proxy`) proxied at once, each
    /// counted until its response has been sent whole; 0 means unlimited.
    /// Past it requests get 503 with `Retry-After`, so that a flood of
    /// plain requests cannot take every pod connection and descriptor the
    /// WebSocket connections need.
    #[serde(rename = "maxHttpRequests")]
    pub max_http_requests: u64,

    /// Reload the config file when its content changes (checked every
    /// second; a Kubernetes ConfigMap update is seen too), as SIGHUP does.
    #[serde(rename = "watchConfig")]
    pub watch_config: bool,

    /// DNS discovery of the pods (a headless Service), instead of `pods`.
    #[serde(rename = "discovery", default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<Discovery>,
}

/// Where DNS discovery finds the pods: every A/AAAA record of `dns` is a
/// pod at `scheme://<ip>:port`, re-resolved every `interval`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Discovery {
    /// The name to resolve (a headless Service gives one record per ready
    /// pod).
    pub dns: String,
    /// The pods' port.
    pub port: u16,
    /// `http`, `https`, `ws` or `wss`.
    #[serde(default = "default_discovery_scheme")]
    pub scheme: String,
    /// Time between two resolutions.
    #[serde(default = "default_discovery_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// DNS server to ask (`ip:port`) instead of the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nameserver: Option<SocketAddr>,
}

fn default_discovery_scheme() -> String {
    "http".to_owned()
}

fn default_discovery_interval() -> Duration {
    Duration::from_secs(5)
}

impl Discovery {
    /// The pod URL of one resolved address.
    pub fn pod_url(&self, ip: std::net::IpAddr) -> String {
        format!("{}://{}", self.scheme, SocketAddr::new(ip, self.port))
    }
}

/// What the listener does with a request that is not a WebSocket upgrade.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HttpMode {
    /// Reverse-proxy it to the least-loaded pod (long-polling fallbacks and
    /// health checks behind one address).
    #[default]
    Proxy,
    /// Answer 426 Upgrade Required.
    Reject,
}

/// Pod selection strategies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Lowest effective load relative to capacity; ties at random.
    #[default]
    LeastConnections,
    /// Two pods sampled at random, the less loaded of the two wins.
    PowerOfTwo,
    /// The original plugin's rule: the cached report only, first listed
    /// wins ties. For comparison in benchmarks; not recommended.
    Cached,
    /// Classic per-replica `leastconn`: only this balancer's own
    /// connections count. For comparison in benchmarks; not recommended.
    Local,
}

/// Shortest `cacheTTL`: polls must have time to complete.
pub const MIN_CACHE_TTL: Duration = Duration::from_millis(100);

/// Time a drain leaves after `drainWindow` for the last Close exchanges
/// (the relay's close linger).
pub const DRAIN_CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Default `hedgeDelay`: far above any connect time inside a cluster
/// (sub-millisecond, a few milliseconds across zones; a lost SYN is only
/// resent after a second), far below `dialTimeout`.
pub const DEFAULT_HEDGE_DELAY: Duration = Duration::from_millis(250);

/// Shortest dial, read and write timeout.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(1);

/// Longest duration any key accepts (one year): far beyond any sane value,
/// and far from the overflow of time arithmetic.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Smallest `maxHandshakeHeaderBytes` (the HTTP parser's own minimum).
pub const MIN_HEADER_BYTES: usize = 8192;

impl Config {
    /// Whether the TLS listener offers HTTP/2: `http2` when given, else
    /// whenever TLS is on (plain listeners speak HTTP/1.1 only).
    pub fn http2_enabled(&self) -> bool {
        self.tls_cert.is_some() && self.http2.unwrap_or(true)
    }
}

impl Default for Config {
    /// The original plugin's defaults, plus listen addresses.
    fn default() -> Self {
        Config {
            metric_path: "/metric".to_owned(),
            pods: Vec::new(),
            tls_verify: true,
            ca_file: None,
            cache_ttl: Duration::from_secs(30),
            dial_timeout: Duration::from_secs(10),
            hedge_delay: DEFAULT_HEDGE_DELAY,
            write_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            tcp_keepalive: Duration::from_secs(30),
            tcp_keepalive_interval: Duration::from_secs(5),
            tcp_keepalive_probes: 3,
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            selection: Strategy::LeastConnections,
            eject_after: 3,
            max_connections_per_pod: 0,
            max_connections: 0,
            rate_limit: 0,
            slow_start: Duration::ZERO,
            replicas: 1,
            drain_window: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
            drain_close_code: 1001,
            rebalance: false,
            rebalance_tolerance: 0.1,
            rebalance_rate: 20,
            rebalance_min_age: Duration::from_secs(30),
            rebalance_close_code: 1012,
            allowed_origins: Vec::new(),
            forward_headers: BTreeMap::new(),
            trust_forwarded_headers: false,
            max_handshake_header_bytes: 32 * 1024,
            handshake_timeout: Duration::from_secs(10),
            tls_cert: None,
            tls_key: None,
            http2: None,
            http_mode: HttpMode::Proxy,
            max_http_requests: 1024,
            watch_config: false,
            discovery: None,
        }
    }
}

impl Config {
    /// Checks what serde cannot: non-empty pod list, valid pod URLs, non-zero
    /// durations, a metric path that is a path. The first problem found is
    /// returned, naming its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        checks::CHECKS.iter().try_for_each(|check| check(self))
    }

    /// The pod list as parsed addresses. Call after [`Config::validate`];
    /// an invalid entry is reported the same way validation reports it.
    pub fn pod_addresses(&self) -> Result<Vec<PodAddress>, ConfigError> {
        self.pods
            .iter()
            .map(|pod| {
                PodAddress::parse(pod, &self.metric_path)
                    .map_err(|e| ConfigError::invalid("pods", format!("{pod:?}: {e}")))
            })
            .collect()
    }
}

/// Accepts `["a", "b"]` or `"a,b"` (the form environment variables and
/// single flags give), trimming blanks and dropping empty entries.
fn string_or_list<'de, D>(deserializer: D) -> Result<Vec<String>, D::Error>
where
    D: Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let items = match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(s) => s.split(',').map(str::to_owned).collect(),
        OneOrMany::Many(v) => v,
    };
    Ok(items
        .into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect())
}
