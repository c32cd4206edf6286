//! Fuzz bodies for wsbalancer's parsers: each takes arbitrary bytes, must
//! never panic on them, and asserts what must hold of its parser's answer.
//!
//! The cargo-fuzz targets (`fuzz_targets/*.rs`, nightly) call these, and
//! so does `balancer/tests/fuzz_harness.rs` (stable, in every test run),
//! which includes this file as a module and feeds it generated inputs. A
//! crash either finds becomes a case in that test.
//!
//! Everything a client or a pod sends passes one of these parsers first:
//! the request head (the client's upgrade), the response head and chunked
//! body (a pod's answer), the frame tracker (every relayed byte), the
//! `/metric` report (every poll). The config loader reads the operator's
//! file, trusted but often hand-written.

use std::pin::Pin;
use std::task::{Context, Poll};

use common::frame::{FrameError, FrameHeader, FrameTracker, OP_CLOSE};
use common::{ConfigSources, PodAddress, Report};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use wsbalancer::wire::{self, ForwardPolicy, MAX_STATUS_BODY, Origin, PodAnswer};
use wsbalancer::wire::{ParsedRequest, RequestHead, ResponseHead};

/// Room for the fields of a forwarded head: a client's (at most
/// [`wsbalancer::wire::MAX_FIELDS`]) plus the few the balancer adds.
const FORWARDED_FIELDS: usize = wsbalancer::wire::MAX_FIELDS + 16;

/// Chunk sizes for splitting a stream, drawn from `seed`: 1 to 32 bytes,
/// with an occasional large one.
fn splits(seed: &[u8]) -> impl Iterator<Item = usize> + '_ {
    let mut state = seed.iter().fold(0x9E37_79B9_7F4A_7C15u64, |s, &b| {
        (s ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
    });
    std::iter::repeat_with(move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        if state % 16 == 0 {
            4096
        } else {
            (state % 32) as usize + 1
        }
    })
}

/// What a tracker made of a stream.
#[derive(Debug, PartialEq, Eq)]
struct Tracked {
    headers: Vec<FrameHeader>,
    error: Option<FrameError>,
    messages: u64,
    close_seen: bool,
    close_code: Option<u16>,
    /// Only compared when there was no error.
    at_boundary: bool,
}

/// The frames of a whole stream, read in one pass without the tracker: the
/// oracle the tracker is held to.
fn reference(bytes: &[u8]) -> Tracked {
    let mut out = Tracked {
        headers: Vec::new(),
        error: None,
        messages: 0,
        close_seen: false,
        close_code: None,
        at_boundary: false,
    };
    let mut i = 0;
    loop {
        let rest = &bytes[i..];
        if rest.is_empty() {
            out.at_boundary = true;
            return out;
        }
        if rest.len() < 2 {
            return out;
        }
        let (b0, b1) = (rest[0], rest[1]);
        let extended = match b1 & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask_len = if b1 & 0x80 != 0 { 4 } else { 0 };
        let header_len = 2 + extended + mask_len;
        if rest.len() < header_len {
            return out;
        }
        let len = match extended {
            2 => u64::from(u16::from_be_bytes([rest[2], rest[3]])),
            8 => {
                let len = u64::from_be_bytes(rest[2..10].try_into().expect("8 bytes"));
                if len >> 63 != 0 {
                    out.error = Some(FrameError::LengthOverflow);
                    return out;
                }
                len
            }
            _ => u64::from(b1 & 0x7F),
        };
        let header = FrameHeader {
            fin: b0 & 0x80 != 0,
            rsv: (b0 >> 4) & 0x07,
            opcode: b0 & 0x0F,
            masked: mask_len == 4,
            len,
        };
        if matches!(header.opcode, 0x3..=0x7 | 0xB..=0xF) {
            out.error = Some(FrameError::ReservedOpcode(header.opcode));
            return out;
        }
        if header.is_control() && len > 125 {
            out.error = Some(FrameError::ControlTooLong(len));
            return out;
        }
        if header.is_control() && !header.fin {
            out.error = Some(FrameError::FragmentedControl);
            return out;
        }
        out.headers.push(header);
        let payload = &rest[header_len..];
        if (payload.len() as u64) < len {
            return out;
        }
        if header.fin && !header.is_control() {
            out.messages += 1;
        }
        if header.opcode == OP_CLOSE && !out.close_seen {
            out.close_seen = true;
            out.close_code = (len >= 2).then(|| {
                let key = &rest[header_len - mask_len..header_len];
                let unmask = |at: usize| payload[at] ^ key.get(at).copied().unwrap_or(0);
                u16::from_be_bytes([unmask(0), unmask(1)])
            });
        }
        // `len` fits: the payload is all there.
        i += header_len + len as usize;
    }
}

