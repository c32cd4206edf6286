//! Command-line flags: one per config key that has one, built from the key
//! table in `common::config::keys`, plus `--config`, `--check-config` and
//! logging. Flags are the top configuration layer.
//!
//! `--check-config FILE` is for CI pipelines and manifest tests: it runs the
//! same layered loading as a start, and instead of starting prints the
//! effective config in a form that loads back unchanged.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::error::ErrorKind;
use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches, Parser};
use common::config::keys::{self, Key, Kind};
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
    /// One flag per config key that has one, built from the key table.
    #[command(flatten)]
    pub keys: KeyFlags,
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
            file: self.config.clone().or_else(|| self.check_config.clone()),
            overrides: self.keys.overrides.clone(),
        }
    }
}

/// The flags of config keys (`--cache-ttl 5s`), one per row of
/// [`keys::TABLE`] that has a flag: its name, value name, help line and
/// default come from the row, so adding a key adds its flag. Values stay
/// strings, checked by the loader like every other layer.
#[derive(Debug, Clone, Default)]
pub struct KeyFlags {
    /// The values given, by key name.
    pub overrides: Overrides,
}

/// The clap argument of one key's flag (its id is the key's name).
fn flag_arg(key: &'static Key) -> Option<Arg> {
    let flag = key.flag?;
    let arg = Arg::new(key.name)
        .long(flag.long)
        .value_name(flag.value_name)
        .help(key.help().unwrap_or_default())
        .action(ArgAction::Set)
        .value_parser(clap::value_parser!(String));
    // `--tls-verify` alone means `--tls-verify true`.
    Some(match key.kind {
        Kind::Bool => arg.num_args(0..=1).default_missing_value("true"),
        _ => arg,
    })
}

impl Args for KeyFlags {
    fn augment_args(cmd: Command) -> Command {
        cmd.args(keys::TABLE.iter().filter_map(flag_arg))
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for KeyFlags {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut flags = KeyFlags::default();
        flags.update_from_arg_matches(matches)?;
        Ok(flags)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        for key in keys::TABLE.iter().filter(|key| key.flag.is_some()) {
            let value = matches
                .try_get_one::<String>(key.name)
                .map_err(|e| clap::Error::raw(ErrorKind::InvalidValue, e))?;
            if let Some(value) = value {
                self.overrides.set(key.name, value.clone());
            }
        }
        Ok(())
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
