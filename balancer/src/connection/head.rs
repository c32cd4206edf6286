//! HTTP heads kept as the bytes that arrived, with the place of each field.
//!
//! A handshake is read once, checked, filtered and forwarded. Doing that on
//! slices of the received bytes costs a fraction of building a header map
//! (which validates, lowercases, hashes and copies every name and value) and
//! then writing it out again, and it is on the path of every connection.
//! Heads that hyper parsed (TLS listeners, kept-alive connections) are
//! written into the same form, so one set of checks serves both.

use std::ops::Range;

use bytes::{BufMut, Bytes};

/// Most header fields accepted in one head (hyper's own default).
pub const MAX_FIELDS: usize = 100;

/// Where one header field lies in its head.
#[derive(Debug, Clone, Copy)]
struct Field {
    name: (u32, u32),
    value: (u32, u32),
}

/// Header fields over the head's bytes.
#[derive(Debug, Clone)]
pub struct Fields {
    bytes: Bytes,
    fields: Vec<Field>,
}

/// The position of `part` inside `whole` (which must contain it).
fn span(whole: &[u8], part: &[u8]) -> (u32, u32) {
    let start = (part.as_ptr() as usize).saturating_sub(whole.as_ptr() as usize);
    // Heads are bounded far below 4 GiB (`maxHandshakeHeaderBytes`, the
    // response head limit): saturating, never wrapping, all the same.
    let end = start.saturating_add(part.len());
    (
        u32::try_from(start).unwrap_or(u32::MAX),
        u32::try_from(end).unwrap_or(u32::MAX),
    )
}

fn range((start, end): (u32, u32)) -> Range<usize> {
    start as usize..end as usize
}

impl Fields {
    /// Every field in arrival order, as (name, value).
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.fields
            .iter()
            .map(|f| (&self.bytes[range(f.name)], &self.bytes[range(f.value)]))
    }

    /// Values of every field called `name` (compared without case).
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// The value of `name` when it occurs exactly once.
    pub fn single(&self, name: &str) -> Option<&[u8]> {
        let mut found = None;
        for (n, value) in self.iter() {
            if n.eq_ignore_ascii_case(name.as_bytes()) {
                if found.is_some() {
                    return None;
                }
                found = Some(value);
            }
        }
        found
    }

    /// Whether `name` occurs at all.
    pub fn contains(&self, name: &str) -> bool {
        self.values(name).next().is_some()
    }

    /// Whether a comma-separated field holds `token` (without case), in any
    /// of its occurrences.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.tokens(name)
            .any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
    }

    /// The comma-separated items of every `name` field, trimmed.
    pub fn tokens<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.values(name)
            .flat_map(|v| v.split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|t| !t.is_empty())
    }
}

/// The fields `httparse` found in `buf`, as positions in it.
fn positions(buf: &[u8], headers: &[httparse::Header<'_>]) -> Vec<Field> {
    headers
        .iter()
        .map(|h| Field {
            name: span(buf, h.name.as_bytes()),
            value: span(buf, h.value),
        })
        .collect()
}

/// A request head: request line and fields.
#[derive(Debug, Clone)]
pub struct RequestHead {
    fields: Fields,
    method: (u32, u32),
    target: (u32, u32),
    http11: bool,
}

/// What parsing the start of a request gave.
pub enum ParsedRequest {
    /// More bytes are needed.
    Partial,
    /// A whole head of `len` bytes, in origin form (`/path?query`).
    Complete(RequestHead, usize),
    /// Not a request this parser takes (malformed, too many fields, or a
    /// target in absolute or authority form): hyper decides.
    Other,
}

impl RequestHead {
    /// Parses a request head at the start of `buf`; a complete head keeps
    /// a copy of its bytes.
    pub fn parse(buf: &[u8]) -> ParsedRequest {
        // Uninitialised: nothing to copy in before parsing.
        let mut headers =
            [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
        let mut request = httparse::Request::new(&mut []);
        let len = match request.parse_with_uninit_headers(buf, &mut headers) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return ParsedRequest::Partial,
            Err(_) => return ParsedRequest::Other,
        };
        let (Some(method), Some(target), Some(version)) =
            (request.method, request.path, request.version)
        else {
            return ParsedRequest::Other;
        };
        if !target.starts_with('/') {
            return ParsedRequest::Other;
        }
        let head = RequestHead {
            method: span(buf, method.as_bytes()),
            target: span(buf, target.as_bytes()),
            http11: version == 1,
            fields: Fields {
                fields: positions(buf, request.headers),
                bytes: Bytes::copy_from_slice(&buf[..len]),
            },
        };
        ParsedRequest::Complete(head, len)
    }

    /// The same head, written from what hyper parsed.
    pub fn from_parts(parts: &http::request::Parts) -> Self {
        let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let mut bytes = Vec::with_capacity(256);
        let put = |bytes: &mut Vec<u8>, part: &[u8]| {
            let start = bytes.len() as u32;
            bytes.extend_from_slice(part);
            (start, bytes.len() as u32)
        };
        let method = put(&mut bytes, parts.method.as_str().as_bytes());
        let target = put(&mut bytes, target.as_bytes());
        let fields = parts
            .headers
            .iter()
            .map(|(name, value)| Field {
                name: put(&mut bytes, name.as_str().as_bytes()),
                value: put(&mut bytes, value.as_bytes()),
            })
            .collect();
        RequestHead {
            fields: Fields {
                bytes: Bytes::from(bytes),
                fields,
            },
            method,
            target,
            http11: parts.version == http::Version::HTTP_11,
        }
    }

    /// The method, as sent.
    pub fn method(&self) -> &[u8] {
        &self.fields.bytes[range(self.method)]
    }

    /// Path and query, as sent: starting with `/`, except a `*` (asterisk
    /// form) that hyper parsed, which [`crate::connection::handshake::check`] refuses.
    pub fn target(&self) -> &str {
        // Both sources put only ASCII here: httparse checks the target's
        // characters, and `http` keeps a valid URI.
        std::str::from_utf8(&self.fields.bytes[range(self.target)]).unwrap_or("/")
    }

    /// Whether the request line said HTTP/1.1.
    pub fn is_http11(&self) -> bool {
        self.http11
    }

    /// The header fields.
    pub fn fields(&self) -> &Fields {
        &self.fields
    }
}

/// A response head: status and fields.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    fields: Fields,
    status: http::StatusCode,
}

