//! The checks a loaded [`Config`] must pass before the balancer starts: what
//! serde cannot see (a path that is a path, distinct pods, durations in
//! range, files that exist).
//!
//! Each check looks at one key, or at one pair of keys that only make sense
//! together, and fails with a [`ConfigError`] naming that key. They run in
//! the order of [`CHECKS`] and the first failure is the one reported, so a
//! user fixes one line at a time.

use std::time::Duration;

use super::{
    Config, DRAIN_CLOSE_GRACE, Discovery, MAX_DURATION, MIN_CACHE_TTL, MIN_HEADER_BYTES,
    MIN_TIMEOUT,
};
use crate::error::ConfigError;

/// One check: `Ok` or the error naming the key at fault.
type Check = fn(&Config) -> Result<(), ConfigError>;

/// Every check, in the order they run. A new key with a constraint serde
/// cannot express gets one function here.
pub(super) const CHECKS: &[Check] = &[
    pods_or_discovery,
    metric_path,
    distinct_pods,
    cache_ttl,
    dial_timeout,
    hedge_delay,
    write_timeout,
    read_timeout,
    tcp_keepalive,
    tls_cert_and_key,
    http2,
    max_handshake_header_bytes,
    handshake_timeout,
    forward_headers,
    allowed_origins,
    drain_close_code,
    drain_timeout_after_window,
    drain_timeout_at_most,
    slow_start,
    eject_after,
    replicas,
    ca_file,
    rebalance_tolerance,
    rebalance_rate,
    rebalance_min_age,
    rebalance_close_code,
];

/// `pods` or `discovery`, exactly one of them, and a valid `discovery`.
fn pods_or_discovery(config: &Config) -> Result<(), ConfigError> {
    match &config.discovery {
        Some(_) if !config.pods.is_empty() => Err(ConfigError::invalid(
            "discovery",
            "use either `pods` or `discovery`, not both",
        )),
        Some(discovery) => discovery_fields(discovery),
        None if config.pods.is_empty() => Err(ConfigError::invalid(
            "pods",
            "at least one pod URL is required",
        )),
        None => Ok(()),
    }
}

/// The fields of `discovery`, each named `discovery.<field>`.
fn discovery_fields(discovery: &Discovery) -> Result<(), ConfigError> {
    if discovery.dns.trim().is_empty() {
        return Err(ConfigError::invalid("discovery.dns", "must name a host"));
    }
    if discovery.port == 0 {
        return Err(ConfigError::invalid("discovery.port", "must not be 0"));
    }
    if !matches!(discovery.scheme.as_str(), "http" | "https" | "ws" | "wss") {
        return Err(ConfigError::invalid(
            "discovery.scheme",
            format!("{:?} must be http, https, ws or wss", discovery.scheme),
        ));
    }
    if discovery.interval < MIN_CACHE_TTL || discovery.interval > MAX_DURATION {
        return Err(ConfigError::invalid(
            "discovery.interval",
            "must be between 100ms and a year",
        ));
    }
    Ok(())
}

/// `metricPath` is appended to pod URLs: a plain absolute path.
fn metric_path(config: &Config) -> Result<(), ConfigError> {
    let path = &config.metric_path;
    let plain = path.starts_with('/')
        && path
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#');
    if plain {
        return Ok(());
    }
    Err(ConfigError::invalid(
        "metricPath",
        format!("{path:?} must be a plain path starting with '/' (no spaces, query or fragment)"),
    ))
}

/// Every pod URL parses, and no two name the same pod (same report URL).
fn distinct_pods(config: &Config) -> Result<(), ConfigError> {
    let addresses = config.pod_addresses()?;
    for (i, address) in addresses.iter().enumerate() {
        if let Some(first) = addresses[..i]
            .iter()
            .find(|a| a.metric_url == address.metric_url)
        {
            return Err(ConfigError::invalid(
                "pods",
                format!("{:?} and {:?} are the same pod", first.url, address.url),
            ));
        }
    }
    Ok(())
}

/// `value` of `key` lies between `min` and [`MAX_DURATION`].
fn between(key: &str, value: Duration, min: Duration) -> Result<(), ConfigError> {
    if value >= min && value <= MAX_DURATION {
        return Ok(());
    }
    Err(ConfigError::invalid(
        key,
        format!(
            "must be between {} and {}",
            humantime::format_duration(min),
            humantime::format_duration(MAX_DURATION)
        ),
    ))
}

