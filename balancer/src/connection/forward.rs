//! What crosses the balancer during the handshake: the client's upgrade
//! request rewritten for the pod, and the pod's answer rewritten for the
//! client.
//!
//! End-to-end headers (the WebSocket key, version, subprotocols, extensions,
//! cookies, auth) pass unchanged so that client and pod negotiate directly.
//! Hop-by-hop headers (RFC 9110 §7.6.1) are dropped, including any the
//! `Connection` header names, and `X-Forwarded-*` is set by the balancer.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri, request};
use http_body_util::Full;

use common::PodAddress;

use crate::connection::handshake::Body;
use crate::connection::head::{Fields, RequestHead, ResponseHead, put_field};

/// Headers that only concern one hop and are never forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "keep-alive",
    "proxy-connection",
];

/// Headers the balancer sets itself; a client's own values are replaced
/// unless they are trusted.
const FORWARDED: &[&str] = &["x-forwarded-proto", "x-forwarded-host", "forwarded"];

/// Whether `name` is hop-by-hop: always, or because `Connection` lists it.
fn is_hop_by_hop(name: &[u8], listed: &[&[u8]]) -> bool {
    HOP_BY_HOP
        .iter()
        .map(|h| h.as_bytes())
        .chain(listed.iter().copied())
        .any(|h| h.eq_ignore_ascii_case(name))
}

fn is_one_of(name: &[u8], names: &[&str]) -> bool {
    names
        .iter()
        .any(|n| n.as_bytes().eq_ignore_ascii_case(name))
}

/// The end-to-end fields of a head: all but the hop-by-hop ones.
fn end_to_end(fields: &Fields) -> impl Iterator<Item = (&[u8], &[u8])> {
    let listed: Vec<&[u8]> = fields.tokens("connection").collect();
    fields
        .iter()
        .filter(move |(name, _)| !is_hop_by_hop(name, &listed))
}

/// Removes hop-by-hop headers (and the names `Connection` lists) in place.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
        .collect();
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_hop_by_hop(name.as_str().as_bytes(), &[]) || listed.contains(name))
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
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

/// Who sent a request, as the pod is told.
#[derive(Debug, Clone, Copy)]
pub struct Origin {
    /// The client's address.
    pub addr: SocketAddr,
    /// `http` or `https`: how the client reached the balancer.
    pub scheme: &'static str,
}

/// The address a client is known by, for the per-client limit
/// (`rateLimit`): the peer's, or with `trustForwardedHeaders` the last
/// address of the incoming `X-Forwarded-For` (`forwarded_for`: its values,
/// in order), the one the trusted proxy in front appended; the entries
/// before it are whatever the client sent. The trust is the one
/// [`forwarded_fields`] gives: the hop in front of the balancer, no
/// further. A missing or unreadable last entry leaves the peer's address.
pub fn client_ip<'a>(
    peer: IpAddr,
    policy: &ForwardPolicy,
    forwarded_for: impl Iterator<Item = &'a [u8]>,
) -> IpAddr {
    if !policy.trust_incoming {
        return peer;
    }
    forwarded_for
        .flat_map(|value| value.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|entry| !entry.is_empty())
        .last()
        .and_then(forwarded_address)
        .unwrap_or(peer)
}

/// One `X-Forwarded-For` entry's address: `192.0.2.1`, `2001:db8::1`, or
/// with a port (`192.0.2.1:4711`, `[2001:db8::1]:4711`) as some proxies
/// write it.
fn forwarded_address(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?.trim_matches('"');
    text.parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| text.strip_prefix('[')?.strip_suffix(']')?.parse().ok())
}