/// The frame tracker fed `stream` in pieces; with `stop_at_boundary`,
/// feeding again after every frame it stops at.
fn tracked(stream: &[u8], seed: &[u8], stop_at_boundary: bool) -> Tracked {
    let mut tracker = FrameTracker::new();
    let mut headers = Vec::new();
    let mut error = None;
    let mut rest = stream;
    let mut sizes = splits(seed);
    'feed: while !rest.is_empty() {
        let size = sizes.next().unwrap_or(1).min(rest.len());
        let mut piece = &rest[..size];
        rest = &rest[size..];
        while !piece.is_empty() {
            match tracker.feed(piece, stop_at_boundary, |h| headers.push(*h)) {
                Ok(used) => {
                    assert!(used > 0, "no progress on {} bytes", piece.len());
                    assert!(used <= piece.len(), "consumed more than given");
                    if used < piece.len() {
                        assert!(stop_at_boundary, "stopped early without being asked");
                        assert!(tracker.at_boundary(), "stopped between frames only");
                    }
                    piece = &piece[used..];
                }
                Err(e) => {
                    error = Some(e);
                    break 'feed;
                }
            }
        }
    }
    Tracked {
        headers,
        error,
        messages: tracker.messages(),
        close_seen: tracker.close_seen(),
        close_code: tracker.close_code(),
        at_boundary: tracker.at_boundary(),
    }
}

/// The frame tracker on a stream cut at arbitrary offsets: the first byte
/// seeds the cuts, the rest is the stream. Whatever the cuts, it must see
/// what a one-pass reading of the whole stream sees.
pub fn frame_tracker(data: &[u8]) {
    let (seed, stream) = data.split_at(data.len().min(1));
    let mut expected = reference(stream);
    for stop_at_boundary in [false, true] {
        let mut got = tracked(stream, seed, stop_at_boundary);
        if expected.error.is_some() {
            // Where the stream broke, the tracker's position is moot.
            got.at_boundary = false;
            expected.at_boundary = false;
        }
        assert_eq!(got, expected, "stop_at_boundary: {stop_at_boundary}");
    }
}

/// The `/metric` report parser: anything it accepts is a report that
/// reads back the same once written out.
pub fn report(data: &[u8]) {
    match Report::parse(data) {
        Ok(report) => {
            assert!(data.len() <= common::report::MAX_REPORT_BYTES);
            let written = serde_json::to_vec(&report).expect("a report serialises");
            let again = Report::parse(&written).expect("a written report parses");
            assert_eq!(again, report);
        }
        Err(common::ReportError::TooLarge) => {
            assert!(data.len() > common::report::MAX_REPORT_BYTES);
        }
        Err(common::ReportError::Malformed(_)) => {}
    }
}

/// Keys and escapes that name files the loader would read (`caFile` is
/// read whole: `/dev/zero` would never end), and escapes that could spell
/// them: such inputs are skipped.
const READS_FILES: &[&str] = &["File", "Cert", "Key", "\\u", "\\U", "\\x"];

