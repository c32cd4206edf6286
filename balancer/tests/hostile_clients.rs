//! Hostile clients at the edge, over raw TCP (no WebSocket library in the
//! way): malformed upgrades, smuggling shapes, oversized and trickled heads,
//! garbage, TLS on the plain port and plain text on the TLS port. Each gets
//! a 4xx or a close, never a dial to a pod and never a panic, and the
//! balancer serves a normal connection afterwards. What does reach a pod is
//! one well-formed head, line for line.
//!
//! The pod here records the head of every connection it accepts that is
//! not a `/metric` poll, so "no dial" is counted where it would happen.

mod hostile;
mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hostile::{assert_no_panics, echo_once, watch_panics};
use support::{DEADLINE, init_logs};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use wsbalancer::Balancer;

/// The key of RFC 6455's example handshake.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Time a client has to send its head in these tests.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(300);

/// Smallest head limit the config accepts: the oversized cases stay small.
const MAX_HEAD: usize = 8192;

/// A pod that records every connection it accepts other than a `/metric`
/// poll: the bytes of the request head (all bytes, when no whole head
/// came). It answers an upgrade to `/ws...` with a 101 and echoes, an
/// upgrade to any other path with 404, and anything else with 200.
struct RecordingPod {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl RecordingPod {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let heads = Arc::new(Mutex::new(Vec::new()));
        let recorded = heads.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(serve_recorded(tcp, recorded.clone()));
            }
        });
        RecordingPod { addr, heads }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections that were not `/metric` polls: dials.
    fn dials(&self) -> usize {
        self.heads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// The head of the `i`th dial, as text.
    fn head(&self, i: usize) -> String {
        let heads = self.heads.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&heads[i]).into_owned()
    }
}

/// The value of the first `name` field in `head`.
fn field<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

async fn serve_recorded(mut tcp: TcpStream, heads: Arc<Mutex<Vec<Vec<u8>>>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break Some(i + 4);
        }
        match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => break None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    if end.is_some() && buf.starts_with(b"GET /metric ") {
        let _ = tcp.write_all(support::EMPTY_REPORT.as_bytes()).await;
        return;
    }
    // Closed before a byte: no dial (a poll cut short by a shutdown).
    if buf.is_empty() {
        return;
    }
    let head = buf[..end.unwrap_or(buf.len())].to_vec();
    heads
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(head.clone());
    let Some(_) = end else { return };
    let text = String::from_utf8_lossy(&head).into_owned();
    let key = field(&text, "sec-websocket-key").filter(|_| field(&text, "upgrade").is_some());
    let answer = match key {
        Some(key) if text.starts_with("GET /ws") => {
            let accept = wsbalancer::wire::accept_key(key.as_bytes());
            let mut head = support::switching_protocols_head(&accept);
            head.truncate(head.len() - 2);
            head.extend_from_slice(b"x-pod-name: recorder\r\n\r\n");
            if tcp.write_all(&head).await.is_err() {
                return;
            }
            let mut ws = WebSocketStream::from_raw_socket(tcp, Role::Server, None).await;
            while let Some(Ok(message)) = ws.next().await {
                if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
                    return;
                }
            }
            return;
        }
        Some(_) => "HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\n\r\nnot here\n",
        None => "HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n",
    };
    let _ = tcp.write_all(answer.as_bytes()).await;
}

/// A request head built line by line from a well-formed upgrade.
#[derive(Clone)]
struct Req {
    line: String,
    fields: Vec<String>,
    body: Vec<u8>,
}

impl Req {
    /// `GET /ws HTTP/1.1` with every field RFC 6455 asks for.
    fn upgrade() -> Self {
        Req {
            line: "GET /ws HTTP/1.1".into(),
            fields: vec![
                "Host: example.com".into(),
                "Upgrade: websocket".into(),
                "Connection: Upgrade".into(),
                format!("Sec-WebSocket-Key: {KEY}"),
                "Sec-WebSocket-Version: 13".into(),
            ],
            body: Vec::new(),
        }
    }

    fn line(mut self, line: &str) -> Self {
        self.line = line.into();
        self
    }

    /// Without any `name` field.
    fn without(mut self, name: &str) -> Self {
        self.fields.retain(|f| {
            !f.split(':')
                .next()
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
        });
        self
    }

    /// With `name: value` in place of any `name` field.
    fn set(self, name: &str, value: &str) -> Self {
        self.without(name).with(&format!("{name}: {value}"))
    }

    /// With one more field line, written as given.
    fn with(mut self, line: &str) -> Self {
        self.fields.push(line.into());
        self
    }