/// The fields of a request forwarded to `pod`, in order, each given to
/// `emit`: the client's end-to-end fields, `Host` set to the pod,
/// `X-Forwarded-For`/`-Proto`/`-Host` describing the client, and
/// `forwardHeaders`. An upgrade drops any body framing and ends with the
/// upgrade pair.
fn forwarded_fields(
    client: &RequestHead,
    pod: &PodAddress,
    origin: Origin,
    policy: &ForwardPolicy,
    upgrade: bool,
    mut emit: impl FnMut(&[u8], &[u8]),
) {
    let fields = client.fields();
    let trust = policy.trust_incoming;
    for (name, value) in end_to_end(fields) {
        let set_here = name.eq_ignore_ascii_case(b"host")
            || name.eq_ignore_ascii_case(b"x-forwarded-for")
            || (!trust && is_one_of(name, FORWARDED))
            || (upgrade && name.eq_ignore_ascii_case(b"content-length"))
            || policy
                .extra
                .iter()
                .any(|(n, _)| n.as_str().as_bytes().eq_ignore_ascii_case(name));
        if !set_here {
            emit(name, value);
        }
    }
    emit(b"host", pod.authority.as_bytes());
    let ip = origin.addr.ip().to_string();
    let incoming_for: Vec<&[u8]> = fields.values("x-forwarded-for").collect();
    if trust && !incoming_for.is_empty() {
        let mut value = incoming_for.join(&b", "[..]);
        value.extend_from_slice(b", ");
        value.extend_from_slice(ip.as_bytes());
        emit(b"x-forwarded-for", &value);
    } else {
        emit(b"x-forwarded-for", ip.as_bytes());
    }
    if !(trust && fields.contains("x-forwarded-proto")) {
        emit(b"x-forwarded-proto", origin.scheme.as_bytes());
    }
    if let Some(host) = fields.values("host").next()
        && !(trust && fields.contains("x-forwarded-host"))
    {
        emit(b"x-forwarded-host", host);
    }
    for (name, value) in &policy.extra {
        emit(name.as_str().as_bytes(), value.as_bytes());
    }
    if upgrade {
        emit(b"connection", b"Upgrade");
        emit(b"upgrade", b"websocket");
    }
}

/// The upgrade request head to send to `pod`, as bytes: same path and
/// query (under the pod URL's path), the forwarded fields, and the
/// upgrade pair.
pub fn pod_upgrade_head(
    client: &RequestHead,
    pod: &PodAddress,
    origin: Origin,
    policy: &ForwardPolicy,
) -> Vec<u8> {
    let target = client.target();
    let mut head = Vec::with_capacity(512);
    head.extend_from_slice(b"GET ");
    head.extend_from_slice(pod.path_prefix.as_bytes());
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    forwarded_fields(client, pod, origin, policy, true, |name, value| {
        put_field(&mut head, name, value);
    });
    head.extend_from_slice(b"\r\n");
    head
}

/// A plain HTTP request for `pod`, with an absolute URI (as a pooled client
/// needs) and the client's body as given: method, path and query, and
/// end-to-end headers (including `Content-Length`) pass unchanged.
pub fn pod_http_request<B>(
    client: &request::Parts,
    pod: &PodAddress,
    origin: Origin,
    policy: &ForwardPolicy,
    body: B,
) -> Request<B> {
    let scheme = if pod.tls { "https" } else { "http" };
    let head = RequestHead::from_parts(client);
    let uri = format!(
        "{scheme}://{}{}{}",
        pod.authority,
        pod.path_prefix,
        head.target()
    );
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
    let headers = request.headers_mut();
    forwarded_fields(&head, pod, origin, policy, false, |name, value| {
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            headers.append(name, value);
        }
    });
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

/// The 101 for the client, as bytes: the pod's own fields (accept key,
/// chosen subprotocol and extensions, `x-pod-name`, cookies) plus the
/// upgrade pair.
pub fn switching_protocols_head(pod: &ResponseHead) -> Vec<u8> {
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\n");
    for (name, value) in end_to_end(pod.fields()) {
        put_field(&mut head, name, value);
    }
    head.extend_from_slice(b"connection: Upgrade\r\nupgrade: websocket\r\n\r\n");
    head
}

/// The same 101 as a response, for hyper.
pub fn switching_protocols(pod: &ResponseHead) -> Response<Body> {
    let mut response = Response::new(Body::Left(Full::default()));
    *response.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    append_end_to_end(headers, pod.fields());
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    response
}

/// The `200` an extended CONNECT (RFC 8441) gets once the pod switched:
/// the pod's end-to-end fields (chosen subprotocol and extensions,
/// `x-pod-name`, cookies) without its accept key, which HTTP/2 does not
/// use (the balancer checked it against the key it sent).
pub fn connect_accepted(pod: &ResponseHead) -> Response<Body> {
    let mut response = Response::new(Body::Left(Full::default()));
    let headers = response.headers_mut();
    append_end_to_end(headers, pod.fields());
    headers.remove(header::SEC_WEBSOCKET_ACCEPT);
    response
}