/// The config loader, the way the balancer starts: a file (YAML, TOML or
/// JSON, picked by the first byte), the environment and no flags. A config
/// it accepts must load back the same once written out, and a refusal of
/// a YAML or JSON file is one line (DESIGN.md). TOML syntax errors are
/// not: the `toml` crate draws the offending line and a caret under it.
pub fn config(data: &[u8]) {
    let Some((&kind, text)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(text);
    if READS_FILES.iter().any(|k| text.contains(k)) {
        return;
    }
    let extension = ["yaml", "toml", "json"][usize::from(kind % 3)];
    let dir = std::env::temp_dir();
    let path = dir.join(format!("wsb-fuzz-{}.{extension}", std::process::id()));
    std::fs::write(&path, text.as_bytes()).expect("write the config file");
    let sources = ConfigSources {
        file: Some(path.clone()),
        overrides: Default::default(),
    };
    match sources.load() {
        Ok(config) => {
            let json = dir.join(format!("wsb-fuzz-{}-again.json", std::process::id()));
            let written = serde_json::to_string(&config).expect("a config serialises");
            std::fs::write(&json, written).expect("write the config again");
            let again = ConfigSources {
                file: Some(json.clone()),
                overrides: Default::default(),
            }
            .load();
            let _ = std::fs::remove_file(&json);
            assert_eq!(again, Ok(config), "a loaded config loads back the same");
        }
        Err(error) => {
            let line = error.to_string();
            assert!(!line.is_empty(), "an empty error");
            assert!(!line.contains('\n'), "not one line: {line:?}");
        }
    }
    let _ = std::fs::remove_file(&path);
}

/// A forwarded head as a pod reads it.
struct Forwarded {
    method: String,
    target: String,
    /// (lowercase name, value), in order.
    fields: Vec<(String, Vec<u8>)>,
}

impl Forwarded {
    /// `bytes` as one request head, with room for a forwarded head's
    /// fields; `None` unless it is exactly one whole head.
    fn parse(bytes: &[u8]) -> Option<Forwarded> {
        let mut headers = [httparse::EMPTY_HEADER; FORWARDED_FIELDS];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(bytes) {
            Ok(httparse::Status::Complete(len)) if len == bytes.len() => Some(Forwarded {
                method: request.method?.to_owned(),
                target: request.path?.to_owned(),
                fields: request
                    .headers
                    .iter()
                    .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
                    .collect(),
            }),
            _ => None,
        }
    }

    /// Values of every `name` field (a lowercase name).
    fn values(&self, name: &str) -> Vec<&[u8]> {
        self.fields
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
            .collect()
    }
}

/// The request head parser, and what is built from a head it accepts: the
/// handshake check, and the head forwarded to a pod, which must be one
/// whole, well-formed head with the client's path and the balancer's own
/// forwarding fields, whatever the client sent.
pub fn request_head(data: &[u8]) {
    let (head, len) = match RequestHead::parse(data) {
        ParsedRequest::Complete(head, len) => (head, len),
        ParsedRequest::Partial | ParsedRequest::Other => return,
    };
    assert!(len <= data.len());
    assert!(head.target().starts_with('/'), "{:?}", head.target());
    match RequestHead::parse(&data[..len]) {
        ParsedRequest::Complete(again, again_len) => {
            assert_eq!(again_len, len);
            assert_eq!(again.target(), head.target());
            assert_eq!(again.fields().iter().count(), head.fields().iter().count());
        }
        _ => panic!("a whole head alone does not parse"),
    }
    let _ = wire::check_handshake(&head);
    let pod = PodAddress::parse("http://10.0.0.1:8080/app", "/metric").expect("pod address");
    let origin = Origin {
        addr: "192.0.2.1:1234".parse().expect("address"),
        scheme: "http",
    };
    for trust_incoming in [false, true] {
        let policy = ForwardPolicy {
            extra: Vec::new(),
            trust_incoming,
        };
        let bytes = wire::pod_upgrade_head(&head, &pod, origin, &policy);
        let Some(forwarded) = Forwarded::parse(&bytes) else {
            panic!(
                "the forwarded head is not one whole head: {:?}",
                String::from_utf8_lossy(&bytes)
            );
        };
        assert_eq!(forwarded.method, "GET");
        assert_eq!(forwarded.target, format!("/app{}", head.target()));
        let values = |name: &str| forwarded.values(name);
        assert_eq!(values("host"), [b"10.0.0.1:8080"]);
        assert_eq!(values("connection"), [b"Upgrade"]);
        assert_eq!(values("upgrade"), [b"websocket"]);
        assert!(values("content-length").is_empty());
        assert!(values("transfer-encoding").is_empty());
        let forwarded_for = values("x-forwarded-for");
        assert_eq!(forwarded_for.len(), 1, "one X-Forwarded-For");
        assert!(forwarded_for[0].ends_with(b"192.0.2.1"));
        if !trust_incoming {
            assert_eq!(forwarded_for[0], b"192.0.2.1");
            assert_eq!(values("x-forwarded-proto"), [b"http"]);
            assert!(values("forwarded").is_empty());
        }
    }
}

/// A pod's side of a connection, for [`wire::handshake`]: what the pod
/// says, handed out in pieces; writes go nowhere.
struct PodBytes<'a, I> {
    data: &'a [u8],
    sizes: I,
}

impl<I: Iterator<Item = usize> + Unpin> AsyncRead for PodBytes<'_, I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let size = self.sizes.next().unwrap_or(1);
        let n = size.min(self.data.len()).min(buf.remaining());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(()))
    }
}

impl<I: Unpin> AsyncWrite for PodBytes<'_, I> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The upgrade request the pod answers in [`response_head`].
const UPGRADE: &[u8] =
    b"GET /ws HTTP/1.1\r\nhost: pod\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    sec-websocket-version: 13\r\nsec-websocket-protocol: chat\r\nconnection: Upgrade\r\n\
    upgrade: websocket\r\n\r\n";

