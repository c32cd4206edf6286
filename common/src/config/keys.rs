//! The table of config keys: one [`Key`] row per key of [`Config`], saying
//! how the key is written in files, on the command line and in the
//! environment, what kind of value it takes, its default as users see it,
//! and whether a reload applies it.
//!
//! Everything that lists keys is derived from [`TABLE`]: [`KEYS`] (the
//! names the environment and errors use), the typed reading of flag values
//! ([`Kind::is_typed`]), the balancer's per-key flags and their `--help`
//! lines ([`Key::help`]), the keys a reload keeps at their running value
//! ([`keep_restart_only`]), and the README's key table, which a test
//! compares with this one.
//!
//! # Adding a config key
//!
//! 1. Add the field to [`Config`], with its `#[serde(rename = "...")]`
//!    camelCase name, a doc comment, and its value in `Config::default()`.
//! 2. Add its row to [`TABLE`], where it should appear in the README.
//! 3. Add its row to the README's key table (`| key | flag | env | ...`).
//! 4. If serde alone cannot tell a good value from a bad one, add a check
//!    to `config/checks.rs`.
//!
//! The tests here and in `tests/readme_keys.rs` fail until the field, the
//! row and the README agree. Nothing else lists keys: the flag, the
//! environment variable and the reload behaviour follow from the row.

use serde_json::{Map, Value};

use super::Config;

/// One config key, as every layer and the documentation know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    /// The name in files and errors (`cacheTTL`): the original plugin's
    /// camelCase, so its YAML loads unchanged.
    pub name: &'static str,
    /// The command-line flag, if the key has one. Keys whose values are
    /// maps or tables (and `watchConfig`, which only makes sense with a
    /// file) have none.
    pub flag: Option<Flag>,
    /// The documented environment variable (`WSB_CACHE_TTL`), if any.
    pub env: Option<&'static str>,
    /// What kind of value the key takes.
    pub kind: Kind,
    /// The default, as `--help` and the README show it.
    pub default: Shown,
    /// Whether a reload applies a new value.
    pub reload: Reload,
}

/// A key's command-line flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flag {
    /// The long flag without its dashes: the kebab-case of the key's name
    /// (`cache-ttl`).
    pub long: &'static str,
    /// What `--help` calls the value (`DURATION`).
    pub value_name: &'static str,
    /// The `--help` line, without the default: [`Key::help`] adds it from
    /// [`Key::default`], so the two cannot disagree.
    pub help: &'static str,
}

/// The kind of value a key takes. It decides how a flag's text becomes a
/// value: numbers and booleans are read as such, everything else is handed
/// to the key's own parser as a string, so a bad value is reported by the
/// same code wherever it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Text, or one of a few names (`selection`, `httpMode`).
    String,
    /// `true` or `false`; a bare flag means `true`.
    Bool,
    /// A non-negative whole number.
    Integer,
    /// A number that may have a fractional part (`0.1`).
    Float,
    /// A humantime duration (`250ms`, `30s`, `2m`).
    Duration,
    /// A socket address (`ip:port`).
    Address,
    /// A file path.
    Path,
    /// A list; a comma-separated string is accepted too (`a,b`).
    List,
    /// A map of names to strings.
    Map,
    /// A table of its own fields (`discovery`).
    Table,
}

impl Kind {
    /// Whether a flag's text is read as a number or boolean rather than
    /// kept a string.
    pub fn is_typed(self) -> bool {
        matches!(self, Kind::Bool | Kind::Integer | Kind::Float)
    }
}

