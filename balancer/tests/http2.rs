//! WebSockets over HTTP/2 (RFC 8441) on the TLS listener, through a real
//! HTTP/2 client (hyper's, with extended CONNECT) and real pods speaking
//! HTTP/1.1: echo, the subprotocol and extension headers both ways, close
//! codes end to end, a hundred WebSockets on one connection where one
//! stalled stream blocks none of the others, a drain that closes them all
//! before its GOAWAY, plain requests over HTTP/2, and `http2: false`; a
//! pod's 2xx to the upgrade answered 502, and a client that never answers
//! the GOAWAY's PING dropped rather than held.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use support::{DEADLINE, within};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::{Role, frame::coding::CloseCode};
use wsbalancer::Balancer;

/// A WebSocket carried on one stream of an HTTP/2 connection.
type StreamWs = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// What a client stream's receive window is: small, so that one stream
/// the test stops reading fills it quickly.
const CLIENT_STREAM_WINDOW: u32 = 64 * 1024;

/// A balancer with TLS on its listener (a certificate made here) in front
/// of `pods`; `http2` as given (`None`: the default).
struct TlsBalancer {
    balancer: Balancer,
    cert: CertificateDer<'static>,
    _files: support::CertFiles,
}

async fn tls_balancer(pods: Vec<String>, http2: Option<bool>) -> TlsBalancer {
    tls_balancer_with(pods, http2, |_| {}).await
}

/// [`tls_balancer`], with `edit` applied to the config last.
async fn tls_balancer_with(
    pods: Vec<String>,
    http2: Option<bool>,
    edit: impl FnOnce(&mut common::Config),
) -> TlsBalancer {
    let files = support::CertFiles::generate();
    let mut config = support::config(pods);
    files.serve_with(&mut config);
    config.http2 = http2;
    config.drain_window = Duration::from_millis(300);
    edit(&mut config);
    let balancer = Balancer::start(config).await.expect("balancer starts");
    TlsBalancer {
        balancer,
        cert: files.generated.cert_der.clone(),
        _files: files,
    }
}

/// A TLS connection to the balancer offering `h2` and `http/1.1`; returns
/// it and the protocol ALPN picked.
async fn tls_connect(
    balancer: &TlsBalancer,
) -> (tokio_rustls::client::TlsStream<TcpStream>, Option<Vec<u8>>) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(balancer.cert.clone()).expect("trusted");
    let mut config = rustls::ClientConfig::builder_with_provider(common::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let tcp = within(
        "connect",
        TcpStream::connect(balancer.balancer.listen_addr()),
    )
    .await
    .expect("connect");
    let name = ServerName::try_from("127.0.0.1").expect("a name");
    let tls = within(
        "TLS handshake",
        TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .expect("TLS");
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    (tls, alpn)
}

/// One HTTP/2 connection to the balancer: the request handle and the task
/// driving the connection (it ends when the connection does).
async fn h2_connect(
    balancer: &TlsBalancer,
) -> (
    SendRequest<Empty<Bytes>>,
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
) {
    let (tls, alpn) = tls_connect(balancer).await;
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]), "ALPN picks h2");
    let (send, conn) = within(
        "HTTP/2 handshake",
        hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(CLIENT_STREAM_WINDOW)
            // Room for every stream's window: a stream this client stops
            // reading must not take the connection's.
            .initial_connection_window_size(CLIENT_STREAM_WINDOW * 256)
            .handshake(TokioIo::new(tls)),
    )
    .await
    .expect("HTTP/2 handshake");
    let conn = tokio::spawn(conn);
    let mut send = send;
    // A first plain request (every pod here answers `/metric`): its answer
    // comes after the balancer's SETTINGS, which say whether extended
    // CONNECT is on, and the client refuses one until it has them.
    let response = within("a plain request", send.send_request(get("/metric")))
        .await
        .expect("a plain request over HTTP/2");
    assert_eq!(response.status(), StatusCode::OK);
    (send, conn)
}

