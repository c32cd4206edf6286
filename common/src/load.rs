//! Layered loading of [`Config`]: built-in defaults < config file < `WSB_*`
//! environment < command-line flags, then validation.
//!
//! The file may be YAML, TOML or JSON (chosen by extension) and may wrap its
//! keys in the original plugin's `wsbalancer:` root key. Every failure names
//! the key it is about, so a start-up error is one actionable line.

use std::path::{Path, PathBuf};

use figment::error::Kind;
use figment::providers::{Env, Format, Json, Serialized, Toml, Yaml};
use figment::{Figment, Provider};
use serde::Serialize;

use crate::config::{Config, KEYS};

/// Root key of the original plugin's YAML; accepted in any file format.
pub const ROOT_KEY: &str = "wsbalancer";

/// Prefix of environment variables read as configuration.
pub const ENV_PREFIX: &str = "WSB_";

/// Why a configuration could not be loaded. Its `Display` is the one line
/// printed before the process exits with code 2.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The config file itself is missing, unreadable or of an unknown kind.
    #[error("config file {path}: {problem}")]
    File {
        /// The file as given by the user.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// A key has a value the balancer cannot use (or is not a known key).
    #[error("invalid config: key `{key}`: {problem}")]
    Invalid {
        /// The key, as written in config files (`cacheTTL`).
        key: String,
        /// What is wrong with its value.
        problem: String,
    },
}

impl ConfigError {
    /// Shorthand for [`ConfigError::Invalid`].
    pub fn invalid(key: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            problem: problem.into(),
        }
    }

    /// The key this error is about, if it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::File { .. } => None,
        }
    }
}

/// Values given on the command line. Each is optional; a present one wins
/// over every other layer. Durations and addresses stay strings here so that
/// a bad one is reported by the same code, naming the same key, wherever it
/// came from.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    /// `--metric-path`
    #[serde(rename = "metricPath", skip_serializing_if = "Option::is_none")]
    pub metric_path: Option<String>,
    /// `--pods a,b,c`
    #[serde(rename = "pods", skip_serializing_if = "Option::is_none")]
    pub pods: Option<Vec<String>>,
    /// `--tls-verify true|false`
    #[serde(rename = "tlsVerify", skip_serializing_if = "Option::is_none")]
    pub tls_verify: Option<bool>,
    /// `--ca-file`
    #[serde(rename = "caFile", skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// `--cache-ttl`
    #[serde(rename = "cacheTTL", skip_serializing_if = "Option::is_none")]
    pub cache_ttl: Option<String>,
    /// `--dial-timeout`
    #[serde(rename = "dialTimeout", skip_serializing_if = "Option::is_none")]
    pub dial_timeout: Option<String>,
    /// `--write-timeout`
    #[serde(rename = "writeTimeout", skip_serializing_if = "Option::is_none")]
    pub write_timeout: Option<String>,
    /// `--read-timeout`
    #[serde(rename = "readTimeout", skip_serializing_if = "Option::is_none")]
    pub read_timeout: Option<String>,
    /// `--listen`
    #[serde(rename = "listen", skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// `--admin-listen`
    #[serde(rename = "adminListen", skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<String>,
    /// `--selection`
    #[serde(rename = "selection", skip_serializing_if = "Option::is_none")]
    pub selection: Option<String>,
    /// `--eject-after`
    #[serde(rename = "ejectAfter", skip_serializing_if = "Option::is_none")]
    pub eject_after: Option<u32>,
    /// `--max-connections-per-pod`
    #[serde(
        rename = "maxConnectionsPerPod",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_connections_per_pod: Option<u64>,
    /// `--max-connections`
    #[serde(rename = "maxConnections", skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u64>,
    /// `--slow-start`
    #[serde(rename = "slowStart", skip_serializing_if = "Option::is_none")]
    pub slow_start: Option<String>,
    /// `--replicas`
    #[serde(rename = "replicas", skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
}

/// Where a configuration comes from: an optional file, the environment and
/// the command line.
#[derive(Debug, Clone, Default)]
pub struct ConfigSources {
    /// `--config FILE`, if given.
    pub file: Option<PathBuf>,
    /// Command-line values.
    pub overrides: Overrides,
}

impl ConfigSources {
    /// Merges every layer and validates the result.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = &self.file {
            figment = figment.merge(file_layer(path)?);
        }
        let config: Config = figment
            .merge(env_layer())
            .merge(Serialized::defaults(&self.overrides))
            .extract()
            .map_err(from_figment)?;
        config.validate()?;
        Ok(config)
    }
}

/// The config file as a figment, unwrapped from its `wsbalancer:` root key
/// when it has one.
fn file_layer(path: &Path) -> Result<Figment, ConfigError> {
    let file_error = |problem: String| ConfigError::File {
        path: path.to_owned(),
        problem,
    };
    if !path.is_file() {
        return Err(file_error("not found or not a regular file".to_owned()));
    }
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let layer = match extension.as_deref() {
        Some("yaml" | "yml") => Figment::from(Yaml::file_exact(path)),
        Some("toml") => Figment::from(Toml::file_exact(path)),
        Some("json") => Figment::from(Json::file_exact(path)),
        _ => {
            return Err(file_error(
                "unknown extension: use .yaml, .yml, .toml or .json".to_owned(),
            ));
        }
    };
    // A file that does not parse at all is a file problem, not a key problem.
    if let Err(e) = layer.data() {
        return Err(file_error(e.to_string()));
    }
    if layer.contains(ROOT_KEY) {
        Ok(layer.focus(ROOT_KEY))
    } else {
        Ok(layer)
    }
}

/// `WSB_CACHE_TTL=5s` and `WSB_CACHETTL=5s` both set `cacheTTL`. A `WSB_*`
/// variable that matches no key is ignored: Kubernetes itself injects
/// `<SERVICE>_SERVICE_HOST`-style variables, and a Service named `wsb` must
/// not stop the balancer from starting.
fn env_layer() -> Env {
    Env::prefixed(ENV_PREFIX)
        .filter_map(|key| known_key(key.as_str()).map(Into::into))
        // Must come after `filter_map`: figment resets it when chaining.
        .lowercase(false)
}

/// Maps a key written in any case, with or without underscores or dashes, to
/// its name in [`KEYS`] (`CACHE_TTL` → `cacheTTL`).
pub fn known_key(raw: &str) -> Option<&'static str> {
    let folded: String = raw
        .chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect();
    KEYS.iter().copied().find(|k| k.to_lowercase() == folded)
}

/// Turns figment's error into one naming the key.
fn from_figment(error: figment::Error) -> ConfigError {
    let key = match &error.kind {
        Kind::UnknownField(field, _) => field.clone(),
        Kind::MissingField(field) => field.to_string(),
        _ => error.path.join("."),
    };
    let problem = match &error.kind {
        Kind::UnknownField(..) => "unknown key".to_owned(),
        kind => kind.to_string(),
    };
    if key.is_empty() {
        ConfigError::invalid("<root>", problem)
    } else {
        ConfigError::invalid(key, problem)
    }
}