    /// With bytes after the head.
    fn body(mut self, body: &[u8]) -> Self {
        self.body = body.to_vec();
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = format!("{}\r\n", self.line).into_bytes();
        for f in &self.fields {
            out.extend_from_slice(f.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

/// A TLS ClientHello, as a browser would send to a `wss://` URL.
fn client_hello() -> Vec<u8> {
    let config = rustls::ClientConfig::builder_with_provider(common::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("example.com").expect("name");
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).expect("hello");
    hello
}

/// What one hostile request must get.
struct Case {
    name: &'static str,
    request: Vec<u8>,
    /// The status line the client must read.
    status: &'static str,
    /// The status line on a kept-alive connection, where it differs (hyper
    /// answers an HTTP/1.0 request in HTTP/1.0).
    status_kept_alive: Option<&'static str>,
    /// Fields the status requires (`name: value`, compared without case).
    fields: &'static [&'static str],
    /// On a kept-alive connection (served by hyper), the balancer must
    /// close after answering too, not only on a first request.
    closes_when_kept_alive: bool,
}

fn case(name: &'static str, request: impl Into<Vec<u8>>, status: &'static str) -> Case {
    Case {
        name,
        request: request.into(),
        status,
        status_kept_alive: None,
        fields: &[],
        closes_when_kept_alive: false,
    }
}

impl Case {
    fn fields(mut self, fields: &'static [&'static str]) -> Self {
        self.fields = fields;
        self
    }

    fn kept_alive(mut self, status: &'static str) -> Self {
        self.status_kept_alive = Some(status);
        self
    }

    fn closes(mut self) -> Self {
        self.closes_when_kept_alive = true;
        self
    }
}

const BAD_REQUEST: &str = "HTTP/1.1 400 Bad Request";
const UPGRADE_REQUIRED: &str = "HTTP/1.1 426 Upgrade Required";
const TOO_LARGE: &str = "HTTP/1.1 431 Request Header Fields Too Large";

/// A smuggled second request, hidden where a body would be.
const SMUGGLED: &str = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// Every request that must be refused, whether it comes first on its
/// connection (read by hand) or after another request (read by hyper).
fn refused_cases() -> Vec<Case> {
    let up = Req::upgrade;
    let version_13: &[&str] = &["sec-websocket-version: 13"];
    let mut padded = up();
    padded = padded.with(&format!("X-Padding: {}", "a".repeat(MAX_HEAD)));
    let mut many_fields = up();
    for i in 0..101 {
        many_fields = many_fields.with(&format!("X-F{i}: {i}"));
    }
    // An empty chunked body, then a request: a reader going by
    // Content-Length takes the request for the body.
    let te_ends_first = format!("0\r\n\r\n{SMUGGLED}").into_bytes();
    // A request inside a chunk: a reader going by a short Content-Length
    // takes it for the next request.
    let in_a_chunk = format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len()).into_bytes();
    vec![
        case(
            "Upgrade: h2c",
            up().set("Upgrade", "h2c").bytes(),
            BAD_REQUEST,
        ),
        case(
            "Upgrade: websocketx",
            up().set("Upgrade", "websocketx").bytes(),
            BAD_REQUEST,
        ),
        case(
            "no Connection field",
            up().without("Connection").bytes(),
            BAD_REQUEST,
        ),
        case(
            "Connection: keep-alive only",
            up().set("Connection", "keep-alive").bytes(),
            BAD_REQUEST,
        ),
        case(
            "no Sec-WebSocket-Key",
            up().without("Sec-WebSocket-Key").bytes(),
            BAD_REQUEST,
        ),
        case(
            "key of 5 bytes",
            up().set("Sec-WebSocket-Key", "c2hvcnQ=").bytes(),
            BAD_REQUEST,
        ),
        case(
            "key of 18 bytes, 24 characters",
            up().set("Sec-WebSocket-Key", "AAAAAAAAAAAAAAAAAAAAAAAA")
                .bytes(),
            BAD_REQUEST,
        ),
        case(
            "key of 17 bytes",
            up().set("Sec-WebSocket-Key", "AAAAAAAAAAAAAAAAAAAAAAA=")
                .bytes(),
            BAD_REQUEST,
        ),
        case(
            "key not base64",
            up().set("Sec-WebSocket-Key", "!!!!!!!!!!!!!!!!!!!!!!==")
                .bytes(),
            BAD_REQUEST,
        ),
        case(
            "key in the URL-safe alphabet",
            up().set("Sec-WebSocket-Key", "-_-_-_-_-_-_-_-_-_-_-w==")
                .bytes(),
            BAD_REQUEST,
        ),
        case(
            "key unpadded",
            up().set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ")
                .bytes(),
            BAD_REQUEST,
        ),
        case(
            "key with a space inside",
            up().set("Sec-WebSocket-Key", "dGhlIHNhbXBs ZSBub25jZQ==")
                .bytes(),
            BAD_REQUEST,
        ),
        case(
            "key empty",
            up().set("Sec-WebSocket-Key", "").bytes(),
            BAD_REQUEST,
        ),
        case(
            "key sent twice",
            up().with(&format!("Sec-WebSocket-Key: {KEY}")).bytes(),
            BAD_REQUEST,
        ),
        case(
            "Sec-WebSocket-Version: 8",
            up().set("Sec-WebSocket-Version", "8").bytes(),
            UPGRADE_REQUIRED,
        )
        .fields(version_13),
        case(
            "no Sec-WebSocket-Version",
            up().without("Sec-WebSocket-Version").bytes(),
            UPGRADE_REQUIRED,
        )
        .fields(version_13),
        case(
            "Sec-WebSocket-Version sent twice",
            up().with("Sec-WebSocket-Version: 13").bytes(),
            UPGRADE_REQUIRED,
        )
        .fields(version_13),
        case(
            "Sec-WebSocket-Version: 13, 8",
            up().set("Sec-WebSocket-Version", "13, 8").bytes(),
            UPGRADE_REQUIRED,
        )
        .fields(version_13),
        case(
            "Sec-WebSocket-Version empty",
            up().set("Sec-WebSocket-Version", "").bytes(),
            UPGRADE_REQUIRED,
        )
        .fields(version_13),
        case(
            "POST",
            up().line("POST /ws HTTP/1.1").bytes(),
            "HTTP/1.1 405 Method Not Allowed",
        )
        .fields(&["allow: GET"]),
        case(
            "lowercase get",
            up().line("get /ws HTTP/1.1").bytes(),
            "HTTP/1.1 405 Method Not Allowed",
        )
        .fields(&["allow: GET"]),
        case(
            "HTTP/1.0",
            up().line("GET /ws HTTP/1.0").bytes(),
            BAD_REQUEST,
        )
        .kept_alive("HTTP/1.0 400 Bad Request"),
        case(
            "CL.TE: Content-Length covers a request Transfer-Encoding ends before",
            up().with(&format!("Content-Length: {}", te_ends_first.len()))
                .with("Transfer-Encoding: chunked")
                .body(&te_ends_first)
                .bytes(),
            BAD_REQUEST,
        )
        .closes(),
        case(
            "TE.CL: Transfer-Encoding covers a request Content-Length ends before",
            up().with("Transfer-Encoding: chunked")
                .with("Content-Length: 4")
                .body(&in_a_chunk)
                .bytes(),
            BAD_REQUEST,
        )
        .closes(),
        case(
            "Transfer-Encoding: chunked, a request inside a chunk",
            up().with("Transfer-Encoding: chunked")
                .body(&in_a_chunk)
                .bytes(),
            BAD_REQUEST,
        ),
        case(
            "Transfer-Encoding: xchunked",
            up().with("Transfer-Encoding: xchunked")
                .body(&in_a_chunk)
                .bytes(),
            BAD_REQUEST,
        )
        .closes(),
        case(
            "Transfer-Encoding sent twice",
            up().with("Transfer-Encoding: chunked")
                .with("Transfer-Encoding: identity")
                .body(&in_a_chunk)
                .bytes(),
            BAD_REQUEST,
        )
        .closes(),
        case(
            "Content-Length: 5 with a body",
            up().with("Content-Length: 5").body(b"hello").bytes(),
            BAD_REQUEST,
        ),
        case(
            "two Host fields",
            up().with("Host: evil.example").bytes(),
            BAD_REQUEST,
        ),
        case("no Host", up().without("Host").bytes(), BAD_REQUEST),
        case(
            "a head past maxHandshakeHeaderBytes",
            padded.bytes(),
            TOO_LARGE,
        ),
        case("101 fields", many_fields.bytes(), TOO_LARGE),
        case(
            "NUL in a value",
            up().with("X-Nul: a\0b").bytes(),
            BAD_REQUEST,
        )
        .closes(),
        case(
            "control character in a value",
            up().with("X-Ctl: a\x01b").bytes(),
            BAD_REQUEST,
        )
        .closes(),
        case(
            "DEL in a value",
            up().with("X-Del: a\x7fb").bytes(),
            BAD_REQUEST,
        )
        .closes(),
        case(
            "bare CR in a value",
            up().with("X-Cr: a\rX-Injected: 1").bytes(),
            BAD_REQUEST,
        )
        .closes(),
        case(
            "folded line (obs-fold)",
            up().with("X-Fold: a").with(" X-Injected: 1").bytes(),
            BAD_REQUEST,
        )
        .closes(),
        case(
            "space in a field name",
            up().with("X Bad: 1").bytes(),
            BAD_REQUEST,
        )
        .closes(),
        case(
            "space before the colon",
            up().with("X-Bad : 1").bytes(),
            BAD_REQUEST,
        )
        .closes(),
        case(
            "space in the path",
            up().line("GET /w s HTTP/1.1").bytes(),
            BAD_REQUEST,
        )
        .closes(),
        case(
            "two spaces after the method",
            up().line("GET  /ws HTTP/1.1").bytes(),
            BAD_REQUEST,
        )
        .closes(),
        case(
            "garbage",
            &b"\x00\x01\x02\xff\xfe garbage \r\n\r\n"[..],
            BAD_REQUEST,
        )
        .closes(),
        case("TLS ClientHello", client_hello(), BAD_REQUEST).closes(),
        case(
            "HTTP/1.2",
            up().line("GET /ws HTTP/1.2").bytes(),
            BAD_REQUEST,
        )
        .closes(),
        // No answer at all: an HTTP/1.1 server owes an HTTP/2 preface none.
        case(
            "HTTP/2 preface",
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
            "",
        )
        .closes(),
    ]
}

/// Reads one response: the head, and the body by its `Content-Length`.
async fn read_response(tcp: &mut TcpStream, what: &str) -> String {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end + 4]).into_owned();
                let length = field(&head, "content-length")
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0);
                if got.len() >= end + 4 + length {
                    return;
                }
            }
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer in time"));
    String::from_utf8_lossy(&got).into_owned()
}