/// A key's default as users are told it (the default itself is
/// `Config::default()`; a test checks that the two agree).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown {
    /// A value, written as in a file (`30s`).
    Value(&'static str),
    /// A value that turns the feature off, and what that means (`0`,
    /// `none`).
    Off(&'static str, &'static str),
    /// An empty list, and what that means (`all`).
    Empty(&'static str),
    /// Not set unless given.
    Unset,
    /// Unset, which means this value when `tlsCert` is set (and off
    /// without it).
    WithTls(&'static str),
    /// No default: the key must be given.
    Required,
}

impl Shown {
    /// The value part, for `--help`'s `[default: ...]`; `None` when there
    /// is nothing worth printing there.
    pub fn in_help(self) -> Option<&'static str> {
        match self {
            Shown::Value(value) | Shown::Off(value, _) => Some(value),
            Shown::WithTls(_) => Some("true with --tls-cert"),
            Shown::Empty(_) => Some("empty"),
            Shown::Unset | Shown::Required => None,
        }
    }

    /// The README's default column (markdown).
    pub fn in_readme(self) -> String {
        match self {
            Shown::Value(value) => format!("`{value}`"),
            Shown::Off(value, meaning) => format!("`{value}` ({meaning})"),
            Shown::Empty(meaning) => format!("empty ({meaning})"),
            Shown::Unset => "none".to_owned(),
            Shown::WithTls(value) => format!("`{value}` with `tlsCert`, else off"),
            Shown::Required => "(required)".to_owned(),
        }
    }
}

/// Whether a reload applies a key's new value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// Applies to the next connection, poll or drain.
    Live,
    /// Shapes what is set up once (a bound listener, the pollers' pace and
    /// the pods' report URLs, discovery, the file watch, the drain signal,
    /// the listener's handshake limits): a reload keeps the running value
    /// and says a restart is needed.
    Restart,
}

impl Reload {
    /// The README's reload column.
    pub fn in_readme(self) -> &'static str {
        match self {
            Reload::Live => "live",
            Reload::Restart => "restart",
        }
    }
}

impl Key {
    /// The flag's `--help` line: its help text and, when there is one worth
    /// printing, the default.
    pub fn help(&self) -> Option<String> {
        let flag = self.flag?;
        Some(match self.default.in_help() {
            Some(default) => format!("{} [default: {default}]", flag.help),
            None => flag.help.to_owned(),
        })
    }
}

/// One row of [`TABLE`] (a function, so that rows fit on two lines).
const fn row(
    name: &'static str,
    flag: Option<Flag>,
    env: Option<&'static str>,
    kind: Kind,
    default: Shown,
    reload: Reload,
) -> Key {
    Key {
        name,
        flag,
        env,
        kind,
        default,
        reload,
    }
}

/// A [`Flag`], for [`TABLE`]'s rows.
const fn flag(long: &'static str, value_name: &'static str, help: &'static str) -> Option<Flag> {
    Some(Flag {
        long,
        value_name,
        help,
    })
}