/// Why a response head could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    /// Not HTTP/1.x, or too many fields.
    #[error("malformed response head")]
    Malformed,
    /// A status code outside 100..=999.
    #[error("bad status code")]
    Status,
}

impl ResponseHead {
    /// Parses a response head at the start of `buf`: `None` while more
    /// bytes are needed, else the head and its length.
    pub fn parse(buf: &[u8]) -> Result<Option<(ResponseHead, usize)>, ResponseError> {
        let mut headers =
            [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
        let mut response = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            buf,
            &mut headers,
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(ResponseError::Malformed),
        };
        let status = response
            .code
            .and_then(|c| http::StatusCode::from_u16(c).ok())
            .ok_or(ResponseError::Status)?;
        let fields = positions(buf, response.headers);
        let head = ResponseHead {
            fields: Fields {
                bytes: Bytes::copy_from_slice(&buf[..len]),
                fields,
            },
            status,
        };
        Ok(Some((head, len)))
    }

    /// The status code.
    pub fn status(&self) -> http::StatusCode {
        self.status
    }

    /// The header fields.
    pub fn fields(&self) -> &Fields {
        &self.fields
    }
}

/// Appends `name: value` and the line end.
pub fn put_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.reserve(name.len() + value.len() + 4);
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &[u8] = b"GET /ws?x=1 HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\
        Connection: keep-alive, Upgrade\r\nX-Two: 1\r\nx-two: 2\r\n\r\nrest";

    #[test]
    fn a_request_head_reads_back_as_sent() {
        let buf = UPGRADE;
        let ParsedRequest::Complete(head, len) = RequestHead::parse(buf) else {
            panic!("not parsed");
        };
        assert_eq!(&buf[len..], b"rest");
        assert_eq!(head.method(), b"GET");
        assert_eq!(head.target(), "/ws?x=1");
        assert!(head.is_http11());
        let f = head.fields();
        assert_eq!(f.single("HOST"), Some(&b"a"[..]));
        assert_eq!(f.single("x-two"), None);
        assert_eq!(f.values("X-TWO").collect::<Vec<_>>(), [b"1", b"2"]);
        assert!(f.has_token("connection", "upgrade"));
        assert!(!f.has_token("connection", "close"));
    }

    #[test]
    fn partial_and_non_origin_targets_are_told_apart() {
        let partial = &UPGRADE[..30];
        assert!(matches!(
            RequestHead::parse(partial),
            ParsedRequest::Partial
        ));
        let absolute = b"GET http://a/ws HTTP/1.1\r\nHost: a\r\n\r\n";
        assert!(matches!(RequestHead::parse(absolute), ParsedRequest::Other));
        let garbage = b"\x16\x03\x01 hello\r\n\r\n";
        assert!(matches!(RequestHead::parse(garbage), ParsedRequest::Other));
    }

    #[test]
    fn a_head_from_hyper_parts_reads_the_same() {
        let (parts, ()) = http::Request::get("/ws?x=1")
            .header("host", "a")
            .header("x-two", "1")
            .header("x-two", "2")
            .body(())
            .unwrap()
            .into_parts();
        let head = RequestHead::from_parts(&parts);
        assert_eq!(head.method(), b"GET");
        assert_eq!(head.target(), "/ws?x=1");
        assert_eq!(head.fields().values("x-two").count(), 2);
        assert_eq!(head.fields().single("host"), Some(&b"a"[..]));
    }

    #[test]
    fn a_response_head_is_parsed_or_refused() {
        let buf = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x00";
        let (head, len) = ResponseHead::parse(buf).unwrap().unwrap();
        assert_eq!(head.status(), http::StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(&buf[len..], b"\x81\x00");
        assert!(head.fields().has_token("upgrade", "WebSocket"));
        assert!(ResponseHead::parse(b"HTTP/1.1 101").unwrap().is_none());
        assert_eq!(
            ResponseHead::parse(b"SSH-2.0-x\r\n\r\n").unwrap_err(),
            ResponseError::Malformed
        );
    }
}