/// A pod's non-101 answer (403, 404, 500...), passed to the client as is:
/// that is the application speaking.
pub fn pod_status(pod: &ResponseHead, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Body::Left(Full::new(body)));
    *response.status_mut() = pod.status();
    let headers = response.headers_mut();
    append_end_to_end(headers, pod.fields());
    // The body may have been cut at MAX_STATUS_BODY; the writer sets the
    // length.
    headers.remove(header::CONTENT_LENGTH);
    response
}

/// Appends the end-to-end fields of a pod's head to `headers` (skipping
/// any `http` refuses).
fn append_end_to_end(headers: &mut HeaderMap, fields: &Fields) {
    for (name, value) in end_to_end(fields) {
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            headers.append(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::head::ParsedRequest;

    fn client_head() -> RequestHead {
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
            .header("x-forwarded-proto", "https")
            .header("content-length", "0")
            .header("cookie", "a=b")
            .body(())
            .unwrap()
            .into_parts();
        RequestHead::from_parts(&parts)
    }

    fn origin() -> Origin {
        Origin {
            addr: "192.0.2.9:5555".parse().unwrap(),
            scheme: "http",
        }
    }

    /// The head as the pod reads it.
    fn as_pod_reads(bytes: &[u8]) -> RequestHead {
        match RequestHead::parse(bytes) {
            ParsedRequest::Complete(head, len) if len == bytes.len() => head,
            _ => panic!("not one whole head: {}", String::from_utf8_lossy(bytes)),
        }
    }

    fn one<'a>(head: &'a RequestHead, name: &str) -> &'a str {
        let value = head.fields().single(name);
        std::str::from_utf8(value.unwrap_or_else(|| panic!("{name} not exactly once"))).unwrap()
    }

    #[test]
    fn request_keeps_end_to_end_headers_and_sets_forwarding() {
        let pod = PodAddress::parse("http://10.0.0.5:8080/app", "/metric").unwrap();
        let bytes = pod_upgrade_head(&client_head(), &pod, origin(), &ForwardPolicy::default());
        let r = as_pod_reads(&bytes);
        assert_eq!(r.method(), b"GET");
        assert_eq!(r.target(), "/app/ws?room=7");
        assert_eq!(one(&r, "host"), "10.0.0.5:8080");
        assert_eq!(one(&r, "sec-websocket-key"), "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(one(&r, "sec-websocket-version"), "13");
        assert_eq!(one(&r, "sec-websocket-protocol"), "chat, superchat");
        assert_eq!(one(&r, "sec-websocket-extensions"), "permessage-deflate");
        assert_eq!(one(&r, "cookie"), "a=b");
        assert_eq!(one(&r, "x-forwarded-for"), "192.0.2.9");
        assert_eq!(one(&r, "x-forwarded-proto"), "http");
        assert_eq!(one(&r, "x-forwarded-host"), "chat.example.com");
        assert_eq!(one(&r, "connection"), "Upgrade");
        assert_eq!(one(&r, "upgrade"), "websocket");
        for gone in ["x-secret-hop", "keep-alive", "content-length"] {
            assert!(!r.fields().contains(gone), "{gone} forwarded");
        }
    }

    #[test]
    fn trusted_forwarding_appends_and_extra_headers_are_set() {
        let pod = PodAddress::parse("http://10.0.0.5:8080", "/metric").unwrap();
        let policy = ForwardPolicy {
            extra: vec![
                (
                    HeaderName::from_static("x-env"),
                    HeaderValue::from_static("prod"),
                ),
                (
                    HeaderName::from_static("cookie"),
                    HeaderValue::from_static("set=by-balancer"),
                ),
            ],
            trust_incoming: true,
        };
        let r = as_pod_reads(&pod_upgrade_head(&client_head(), &pod, origin(), &policy));
        assert_eq!(one(&r, "x-forwarded-for"), "6.6.6.6, 192.0.2.9");
        assert_eq!(one(&r, "x-forwarded-proto"), "https");
        assert_eq!(one(&r, "x-env"), "prod");
        assert_eq!(one(&r, "cookie"), "set=by-balancer");
    }

    #[test]
    fn plain_requests_get_the_same_fields_and_an_absolute_uri() {
        let pod = PodAddress::parse("https://10.0.0.5:8443/app", "/metric").unwrap();
        let (parts, ()) = Request::post("/api?x=1")
            .header("host", "chat.example.com")
            .header("content-length", "5")
            .header("connection", "keep-alive")
            .body(())
            .unwrap()
            .into_parts();
        let r = pod_http_request(&parts, &pod, origin(), &ForwardPolicy::default(), ());
        assert_eq!(r.method(), "POST");
        assert_eq!(r.uri(), "https://10.0.0.5:8443/app/api?x=1");
        let h = r.headers();
        assert_eq!(h["host"], "10.0.0.5:8443");
        assert_eq!(h["content-length"], "5");
        assert_eq!(h["x-forwarded-host"], "chat.example.com");
        assert!(!h.contains_key("connection"));
    }

    fn pod_101() -> ResponseHead {
        let bytes = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
            Connection: upgrade, X-Hop\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
            Sec-WebSocket-Protocol: chat\r\nx-pod-name: pod-1\r\nkeep-alive: x\r\nX-Hop: 1\r\n\r\n";
        ResponseHead::parse(bytes).unwrap().unwrap().0
    }

    #[test]
    fn switching_protocols_keeps_pod_headers() {
        let r = switching_protocols(&pod_101());
        assert_eq!(r.status(), 101);
        assert_eq!(
            r.headers()["sec-websocket-accept"],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(r.headers()["sec-websocket-protocol"], "chat");
        assert_eq!(r.headers()["x-pod-name"], "pod-1");
        assert_eq!(r.headers()["upgrade"], "websocket");
        assert!(!r.headers().contains_key("keep-alive"));
        assert!(!r.headers().contains_key("x-hop"));
    }

    #[test]
    fn the_written_101_says_the_same_as_the_response() {
        let bytes = switching_protocols_head(&pod_101());
        let (written, len) = ResponseHead::parse(&bytes).unwrap().unwrap();
        assert_eq!(len, bytes.len());
        assert_eq!(written.status(), 101);
        let from_hyper = switching_protocols(&pod_101());
        let mut names: Vec<String> = written
            .fields()
            .iter()
            .map(|(n, _)| String::from_utf8_lossy(n).to_ascii_lowercase())
            .collect();
        let mut expected: Vec<String> =
            from_hyper.headers().keys().map(|n| n.to_string()).collect();
        names.sort();
        expected.sort();
        assert_eq!(names, expected);
        assert_eq!(
            written.fields().single("sec-websocket-accept"),
            Some(&b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="[..])
        );
    }

    #[test]
    fn the_client_address_is_the_peer_or_the_last_trusted_hop() {
        let peer: IpAddr = "192.0.2.9".parse().unwrap();
        let trusted = ForwardPolicy {
            trust_incoming: true,
            ..ForwardPolicy::default()
        };
        let ip = |policy: &ForwardPolicy, values: &[&str]| {
            client_ip(peer, policy, values.iter().map(|v| v.as_bytes()))
        };
        let forged = ["6.6.6.6, 203.0.113.7"];
        assert_eq!(ip(&ForwardPolicy::default(), &forged), peer, "not trusted");
        // What the proxy in front appended is last, across field lines;
        // what the client put before it is not believed.
        assert_eq!(
            ip(&trusted, &forged),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            ip(&trusted, &["6.6.6.6", "7.7.7.7, 2001:db8::5 "]),
            "2001:db8::5".parse::<IpAddr>().unwrap()
        );
        for (entry, expected) in [
            ("203.0.113.7:4711", "203.0.113.7"),
            ("[2001:db8::5]:4711", "2001:db8::5"),
            ("[2001:db8::5]", "2001:db8::5"),
            ("\"203.0.113.7\"", "203.0.113.7"),
        ] {
            assert_eq!(
                ip(&trusted, &[entry]),
                expected.parse::<IpAddr>().unwrap(),
                "{entry}"
            );
        }
        // An empty entry is skipped; nothing usable last leaves the peer.
        let listed: IpAddr = "1.2.3.4".parse().unwrap();
        for (values, expected) in [
            (&["1.2.3.4, "][..], listed),
            (&[], peer),
            (&["unknown"], peer),
            (&["1.2.3.4, bogus"], peer),
        ] {
            assert_eq!(ip(&trusted, values), expected, "{values:?}");
        }
    }
}