/// `value` of `key` is at most [`MAX_DURATION`].
fn at_most_max(key: &str, value: Duration) -> Result<(), ConfigError> {
    if value <= MAX_DURATION {
        return Ok(());
    }
    Err(ConfigError::invalid(
        key,
        format!(
            "must be at most {}",
            humantime::format_duration(MAX_DURATION)
        ),
    ))
}

/// `cacheTTL` leaves polls time to complete.
fn cache_ttl(config: &Config) -> Result<(), ConfigError> {
    between("cacheTTL", config.cache_ttl, MIN_CACHE_TTL)
}

/// `dialTimeout` in range.
fn dial_timeout(config: &Config) -> Result<(), ConfigError> {
    between("dialTimeout", config.dial_timeout, MIN_TIMEOUT)
}

/// `hedgeDelay` in range. Not tied to `dialTimeout`: one at or past it
/// never fires (the dial times out first), which is what a short
/// `dialTimeout` with the default `hedgeDelay` should do, not an error
/// about a key the user never set.
fn hedge_delay(config: &Config) -> Result<(), ConfigError> {
    at_most_max("hedgeDelay", config.hedge_delay)
}

/// `writeTimeout` in range.
fn write_timeout(config: &Config) -> Result<(), ConfigError> {
    between("writeTimeout", config.write_timeout, MIN_TIMEOUT)
}

/// `readTimeout` in range.
fn read_timeout(config: &Config) -> Result<(), ConfigError> {
    between("readTimeout", config.read_timeout, MIN_TIMEOUT)
}

/// Longest keepalive time or interval Linux takes (`TCP_KEEPIDLE`,
/// `TCP_KEEPINTVL`, in whole seconds).
const MAX_KEEPALIVE_SECS: u64 = 32_767;

/// Most keepalive probes Linux takes (`TCP_KEEPCNT`).
const MAX_KEEPALIVE_PROBES: u32 = 127;

/// `tcpKeepalive` (0 or 1s up to Linux's limit, whole seconds: the kernel
/// counts in seconds, and a silently rounded value would surprise),
/// `tcpKeepaliveInterval` (the same, not 0) and `tcpKeepaliveProbes`
/// (1 to 127).
fn tcp_keepalive(config: &Config) -> Result<(), ConfigError> {
    let seconds = |key: &str, value: Duration, zero_ok: bool| {
        let whole = value.subsec_nanos() == 0;
        let secs = value.as_secs();
        if whole && (secs >= 1 || zero_ok && secs == 0) && secs <= MAX_KEEPALIVE_SECS {
            return Ok(());
        }
        let low = if zero_ok { "0s (off) or 1s" } else { "1s" };
        Err(ConfigError::invalid(
            key,
            format!("must be whole seconds, {low} to {MAX_KEEPALIVE_SECS}s"),
        ))
    };
    seconds("tcpKeepalive", config.tcp_keepalive, true)?;
    seconds("tcpKeepaliveInterval", config.tcp_keepalive_interval, false)?;
    if (1..=MAX_KEEPALIVE_PROBES).contains(&config.tcp_keepalive_probes) {
        return Ok(());
    }
    Err(ConfigError::invalid(
        "tcpKeepaliveProbes",
        format!("must be 1 to {MAX_KEEPALIVE_PROBES}"),
    ))
}

/// `tlsCert` and `tlsKey`: both or neither, and both readable files.
fn tls_cert_and_key(config: &Config) -> Result<(), ConfigError> {
    match (&config.tls_cert, &config.tls_key) {
        (Some(_), None) => Err(ConfigError::invalid("tlsKey", "required with tlsCert")),
        (None, Some(_)) => Err(ConfigError::invalid("tlsCert", "required with tlsKey")),
        (Some(cert), Some(key)) => {
            for (name, path) in [("tlsCert", cert), ("tlsKey", key)] {
                if !path.is_file() {
                    return Err(ConfigError::invalid(
                        name,
                        format!("{} is not a readable file", path.display()),
                    ));
                }
            }
            Ok(())
        }
        (None, None) => Ok(()),
    }
}

/// `http2: true` needs the TLS listener: HTTP/2 is offered by ALPN, and
/// a plain listener has none.
fn http2(config: &Config) -> Result<(), ConfigError> {
    if config.http2 == Some(true) && config.tls_cert.is_none() {
        return Err(ConfigError::invalid(
            "http2",
            "needs tlsCert (HTTP/2 is offered by ALPN on the TLS listener)",
        ));
    }
    Ok(())
}

