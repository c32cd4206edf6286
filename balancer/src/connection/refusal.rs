//! The balancer's own answer when it refuses an upgrade or a plain HTTP
//! request (a pod's own answer is passed on instead): why, so that it is
//! counted in `wsbalancer_handshakes_refused_total` (or
//! `wsbalancer_http_requests_refused_total`) and logged as the request's
//! one event the same way wherever on the path it was decided, and the
//! response the client gets, built only then.

use std::net::SocketAddr;

use http::{HeaderValue, Response, StatusCode, header};

use crate::connection::handshake::{Body, plain_response};
use crate::observe::metrics::Metrics;
use crate::observe::metrics::counters::Refusal;

/// An upgrade the balancer refuses itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// Why: the `reason` label and log field.
    pub why: Refusal,
    /// The status the client gets.
    pub status: StatusCode,
    /// The one-line body.
    pub text: &'static str,
    /// `Retry-After`, in seconds, when the condition is expected to pass.
    pub retry_after: Option<u64>,
    /// Close the client's connection after the answer (`Connection:
    /// close`), so that a kept-alive client tries elsewhere.
    pub close: bool,
}

impl Refused {
    /// A refusal with `status` and a one-line `text` body.
    pub fn with_status(why: Refusal, status: StatusCode, text: &'static str) -> Self {
        Refused {
            why,
            status,
            text,
            retry_after: None,
            close: false,
        }
    }

    /// A 503 with `Retry-After: 1` (the condition is expected to pass).
    pub fn unavailable(why: Refusal, text: &'static str) -> Self {
        Refused {
            retry_after: Some(1),
            ..Refused::with_status(why, StatusCode::SERVICE_UNAVAILABLE, text)
        }
    }

    /// Counts and logs the refusal of an upgrade, and returns what the
    /// client gets.
    pub fn answer(self, metrics: &Metrics, conn_id: u64, client: SocketAddr) -> Response<Body> {
        metrics.refused(self.status.as_u16(), self.why);
        self.log(conn_id, client, "connection failed");
        self.response()
    }

    /// Counts and logs the refusal of a plain HTTP request, and returns
    /// what the client gets.
    pub fn answer_request(
        self,
        metrics: &Metrics,
        conn_id: u64,
        client: SocketAddr,
    ) -> Response<Body> {
        metrics.http_refused(self.status.as_u16(), self.why);
        self.log(conn_id, client, "http request refused");
        self.response()
    }

    /// Logs the refusal as `message`, at the level its reason deserves.
    fn log(self, conn_id: u64, client: SocketAddr, message: &str) {
        let (status, reason) = (self.status.as_u16(), self.why.as_str());
        match self.why {
            // Routine while draining; a client's choice for the origin.
            Refusal::Draining | Refusal::Invalid | Refusal::TooLarge => {
                tracing::debug!(conn_id, %client, reason, status, "{message}");
            }
            // A client's doing, worth seeing but not a fault of ours.
            Refusal::Origin | Refusal::RateLimited => {
                tracing::info!(conn_id, %client, reason, status, "{message}")
            }
            Refusal::MaxConnections
            | Refusal::MaxHttpRequests
            | Refusal::PodsFull
            | Refusal::NoPod
            | Refusal::Unreachable => {
                tracing::warn!(conn_id, %client, reason, status, "{message}");
            }
        }
    }

    /// The response the client gets.
    fn response(self) -> Response<Body> {
        let mut response = plain_response(self.status, self.text);
        let headers = response.headers_mut();
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// A 503 with `Retry-After: 1` and a one-line `text` body.
pub fn unavailable(text: &str) -> Response<Body> {
    let mut response = plain_response(StatusCode::SERVICE_UNAVAILABLE, text);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}
