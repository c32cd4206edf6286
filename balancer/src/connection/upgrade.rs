//! One request on the listener, answered. An upgrade goes through the
//! connection's path in order: [`handshake::check`], then
//! [`Admission::admit`](crate::connection::admission::Admission::admit),
//! then [`failover::dial_pods`]; the client gets the pod's answer (or the
//! balancer's refusal), and a switched connection becomes a
//! [`Session`]. A plain HTTP request goes to [`http_proxy`] instead.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use common::HttpMode;
use http::{Request, Response};
use hyper::body::Incoming;

use crate::connection::failover::{self, Dialled};
use crate::connection::forward;
use crate::connection::handshake::{self, Body};
use crate::connection::head::{RequestHead, ResponseHead};
use crate::connection::http_proxy::{self, InFlight};
use crate::connection::session::Session;
use crate::connection::settings::ConnectionSettings;
use crate::connection::shared::Shared;
use crate::observe::metrics::counters::{HttpVersion, Refusal};

/// What an upgrade request gets.
pub enum Answer {
    /// A response, and then nothing (a refusal, or the pod's own status).
    Respond(Response<Body>),
    /// The pod switched protocols: send the client its 101, then relay.
    Switch {
        /// The pod's 101 (what the client's 101 is written from).
        pod_head: ResponseHead,
        /// The connection, waiting for the client's side.
        session: Session,
    },
}

/// Answers one HTTP request that hyper parsed on the listener: plain HTTP
/// is proxied (or refused), an upgrade is answered and, once hyper hands
/// the connection over, relayed in a task of its own.
pub async fn serve_request(
    shared: Arc<Shared>,
    client: SocketAddr,
    mut request: Request<Incoming>,
) -> Result<Response<InFlight>, Infallible> {
    let conn_id = shared.next_conn_id();
    let settings = shared.settings();
    if settings.http_mode == HttpMode::Proxy
        && !request.headers().contains_key(http::header::UPGRADE)
    {
        return Ok(http_proxy::proxy(&shared, conn_id, client, request).await);
    }
    let on_upgrade = hyper::upgrade::on(&mut request);
    let (parts, _) = request.into_parts();
    let head = RequestHead::from_parts(&parts);
    let response = match answer(&shared, &settings, conn_id, client, &head).await {
        Answer::Respond(response) => response,
        Answer::Switch { pod_head, session } => {
            // Counted as relayed by the token the session holds.
            tokio::spawn(session.after_upgrade(shared.clone(), on_upgrade));
            forward::switching_protocols(&pod_head)
        }
    };
    Ok(response.map(InFlight::free))
}

/// Checks an upgrade request, admits it, and dials pods in order until one
/// answers; the client gets that answer (or the refusal).
pub async fn answer(
    shared: &Shared,
    settings: &ConnectionSettings,
    conn_id: u64,
    client: SocketAddr,
    head: &RequestHead,
) -> Answer {
    // The request head has just arrived: the handshake's clock starts.
    let received = Instant::now();
    if let Err(rejection) = handshake::check(head) {
        let status = rejection.status.as_u16();
        tracing::debug!(conn_id, %client, status, reason = Refusal::Invalid.as_str(), detail = rejection.reason, "connection failed");
        shared.metrics.refused(status, Refusal::Invalid);
        return Answer::Respond(rejection.into_response());
    }
    let admitted =
        shared
            .admission
            .admit(shared.draining(), settings, client, head.fields(), received);
    let slot = match admitted {
        Ok(slot) => slot,
        Err(refused) => return Answer::Respond(refused.answer(&shared.metrics, conn_id, client)),
    };
    // Counted from here: a drain that starts during the dial waits for
    // this connection too (and closes it within the window).
    let tracked = shared.relays.token();
    match failover::dial_pods(shared, settings, conn_id, client, head).await {
        Ok(Dialled::Upgraded {
            pod_head,
            pod,
            lease,
            rebalance,
        }) => Answer::Switch {
            pod_head,
            session: Session {
                conn_id,
                client,
                received,
                pod,
                lease,
                slot,
                tracked,
                limits: settings.limits,
                rebalance,
                version: HttpVersion::Http1,
                stream: None,
            },
        },
        Ok(Dialled::Status(response)) => Answer::Respond(response),
        Err(refused) => Answer::Respond(refused.answer(&shared.metrics, conn_id, client)),
    }
}