/// `maxHandshakeHeaderBytes` is not below the HTTP parser's own minimum.
fn max_handshake_header_bytes(config: &Config) -> Result<(), ConfigError> {
    if config.max_handshake_header_bytes >= MIN_HEADER_BYTES {
        return Ok(());
    }
    Err(ConfigError::invalid(
        "maxHandshakeHeaderBytes",
        format!("must be at least {MIN_HEADER_BYTES}"),
    ))
}

/// `handshakeTimeout` in range. Its message predates [`between`]'s and is
/// kept as users have seen it.
fn handshake_timeout(config: &Config) -> Result<(), ConfigError> {
    let timeout = config.handshake_timeout;
    if timeout >= MIN_TIMEOUT && timeout <= MAX_DURATION {
        return Ok(());
    }
    Err(ConfigError::invalid(
        "handshakeTimeout",
        "must be between 1ms and 1 year",
    ))
}

/// Every `forwardHeaders` entry is a header name (an HTTP token) with a
/// value free of control characters.
fn forward_headers(config: &Config) -> Result<(), ConfigError> {
    for (name, value) in &config.forward_headers {
        let token = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            return Err(ConfigError::invalid(
                "forwardHeaders",
                format!("{name:?} is not a valid header name"),
            ));
        }
        if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            return Err(ConfigError::invalid(
                "forwardHeaders",
                format!("the value of {name:?} holds control characters"),
            ));
        }
    }
    Ok(())
}

/// Every `allowedOrigins` entry looks like an `Origin` header's value.
fn allowed_origins(config: &Config) -> Result<(), ConfigError> {
    for origin in &config.allowed_origins {
        if !(origin.starts_with("http://") || origin.starts_with("https://"))
            || origin.ends_with('/')
        {
            return Err(ConfigError::invalid(
                "allowedOrigins",
                format!("{origin:?} must look like https://host[:port] (no path)"),
            ));
        }
    }
    Ok(())
}

/// `drainCloseCode` is one of the two codes that tell a client to come back.
fn drain_close_code(config: &Config) -> Result<(), ConfigError> {
    if matches!(config.drain_close_code, 1001 | 1012) {
        return Ok(());
    }
    Err(ConfigError::invalid(
        "drainCloseCode",
        "must be 1001 (going away) or 1012 (service restart)",
    ))
}

/// `drainTimeout` leaves the last closes of `drainWindow` time to finish.
fn drain_timeout_after_window(config: &Config) -> Result<(), ConfigError> {
    if config.drain_window + DRAIN_CLOSE_GRACE <= config.drain_timeout {
        return Ok(());
    }
    Err(ConfigError::invalid(
        "drainTimeout",
        "must exceed drainWindow by at least 2s, for the last close handshakes",
    ))
}

/// `drainTimeout` is not beyond [`MAX_DURATION`].
fn drain_timeout_at_most(config: &Config) -> Result<(), ConfigError> {
    at_most_max("drainTimeout", config.drain_timeout)
}

/// `slowStart` is not beyond [`MAX_DURATION`].
fn slow_start(config: &Config) -> Result<(), ConfigError> {
    at_most_max("slowStart", config.slow_start)
}

/// `ejectAfter` 0 would eject a pod that never failed.
fn eject_after(config: &Config) -> Result<(), ConfigError> {
    if config.eject_after == 0 {
        return Err(ConfigError::invalid("ejectAfter", "must be at least 1"));
    }
    Ok(())
}

/// `replicas` counts this balancer too, so it is at least 1.
fn replicas(config: &Config) -> Result<(), ConfigError> {
    if config.replicas == 0 {
        return Err(ConfigError::invalid("replicas", "must be at least 1"));
    }
    Ok(())
}