fn get(path: &str) -> Request<Empty<Bytes>> {
    Request::builder()
        .uri(format!("https://127.0.0.1{path}"))
        .body(Empty::new())
        .expect("a request")
}

/// An extended CONNECT for `/ws` with `fields`.
fn connect_request(fields: &[(&str, &str)]) -> Request<Empty<Bytes>> {
    let mut request = Request::builder()
        .method(Method::CONNECT)
        .uri("https://127.0.0.1/ws")
        .header("sec-websocket-version", "13");
    for (name, value) in fields {
        request = request.header(*name, *value);
    }
    let mut request = request.body(Empty::new()).expect("a request");
    request
        .extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    request
}

/// Opens a WebSocket on a new stream; returns it and the 200's headers.
async fn open_ws(
    send: &mut SendRequest<Empty<Bytes>>,
    fields: &[(&str, &str)],
) -> (StreamWs, http::HeaderMap) {
    let response = within(
        "the CONNECT's answer",
        send.send_request(connect_request(fields)),
    )
    .await
    .expect("an answer");
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "{:?}",
        response.headers()
    );
    let headers = response.headers().clone();
    let upgraded = within("the stream", hyper::upgrade::on(response))
        .await
        .expect("an upgraded stream");
    let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    (ws, headers)
}

async fn echo(ws: &mut StreamWs, text: &str) {
    ws.send(Message::text(text)).await.expect("send");
    let got = within("an echo", ws.next())
        .await
        .expect("a message")
        .expect("no error");
    assert_eq!(got, Message::text(text));
}

#[tokio::test]
async fn websockets_over_http2_echo_with_subprotocol_and_close_codes() {
    support::init_logs();
    let mut options = test_server::PodOptions::new("pod-0");
    options.subprotocols = vec!["chat".into()];
    let pod = test_server::Pod::start(options).await.expect("pod");
    let pods = vec![pod];
    let tls = tls_balancer(pods.iter().map(test_server::Pod::url).collect(), None).await;
    let (mut send, _conn) = h2_connect(&tls).await;

    let (mut ws, headers) = open_ws(
        &mut send,
        &[
            ("sec-websocket-protocol", "superchat, chat"),
            ("origin", "https://127.0.0.1"),
        ],
    )
    .await;
    assert_eq!(headers["sec-websocket-protocol"], "chat");
    assert_eq!(headers["x-pod-name"], "pod-0");
    assert!(
        !headers.contains_key("sec-websocket-accept"),
        "HTTP/2 has no accept key"
    );
    echo(&mut ws, "over h2").await;
    // The client closes with 4001: the pod gets 4001, the client its echo.
    ws.close(Some(CloseFrame {
        code: CloseCode::from(4001),
        reason: "bye".into(),
    }))
    .await
    .expect("close");
    let closed = within("the close answer", ws.next()).await;
    assert!(
        matches!(&closed, Some(Ok(Message::Close(Some(f)))) if u16::from(f.code) == 4001),
        "{closed:?}"
    );
    support::wait_until("the pod got 4001", || pods[0].close_codes() == [4001]).await;

    // The pod closes with 4002 on a second stream of the same connection.
    let (mut ws, _) = open_ws(&mut send, &[]).await;
    echo(&mut ws, "again").await;
    ws.send(Message::text("close:4002")).await.expect("send");
    let closed = within("the pod's close", ws.next()).await;
    assert!(
        matches!(&closed, Some(Ok(Message::Close(Some(f)))) if u16::from(f.code) == 4002),
        "{closed:?}"
    );
    // Reading on sends the client's Close answer; then the stream ends.
    within("the stream's end", async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;

    let balancer = &tls.balancer;
    assert_eq!(
        support::by_protocol(balancer, "wsbalancer_handshakes_by_protocol_total", "http2").await,
        2.0
    );
    assert_eq!(
        support::by_protocol(balancer, "wsbalancer_handshakes_by_protocol_total", "http1").await,
        0.0
    );
    assert_eq!(
        support::by_protocol(
            balancer,
            "wsbalancer_client_connections_by_protocol_total",
            "http2"
        )
        .await,
        1.0,
        "two WebSockets and a request, one connection"
    );
    support::wait_all_closed(&pods, balancer).await;
    tls.balancer.shutdown(DEADLINE).await;
}

/// A pod that sends every upgrade request head it gets to `heads` and
/// answers 101 with an extension and a subprotocol of its choosing (the
/// test-server pods choose no extension); `/metric` says 0 connections.
async fn recording_pod(heads: tokio::sync::mpsc::UnboundedSender<String>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = support::hand_pod_seeing_heads(move |mut tcp, request| {
        let _ = heads.send(request.head);
        async move {
            let answer = format!(
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\
                 connection: Upgrade\r\nsec-websocket-accept: {}\r\n\
                 sec-websocket-extensions: permessage-deflate; server_no_context_takeover\r\n\
                 sec-websocket-protocol: v2.chat\r\n\r\n",
                request.accept
            );
            let _ = tcp.write_all(answer.as_bytes()).await;
            // Held open until the balancer closes it.
            let mut rest = Vec::new();
            let _ = tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut rest)).await;
        }
    })
    .await;
    format!("http://{addr}")
}