/// The response head parser, the 101 written back to a client from what a
/// pod said (one whole head, whatever the pod sent), and the dial's whole
/// reading of a pod's answer, fed in pieces (the first byte seeds the
/// cuts): a switch only for a proper 101, a status body within its bound.
/// Chunk sizes a status body is built from ([`status_body`]): the
/// integer limits and the decoder's own limit, where checked arithmetic
/// matters, beside small ones.
const EDGE_SIZES: [u64; 8] = [
    u64::MAX,
    u64::MAX - 1,
    u64::MAX - 2,
    (1 << 63) + 1,
    MAX_STATUS_BODY as u64,
    MAX_STATUS_BODY as u64 + 1,
    0,
    1,
];

/// A pod's chunked status body, structured rather than raw bytes: each
/// 4-byte group of `data` picks a declared chunk size (one of
/// [`EDGE_SIZES`], or a small one), how many data bytes follow it (as
/// many, fewer, or more) and an optional chunk extension. Random bytes
/// alone almost never spell a hex size near 2^64 followed by a CRLF,
/// which is how a size overflow once reached production. The decoder
/// must never panic, and a body it returns is within its limit.
pub fn status_body(data: &[u8]) {
    let mut body = Vec::new();
    for group in data.chunks(4) {
        let [pick, length, shape, filler] =
            [0, 1, 2, 3].map(|i| group.get(i).copied().unwrap_or(0));
        let declared = match EDGE_SIZES.get(usize::from(pick % 16)) {
            Some(&edge) => edge,
            None => u64::from(pick),
        };
        body.extend_from_slice(format!("{declared:x}").as_bytes());
        if shape & 1 == 1 {
            body.extend_from_slice(b";ext=1");
        }
        body.extend_from_slice(b"\r\n");
        // Up to 255 bytes of data, whatever the size says.
        let sent = match shape >> 1 & 3 {
            0 => declared.min(255),
            1 => u64::from(length),
            2 => declared.min(255).saturating_sub(1),
            _ => declared.min(255).saturating_add(1),
        };
        body.extend(std::iter::repeat_n(filler, sent as usize));
        if shape & 8 == 0 {
            body.extend_from_slice(b"\r\n");
        }
    }
    if data.len().is_multiple_of(2) {
        body.extend_from_slice(b"0\r\n\r\n");
    }
    if let Some(decoded) = wire::decode_chunked(&body) {
        assert!(decoded.len() <= MAX_STATUS_BODY);
    }
}

pub fn response_head(data: &[u8]) {
    let (seed, answer) = data.split_at(data.len().min(1));
    if let Ok(Some((head, len))) = ResponseHead::parse(answer) {
        assert!(len <= answer.len());
        let written = wire::switching_protocols_head(&head);
        let mut headers = [httparse::EMPTY_HEADER; FORWARDED_FIELDS];
        let mut response = httparse::Response::new(&mut headers);
        assert_eq!(
            response.parse(&written).ok(),
            Some(httparse::Status::Complete(written.len())),
            "the 101 for the client is not one whole head: {:?}",
            String::from_utf8_lossy(&written)
        );
        assert_eq!(response.code, Some(101));
        let _ = wire::switching_protocols(&head);
        let _ = wire::pod_status(&head, bytes::Bytes::new());
    }
    if let Some(body) = wire::decode_chunked(answer) {
        assert!(body.len() <= MAX_STATUS_BODY);
    }

    let pod = PodBytes {
        data: answer,
        sizes: splits(seed),
    };
    let accept = wire::accept_key(b"dGhlIHNhbXBsZSBub25jZQ==");
    let dial = wire::handshake(pod, UPGRADE, &accept);
    let mut dial = std::pin::pin!(dial);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    // The pod's bytes are always ready: the dial never waits.
    let Poll::Ready(result) = dial.as_mut().poll(&mut cx) else {
        panic!("the dial waited on bytes that were all there");
    };
    match result {
        Ok(PodAnswer::Upgraded { head, .. }) => {
            assert_eq!(head.status(), 101);
            assert_eq!(
                head.fields().single("sec-websocket-accept"),
                Some(accept.as_bytes())
            );
            let chosen: Vec<&[u8]> = head.fields().values("sec-websocket-protocol").collect();
            assert!(chosen.is_empty() || chosen == [b"chat"], "{chosen:?}");
        }
        Ok(PodAnswer::Status { head, body }) => {
            assert_ne!(head.status(), 101);
            assert!(body.len() <= MAX_STATUS_BODY);
        }
        Err(_) => {}
    }
}
