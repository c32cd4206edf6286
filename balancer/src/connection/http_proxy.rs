//! Plain HTTP requests on the WebSocket listener (`httpMode: proxy`):
//! long-polling fallbacks and health checks that must live behind the same
//! address. Each request goes to the least-loaded pod over a pooled client,
//! bodies streamed both ways, hop-by-hop headers removed. Such requests do
//! not count as connections: pods report WebSocket connections only. They
//! do take from the client's `rateLimit` allowance, and at most
//! `maxHttpRequests` are proxied at once, each counted until its response
//! is sent whole ([`InFlight`]): a long poll holds a pod connection for as
//! long as it waits.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Empty};
use hyper::body::{Frame, Incoming, SizeHint};

use crate::connection::admission::Slot;
use crate::connection::failover::MAX_ATTEMPTS;
use crate::connection::forward;
use crate::connection::handshake::{Body, plain_response};
use crate::connection::pod_client::HttpProxyError;
use crate::connection::refusal::unavailable;
use crate::connection::settings::ConnectionSettings;
use crate::connection::shared::Shared;
use crate::pods::registry::Fault;

pin_project_lite::pin_project! {
    /// The body of a response served on the listener, holding the plain
    /// request's `maxHttpRequests` slot (none for the balancer's own
    /// answers and upgrades) until hyper has sent it whole or dropped it
    /// because the client went away.
    #[derive(Debug)]
    pub struct InFlight {
        #[pin]
        body: Body,
        slot: Option<Slot>,
    }
}

impl InFlight {
    /// A body that holds no slot.
    pub fn free(body: Body) -> Self {
        InFlight { body, slot: None }
    }
}

impl hyper::body::Body for InFlight {
    type Data = Bytes;
    type Error = <Body as hyper::body::Body>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The answer when no pod answered a plain HTTP request.
pub fn bad_gateway() -> Response<Body> {
    plain_response(StatusCode::BAD_GATEWAY, "no pod could be reached")
}

/// Reverse-proxies a plain HTTP request to the least-loaded pod, once
/// admitted (`rateLimit`, `maxHttpRequests`): the response holds its slot
/// until sent.
pub async fn proxy(
    shared: &Shared,
    conn_id: u64,
    client: SocketAddr,
    request: Request<Incoming>,
) -> Response<InFlight> {
    let received = Instant::now();
    let settings = shared.settings();
    let admitted = shared
        .admission
        .admit_request(&settings, client, request.headers(), received);
    match admitted {
        Ok(slot) => send(shared, &settings, conn_id, client, request)
            .await
            .map(|body| InFlight {
                body,
                slot: Some(slot),
            }),
        Err(refused) => refused
            .answer_request(&shared.metrics, conn_id, client)
            .map(InFlight::free),
    }
}

/// Sends the request to the least-loaded pod and returns its answer. A
/// request without a body is sent again to the next pod when one cannot be
/// reached; one with a body is sent once (it cannot be replayed).
async fn send(
    shared: &Shared,
    settings: &ConnectionSettings,
    conn_id: u64,
    client: SocketAddr,
    request: Request<Incoming>,
) -> Response<Body> {
    let (parts, body) = request.into_parts();
    // `None` when empty: then the request can be sent again.
    let mut body = (!hyper::body::Body::is_end_stream(&body)).then_some(body);
    let candidates = shared.registry.candidates(MAX_ATTEMPTS);
    if candidates.pods.is_empty() {
        tracing::warn!(conn_id, %client, "no pod accepts requests");
        return unavailable("no pod accepts new connections");
    }
    for pod in candidates.pods.into_iter().take(MAX_ATTEMPTS) {
        let (pod_body, resendable) = match body.take() {
            Some(body) => (Either::Left(body), false),
            None => (Either::Right(Empty::new()), true),
        };
        let request = forward::pod_http_request(
            &parts,
            &pod.address,
            shared.origin(client),
            &settings.forward,
            pod_body,
        );
        match settings.http.send(request, settings.limits.idle).await {
            Ok(mut response) => {
                shared.registry.record_success(&pod);
                tracing::debug!(conn_id, %client, pod = %pod.address.url, method = %parts.method, status = response.status().as_u16(), "http request proxied");
                if shared.draining() {
                    response.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                }
                return response;
            }
            Err(error @ HttpProxyError::Connect(_)) => {
                tracing::warn!(conn_id, %client, pod = %pod.address.url, reason = error.reason(), %error, "pod unreachable, trying the next");
                shared.registry.record_fault(&pod, Fault::Unreachable);
                if !resendable {
                    return bad_gateway();
                }
            }
            Err(error) => {
                tracing::warn!(conn_id, %client, pod = %pod.address.url, reason = error.reason(), %error, "http request failed");
                return match error {
                    HttpProxyError::Timeout(_) => plain_response(
                        StatusCode::GATEWAY_TIMEOUT,
                        "the pod did not answer in time",
                    ),
                    _ => bad_gateway(),
                };
            }
        }
    }
    bad_gateway()
}
