//! What crosses the balancer during the handshake: the client's upgrade
//! request rewritten for the pod, and the pod's answer rewritten for the
//! client.
//!
//! End-to-end headers (the WebSocket key, version, subprotocols, extensions,
//! cookies, auth) pass unchanged so that client and pod negotiate directly.
//! Hop-by-hop headers (RFC 9110 §7.6.1) are dropped, including any the
//! `Connection` header names, and `X-Forwarded-*` is set by the balancer.

use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri, request};
use http_body_util::{Empty, Full};

use common::PodAddress;

use crate::handshake::Body;

/// Headers that only concern one hop and are never forwarded.
const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

/// Hop-by-hop headers with no constant in `http`.
const HOP_BY_HOP_NAMES: &[&str] = &["keep-alive", "proxy-connection"];

/// Headers the balancer sets itself; a client's own values are replaced.
const FORWARDED: &[&str] = &[
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
];

/// The header names a `Connection` header lists (hop-by-hop by RFC 9110).
fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect()
}

/// Removes hop-by-hop headers (and the names `Connection` lists) in place,
/// leaving the end-to-end headers.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed = connection_listed(headers);
    for name in listed.iter().chain(HOP_BY_HOP) {
        headers.remove(name);
    }
    for name in HOP_BY_HOP_NAMES {
        headers.remove(*name);
    }
}

/// What the balancer adds to forwarded requests, from config.
#[derive(Debug, Clone, Default)]
pub struct ForwardPolicy {
    /// `forwardHeaders`: set on every request to a pod.
    pub extra: Vec<(HeaderName, HeaderValue)>,
    /// `trustForwardedHeaders`: append to incoming `X-Forwarded-*` rather
    /// than replacing them.
    pub trust_incoming: bool,
}

impl ForwardPolicy {
    /// The policy of `config` (whose header names and values were checked
    /// when it was validated; an unusable one is skipped).
    pub fn from_config(config: &common::Config) -> Self {
        let extra = config
            .forward_headers
            .iter()
            .filter_map(|(name, value)| {
                Some((
                    HeaderName::from_bytes(name.as_bytes()).ok()?,
                    HeaderValue::from_str(value).ok()?,
                ))
            })
            .collect();
        ForwardPolicy {
            extra,
            trust_incoming: config.trust_forwarded_headers,
        }
    }
}

/// The client's path and query under the pod URL's path.
fn pod_target(client: &request::Parts, pod: &PodAddress) -> String {
    let path_and_query = client
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    format!("{}{}", pod.path_prefix, path_and_query)
}

/// Headers of any request forwarded to `pod`: end-to-end headers, `Host`
/// set to the pod, `X-Forwarded-For`/`-Proto`/`-Host` describing the client,
/// and `forwardHeaders`.
fn pod_headers(
    client: &request::Parts,
    pod: &PodAddress,
    client_addr: SocketAddr,
    client_scheme: &'static str,
    policy: &ForwardPolicy,
) -> HeaderMap {
    let mut headers = client.headers.clone();
    strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    let incoming_for: Vec<String> = client
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_owned)
        .collect();
    if !policy.trust_incoming {
        for name in FORWARDED {
            headers.remove(*name);
        }
    }
    let original_host = client.headers.get(header::HOST).cloned();
    if let Ok(host) = HeaderValue::from_str(&pod.authority) {
        headers.insert(header::HOST, host);
    }
    let ip = client_addr.ip().to_string();
    let forwarded_for = if policy.trust_incoming && !incoming_for.is_empty() {
        format!("{}, {ip}", incoming_for.join(", "))
    } else {
        ip
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert("x-forwarded-for", value);
    }
    if !(policy.trust_incoming && headers.contains_key("x-forwarded-proto")) {
        headers.insert("x-forwarded-proto", HeaderValue::from_static(client_scheme));
    }
    if let Some(host) = original_host
        && !(policy.trust_incoming && headers.contains_key("x-forwarded-host"))
    {
        headers.insert("x-forwarded-host", host);
    }
    for (name, value) in &policy.extra {
        headers.insert(name.clone(), value.clone());
    }
    headers
}

/// The upgrade request to send to `pod`: same path and query (under the
/// pod URL's path), the forwarded headers, and the upgrade pair.
pub fn pod_request(
    client: &request::Parts,
    pod: &PodAddress,
    client_addr: SocketAddr,
    client_scheme: &'static str,
    policy: &ForwardPolicy,
) -> Request<Empty<Bytes>> {
    let mut headers = pod_headers(client, pod, client_addr, client_scheme, policy);
    // The upgrade request has no body, whatever the client claimed.
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    let mut request = Request::new(Empty::new());
    // A path that parsed as part of the client's request parses again here;
    // fall back to "/" rather than fail if the prefix made it invalid.
    *request.uri_mut() = pod_target(client, pod)
        .parse::<Uri>()
        .unwrap_or_else(|_| Uri::from_static("/"));
    *request.headers_mut() = headers;
    request
}

