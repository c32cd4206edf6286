//! Command-line flags: one per config key (kebab-case), plus `--config` and
//! logging. Flags are the top configuration layer.

use std::path::PathBuf;

use clap::Parser;
use common::{ConfigSources, Overrides};

use crate::logging::LogFormat;

/// WebSocket connection balancer: each new connection goes to the pod with
/// the fewest active connections, as the pods report them.
#[derive(Debug, Parser)]
#[command(name = "wsbalancer", version)]
pub struct Cli {
    /// Config file (YAML, TOML or JSON, by extension).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// WebSocket listen address [default: 0.0.0.0:8080].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Admin listen address [default: 127.0.0.1:9090].
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<String>,
    /// Pod URLs, comma-separated (http, https, ws or wss).
    #[arg(long, value_name = "URLS", value_delimiter = ',')]
    pub pods: Option<Vec<String>>,
    /// Path of each pod's load report [default: /metric].
    #[arg(long, value_name = "PATH")]
    pub metric_path: Option<String>,
    /// Verify TLS certificates of https/wss pods [default: true].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub tls_verify: Option<bool>,
    /// Extra CA certificates (PEM) trusted for pods.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Maximum age of a pod's report [default: 30s].
    #[arg(long, value_name = "DURATION")]
    pub cache_ttl: Option<String>,
    /// Bound on connect + handshake to a pod [default: 10s].
    #[arg(long, value_name = "DURATION")]
    pub dial_timeout: Option<String>,
    /// Bound on one blocked write [default: 10s].
    #[arg(long, value_name = "DURATION")]
    pub write_timeout: Option<String>,
    /// Idle limit of a relayed connection [default: 30s].
    #[arg(long, value_name = "DURATION")]
    pub read_timeout: Option<String>,
    /// Pod selection: least-connections, power-of-two (or, for comparison,
    /// cached or local) [default: least-connections].
    #[arg(long, value_name = "STRATEGY")]
    pub selection: Option<String>,
    /// Consecutive failed polls or dials that eject a pod [default: 3].
    #[arg(long, value_name = "N")]
    pub eject_after: Option<u32>,
    /// Hard cap on one pod's connections, 0 = none [default: 0].
    #[arg(long, value_name = "N")]
    pub max_connections_per_pod: Option<u64>,
    /// Hard cap on connections relayed at once, 0 = none [default: 0].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<u64>,
    /// Linear ramp for pods that join or come back, 0s = off [default: 0s].
    #[arg(long, value_name = "DURATION")]
    pub slow_start: Option<String>,
    /// Balancer replicas sharing the pods [default: 1].
    #[arg(long, value_name = "N")]
    pub replicas: Option<u32>,
    /// Log level or filter (RUST_LOG wins when set).
    #[arg(long, default_value = "info", value_name = "LEVEL")]
    pub log_level: String,
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,
}

impl Cli {
    /// The configuration layers these flags describe.
    pub fn sources(&self) -> ConfigSources {
        ConfigSources {
            file: self.config.clone(),
            overrides: Overrides {
                metric_path: self.metric_path.clone(),
                pods: self.pods.clone(),
                tls_verify: self.tls_verify,
                ca_file: self.ca_file.clone(),
                cache_ttl: self.cache_ttl.clone(),
                dial_timeout: self.dial_timeout.clone(),
                write_timeout: self.write_timeout.clone(),
                read_timeout: self.read_timeout.clone(),
                listen: self.listen.clone(),
                admin_listen: self.admin_listen.clone(),
                selection: self.selection.clone(),
                eject_after: self.eject_after,
                max_connections_per_pod: self.max_connections_per_pod,
                max_connections: self.max_connections,
                slow_start: self.slow_start.clone(),
                replicas: self.replicas,
            },
        }
    }
}
