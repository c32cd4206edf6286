//! Command-line flags: one per config key (kebab-case), plus `--config`,
//! `--check-config` and logging. Flags are the top configuration layer.
//!
//! `--check-config FILE` is for CI pipelines and manifest tests: it runs the
//! same layered loading as a start, and instead of starting prints the
//! effective config in a form that loads back unchanged.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Parser;
use common::load::ROOT_KEY;
use common::{Config, ConfigError, ConfigSources, Overrides};

use crate::control::logging::LogFormat;

/// WebSocket connection balancer: each new connection goes to the pod with
/// the fewest active connections, as the pods report them.
#[derive(Debug, Parser)]
#[command(name = "wsbalancer", version)]
pub struct Cli {
    /// Config file (YAML, TOML or JSON, by extension).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Load and validate FILE (with the environment and the other flags on
    /// top, as a start would), print the effective config as YAML and exit:
    /// 0 when valid, 2 when not.
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    pub check_config: Option<PathBuf>,
    /// WebSocket listen address [default: 0.0.0.0:8080].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Admin listen address [default: 127.0.0.1:9090].
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<String>,
    /// Pod URLs, comma-separated (http, https, ws or wss).
    #[arg(long, value_name = "URLS")]
    pub pods: Option<String>,
    /// Path of each pod's load report [default: /metric].
    #[arg(long, value_name = "PATH")]
    pub metric_path: Option<String>,
    /// Verify TLS certificates of https/wss pods [default: true].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub tls_verify: Option<String>,
    /// Extra CA certificates (PEM) trusted for pods.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<String>,
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
    pub eject_after: Option<String>,
    /// Hard cap on one pod's connections, 0 = none [default: 0].
    #[arg(long, value_name = "N")]
    pub max_connections_per_pod: Option<String>,
    /// Hard cap on connections relayed at once, 0 = none [default: 0].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<String>,
    /// New connections per second per client IP, 0 = none [default: 0].
    #[arg(long, value_name = "N")]
    pub rate_limit: Option<String>,
    /// Linear ramp for pods that join or come back, 0s = off [default: 0s].
    #[arg(long, value_name = "DURATION")]
    pub slow_start: Option<String>,
    /// Balancer replicas sharing the pods [default: 1].
    #[arg(long, value_name = "N")]
    pub replicas: Option<String>,
    /// Window over which connections are closed on SIGTERM [default: 10s].
    #[arg(long, value_name = "DURATION")]
    pub drain_window: Option<String>,
    /// Longest wait for connections to close on SIGTERM [default: 30s].
    #[arg(long, value_name = "DURATION")]
    pub drain_timeout: Option<String>,
    /// Close code sent when draining: 1001 or 1012 [default: 1001].
    #[arg(long, value_name = "CODE")]
    pub drain_close_code: Option<String>,
    /// Allowed Origins, comma-separated; empty allows all [default: empty].
    #[arg(long, value_name = "ORIGINS")]
    pub allowed_origins: Option<String>,
    /// Append to incoming X-Forwarded-* instead of replacing them [default: false].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub trust_forwarded_headers: Option<String>,
    /// Largest request head a client may send, in bytes [default: 32768].
    #[arg(long, value_name = "BYTES")]
    pub max_handshake_header_bytes: Option<String>,
    /// Time a client has to send its request head [default: 10s].
    #[arg(long, value_name = "DURATION")]
    pub handshake_timeout: Option<String>,
    /// PEM certificate chain: serve TLS (wss://) on the listener.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<String>,
    /// PEM private key for --tls-cert.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<String>,
    /// Plain HTTP requests: `proxy` them to the least-loaded pod, or
    /// `reject` them with 426 [default: proxy].
    #[arg(long, value_name = "MODE")]
    pub http_mode: Option<String>,
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
        let mut overrides = Overrides::default();
        let flags: [(&'static str, &Option<String>); 27] = [
            ("listen", &self.listen),
            ("adminListen", &self.admin_listen),
            ("pods", &self.pods),
            ("metricPath", &self.metric_path),
            ("tlsVerify", &self.tls_verify),
            ("caFile", &self.ca_file),
            ("cacheTTL", &self.cache_ttl),
            ("dialTimeout", &self.dial_timeout),
            ("writeTimeout", &self.write_timeout),
            ("readTimeout", &self.read_timeout),
            ("selection", &self.selection),
            ("ejectAfter", &self.eject_after),
            ("maxConnectionsPerPod", &self.max_connections_per_pod),
            ("maxConnections", &self.max_connections),
            ("rateLimit", &self.rate_limit),
            ("slowStart", &self.slow_start),
            ("replicas", &self.replicas),
            ("drainWindow", &self.drain_window),
            ("drainTimeout", &self.drain_timeout),
            ("drainCloseCode", &self.drain_close_code),
            ("allowedOrigins", &self.allowed_origins),
            ("trustForwardedHeaders", &self.trust_forwarded_headers),
            ("maxHandshakeHeaderBytes", &self.max_handshake_header_bytes),
            ("handshakeTimeout", &self.handshake_timeout),
            ("tlsCert", &self.tls_cert),
            ("tlsKey", &self.tls_key),
            ("httpMode", &self.http_mode),
        ];
        for (key, value) in flags {
            if let Some(value) = value {
                overrides.set(key, value.clone());
            }
        }
        ConfigSources {
            file: self.config.clone().or_else(|| self.check_config.clone()),
            overrides,
        }
    }
}