/// A plain HTTP request for `pod`, with an absolute URI (as a pooled client
/// needs) and the client's body as given: method, path and query, and
/// end-to-end headers (including `Content-Length`) pass unchanged.
pub fn pod_http_request<B>(
    client: &request::Parts,
    pod: &PodAddress,
    client_addr: SocketAddr,
    client_scheme: &'static str,
    policy: &ForwardPolicy,
    body: B,
) -> Request<B> {
    let scheme = if pod.tls { "https" } else { "http" };
    let uri = format!("{scheme}://{}{}", pod.authority, pod_target(client, pod));
    let mut request = Request::new(body);
    *request.method_mut() = client.method.clone();
    *request.uri_mut() = uri.parse::<Uri>().unwrap_or_else(|_| {
        Uri::builder()
            .scheme(scheme)
            .authority(pod.authority.as_str())
            .path_and_query("/")
            .build()
            .unwrap_or_default()
    });
    *request.headers_mut() = pod_headers(client, pod, client_addr, client_scheme, policy);
    request
}

/// A pod's answer to a plain HTTP request, for the client: status and
/// end-to-end headers as the pod sent them, body streamed.
pub fn pod_http_response(pod: Response<hyper::body::Incoming>) -> Response<Body> {
    let (parts, body) = pod.into_parts();
    let mut response = Response::new(Body::Right(body));
    *response.status_mut() = parts.status;
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    *response.headers_mut() = headers;
    response
}

/// The 101 sent to the client: the pod's own headers (accept key, chosen
/// subprotocol and extensions, `x-pod-name`, cookies) plus the upgrade pair.
pub fn switching_protocols(pod: http::response::Parts) -> Response<Body> {
    let mut response = Response::new(Body::Left(Full::default()));
    *response.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
    let mut headers = pod.headers;
    strip_hop_by_hop(&mut headers);
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    *response.headers_mut() = headers;
    response
}

/// A pod's non-101 answer (403, 404, 500...), passed to the client as is:
/// that is the application speaking.
pub fn pod_status(pod: http::response::Parts, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Body::Left(Full::new(body)));
    *response.status_mut() = pod.status;
    let mut headers = pod.headers;
    strip_hop_by_hop(&mut headers);
    // The body may have been cut at MAX_STATUS_BODY; hyper sets the length.
    headers.remove(header::CONTENT_LENGTH);
    *response.headers_mut() = headers;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_parts() -> request::Parts {
        let (parts, ()) = Request::get("/ws?room=7")
            .header("host", "chat.example.com")
            .header("upgrade", "websocket")
            .header("connection", "Upgrade, X-Secret-Hop")
            .header("x-secret-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-protocol", "chat, superchat")
            .header("sec-websocket-extensions", "permessage-deflate")
            .header("x-forwarded-for", "6.6.6.6")
            .header("cookie", "a=b")
            .body(())
            .unwrap()
            .into_parts();
        parts
    }

    #[test]
    fn request_keeps_end_to_end_headers_and_sets_forwarding() {
        let pod = PodAddress::parse("http://10.0.0.5:8080/app", "/metric").unwrap();
        let client: SocketAddr = "192.0.2.9:5555".parse().unwrap();
        let r = pod_request(
            &client_parts(),
            &pod,
            client,
            "http",
            &ForwardPolicy::default(),
        );
        let h = r.headers();
        assert_eq!(r.uri(), "/app/ws?room=7");
        assert_eq!(h["host"], "10.0.0.5:8080");
        assert_eq!(h["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(h["sec-websocket-protocol"], "chat, superchat");
        assert_eq!(h["sec-websocket-extensions"], "permessage-deflate");
        assert_eq!(h["cookie"], "a=b");
        assert_eq!(h["x-forwarded-for"], "192.0.2.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "chat.example.com");
        assert_eq!(h["connection"], "Upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert!(!h.contains_key("x-secret-hop"));
        assert!(!h.contains_key("keep-alive"));
    }

    #[test]
    fn trusted_forwarding_appends_and_extra_headers_are_set() {
        let pod = PodAddress::parse("http://10.0.0.5:8080", "/metric").unwrap();
        let client: SocketAddr = "192.0.2.9:5555".parse().unwrap();
        let policy = ForwardPolicy {
            extra: vec![(
                HeaderName::from_static("x-env"),
                HeaderValue::from_static("prod"),
            )],
            trust_incoming: true,
        };
        let r = pod_request(&client_parts(), &pod, client, "http", &policy);
        assert_eq!(r.headers()["x-forwarded-for"], "6.6.6.6, 192.0.2.9");
        assert_eq!(r.headers()["x-env"], "prod");
    }

    #[test]
    fn switching_protocols_keeps_pod_headers() {
        let (parts, ()) = Response::builder()
            .status(101)
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
            .header("sec-websocket-protocol", "chat")
            .header("x-pod-name", "pod-1")
            .header("keep-alive", "x")
            .body(())
            .unwrap()
            .into_parts();
        let r = switching_protocols(parts);
        assert_eq!(r.status(), 101);
        assert_eq!(
            r.headers()["sec-websocket-accept"],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(r.headers()["sec-websocket-protocol"], "chat");
        assert_eq!(r.headers()["x-pod-name"], "pod-1");
        assert!(!r.headers().contains_key("keep-alive"));
    }
}