/// Every config key, in the README's order.
#[rustfmt::skip]
pub const TABLE: &[Key] = {
    use Kind::*;
    use Reload::*;
    use Shown::*;
    &[
    row("pods", flag("pods", "URLS", "Pod URLs, comma-separated (http, https, ws or wss)"),
        Some("WSB_PODS"), List, Required, Live),
    row("metricPath", flag("metric-path", "PATH", "Path of each pod's load report"),
        Some("WSB_METRIC_PATH"), String, Value("/metric"), Restart),
    row("tlsVerify", flag("tls-verify", "BOOL", "Verify TLS certificates of https/wss pods"),
        Some("WSB_TLS_VERIFY"), Bool, Value("true"), Live),
    row("caFile", flag("ca-file", "FILE", "Extra CA certificates (PEM) trusted for pods"),
        Some("WSB_CA_FILE"), Path, Unset, Live),
    row("cacheTTL", flag("cache-ttl", "DURATION", "Maximum age of a pod's report"),
        Some("WSB_CACHE_TTL"), Duration, Value("30s"), Restart),
    row("dialTimeout", flag("dial-timeout", "DURATION", "Bound on connect + handshake to a pod"),
        Some("WSB_DIAL_TIMEOUT"), Duration, Value("10s"), Live),
    row("hedgeDelay", flag("hedge-delay", "DURATION",
            "A pod not connected after this long gets the next pod dialled beside it, 0s = off"),
        Some("WSB_HEDGE_DELAY"), Duration, Value("250ms"), Live),
    row("writeTimeout", flag("write-timeout", "DURATION", "Bound on one blocked write"),
        Some("WSB_WRITE_TIMEOUT"), Duration, Value("10s"), Live),
    row("readTimeout", flag("read-timeout", "DURATION", "Idle limit of a relayed connection"),
        Some("WSB_READ_TIMEOUT"), Duration, Value("30s"), Live),
    row("tcpKeepalive", flag("tcp-keepalive", "DURATION",
            "TCP keepalive on both sides of relayed connections: idle time before the first probe, 0s = off"),
        Some("WSB_TCP_KEEPALIVE"), Duration, Value("30s"), Live),
    row("tcpKeepaliveInterval", flag("tcp-keepalive-interval", "DURATION",
            "Time between unanswered keepalive probes"),
        Some("WSB_TCP_KEEPALIVE_INTERVAL"), Duration, Value("5s"), Live),
    row("tcpKeepaliveProbes", flag("tcp-keepalive-probes", "N",
            "Unanswered keepalive probes that drop the connection"),
        Some("WSB_TCP_KEEPALIVE_PROBES"), Integer, Value("3"), Live),
    row("listen", flag("listen", "ADDR", "WebSocket listen address"),
        Some("WSB_LISTEN"), Address, Value("0.0.0.0:8080"), Restart),
    row("adminListen", flag("admin-listen", "ADDR", "Admin listen address"),
        Some("WSB_ADMIN_LISTEN"), Address, Value("127.0.0.1:9090"), Restart),
    row("selection", flag("selection", "STRATEGY",
            "Pod selection: least-connections, power-of-two (or, for comparison, cached or local)"),
        Some("WSB_SELECTION"), String, Value("least-connections"), Live),
    row("ejectAfter", flag("eject-after", "N", "Consecutive failed polls or dials that eject a pod"),
        Some("WSB_EJECT_AFTER"), Integer, Value("3"), Live),
    row("maxConnectionsPerPod", flag("max-connections-per-pod", "N",
            "Hard cap on one pod's connections, 0 = none"),
        Some("WSB_MAX_CONNECTIONS_PER_POD"), Integer, Off("0", "none"), Live),
    row("maxConnections", flag("max-connections", "N",
            "Hard cap on connections relayed at once, 0 = none"),
        Some("WSB_MAX_CONNECTIONS"), Integer, Off("0", "none"), Live),
    row("rateLimit", flag("rate-limit", "N",
            "New connections and plain requests per second per client address (IPv6: per /64), 0 = none"),
        Some("WSB_RATE_LIMIT"), Integer, Off("0", "none"), Live),
    row("slowStart", flag("slow-start", "DURATION",
            "Linear ramp for pods that join or come back, 0s = off"),
        Some("WSB_SLOW_START"), Duration, Off("0s", "off"), Live),
    row("replicas", flag("replicas", "N",
            "Where the estimate of the balancer replicas sharing the pods starts (learned from their reports)"),
        Some("WSB_REPLICAS"), Integer, Value("1"), Live),
    row("drainWindow", flag("drain-window", "DURATION",
            "Window over which connections are closed on SIGTERM"),
        Some("WSB_DRAIN_WINDOW"), Duration, Value("10s"), Restart),
    row("drainTimeout", flag("drain-timeout", "DURATION",
            "Longest wait for connections to close on SIGTERM"),
        Some("WSB_DRAIN_TIMEOUT"), Duration, Value("30s"), Live),
    row("drainCloseCode", flag("drain-close-code", "CODE",
            "Close code sent when draining: 1001 or 1012"),
        Some("WSB_DRAIN_CLOSE_CODE"), Integer, Value("1001"), Restart),
    row("rebalance", flag("rebalance", "BOOL",
            "Close a few connections on pods above the mean, so they reconnect to emptier ones"),
        Some("WSB_REBALANCE"), Bool, Value("false"), Live),
    row("rebalanceTolerance", flag("rebalance-tolerance", "FRACTION",
            "How far above its share of the mean a pod may be before it sheds, in (0, 1]"),
        Some("WSB_REBALANCE_TOLERANCE"), Float, Value("0.1"), Live),
    row("rebalanceRate", flag("rebalance-rate", "N",
            "Most connections per second this replica closes to rebalance"),
        Some("WSB_REBALANCE_RATE"), Integer, Value("20"), Live),
    row("rebalanceMinAge", flag("rebalance-min-age", "DURATION",
            "A connection younger than this is never closed to rebalance"),
        Some("WSB_REBALANCE_MIN_AGE"), Duration, Value("30s"), Live),
    row("rebalanceCloseCode", flag("rebalance-close-code", "CODE",
            "Close code sent when rebalancing: 1012 or 4000-4999"),
        Some("WSB_REBALANCE_CLOSE_CODE"), Integer, Value("1012"), Live),
    row("allowedOrigins", flag("allowed-origins", "ORIGINS",
            "Allowed Origins, comma-separated; empty allows all"),
        Some("WSB_ALLOWED_ORIGINS"), List, Empty("all"), Live),
    row("forwardHeaders", None,
        None, Map, Unset, Live),
    row("trustForwardedHeaders", flag("trust-forwarded-headers", "BOOL",
            "Append to incoming X-Forwarded-* instead of replacing them"),
        Some("WSB_TRUST_FORWARDED_HEADERS"), Bool, Value("false"), Live),
    row("maxHandshakeHeaderBytes", flag("max-handshake-header-bytes", "BYTES",
            "Largest request head a client may send, in bytes"),
        Some("WSB_MAX_HANDSHAKE_HEADER_BYTES"), Integer, Value("32768"), Restart),
    row("handshakeTimeout", flag("handshake-timeout", "DURATION",
            "Time a client has to send its request head"),
        Some("WSB_HANDSHAKE_TIMEOUT"), Duration, Value("10s"), Restart),
    row("tlsCert", flag("tls-cert", "FILE",
            "PEM certificate chain: serve TLS (wss://) on the listener"),
        Some("WSB_TLS_CERT"), Path, Unset, Restart),
    row("tlsKey", flag("tls-key", "FILE", "PEM private key for --tls-cert"),
        Some("WSB_TLS_KEY"), Path, Unset, Restart),
    row("http2", flag("http2", "BOOL",
            "Offer HTTP/2 by ALPN on the TLS listener (WebSockets over HTTP/2, RFC 8441)"),
        Some("WSB_HTTP2"), Bool, WithTls("true"), Restart),
    row("httpMode", flag("http-mode", "MODE",
            "Plain HTTP requests: `proxy` them to the least-loaded pod, or `reject` them with 426"),
        Some("WSB_HTTP_MODE"), String, Value("proxy"), Live),
    row("maxHttpRequests", flag("max-http-requests", "N",
            "Most plain HTTP requests proxied at once (503 beyond), 0 = none"),
        Some("WSB_MAX_HTTP_REQUESTS"), Integer, Value("1024"), Live),
    // No flag: a file or the environment only, as before the table.
    row("watchConfig", None,
        Some("WSB_WATCH_CONFIG"), Bool, Value("false"), Restart),
    row("discovery", None,
        None, Table, Unset, Restart),
    ]
};

