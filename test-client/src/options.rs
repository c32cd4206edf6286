//! What load to apply ([`LoadOptions`]), checked before the run starts,
//! and the handshake request each connection sends: the one place a URL
//! and the headers become a request, so validation and the run agree.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};

use crate::backoff::BackoffPolicy;

/// What load to apply.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// `ws://` or `wss://` URLs (the balancer, or pods directly);
    /// connections go to them in turn.
    pub urls: Vec<String>,
    /// Connections to open in total (with `reconnect`: clients).
    pub connections: usize,
    /// Connections in progress at once (with `reconnect`: first opens in
    /// progress at once; reconnects are paced by their backoff alone).
    pub concurrency: usize,
    /// New connections per second (open-loop arrivals), when set.
    pub rate: Option<f64>,
    /// Bound on the whole run: no connection starts after it, and holds
    /// are cut short (with `reconnect`, required: clients reconnect until
    /// it ends).
    pub duration: Option<Duration>,
    /// Messages sent (and echoes awaited) on each connection.
    pub messages: usize,
    /// Messages per second per connection (open loop), when set.
    pub msg_rate: Option<f64>,
    /// Payload bytes per message.
    pub size: usize,
    /// How long each connection stays open after its messages (not with
    /// `reconnect`: a connection is then held until the far side closes it
    /// or the run is over).
    pub hold: Duration,
    /// Send binary instead of text messages.
    pub binary: bool,
    /// Subprotocol to offer, if any.
    pub subprotocol: Option<String>,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// `Origin` header, if any.
    pub origin: Option<String>,
    /// Local addresses to connect from, in turn (more source addresses,
    /// more ephemeral ports).
    pub bind: Vec<IpAddr>,
    /// Send a ping this often while holding.
    pub ping_interval: Option<Duration>,
    /// Bound on the handshake, each echo and the close.
    pub timeout: Duration,
    /// Number of the first connection (workers of one run count on from
    /// each other, so URLs and source addresses rotate as in one process).
    pub first_id: usize,
    /// For `wss://`: certificates to trust besides the system roots (PEM).
    pub ca_file: Option<PathBuf>,
    /// For `wss://`: accept any certificate (self-signed test setups).
    pub insecure: bool,
    /// Clients that reconnect whenever a connection ends, until the run
    /// is over, when set (`--reconnect`); one connection per client when
    /// not.
    pub reconnect: Option<Reconnect>,
}

/// How reconnecting clients behave (`--reconnect`): the clients that make
/// a balancer's rebalancing work, which come back after a close.
#[derive(Debug, Clone, Default)]
pub struct Reconnect {
    /// The delays before each attempt.
    pub backoff: BackoffPolicy,
    /// Failed attempts in a row after which a client gives up; `None`: it
    /// keeps trying until the run is over.
    pub attempts: Option<u32>,
    /// Each connection is closed by the client (1000) once it is this old,
    /// and the client reconnects: a time-based maximum age, what a proxy's
    /// maximum connection duration (Envoy's) does, for comparison with
    /// live rebalancing. `None`: connections are held until cut.
    pub max_age: Option<std::time::Duration>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            urls: vec!["ws://127.0.0.1:8080/ws".into()],
            connections: 100,
            concurrency: 50,
            rate: None,
            duration: None,
            messages: 10,
            msg_rate: None,
            size: 64,
            hold: Duration::from_secs(2),
            binary: false,
            subprotocol: None,
            headers: Vec::new(),
            origin: None,
            bind: Vec::new(),
            ping_interval: None,
            timeout: Duration::from_secs(10),
            first_id: 0,
            ca_file: None,
            insecure: false,
            reconnect: None,
        }
    }
}

