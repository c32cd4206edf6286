//! The one error every configuration failure becomes, and the helpers that
//! keep its message on one line.
//!
//! It lives apart from both the model ([`crate::config`], whose checks
//! return it) and the loader ([`crate::load`], which turns parser errors
//! into it), so that neither has to import the other for it.

use std::path::PathBuf;

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