/// Whether the balancer closes the connection (EOF or reset) before the
/// deadline, reading and dropping anything it still sends.
async fn closes(tcp: &mut TcpStream) -> Result<(), String> {
    let mut rest = Vec::new();
    let mut chunk = [0u8; 4096];
    let ended = tokio::time::timeout(DEADLINE, async {
        loop {
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => rest.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    match ended {
        Ok(()) if rest.is_empty() => Ok(()),
        Ok(()) => Err(format!(
            "closed after sending more: {:?}",
            String::from_utf8_lossy(&rest)
        )),
        Err(_) => Err("still open".into()),
    }
}

/// Checks the answer to `case` against what it must be.
fn check_answer(case: &Case, kept_alive: bool, answer: &str) {
    let how = if kept_alive {
        "kept alive"
    } else {
        "first request"
    };
    let what = format!("{} ({how})", case.name);
    let expected = match case.status_kept_alive {
        Some(status) if kept_alive => status,
        _ => case.status,
    };
    let status_line = answer.split("\r\n").next().unwrap_or_default();
    assert_eq!(status_line, expected, "{what}: {answer:?}");
    for wanted in case.fields {
        let (name, value) = wanted.split_once(": ").expect("name: value");
        assert_eq!(
            field(answer, name),
            Some(value),
            "{what}: {name} must be {value}: {answer:?}"
        );
    }
}

async fn balancer(pod: &RecordingPod, http_mode: common::HttpMode) -> Balancer {
    init_logs();
    let mut cfg = support::config(vec![pod.url()]);
    cfg.http_mode = http_mode;
    cfg.handshake_timeout = HANDSHAKE_TIMEOUT;
    cfg.max_handshake_header_bytes = MAX_HEAD;
    Balancer::start(cfg).await.expect("balancer starts")
}

#[tokio::test]
async fn malformed_first_requests_are_refused_without_a_dial() {
    watch_panics();
    let pod = RecordingPod::start().await;
    let balancer = balancer(&pod, common::HttpMode::Proxy).await;
    for case in refused_cases() {
        let mut tcp = TcpStream::connect(balancer.listen_addr()).await.unwrap();
        let _ = tcp.write_all(&case.request).await;
        let answer = read_response(&mut tcp, case.name).await;
        check_answer(&case, false, &answer);
        if let Err(e) = closes(&mut tcp).await {
            panic!("{} (first request): {e}", case.name);
        }
        assert_eq!(pod.dials(), 0, "{}: a pod was dialled", case.name);
    }
    assert_eq!(
        echo_once(&balancer, "malformed first requests").await,
        "recorder"
    );
    assert_eq!(pod.dials(), 1);
    balancer.shutdown(DEADLINE).await;
    assert_no_panics();
}

#[tokio::test]
async fn malformed_requests_on_a_kept_alive_connection_are_refused_without_a_dial() {
    watch_panics();
    let pod = RecordingPod::start().await;
    // Plain requests are refused too, so the first one dials nothing and
    // keeps the connection open for hyper to read the next.
    let balancer = balancer(&pod, common::HttpMode::Reject).await;
    let plain = b"GET /ws HTTP/1.1\r\nHost: example.com\r\n\r\n";
    for case in refused_cases() {
        let mut tcp = TcpStream::connect(balancer.listen_addr()).await.unwrap();
        tcp.write_all(plain).await.unwrap();
        let first = read_response(&mut tcp, case.name).await;
        assert!(first.starts_with(UPGRADE_REQUIRED), "{first}");
        let _ = tcp.write_all(&case.request).await;
        let answer = read_response(&mut tcp, case.name).await;
        check_answer(&case, true, &answer);
        if case.closes_when_kept_alive
            && let Err(e) = closes(&mut tcp).await
        {
            panic!("{} (kept alive): {e}", case.name);
        }
        assert_eq!(pod.dials(), 0, "{}: a pod was dialled", case.name);
    }
    assert_eq!(
        echo_once(&balancer, "malformed kept-alive requests").await,
        "recorder"
    );
    balancer.shutdown(DEADLINE).await;
    assert_no_panics();
}

#[tokio::test]
async fn a_request_without_upgrade_is_refused_or_proxied_as_plain_http() {
    watch_panics();
    let request = Req::upgrade().without("Upgrade").bytes();
    let pod = RecordingPod::start().await;
    let rejecting = balancer(&pod, common::HttpMode::Reject).await;
    let answer = support::raw_exchange(rejecting.listen_addr(), &request).await;
    let case = case(
        "no Upgrade field, httpMode reject",
        request.clone(),
        UPGRADE_REQUIRED,
    )
    .fields(&["upgrade: websocket"]);
    check_answer(&case, false, &answer);
    assert_eq!(pod.dials(), 0, "{}: a pod was dialled", case.name);
    rejecting.shutdown(DEADLINE).await;

    // With httpMode proxy it is plain HTTP: the pod gets a plain GET, with
    // nothing of an upgrade but the client's end-to-end fields.
    let proxying = balancer(&pod, common::HttpMode::Proxy).await;
    let answer = support::raw_exchange(proxying.listen_addr(), &request).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert_eq!(pod.dials(), 1);
    assert_eq!(
        pod.head(0),
        format!(
            "GET /ws HTTP/1.1\r\nsec-websocket-key: {KEY}\r\nsec-websocket-version: 13\r\n\
             host: {}\r\nx-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: http\r\n\
             x-forwarded-host: example.com\r\n\r\n",
            pod.addr
        )
    );
    assert_eq!(echo_once(&proxying, "a plain request").await, "recorder");
    proxying.shutdown(DEADLINE).await;
    assert_no_panics();
}

/// The head a pod must receive for an upgrade: the request line, the
/// client's end-to-end `fields` in order, then the balancer's own.
fn forwarded_head(pod: &RecordingPod, request_line: &str, fields: &[&str]) -> String {
    let mut head = format!("{request_line}\r\n");
    for f in fields {
        head.push_str(f);
        head.push_str("\r\n");
    }
    head.push_str(&format!(
        "host: {}\r\nx-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: http\r\n\
         x-forwarded-host: example.com\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n",
        pod.addr
    ));
    head
}

#[tokio::test]
async fn what_reaches_a_pod_is_one_well_formed_head_line_for_line() {
    watch_panics();
    let pod = RecordingPod::start().await;
    let balancer = balancer(&pod, common::HttpMode::Proxy).await;
    let key = format!("Sec-WebSocket-Key: {KEY}");
    let key = key.as_str();
    let version = "Sec-WebSocket-Version: 13";
    // (case, request, status line the client gets, head the pod gets)
    let cases: Vec<(&str, Vec<u8>, &str, String)> = vec![
        (
            "an unknown path: forwarded as sent, the pod's 404 passed back",
            Req::upgrade()
                .line("GET /no/such/place?q=%20&x=%00 HTTP/1.1")
                .bytes(),
            "HTTP/1.1 404 Not Found",
            forwarded_head(
                &pod,
                "GET /no/such/place?q=%20&x=%00 HTTP/1.1",
                &[key, version],
            ),
        ),
        (
            "an absolute-form target: forwarded as its path and query",
            Req::upgrade()
                .line("GET http://evil.example:81/ws?room=1 HTTP/1.1")
                .bytes(),
            "HTTP/1.1 101 Switching Protocols",
            // Read by hyper, whose header names are lowercase.
            forwarded_head(
                &pod,
                "GET /ws?room=1 HTTP/1.1",
                &[
                    &format!("sec-websocket-key: {KEY}"),
                    "sec-websocket-version: 13",
                ],
            ),
        ),
        (
            "forwarding fields and hop-by-hop fields from the client",
            Req::upgrade()
                .set("Connection", "Upgrade, X-Hop, Cookie")
                .with("X-Hop: 1")
                .with("Cookie: a=b")
                .with("X-Forwarded-For: 6.6.6.6")
                .with("X-Forwarded-Proto: https")
                .with("X-Forwarded-Host: evil.example")
                .with("Forwarded: for=6.6.6.6")
                .with("Keep-Alive: timeout=5")
                .with("TE: trailers")
                .with("Proxy-Authorization: Basic c2VjcmV0")
                .with("Proxy-Connection: keep-alive")
                .with("Content-Length: 0")
                .with("X-Real-IP: 6.6.6.6")
                .bytes(),
            "HTTP/1.1 101 Switching Protocols",
            // X-Real-IP is no forwarding field the balancer knows: it
            // passes, as any other end-to-end field.
            forwarded_head(
                &pod,
                "GET /ws HTTP/1.1",
                &[key, version, "X-Real-IP: 6.6.6.6"],
            ),
        ),
        (
            "bare LF line ends, padded and non-ASCII values",
            b"GET /ws HTTP/1.1\nHost: example.com\nUpgrade: websocket\nConnection: Upgrade\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\nSec-WebSocket-Version: 13\n\
              X-Pad: \t v \t\nX-Name: caf\xc3\xa9\nSec-WebSocket-Protocol: chat, superchat\n\n"
                .to_vec(),
            "HTTP/1.1 101 Switching Protocols",
            forwarded_head(
                &pod,
                "GET /ws HTTP/1.1",
                &[
                    key,
                    version,
                    "X-Pad: v",
                    "X-Name: caf\u{e9}",
                    "Sec-WebSocket-Protocol: chat, superchat",
                ],
            ),
        ),
    ];
    for (i, (name, request, status, expected)) in cases.iter().enumerate() {
        let mut tcp = TcpStream::connect(balancer.listen_addr()).await.unwrap();
        tcp.write_all(request).await.unwrap();
        let answer = read_response(&mut tcp, name).await;
        let status_line = answer.split("\r\n").next().unwrap_or_default();
        assert_eq!(status_line, *status, "{name}: {answer:?}");
        assert_eq!(pod.dials(), i + 1, "{name}: one dial");
        let head = pod.head(i);
        assert_eq!(head, *expected, "{name}: what the pod received");
        // Every line a pod reads is one field: no CR or LF inside a line.
        for line in head.trim_end_matches("\r\n").split("\r\n") {
            assert!(
                !line.contains(['\r', '\n', '\0']),
                "{name}: {line:?} in {head:?}"
            );
        }
    }
    let dials = pod.dials();

    // Targets that are no path are refused before any dial.
    for (name, request, status) in [
        (
            "an asterisk-form target",
            Req::upgrade().line("GET * HTTP/1.1").bytes(),
            BAD_REQUEST,
        ),
        (
            "an authority-form target",
            Req::upgrade()
                .line("CONNECT evil.example:443 HTTP/1.1")
                .bytes(),
            "HTTP/1.1 405 Method Not Allowed",
        ),
    ] {
        let mut tcp = TcpStream::connect(balancer.listen_addr()).await.unwrap();
        tcp.write_all(&request).await.unwrap();
        let answer = read_response(&mut tcp, name).await;
        let status_line = answer.split("\r\n").next().unwrap_or_default();
        assert_eq!(status_line, status, "{name}: {answer:?}");
        assert_eq!(pod.dials(), dials, "{name}: a pod was dialled");
    }
    assert_eq!(echo_once(&balancer, "odd targets").await, "recorder");
    balancer.shutdown(DEADLINE).await;
    assert_no_panics();
}

#[tokio::test]
async fn a_head_at_the_limit_passes_and_one_past_it_gets_431() {
    watch_panics();
    let pod = RecordingPod::start().await;
    let balancer = balancer(&pod, common::HttpMode::Proxy).await;
    let base = Req::upgrade().with("X-Padding: ").bytes().len();
    for (size, status) in [
        (MAX_HEAD - 100, "HTTP/1.1 101 Switching Protocols"),
        (MAX_HEAD, "HTTP/1.1 101 Switching Protocols"),
        (MAX_HEAD + 1, TOO_LARGE),
        (4 * MAX_HEAD, TOO_LARGE),
    ] {
        let padding = "p".repeat(size - base);
        let request = Req::upgrade()
            .with(&format!("X-Padding: {padding}"))
            .bytes();
        assert_eq!(request.len(), size);
        let mut tcp = TcpStream::connect(balancer.listen_addr()).await.unwrap();
        tcp.write_all(&request).await.unwrap();
        let answer = read_response(&mut tcp, "padded").await;
        let status_line = answer.split("\r\n").next().unwrap_or_default();
        assert_eq!(status_line, status, "a head of {size} bytes");
    }
    assert_eq!(
        pod.dials(),
        2,
        "only the heads within the limit were forwarded"
    );
    balancer.shutdown(DEADLINE).await;
    assert_no_panics();
}

/// Gap between two trickled bytes: each comes well within the handshake
/// timeout, the whole head far beyond it.
const TRICKLE_GAP: Duration = Duration::from_millis(50);

/// The longest a trickled connection may live: the timeout and a margin,
/// far less than the few seconds the trickled head would take.
const CUT_OFF_WITHIN: Duration = Duration::from_millis(2000);

/// Writes `bytes` one at a time [`TRICKLE_GAP`] apart on `writer` while
/// reading `reader` until the balancer closes; returns how long that took
/// from the first byte, and what the balancer sent.
async fn trickle<R, W>(mut reader: R, mut writer: W, bytes: &[u8]) -> (Duration, Vec<u8>)
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let bytes = bytes.to_vec();
    let started = tokio::time::Instant::now();
    // Sleeping between bytes is the behaviour under test, not a wait.
    let sender = tokio::spawn(async move {
        for byte in bytes {
            if writer.write_all(&[byte]).await.is_err() || writer.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(TRICKLE_GAP).await;
        }
        // The whole head went out: keep the connection open until closed.
        std::future::pending::<()>().await;
    });
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    let read = tokio::time::timeout(DEADLINE, async {
        loop {
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    sender.abort();
    assert!(read.is_ok(), "the trickling connection was never closed");
    (started.elapsed(), got)
}

/// Asserts the cut-off of a trickled connection.
fn cut_off(what: &str, (took, got): (Duration, Vec<u8>), may_answer: &[&str]) {
    assert!(
        took < CUT_OFF_WITHIN,
        "{what}: closed after {took:?}, not within {CUT_OFF_WITHIN:?}"
    );
    assert!(
        took >= HANDSHAKE_TIMEOUT - Duration::from_millis(50),
        "{what}: closed after {took:?}, before the handshake timeout"
    );
    let text = String::from_utf8_lossy(&got);
    assert!(
        got.is_empty() || may_answer.iter().any(|s| text.starts_with(s)),
        "{what}: got {text:?}"
    );
}

/// A fresh self-signed certificate for 127.0.0.1, written into `dir`:
/// (cert path, key path, DER).
fn certificate(
    dir: &std::path::Path,
) -> (
    std::path::PathBuf,
    std::path::PathBuf,
    rustls::pki_types::CertificateDer<'static>,
) {
    let generated = test_server::self_signed::SelfSigned::generate().unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, &generated.cert_pem).unwrap();
    std::fs::write(&key, &generated.key_pem).unwrap();
    (cert, key, generated.cert_der)
}

async fn tls_client(
    addr: SocketAddr,
    trusted: rustls::pki_types::CertificateDer<'static>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(common::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake")
}

#[tokio::test]
async fn a_trickled_head_is_cut_off_after_handshake_timeout() {
    watch_panics();
    let pod = RecordingPod::start().await;
    let upgrade = Req::upgrade().bytes();

    // Plain listener, first request: read by hand.
    let balancer_ = balancer(&pod, common::HttpMode::Reject).await;
    let addr = balancer_.listen_addr();
    let (r, w) = TcpStream::connect(addr).await.unwrap().into_split();
    cut_off(
        "a trickled first request",
        trickle(r, w, &upgrade).await,
        &[],
    );
    let (r, w) = TcpStream::connect(addr).await.unwrap().into_split();
    cut_off(
        "a connection that sends nothing",
        trickle(r, w, b"").await,
        &[],
    );

    // Plain listener, second request on a kept-alive connection: hyper.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
        .await
        .unwrap();
    let first = read_response(&mut tcp, "kept alive").await;
    assert!(first.starts_with(UPGRADE_REQUIRED), "{first}");
    let (r, w) = tcp.into_split();
    cut_off(
        "a trickled request on a kept-alive connection",
        trickle(r, w, &upgrade).await,
        // hyper may say why it closes.
        &["HTTP/1.1 408"],
    );
    assert_eq!(pod.dials(), 0, "a trickled head reached a pod");
    assert_eq!(echo_once(&balancer_, "trickled heads").await, "recorder");
    balancer_.shutdown(DEADLINE).await;

    // TLS listener: a trickled ClientHello, and a trickled head inside TLS.
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, der) = certificate(dir.path());
    let mut cfg = support::config(vec![pod.url()]);
    cfg.handshake_timeout = HANDSHAKE_TIMEOUT;
    cfg.tls_cert = Some(cert);
    cfg.tls_key = Some(key);
    let tls_balancer = Balancer::start(cfg).await.unwrap();
    let addr = tls_balancer.listen_addr();
    let (r, w) = TcpStream::connect(addr).await.unwrap().into_split();
    cut_off(
        "a trickled ClientHello",
        trickle(r, w, &client_hello()).await,
        &[],
    );
    let stream = tls_client(addr, der.clone()).await;
    let (r, w) = tokio::io::split(stream);
    cut_off(
        "a trickled head inside TLS",
        trickle(r, w, &upgrade).await,
        &["HTTP/1.1 408"],
    );
    assert_eq!(pod.dials(), 1, "a trickled head reached a pod");

    // Still serving wss:// afterwards.
    let stream = tls_client(addr, der).await;
    let url = format!("wss://127.0.0.1:{}/ws", addr.port());
    let (mut ws, response) = support::within(
        "wss handshake",
        tokio_tungstenite::client_async(url, stream),
    )
    .await
    .expect("wss through the balancer");
    assert_eq!(support::landed_on(&response), "recorder");
    ws.send(tokio_tungstenite::tungstenite::Message::text("tls"))
        .await
        .unwrap();
    assert_eq!(
        support::within("echo over wss", ws.next())
            .await
            .unwrap()
            .unwrap(),
        tokio_tungstenite::tungstenite::Message::text("tls")
    );
    tls_balancer.shutdown(DEADLINE).await;
    assert_no_panics();
}

#[tokio::test]
async fn tls_to_the_plain_port_and_plain_text_to_the_tls_port() {
    watch_panics();
    let pod = RecordingPod::start().await;
    let plain = balancer(&pod, common::HttpMode::Proxy).await;
    let answer = support::raw_exchange(plain.listen_addr(), &client_hello()).await;
    let status_line = answer.split("\r\n").next().unwrap_or_default();
    assert_eq!(status_line, BAD_REQUEST, "a ClientHello on the plain port");
    assert_eq!(pod.dials(), 0, "a ClientHello reached a pod");
    assert_eq!(echo_once(&plain, "a ClientHello").await, "recorder");
    plain.shutdown(DEADLINE).await;

    let dir = tempfile::tempdir().unwrap();
    let (cert, key, der) = certificate(dir.path());
    let mut cfg = support::config(vec![pod.url()]);
    cfg.tls_cert = Some(cert);
    cfg.tls_key = Some(key);
    let tls = Balancer::start(cfg).await.unwrap();
    for (name, bytes) in [
        ("a plain upgrade on the TLS port", Req::upgrade().bytes()),
        (
            "a plain GET on the TLS port",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        (
            "garbage on the TLS port",
            b"\x16\x03\x01\x00\x05hello".to_vec(),
        ),
    ] {
        let answer = support::raw_exchange(tls.listen_addr(), &bytes).await;
        // A TLS alert at most, never anything of HTTP.
        assert!(!answer.contains("HTTP/"), "{name}: {answer:?}");
        assert_eq!(pod.dials(), 1, "{name}: reached a pod");
    }
    let stream = tls_client(tls.listen_addr(), der).await;
    let url = format!("wss://127.0.0.1:{}/ws", tls.listen_addr().port());
    let (mut ws, _) = support::within(
        "wss handshake",
        tokio_tungstenite::client_async(url, stream),
    )
    .await
    .expect("wss through the balancer");
    ws.send(tokio_tungstenite::tungstenite::Message::text("after"))
        .await
        .unwrap();
    assert_eq!(
        support::within("echo over wss", ws.next())
            .await
            .unwrap()
            .unwrap(),
        tokio_tungstenite::tungstenite::Message::text("after")
    );
    tls.shutdown(DEADLINE).await;
    assert_no_panics();
}
