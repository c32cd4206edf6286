//! The pooled HTTP/1.1 client plain requests reach pods with (plain or
//! TLS, with the same TLS settings and `dialTimeout` as WebSocket dials),
//! and how a request to a pod fails.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::connection::forward;
use crate::connection::handshake::Body;
use crate::connection::liveness::Liveness;

/// What is sent to a pod: the client's body, or nothing (then the request
/// can be sent again to the next pod if the first cannot be reached).
pub type PodBody = Either<Incoming, Empty<Bytes>>;

/// Idle pooled connections to one pod kept for reuse.
const POOL_IDLE_PER_POD: usize = 32;

/// How long an idle pooled connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A pooled HTTP/1.1 client toward pods, plain or TLS; clones share the
/// pool.
#[derive(Debug, Clone)]
pub struct PodClient {
    client: Client<HttpsConnector<HttpConnector>, PodBody>,
}

/// Why a pod did not answer a plain HTTP request.
#[derive(Debug, thiserror::Error)]
pub enum HttpProxyError {
    /// The pod could not be reached: nothing was sent, another may be tried.
    #[error("connect failed: {0}")]
    Connect(String),
    /// The request was sent (or partly sent) and failed.
    #[error("request failed: {0}")]
    Request(String),
    /// No response head within the limit.
    #[error("no response within {0:?}")]
    Timeout(Duration),
}

impl HttpProxyError {
    /// Short reason for logs.
    pub fn reason(&self) -> &'static str {
        match self {
            HttpProxyError::Connect(_) => "connect",
            HttpProxyError::Request(_) => "request",
            HttpProxyError::Timeout(_) => "timeout",
        }
    }
}

impl PodClient {
    /// A client using the same TLS settings as WebSocket dials, with
    /// `dial_timeout` on connecting, and the same keepalive and
    /// `TCP_USER_TIMEOUT` as relayed sockets (`config`).
    pub fn new(tls: Arc<rustls::ClientConfig>, config: &common::Config) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.dial_timeout));
        Liveness::from_config(config).configure(&mut http);
        // hyper-rustls sets ALPN itself (http/1.1 here) and refuses a
        // config that already has it.
        let mut tls = (*tls).clone();
        tls.alpn_protocols.clear();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(POOL_IDLE_PER_POD)
            // The balancer sets Host to the pod itself.
            .set_host(false)
            .build(connector);
        PodClient { client }
    }

    /// Sends `request` and waits at most `head_timeout` for the response
    /// head; the body then streams for as long as the pod sends it.
    pub async fn send(
        &self,
        request: Request<PodBody>,
        head_timeout: Duration,
    ) -> Result<Response<Body>, HttpProxyError> {
        match tokio::time::timeout(head_timeout, self.client.request(request)).await {
            Ok(Ok(response)) => Ok(forward::pod_http_response(response)),
            Ok(Err(error)) if error.is_connect() => {
                Err(HttpProxyError::Connect(error_chain(&error)))
            }
            Ok(Err(error)) => Err(HttpProxyError::Request(error_chain(&error))),
            Err(_) => Err(HttpProxyError::Timeout(head_timeout)),
        }
    }
}

/// An error and its causes on one line (hyper-util's top-level message
/// alone says only "client error (Connect)").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