/// Every key's name, in [`TABLE`]'s order. Used to map environment
/// variables (`WSB_CACHE_TTL`) and flag values to keys.
pub const KEYS: &[&str] = &{
    let mut names = [""; TABLE.len()];
    let mut i = 0;
    while i < TABLE.len() {
        names[i] = TABLE[i].name;
        i += 1;
    }
    names
};

/// The row of the key named `name` (as in files), if it is one.
pub fn key(name: &str) -> Option<&'static Key> {
    TABLE.iter().find(|key| key.name == name)
}

/// The names of the keys a reload cannot apply ([`Reload::Restart`]).
pub fn restart_only() -> impl Iterator<Item = &'static str> {
    TABLE
        .iter()
        .filter(|key| key.reload == Reload::Restart)
        .map(|key| key.name)
}

/// Why [`keep_restart_only`] could not copy values: a config that does not
/// serialize (a path that is not UTF-8, which loading never produces).
#[derive(Debug, thiserror::Error)]
#[error("copying the running values of restart-only keys: {0}")]
pub struct KeepRunningError(#[from] serde_json::Error);

/// Copies into `new` the running value of every [`Reload::Restart`] key,
/// so a reload applies none of them, not even in part; returns those whose
/// value `new` had changed, in [`TABLE`]'s order.
///
/// The copy goes through each config's serialized form, key by key, so it
/// needs no code per field: a new restart-only key is one row. On error
/// `new` is left as it was.
pub fn keep_restart_only(
    running: &Config,
    new: &mut Config,
) -> Result<Vec<&'static str>, KeepRunningError> {
    let running_values = to_map(running)?;
    let mut new_values = to_map(new)?;
    let mut changed = Vec::new();
    let mut copied = false;
    for key in TABLE.iter().filter(|key| key.reload == Reload::Restart) {
        let name = key.name;
        let kept = running_values.get(name);
        if new_values.get(name) == kept {
            continue;
        }
        // Copied back even when it means the same, so that `new` is the
        // running config in every restart-only key (one that writes out
        // `http2: true` while adding `tlsCert` must not keep the first
        // without the second); reported only when the meaning changed.
        if key.means(new_values.get(name)) != key.means(kept) {
            changed.push(name);
        }
        copied = true;
        match kept {
            Some(value) => new_values.insert(name.to_owned(), value.clone()),
            // Absent when unset (`tlsCert`, `discovery`).
            None => new_values.remove(name),
        };
    }
    if copied {
        *new = serde_json::from_value(Value::Object(new_values))?;
    }
    Ok(changed)
}