/// The value of `name` in a request head, if present.
fn field(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

#[tokio::test]
async fn extension_headers_and_the_key_are_translated_both_ways() {
    support::init_logs();
    let (heads, mut seen) = tokio::sync::mpsc::unbounded_channel::<String>();
    let pod = recording_pod(heads).await;
    let tls = tls_balancer(vec![pod], None).await;
    let (mut send, _conn) = h2_connect(&tls).await;
    let response = within(
        "the CONNECT's answer",
        send.send_request(connect_request(&[
            (
                "sec-websocket-extensions",
                "permessage-deflate; client_max_window_bits",
            ),
            ("sec-websocket-protocol", "v2.chat, v1.chat"),
            ("sec-websocket-key", "c2VudCBieSB0aGUgY2xpZW50"),
            // Split, as HTTP/2 allows (RFC 9113 section 8.2.3).
            ("cookie", "session=1"),
            ("cookie", "theme=dark"),
        ])),
    )
    .await
    .expect("an answer");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["sec-websocket-extensions"],
        "permessage-deflate; server_no_context_takeover"
    );
    assert_eq!(response.headers()["sec-websocket-protocol"], "v2.chat");
    assert!(!response.headers().contains_key("sec-websocket-accept"));
    assert!(!response.headers().contains_key("upgrade"));

    // The pod got an HTTP/1.1 upgrade: GET, the same path, the upgrade
    // pair, the client's extension and subprotocol offers as sent, and a
    // key of the balancer's own.
    let head = within("the pod's request", seen.recv())
        .await
        .expect("a request head");
    assert!(head.starts_with("GET /ws HTTP/1.1\r\n"), "{head}");
    assert_eq!(field(&head, "upgrade").as_deref(), Some("websocket"));
    assert_eq!(field(&head, "connection").as_deref(), Some("Upgrade"));
    assert_eq!(field(&head, "sec-websocket-version").as_deref(), Some("13"));
    assert_eq!(
        field(&head, "sec-websocket-extensions").as_deref(),
        Some("permessage-deflate; client_max_window_bits")
    );
    assert_eq!(
        field(&head, "sec-websocket-protocol").as_deref(),
        Some("v2.chat, v1.chat")
    );
    let key = field(&head, "sec-websocket-key").expect("a key");
    assert_ne!(key, "c2VudCBieSB0aGUgY2xpZW50", "not the client's");
    assert_eq!(key.len(), 24, "16 bytes, base64");
    assert_eq!(field(&head, "x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(
        field(&head, "x-forwarded-host").as_deref(),
        Some("127.0.0.1")
    );
    let cookies: Vec<&str> = head
        .lines()
        .filter(|line| line.to_ascii_lowercase().starts_with("cookie:"))
        .collect();
    assert_eq!(cookies.len(), 1, "one Cookie line: {head}");
    assert_eq!(
        field(&head, "cookie").as_deref(),
        Some("session=1; theme=dark")
    );
    drop(response);
    tls.balancer.shutdown(DEADLINE).await;
}

#[tokio::test]
async fn a_stalled_websocket_blocks_none_of_the_hundred_on_its_connection() {
    support::init_logs();
    let pods = support::pods(2).await;
    let tls = tls_balancer(pods.iter().map(test_server::Pod::url).collect(), None).await;
    let (mut send, _conn) = h2_connect(&tls).await;
    let mut open = Vec::new();
    for _ in 0..100 {
        open.push(open_ws(&mut send, &[]).await.0);
    }
    // One WebSocket sends far more than every buffer between the client
    // and the pod holds, and its client reads none of the echoes: its
    // stream's window toward the client fills, then the pod's socket,
    // then the stream's window toward the balancer.
    let (mut sink, mut stalled) = open.remove(0).split();
    const MESSAGES: usize = 512;
    let message = vec![7u8; 64 * 1024];
    let writer = tokio::spawn(async move {
        for _ in 0..MESSAGES {
            sink.send(Message::binary(message.clone())).await?;
        }
        Ok::<_, tokio_tungstenite::tungstenite::Error>(sink)
    });
    // The 99 others echo while it is stalled.
    for (i, ws) in open.iter_mut().enumerate() {
        echo(ws, &format!("stream {i}")).await;
    }
    assert!(
        !writer.is_finished(),
        "32 MiB cannot all be in flight: the stalled stream should still be writing"
    );
    // Read on: every echo arrives, whole and in order.
    let read = async {
        for _ in 0..MESSAGES {
            match stalled.next().await {
                Some(Ok(Message::Binary(data))) => assert_eq!(data.len(), 64 * 1024),
                other => panic!("an echo: {other:?}"),
            }
        }
    };
    tokio::time::timeout(DEADLINE * 4, read)
        .await
        .expect("the stalled stream's echoes in time");
    let sink = within("the writer", writer)
        .await
        .expect("the writer task")
        .expect("every message sent");
    let mut ws = sink.reunite(stalled).expect("the same WebSocket");
    echo(&mut ws, "after the stall").await;
    tls.balancer.shutdown(DEADLINE).await;
}

#[tokio::test]
async fn a_drain_closes_every_websocket_then_sends_goaway() {
    support::init_logs();
    let pods = support::pods(1).await;
    let tls = tls_balancer(pods.iter().map(test_server::Pod::url).collect(), None).await;
    let (mut send, conn) = h2_connect(&tls).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(open_ws(&mut send, &[]).await.0);
    }
    for ws in &mut open {
        echo(ws, "before the drain").await;
    }
    let TlsBalancer {
        balancer, _files, ..
    } = tls;
    let drain = tokio::spawn(balancer.drain());
    // Each WebSocket gets the drain's Close (1001) while the connection
    // is still up.
    for ws in &mut open {
        let closed = within("the drain's close", ws.next()).await;
        assert!(
            matches!(&closed, Some(Ok(Message::Close(Some(f)))) if u16::from(f.code) == 1001),
            "{closed:?}"
        );
        assert!(
            !conn.is_finished(),
            "the connection outlives its WebSockets' Close frames"
        );
    }
    for ws in &mut open {
        within("the stream's end", async {
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
    }
    // Then GOAWAY: the connection ends cleanly, and takes no new stream.
    let ended = within("the connection's end", conn)
        .await
        .expect("the task");
    assert!(ended.is_ok(), "a GOAWAY, not an error: {ended:?}");
    let report = within("the drain", drain).await.expect("the drain task");
    assert_eq!(report.left_open, 0);
    assert!(
        within(
            "a stream after GOAWAY",
            send.send_request(connect_request(&[]))
        )
        .await
        .is_err()
    );
}

#[tokio::test]
async fn plain_requests_over_http2_are_proxied_as_http1() {
    support::init_logs();
    let pods = support::pods(1).await;
    let tls = tls_balancer(pods.iter().map(test_server::Pod::url).collect(), None).await;
    let (mut send, _conn) = h2_connect(&tls).await;
    let response = within("a plain request", send.send_request(get("/echo?x=1")))
        .await
        .expect("an answer");
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers();
    assert_eq!(headers["x-pod-name"], "pod-0");
    assert_eq!(headers["x-seen-method"], "GET");
    assert_eq!(headers["x-seen-uri"], "/echo?x=1");
    let names = headers["x-seen-header-names"].to_str().expect("text");
    for name in ["host", "x-forwarded-proto", "x-forwarded-host"] {
        assert!(names.split(',').any(|n| n == name), "{name} in {names}");
    }
    assert_eq!(
        support::by_protocol(
            &tls.balancer,
            "wsbalancer_client_connections_by_protocol_total",
            "http2"
        )
        .await,
        1.0
    );
    tls.balancer.shutdown(DEADLINE).await;
}

#[tokio::test]
async fn http2_false_keeps_the_listener_http1_only() {
    support::init_logs();
    let pods = support::pods(1).await;
    let tls = tls_balancer(
        pods.iter().map(test_server::Pod::url).collect(),
        Some(false),
    )
    .await;
    let (_stream, alpn) = tls_connect(&tls).await;
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    tls.balancer.shutdown(DEADLINE).await;
}

#[tokio::test]
async fn a_pod_that_fails_before_its_answer_is_failed_over_as_over_http1() {
    support::init_logs();
    let good = support::pods(1).await;
    // A pod that reports itself empty and drops every upgrade unanswered.
    let bad = support::hand_pod(|tcp, _accept, _early| async move { drop(tcp) }).await;
    let bad = format!("http://{bad}");
    // Two WebSockets held on the good pod directly: the empty, bad pod
    // ranks first for the balancer.
    let direct = format!("ws://{}/ws", good[0].addr());
    let held = [
        support::connect(&direct).await.0,
        support::connect(&direct).await.0,
    ];
    let tls = tls_balancer(vec![bad.clone(), good[0].url()], None).await;
    support::wait_until("the good pod's report of 2", || {
        tls.balancer
            .registry()
            .snapshots()
            .iter()
            .any(|s| s.reported == Some(2))
    })
    .await;
    let (mut send, _conn) = h2_connect(&tls).await;
    let (mut ws, headers) = open_ws(&mut send, &[]).await;
    assert_eq!(
        headers["x-pod-name"], "pod-0",
        "failed over to the good pod"
    );
    echo(&mut ws, "failed over").await;
    let series = format!("wsbalancer_pod_failovers_total{{pod=\"{bad}\"}}");
    let failovers = support::metric_value(tls.balancer.admin_addr(), &series).await;
    assert_eq!(failovers, 1.0, "the bad pod was tried first, once");
    drop(held);
    tls.balancer.shutdown(DEADLINE).await;
}

/// One pod behind a TLS balancer whose `handshakeTimeout` is 1s, for the
/// idle-connection tests; the pod lives as long as what is returned.
async fn one_pod_and_a_short_handshake_timeout() -> (Vec<test_server::Pod>, TlsBalancer) {
    let pods = support::pods(1).await;
    let tls = tls_balancer_with(
        pods.iter().map(test_server::Pod::url).collect(),
        None,
        |c| {
            c.handshake_timeout = Duration::from_secs(1);
        },
    )
    .await;
    (pods, tls)
}

#[tokio::test]
async fn an_http2_connection_with_no_stream_is_closed_after_handshake_timeout() {
    support::init_logs();
    let (_pods, tls) = one_pod_and_a_short_handshake_timeout().await;
    let (mut send, carrying) = h2_connect(&tls).await;
    let (mut ws, _) = open_ws(&mut send, &[]).await;
    // A second connection, its one request answered, then nothing.
    let (_idle_send, idle) = h2_connect(&tls).await;
    let ended = within("the idle connection's GOAWAY", idle)
        .await
        .expect("the task");
    assert!(ended.is_ok(), "a GOAWAY, not an error: {ended:?}");
    // The connection carrying a WebSocket is kept, however quiet.
    assert!(!carrying.is_finished());
    echo(&mut ws, "still here").await;
    tls.balancer.shutdown(DEADLINE).await;
}

#[tokio::test]
async fn a_pod_that_answers_the_upgrade_with_a_2xx_is_a_502_over_http2() {
    use tokio::io::AsyncWriteExt;
    support::init_logs();
    // Over HTTP/2 a 2xx to the CONNECT is what opens a WebSocket: passed
    // through, this pod's 200 would open one that is not there.
    let pod = support::hand_pod(|mut tcp, _accept, _early| async move {
        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let _ = tcp.write_all(answer).await;
    })
    .await;
    let tls = tls_balancer(vec![format!("http://{pod}")], None).await;
    let (mut send, conn) = h2_connect(&tls).await;
    let response = within(
        "the CONNECT's answer",
        send.send_request(connect_request(&[])),
    )
    .await
    .expect("an answer");
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body = within("the 502's body", response.into_body().collect())
        .await
        .expect("a body")
        .to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains("without switching"),
        "why it is a 502: {body}"
    );
    // Only that stream failed: the connection serves the next request.
    let next = within("a plain request", send.send_request(get("/metric")))
        .await
        .expect("the connection still serves");
    assert_eq!(next.status(), StatusCode::OK);
    assert!(!conn.is_finished());
    tls.balancer.shutdown(DEADLINE).await;
}

#[tokio::test]
async fn a_client_that_never_answers_the_goaway_ping_is_dropped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    support::init_logs();
    let (_pods, tls) = one_pod_and_a_short_handshake_timeout().await;
    let (mut stream, alpn) = tls_connect(&tls).await;
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    // The client preface and an empty SETTINGS frame, then silence: no
    // stream (so the connection goes idle and gets its GOAWAY), and no
    // acknowledgement of the PING a graceful GOAWAY waits on.
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
    within("the preface", stream.write_all(preface))
        .await
        .expect("sent");
    within("the preface", stream.flush()).await.expect("sent");
    let mut got = Vec::new();
    within("the balancer dropping the connection", async {
        // A TLS stream dropped without close_notify reads as an error.
        while let Ok(1..) = stream.read_buf(&mut got).await {}
    })
    .await;
    let types = frame_types(&got);
    for (kind, name) in [(0x4, "SETTINGS"), (0x7, "GOAWAY"), (0x6, "PING")] {
        assert!(
            types.contains(&kind),
            "the balancer sent its {name}: frame types {types:?}"
        );
    }
    tls.balancer.shutdown(DEADLINE).await;
}

/// The type of each whole HTTP/2 frame in `bytes` (RFC 9113 section 4.1:
/// a 24-bit length, a type, flags and a stream id, then the payload).
fn frame_types(bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    let mut rest = bytes;
    while let [a, b, c, kind, _flags, _s0, _s1, _s2, _s3, payload @ ..] = rest {
        let length = usize::from(*a) << 16 | usize::from(*b) << 8 | usize::from(*c);
        let Some(next) = payload.get(length..) else {
            break;
        };
        types.push(*kind);
        rest = next;
    }
    types
}