/// `caFile` is readable and holds at least one PEM certificate.
fn ca_file(config: &Config) -> Result<(), ConfigError> {
    let Some(path) = &config.ca_file else {
        return Ok(());
    };
    let pem = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::invalid("caFile", format!("{}: {e}", path.display())))?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(ConfigError::invalid(
            "caFile",
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(())
}

/// `rebalanceTolerance` is a fraction of a pod's share: above 0, or a pod
/// a single connection above the mean would shed, and at most 1 (twice
/// its share), beyond which rebalancing would hardly ever act.
fn rebalance_tolerance(config: &Config) -> Result<(), ConfigError> {
    let tolerance = config.rebalance_tolerance;
    // Written so that NaN fails too.
    if tolerance > 0.0 && tolerance <= 1.0 {
        return Ok(());
    }
    Err(ConfigError::invalid(
        "rebalanceTolerance",
        "must be greater than 0 and at most 1",
    ))
}

/// `rebalanceRate` 0 would turn rebalancing on and let it close nothing;
/// `rebalance: false` says that.
fn rebalance_rate(config: &Config) -> Result<(), ConfigError> {
    if config.rebalance_rate == 0 {
        return Err(ConfigError::invalid("rebalanceRate", "must be at least 1"));
    }
    Ok(())
}

/// `rebalanceMinAge` is not beyond [`MAX_DURATION`].
fn rebalance_min_age(config: &Config) -> Result<(), ConfigError> {
    at_most_max("rebalanceMinAge", config.rebalance_min_age)
}

/// `rebalanceCloseCode` tells the client to come back: 1012, or a private
/// code its own protocol gives that meaning.
fn rebalance_close_code(config: &Config) -> Result<(), ConfigError> {
    if matches!(config.rebalance_close_code, 1012 | 4000..=4999) {
        return Ok(());
    }
    Err(ConfigError::invalid(
        "rebalanceCloseCode",
        "must be 1012 (service restart) or in 4000-4999 (private use)",
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// A config that passes every check.
    fn valid() -> Config {
        Config {
            pods: vec!["http://a:1".into()],
            ..Config::default()
        }
    }

    /// Far beyond [`MAX_DURATION`].
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

    /// The error `change` makes `validate` report, as (key, problem).
    fn refusal(change: impl FnOnce(&mut Config)) -> (String, String) {
        let mut config = valid();
        change(&mut config);
        match config.validate() {
            Err(ConfigError::Invalid { key, problem }) => (key, problem),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_config_passes_every_check() {
        assert_eq!(valid().validate(), Ok(()));
    }

    #[test]
    fn each_check_names_its_key_with_its_message() {
        type Change = Box<dyn FnOnce(&mut Config)>;
        let year = "11months 30days 3h 50m 24s";
        let cases: Vec<(Change, &str, String)> = vec![
            (
                Box::new(|c| c.pods.clear()),
                "pods",
                "at least one pod URL is required".into(),
            ),
            (
                Box::new(|c| {
                    c.pods = vec!["http://x:1".into(), "http://x:1/".into()];
                }),
                "pods",
                r#""http://x:1" and "http://x:1/" are the same pod"#.into(),
            ),
            (
                Box::new(|c| c.metric_path = "/m?x".into()),
                "metricPath",
                r#""/m?x" must be a plain path starting with '/' (no spaces, query or fragment)"#
                    .into(),
            ),
            (
                Box::new(|c| c.cache_ttl = Duration::ZERO),
                "cacheTTL",
                format!("must be between 100ms and {year}"),
            ),
            (
                Box::new(|c| c.read_timeout = CENTURY),
                "readTimeout",
                format!("must be between 1ms and {year}"),
            ),
            (
                Box::new(|c| c.tls_cert = Some("/etc/cert.pem".into())),
                "tlsKey",
                "required with tlsCert".into(),
            ),
            (
                Box::new(|c| c.tls_key = Some("/etc/key.pem".into())),
                "tlsCert",
                "required with tlsKey".into(),
            ),
            (
                Box::new(|c| c.http2 = Some(true)),
                "http2",
                "needs tlsCert (HTTP/2 is offered by ALPN on the TLS listener)".into(),
            ),
            (
                Box::new(|c| c.max_handshake_header_bytes = 100),
                "maxHandshakeHeaderBytes",
                "must be at least 8192".into(),
            ),
            (
                Box::new(|c| c.handshake_timeout = Duration::ZERO),
                "handshakeTimeout",
                "must be between 1ms and 1 year".into(),
            ),
            (
                Box::new(|c| {
                    c.forward_headers = BTreeMap::from([("X".into(), "v\n".into())]);
                }),
                "forwardHeaders",
                r#"the value of "X" holds control characters"#.into(),
            ),
            (
                Box::new(|c| c.allowed_origins = vec!["https://a/".into()]),
                "allowedOrigins",
                r#""https://a/" must look like https://host[:port] (no path)"#.into(),
            ),
            (
                Box::new(|c| c.drain_close_code = 1000),
                "drainCloseCode",
                "must be 1001 (going away) or 1012 (service restart)".into(),
            ),
            (
                Box::new(|c| c.drain_timeout = c.drain_window + Duration::from_secs(1)),
                "drainTimeout",
                "must exceed drainWindow by at least 2s, for the last close handshakes".into(),
            ),
            (
                Box::new(|c| c.drain_timeout = CENTURY),
                "drainTimeout",
                format!("must be at most {year}"),
            ),
            (
                Box::new(|c| c.slow_start = CENTURY),
                "slowStart",
                format!("must be at most {year}"),
            ),
            (
                Box::new(|c| c.tcp_keepalive = Duration::from_millis(1500)),
                "tcpKeepalive",
                "must be whole seconds, 0s (off) or 1s to 32767s".into(),
            ),
            (
                Box::new(|c| c.tcp_keepalive_interval = Duration::ZERO),
                "tcpKeepaliveInterval",
                "must be whole seconds, 1s to 32767s".into(),
            ),
            (
                Box::new(|c| c.tcp_keepalive_probes = 128),
                "tcpKeepaliveProbes",
                "must be 1 to 127".into(),
            ),
            (
                Box::new(|c| c.hedge_delay = CENTURY),
                "hedgeDelay",
                format!("must be at most {year}"),
            ),
            (
                Box::new(|c| c.eject_after = 0),
                "ejectAfter",
                "must be at least 1".into(),
            ),
            (
                Box::new(|c| c.replicas = 0),
                "replicas",
                "must be at least 1".into(),
            ),
            (
                Box::new(|c| c.rebalance_tolerance = 0.0),
                "rebalanceTolerance",
                "must be greater than 0 and at most 1".into(),
            ),
            (
                Box::new(|c| c.rebalance_rate = 0),
                "rebalanceRate",
                "must be at least 1".into(),
            ),
            (
                Box::new(|c| c.rebalance_min_age = CENTURY),
                "rebalanceMinAge",
                format!("must be at most {year}"),
            ),
            (
                Box::new(|c| c.rebalance_close_code = 1001),
                "rebalanceCloseCode",
                "must be 1012 (service restart) or in 4000-4999 (private use)".into(),
            ),
        ];
        for (change, key, problem) in cases {
            assert_eq!(refusal(change), (key.to_owned(), problem));
        }
    }

    #[test]
    fn discovery_is_checked_field_by_field() {
        let discovery = |c: &mut Config, dns: &str, port, scheme: &str, interval| {
            c.pods.clear();
            c.discovery = Some(Discovery {
                dns: dns.into(),
                port,
                scheme: scheme.into(),
                interval,
                nameserver: None,
            });
        };
        let five = Duration::from_secs(5);
        assert_eq!(
            refusal(|c| {
                discovery(c, "x", 1, "http", five);
                c.pods = vec!["http://a:1".into()];
            }),
            (
                "discovery".into(),
                "use either `pods` or `discovery`, not both".into()
            )
        );
        assert_eq!(
            refusal(|c| discovery(c, "", 1, "http", five)).0,
            "discovery.dns"
        );
        assert_eq!(
            refusal(|c| discovery(c, "x", 0, "http", five)).0,
            "discovery.port"
        );
        assert_eq!(
            refusal(|c| discovery(c, "x", 1, "ftp", five)).0,
            "discovery.scheme"
        );
        assert_eq!(
            refusal(|c| discovery(c, "x", 1, "http", Duration::from_millis(1))),
            (
                "discovery.interval".into(),
                "must be between 100ms and a year".into()
            )
        );
    }

    #[test]
    fn rebalance_bounds_are_inclusive_where_documented() {
        let passes = |change: fn(&mut Config)| {
            let mut config = valid();
            change(&mut config);
            config.validate()
        };
        assert_eq!(passes(|c| c.rebalance_tolerance = 1.0), Ok(()));
        assert_eq!(passes(|c| c.rebalance_tolerance = 1e-9), Ok(()));
        assert_eq!(passes(|c| c.rebalance_min_age = Duration::ZERO), Ok(()));
        assert_eq!(passes(|c| c.rebalance_close_code = 4000), Ok(()));
        assert_eq!(passes(|c| c.rebalance_close_code = 4999), Ok(()));
        for tolerance in [-0.1, 1.01, f64::NAN, f64::INFINITY] {
            let (key, _) = refusal(|c| c.rebalance_tolerance = tolerance);
            assert_eq!(key, "rebalanceTolerance", "{tolerance}");
        }
        for code in [0, 1000, 1011, 1013, 3999, 5000] {
            let (key, _) = refusal(|c| c.rebalance_close_code = code);
            assert_eq!(key, "rebalanceCloseCode", "{code}");
        }
    }

    #[test]
    fn the_first_failing_check_is_the_one_reported() {
        let (key, _) = refusal(|c| {
            c.replicas = 0;
            c.eject_after = 0;
            c.cache_ttl = Duration::ZERO;
            c.drain_close_code = 1;
        });
        assert_eq!(key, "cacheTTL");
    }
}