impl Key {
    /// What a serialized value of this key means, for reporting a change:
    /// an unset key whose default is [`Shown::WithTls`] means that value
    /// (with `tlsCert`, which is compared on its own), so that a reload
    /// that writes out the default (`http2: true` where it was unset) is
    /// not reported as needing a restart.
    fn means(&self, value: Option<&Value>) -> Option<Value> {
        match (value, self.default) {
            (None | Some(Value::Null), Shown::WithTls(default)) => {
                serde_json::from_str(default).ok()
            }
            (value, _) => value.cloned(),
        }
    }
}

/// `config` serialized, by key name.
fn to_map(config: &Config) -> Result<Map<String, Value>, serde_json::Error> {
    serde_json::from_value(serde_json::to_value(config)?)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::config::Discovery;

    /// `Config::default()` with every optional key set, so that every key
    /// serializes.
    fn every_key_set() -> Config {
        Config {
            ca_file: Some("/etc/ca.pem".into()),
            tls_cert: Some("/etc/cert.pem".into()),
            tls_key: Some("/etc/key.pem".into()),
            http2: Some(true),
            discovery: Some(Discovery {
                dns: "pods.example".into(),
                port: 8080,
                scheme: "http".into(),
                interval: std::time::Duration::from_secs(5),
                nameserver: None,
            }),
            ..Config::default()
        }
    }

    #[test]
    fn every_field_of_config_has_exactly_one_row() {
        let fields: BTreeSet<String> = to_map(&every_key_set())
            .expect("serializes")
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        let rows: BTreeSet<String> = KEYS.iter().map(|&k| k.to_owned()).collect();
        assert_eq!(rows.len(), TABLE.len(), "a key has two rows");
        assert_eq!(fields, rows);
        assert_eq!(KEYS.len(), TABLE.len());
    }

    /// `cacheTTL` → `CACHE_TTL`, `maxConnectionsPerPod` →
    /// `MAX_CONNECTIONS_PER_POD`: a run of capitals is one word.
    fn words(name: &str) -> Vec<String> {
        let chars: Vec<char> = name.chars().collect();
        let mut words = vec![String::new()];
        for (i, &c) in chars.iter().enumerate() {
            let prev_lower = i > 0 && chars[i - 1].is_lowercase();
            if c.is_uppercase() && prev_lower {
                words.push(String::new());
            }
            if let Some(word) = words.last_mut() {
                word.push(c.to_ascii_lowercase());
            }
        }
        words
    }

    #[test]
    fn flags_are_kebab_case_and_env_names_upper_snake_case_of_the_name() {
        assert_eq!(words("cacheTTL"), ["cache", "ttl"]);
        assert_eq!(
            words("maxConnectionsPerPod"),
            ["max", "connections", "per", "pod"]
        );
        for key in TABLE {
            let words = words(key.name);
            if let Some(flag) = key.flag {
                assert_eq!(flag.long, words.join("-"), "{}", key.name);
                assert!(
                    !flag.help.ends_with('.'),
                    "{}: clap shows no period",
                    key.name
                );
                assert!(!flag.value_name.is_empty(), "{}", key.name);
            }
            if let Some(env) = key.env {
                let expected = format!("WSB_{}", words.join("_").to_uppercase());
                assert_eq!(env, expected, "{}", key.name);
            }
            // A flag without its environment variable would be odd.
            assert!(key.flag.is_none() || key.env.is_some(), "{}", key.name);
        }
    }

    #[test]
    fn shown_defaults_are_the_real_defaults() {
        let defaults = to_map(&Config::default()).expect("serializes");
        for key in TABLE {
            let real = defaults.get(key.name);
            let shown = match key.default {
                Shown::Value(value) | Shown::Off(value, _) => value,
                Shown::Unset | Shown::WithTls(_) => {
                    let empty_map = real.is_some_and(|v| v.as_object().is_some_and(Map::is_empty));
                    assert!(real.is_none() || empty_map, "{}: {real:?}", key.name);
                    continue;
                }
                Shown::Empty(_) | Shown::Required => {
                    assert_eq!(real, Some(&Value::Array(Vec::new())), "{}", key.name);
                    continue;
                }
            };
            let real = real.unwrap_or_else(|| panic!("{} has a default", key.name));
            match key.kind {
                Kind::Duration => {
                    let real = real.as_str().expect("a duration serializes as text");
                    assert_eq!(
                        humantime::parse_duration(shown).ok(),
                        humantime::parse_duration(real).ok(),
                        "{}",
                        key.name
                    );
                }
                Kind::Bool => {
                    assert_eq!(shown.parse::<bool>().ok(), real.as_bool(), "{}", key.name)
                }
                Kind::Integer => {
                    assert_eq!(shown.parse::<u64>().ok(), real.as_u64(), "{}", key.name)
                }
                Kind::Float => {
                    assert_eq!(shown.parse::<f64>().ok(), real.as_f64(), "{}", key.name)
                }
                Kind::String | Kind::Address | Kind::Path => {
                    assert_eq!(Some(shown), real.as_str(), "{}", key.name);
                }
                Kind::List | Kind::Map | Kind::Table => {
                    panic!("{}: no shown value for a {:?}", key.name, key.kind)
                }
            }
        }
    }

    #[test]
    fn kinds_match_what_the_field_serializes_as() {
        let values = to_map(&every_key_set()).expect("serializes");
        for key in TABLE {
            let value = &values[key.name];
            let fits = match key.kind {
                Kind::Bool => value.is_boolean(),
                Kind::Integer => value.is_u64(),
                Kind::Float => value.is_f64(),
                Kind::String | Kind::Duration | Kind::Address | Kind::Path => value.is_string(),
                Kind::List => value.is_array(),
                Kind::Map | Kind::Table => value.is_object(),
            };
            assert!(
                fits,
                "{} is a {:?}, serialized as {value}",
                key.name, key.kind
            );
        }
    }

    #[test]
    fn the_restart_only_keys_are_those_set_up_once() {
        assert_eq!(
            restart_only().collect::<BTreeSet<_>>(),
            BTreeSet::from([
                "listen",
                "adminListen",
                "cacheTTL",
                "tlsCert",
                "tlsKey",
                "http2",
                "handshakeTimeout",
                "maxHandshakeHeaderBytes",
                "drainWindow",
                "metricPath",
                "discovery",
                "watchConfig",
                "drainCloseCode",
            ])
        );
    }

    #[test]
    fn keeping_restart_only_keys_copies_them_and_nothing_else() {
        let running = Config::default();
        let mut new = every_key_set();
        new.listen = "127.0.0.1:1".parse().expect("an address");
        new.max_connections = 7;
        new.drain_window = std::time::Duration::from_millis(1500);
        let changed = keep_restart_only(&running, &mut new).expect("copies");
        assert_eq!(
            changed,
            ["listen", "drainWindow", "tlsCert", "tlsKey", "discovery"]
        );
        assert_eq!(new.listen, running.listen);
        assert_eq!(new.drain_window, running.drain_window);
        assert_eq!(
            (new.tls_cert.as_ref(), new.discovery.as_ref()),
            (None, None)
        );
        assert_eq!(new.max_connections, 7, "a live key keeps its new value");
        assert_eq!(new.ca_file, every_key_set().ca_file);
        // Unset on the running side, set on the new: the new one is dropped;
        // and the other way round, the running one is put back.
        let mut back = Config::default();
        assert_eq!(
            keep_restart_only(&every_key_set(), &mut back).expect("copies"),
            ["tlsCert", "tlsKey", "discovery"]
        );
        assert_eq!(back.tls_cert, every_key_set().tls_cert);
        assert_eq!(
            keep_restart_only(&back, &mut back.clone()).expect("copies"),
            [] as [&str; 0]
        );
    }

    #[test]
    fn writing_out_a_default_that_depends_on_tls_is_no_change() {
        let running = Config {
            tls_cert: Some("/etc/tls/cert.pem".into()),
            tls_key: Some("/etc/tls/key.pem".into()),
            ..Config::default()
        };
        let mut new = running.clone();
        new.http2 = Some(true);
        assert_eq!(
            keep_restart_only(&running, &mut new).expect("copies"),
            [] as [&str; 0],
            "unset means true with tlsCert"
        );
        new.http2 = Some(false);
        assert_eq!(
            keep_restart_only(&running, &mut new).expect("copies"),
            ["http2"]
        );
        assert_eq!(new.http2, None, "the running value is kept");
        assert!(new.http2_enabled());
    }

    #[test]
    fn adding_tls_with_http2_written_out_keeps_a_valid_config() {
        // Running without TLS; the new file adds it and writes out http2.
        let running = Config {
            pods: vec!["http://10.0.0.1:8080".into()],
            ..Config::default()
        };
        running.validate().expect("a valid running config");
        let mut new = Config {
            tls_cert: Some("/etc/tls/cert.pem".into()),
            tls_key: Some("/etc/tls/key.pem".into()),
            http2: Some(true),
            ..running.clone()
        };
        assert_eq!(
            keep_restart_only(&running, &mut new).expect("copies"),
            ["tlsCert", "tlsKey"]
        );
        assert_eq!((new.tls_cert.as_ref(), new.http2), (None, None));
        new.validate()
            .expect("no http2 without tlsCert is left behind");
    }

    #[test]
    fn every_default_that_depends_on_tls_is_a_value() {
        for key in TABLE {
            if let Shown::WithTls(default) = key.default {
                assert!(
                    serde_json::from_str::<Value>(default).is_ok(),
                    "{}: {default:?}",
                    key.name
                );
            }
        }
    }

    #[test]
    fn help_lines_carry_the_default() {
        let help = |name| key(name).and_then(Key::help);
        assert_eq!(
            help("listen").as_deref(),
            Some("WebSocket listen address [default: 0.0.0.0:8080]")
        );
        assert_eq!(
            help("allowedOrigins").as_deref(),
            Some("Allowed Origins, comma-separated; empty allows all [default: empty]")
        );
        assert_eq!(
            help("pods").as_deref(),
            Some("Pod URLs, comma-separated (http, https, ws or wss)")
        );
        assert_eq!(help("discovery"), None, "file only");
    }

    #[test]
    fn numbers_and_booleans_are_typed() {
        let typed: BTreeSet<_> = TABLE
            .iter()
            .filter(|key| key.kind.is_typed())
            .map(|key| key.name)
            .collect();
        assert_eq!(
            typed,
            BTreeSet::from([
                "tlsVerify",
                "http2",
                "watchConfig",
                "tcpKeepaliveProbes",
                "ejectAfter",
                "maxConnectionsPerPod",
                "maxConnections",
                "rateLimit",
                "maxHttpRequests",
                "replicas",
                "drainCloseCode",
                "trustForwardedHeaders",
                "maxHandshakeHeaderBytes",
                "rebalance",
                "rebalanceTolerance",
                "rebalanceRate",
                "rebalanceCloseCode",
            ])
        );
    }
}
