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
use std::collections::BTreeMap;

use figment::value::{Dict, Value};

use crate::config::{Config, KEYS};

/// Root key of the original plugin's YAML; accepted in any file format.
pub const ROOT_KEY: &str = "wsbalancer";

/// Prefix of environment variables read as configuration.
pub const ENV_PREFIX: &str = "WSB_";

/// `text` fit for a one-line message: parsers' multi-line messages (a
/// TOML error draws the line with a caret under it) are joined with spaces,
/// and any other control character is escaped.
pub fn one_line(text: &str) -> String {
    let joined = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    escape_controls(&joined)
}

/// `text` with control characters (line breaks included) escaped: a key
/// as the user wrote it, kept on one line.
fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

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
    /// Both parts are kept to one line (see [`one_line`]).
    pub fn invalid(key: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: escape_controls(&key.into()),
            problem: one_line(&problem.into()),
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

/// Values given on the command line, by config key. A present one wins over
/// every other layer. Values stay strings until loading, so that a bad one
/// is reported by the same code, naming the same key, wherever it came from.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    values: BTreeMap<&'static str, String>,
}

/// Keys whose flag values are numbers or booleans rather than strings.
const TYPED_KEYS: &[&str] = &[
    "tlsVerify",
    "watchConfig",
    "ejectAfter",
    "maxConnectionsPerPod",
    "maxConnections",
    "rateLimit",
    "replicas",
    "drainCloseCode",
    "trustForwardedHeaders",
    "maxHandshakeHeaderBytes",
];

impl Overrides {
    /// Sets `key` (a name from [`KEYS`]) to `value` as typed by the user.
    pub fn set(&mut self, key: &'static str, value: impl Into<String>) -> &mut Self {
        debug_assert!(KEYS.contains(&key), "unknown config key {key}");
        self.values.insert(key, value.into());
        self
    }

    /// The value given for `key`, if any.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// The values as a figment layer.
    fn layer(&self) -> Serialized<Dict> {
        let dict: Dict = self
            .values
            .iter()
            .map(|(key, raw)| {
                let value = if TYPED_KEYS.contains(key) {
                    raw.parse::<Value>()
                        .unwrap_or_else(|_| Value::from(raw.clone()))
                } else {
                    Value::from(raw.clone())
                };
                ((*key).to_owned(), value)
            })
            .collect();
        Serialized::defaults(dict)
    }
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
            .merge(self.overrides.layer())
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
        problem: one_line(&problem),
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
    let data = layer.data().map_err(|e| file_error(e.to_string()))?;
    if !layer.contains(ROOT_KEY) {
        return Ok(layer);
    }
    // With the root key, anything beside it would be silently ignored.
    if let Some(stray) = data
        .values()
        .flat_map(|dict| dict.keys())
        .find(|key| key.as_str() != ROOT_KEY)
    {
        return Err(ConfigError::invalid(
            stray.clone(),
            format!("unknown key outside the `{ROOT_KEY}:` root key"),
        ));
    }
    Ok(layer.focus(ROOT_KEY))
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
