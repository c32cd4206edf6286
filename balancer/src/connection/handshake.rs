//! Checks a client's upgrade request before any pod is chosen or dialled.
//!
//! Only a well-formed RFC 6455 handshake is forwarded; everything else gets a
//! 4xx that says what is wrong, so no malformed request ever reaches a pod.

use base64::Engine;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use crate::connection::head::RequestHead;

/// The body of every response on the listener: one the balancer built
/// itself (`Left`), or a pod's body streamed through (`Right`).
pub type Body = http_body_util::Either<Full<Bytes>, hyper::body::Incoming>;

/// A refusal: status, reason text and any header the status requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// 4xx or 5xx.
    pub status: StatusCode,
    /// One line for the body, also logged.
    pub reason: &'static str,
    /// Headers that go with the status (`Allow`, `Sec-WebSocket-Version`...).
    pub headers: Vec<(header::HeaderName, &'static str)>,
}

impl Rejection {
    fn new(status: StatusCode, reason: &'static str) -> Self {
        Rejection {
            status,
            reason,
            headers: Vec::new(),
        }
    }

    fn with(mut self, name: header::HeaderName, value: &'static str) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The response sent to the client.
    pub fn into_response(self) -> Response<Body> {
        let mut response = plain_response(self.status, self.reason);
        for (name, value) in self.headers {
            response
                .headers_mut()
                .insert(name, HeaderValue::from_static(value));
        }
        response
    }
}

/// A `text/plain` response with one line of body.
pub fn plain_response(status: StatusCode, text: &str) -> Response<Body> {
    let mut response = Response::new(Body::Left(Full::new(Bytes::from(format!("{text}\n")))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Accepts a WebSocket opening handshake or says why not.
pub fn check(request: &RequestHead) -> Result<(), Rejection> {
    let fields = request.fields();
    let upgrade = fields.has_token("upgrade", "websocket");
    if !upgrade && !fields.contains("upgrade") {
        return Err(Rejection::new(
            StatusCode::UPGRADE_REQUIRED,
            "this endpoint only accepts WebSocket upgrades",
        )
        .with(header::UPGRADE, "websocket")
        .with(header::CONNECTION, "Upgrade"));
    }
    if !request.is_http11() {
        return Err(Rejection::new(
            StatusCode::BAD_REQUEST,
            "WebSocket upgrades require HTTP/1.1",
        ));
    }
    if request.method() != b"GET" {
        return Err(
            Rejection::new(StatusCode::METHOD_NOT_ALLOWED, "WebSocket upgrades use GET")
                .with(header::ALLOW, "GET"),
        );
    }
    // hyper reads `GET * HTTP/1.1` (asterisk form) into a target that is
    // not a path; forwarded, it would reach the pod as a malformed request.
    if !request.target().starts_with('/') {
        return Err(Rejection::new(
            StatusCode::BAD_REQUEST,
            "the request target must be a path",
        ));
    }
    if !upgrade {
        return Err(Rejection::new(
            StatusCode::BAD_REQUEST,
            "Upgrade header must be \"websocket\"",
        ));
    }
    if !fields.has_token("connection", "upgrade") {
        return Err(Rejection::new(
            StatusCode::BAD_REQUEST,
            "Connection header must include \"Upgrade\"",
        ));
    }
    if fields.single("host").is_none() {
        return Err(Rejection::new(
            StatusCode::BAD_REQUEST,
            "exactly one Host header is required",
        ));
    }
    if fields.contains("transfer-encoding") || fields.values("content-length").any(|v| v != b"0") {
        return Err(Rejection::new(
            StatusCode::BAD_REQUEST,
            "a WebSocket upgrade request has no body",
        ));
    }
    if fields.single("sec-websocket-version") != Some(b"13") {
        return Err(Rejection::new(
            StatusCode::UPGRADE_REQUIRED,
            "Sec-WebSocket-Version must be 13",
        )
        .with(header::SEC_WEBSOCKET_VERSION, "13"));
    }
    if fields
        .single("sec-websocket-key")
        .is_none_or(|key| !is_key(key))
    {
        return Err(Rejection::new(
            StatusCode::BAD_REQUEST,
            "Sec-WebSocket-Key must be 16 bytes in base64",
        ));
    }
    Ok(())
}

/// Whether `key` is 16 bytes in base64 (24 characters, two of padding).
fn is_key(key: &[u8]) -> bool {
    let mut decoded = [0u8; 18];
    key.len() == 24
        && base64::engine::general_purpose::STANDARD
            .decode_slice(key, &mut decoded)
            .is_ok_and(|n| n == 16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Version};

    fn upgrade() -> http::request::Builder {
        Request::get("/ws")
            .header("host", "example")
            .header("upgrade", "websocket")
            .header("connection", "keep-alive, Upgrade")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
    }

    fn status(r: Request<()>) -> Option<StatusCode> {
        check(&RequestHead::from_parts(&r.into_parts().0))
            .err()
            .map(|e| e.status)
    }

    #[test]
    fn well_formed_upgrade_passes() {
        assert_eq!(status(upgrade().body(()).unwrap()), None);
    }

    #[test]
    fn plain_http_gets_426() {
        let r = Request::get("/").header("host", "x").body(()).unwrap();
        assert_eq!(status(r), Some(StatusCode::UPGRADE_REQUIRED));
    }

    #[test]
    fn each_broken_field_is_refused() {
        let cases: Vec<(Request<()>, StatusCode)> = vec![
            (
                upgrade().method("POST").body(()).unwrap(),
                StatusCode::METHOD_NOT_ALLOWED,
            ),
            (
                upgrade().version(Version::HTTP_10).body(()).unwrap(),
                StatusCode::BAD_REQUEST,
            ),
            (
                upgrade()
                    .header("sec-websocket-key", "c2hvcnQ=")
                    .body(())
                    .unwrap(),
                StatusCode::BAD_REQUEST,
            ),
            (
                {
                    let mut r = upgrade().body(()).unwrap();
                    r.headers_mut()
                        .insert("sec-websocket-version", HeaderValue::from_static("8"));
                    r
                },
                StatusCode::UPGRADE_REQUIRED,
            ),
            (
                {
                    let mut r = upgrade().body(()).unwrap();
                    r.headers_mut()
                        .insert("connection", HeaderValue::from_static("close"));
                    r
                },
                StatusCode::BAD_REQUEST,
            ),
            (
                upgrade()
                    .header("transfer-encoding", "chunked")
                    .body(())
                    .unwrap(),
                StatusCode::BAD_REQUEST,
            ),
            (
                upgrade().header("host", "second").body(()).unwrap(),
                StatusCode::BAD_REQUEST,
            ),
            (
                upgrade().uri("*").body(()).unwrap(),
                StatusCode::BAD_REQUEST,
            ),
        ];
        for (request, expected) in cases {
            assert_eq!(status(request), Some(expected));
        }
    }

    #[test]
    fn wrong_version_advertises_13() {
        let mut r = upgrade().body(()).unwrap();
        r.headers_mut()
            .insert("sec-websocket-version", HeaderValue::from_static("8"));
        let response = check(&RequestHead::from_parts(&r.into_parts().0))
            .unwrap_err()
            .into_response();
        assert_eq!(response.headers()["sec-websocket-version"], "13");
    }
}
