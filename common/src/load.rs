//! Layered loading of [`Config`]: built-in defaults < config file < `WSB_*`
//! environment < command-line flags, then validation.
//!
//! The file may be YAML, TOML or JSON (chosen by extension) and may wrap its
//! keys in the original plugin's `wsbalancer:` root key. Every failure names
//! the key it is about, so a start-up error is one actionable line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::error::Kind;
use figment::providers::{Env, Format, Json, Serialized, Toml, Yaml};
use figment::value::{Dict, Value};
use figment::{Figment, Provider};

use crate::config::Config;
use crate::config::keys::{self, KEYS};
use crate::error::{ConfigError, one_line};

/// Root key of the original plugin's YAML; accepted in any file format.
pub const ROOT_KEY: &str = "wsbalancer";

/// Prefix of environment variables read as configuration.
pub const ENV_PREFIX: &str = "WSB_";

/// Values given on the command line, by config key. A present one wins over
/// every other layer. Values stay strings until loading, so that a bad one
/// is reported by the same code, naming the same key, wherever it came from.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    values: BTreeMap<&'static str, String>,
}

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
                let typed = keys::key(key).is_some_and(|row| row.kind.is_typed());
                let value = if typed {
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