/// Why options cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    /// A URL is not a WebSocket URL.
    #[error("--url {0:?}: {1}")]
    Url(String, String),
    /// A header is not `Name: value` with a valid name and value.
    #[error("--header {0:?}: expected NAME:VALUE with a valid header name and value")]
    Header(String),
    /// A rate is not a positive number.
    #[error("{0} must be a positive number of per-second events")]
    Rate(&'static str),
    /// TLS for `wss://` could not be set up (the CA file).
    #[error("--ca-file: {0}")]
    Tls(#[from] common::tls::TlsSetupError),
    /// Reconnecting clients without an end.
    #[error("--reconnect needs --duration: a reconnecting client has no end of its own")]
    ReconnectForever,
    /// A retry budget that allows no attempt.
    #[error("--reconnect-attempts must be at least 1")]
    NoAttempts,
}

/// The handshake request of connection `id` (attempt `id + n` of a
/// reconnecting client goes to the `n`th URL after its first).
pub(crate) fn request(options: &LoadOptions, id: usize) -> Result<Request, OptionsError> {
    let url = &options.urls[id % options.urls.len()];
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| OptionsError::Url(url.clone(), e.to_string()))?;
    let headers = request.headers_mut();
    for (name, value) in &options.headers {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) else {
            return Err(OptionsError::Header(format!("{name}:{value}")));
        };
        headers.append(name, value);
    }
    for (name, value) in [
        ("origin", &options.origin),
        ("sec-websocket-protocol", &options.subprotocol),
    ] {
        if let Some(value) = value {
            let value =
                HeaderValue::from_str(value).map_err(|_| OptionsError::Header(value.clone()))?;
            headers.insert(name, value);
        }
    }
    Ok(request)
}

impl LoadOptions {
    /// Checks what can be checked before the run: every URL and header
    /// builds a request, rates are positive, and TLS can be set up when a
    /// URL is `wss://`.
    pub fn validate(&self) -> Result<(), OptionsError> {
        if self.urls.is_empty() {
            return Err(OptionsError::Url(String::new(), "no URL given".into()));
        }
        for id in 0..self.urls.len() {
            let request = request(self, id)?;
            if !matches!(request.uri().scheme_str(), Some("ws" | "wss")) {
                return Err(OptionsError::Url(
                    self.urls[id].clone(),
                    "expected a ws:// or wss:// URL".into(),
                ));
            }
        }
        self.tls()?;
        for (flag, rate) in [("--rate", self.rate), ("--msg-rate", self.msg_rate)] {
            if rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
                return Err(OptionsError::Rate(flag));
            }
        }
        if let Some(reconnect) = &self.reconnect {
            if self.duration.is_none() {
                return Err(OptionsError::ReconnectForever);
            }
            if reconnect.attempts == Some(0) {
                return Err(OptionsError::NoAttempts);
            }
        }
        Ok(())
    }

    /// The TLS client config for `wss://` URLs, when there is one.
    pub(crate) fn tls(&self) -> Result<Option<Arc<rustls::ClientConfig>>, OptionsError> {
        let wss = (0..self.urls.len())
            .any(|id| request(self, id).is_ok_and(|r| r.uri().scheme_str() == Some("wss")));
        if !wss {
            return Ok(None);
        }
        Ok(Some(common::tls::client_config(
            !self.insecure,
            self.ca_file.as_deref(),
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_checked_before_the_run() {
        let ok = LoadOptions::default();
        assert!(ok.validate().is_ok());
        let bad_url = LoadOptions {
            urls: vec!["http://x/".into()],
            ..LoadOptions::default()
        };
        assert!(bad_url.validate().is_err());
        let bad_header = LoadOptions {
            headers: vec![("bad name".into(), "v".into())],
            ..LoadOptions::default()
        };
        assert!(matches!(
            bad_header.validate(),
            Err(OptionsError::Header(_))
        ));
        let bad_rate = LoadOptions {
            rate: Some(0.0),
            ..LoadOptions::default()
        };
        assert!(matches!(
            bad_rate.validate(),
            Err(OptionsError::Rate("--rate"))
        ));
        let wss = LoadOptions {
            urls: vec!["wss://127.0.0.1:1/ws".into()],
            ..LoadOptions::default()
        };
        assert!(wss.validate().is_ok());
        let missing_ca = LoadOptions {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..wss
        };
        assert!(matches!(missing_ca.validate(), Err(OptionsError::Tls(_))));
        let forever = LoadOptions {
            reconnect: Some(Reconnect::default()),
            ..LoadOptions::default()
        };
        assert!(matches!(
            forever.validate(),
            Err(OptionsError::ReconnectForever)
        ));
        let bounded = LoadOptions {
            duration: Some(Duration::from_secs(1)),
            ..forever
        };
        assert!(bounded.validate().is_ok());
        let no_attempts = LoadOptions {
            reconnect: Some(Reconnect {
                attempts: Some(0),
                ..Reconnect::default()
            }),
            ..bounded
        };
        assert!(matches!(
            no_attempts.validate(),
            Err(OptionsError::NoAttempts)
        ));
    }
}