/// Why `--check-config` printed no config.
#[derive(Debug, thiserror::Error)]
pub enum CheckConfigError {
    /// The configuration is invalid; the message names the key.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    /// The configuration is valid but could not be written out.
    #[error("cannot write the effective config: {0}")]
    Render(#[from] serde_yaml::Error),
}

impl CheckConfigError {
    /// The process exit code for this error: 2 for an invalid config, as a
    /// start would exit, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            CheckConfigError::Invalid(_) => 2,
            CheckConfigError::Render(_) => 1,
        }
    }
}

/// Loads `sources` exactly as a start would (defaults < file < `WSB_*`
/// environment < flags), validates the result and returns it as YAML: see
/// [`effective_config_yaml`].
pub fn check_config(sources: &ConfigSources) -> Result<String, CheckConfigError> {
    let config = sources.load()?;
    Ok(effective_config_yaml(&config)?)
}

/// Value printed in place of a `forwardHeaders` value that may be a
/// credential. It is a valid header value, so the printed config still
/// loads, and prints the same way again.
pub const REDACTED: &str = "<redacted>";

/// Parts of header names whose values are likely credentials
/// (`Authorization`, `X-Api-Key`, `Cookie`, `X-Auth-Token`...).
const SECRET_HEADER_HINTS: &[&str] = &[
    "auth",
    "cookie",
    "token",
    "secret",
    "key",
    "password",
    "session",
    "credential",
    "signature",
];

/// The effective config as YAML under the original `wsbalancer:` root key,
/// with camelCase keys, every default filled in and durations in humantime
/// form (`30s`), so that it can be saved as a `.yaml` file and loaded back.
///
/// The only value the config holds that may be a secret is a
/// `forwardHeaders` value (a bearer token for the pods, say): those of
/// headers whose name looks like a credential are printed as [`REDACTED`],
/// and a leading comment says which. File paths (`tlsKey`, `caFile`) are
/// printed; file contents never are.
pub fn effective_config_yaml(config: &Config) -> Result<String, serde_yaml::Error> {
    let mut shown = config.clone();
    let mut redacted = Vec::new();
    for (name, value) in &mut shown.forward_headers {
        if looks_secret(name) {
            REDACTED.clone_into(value);
            redacted.push(name.clone());
        }
    }
    let yaml = serde_yaml::to_string(&BTreeMap::from([(ROOT_KEY, &shown)]))?;
    if redacted.is_empty() {
        Ok(yaml)
    } else {
        Ok(format!(
            "# forwardHeaders values not shown (they may be credentials): {}\n{yaml}",
            redacted.join(", ")
        ))
    }
}

/// Whether a header's value is likely a credential, by its name.
fn looks_secret(header: &str) -> bool {
    let lower = header.to_ascii_lowercase();
    SECRET_HEADER_HINTS.iter().any(|hint| lower.contains(hint))
}
