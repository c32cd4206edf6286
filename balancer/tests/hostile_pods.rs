//! Hostile pods: `/metric` answers that are errors, lies, floods or never
//! come; upgrade answers that are not a proper 101 or never come; and a pod
//! that stops reading mid-connection. Each is handled as DESIGN.md says (a
//! failed report, a failover before the 101, a clear close after it), is
//! counted in the metrics, and costs nothing to the healthy pod's clients.

mod hostile;
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hostile::{assert_no_panics, counter, echo_once, pod_status, watch_panics};
use support::{DEADLINE, connect, init_logs, landed_on, wait_until, ws_url};
use test_server::{Pod, PodOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::Role;
use wsbalancer::Balancer;

/// How a hand-written pod answers `GET /metric`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MetricAnswer {
    /// A good report of its live connections.
    Report,
    /// 500 with a text body.
    ServerError,
    /// 200 with an HTML page.
    Html,
    /// `{"agentsConnections": -5}`.
    Negative,
    /// 200 announcing and sending a 10 MiB body.
    Huge,
    /// 200 with a chunked body of 10 MiB (no length announced).
    HugeChunked,
    /// A good report, one byte per second.
    Trickle,
    /// Reads the request and never answers.
    Never,
    /// A redirect to a good report elsewhere (never followed).
    Redirect,
}

/// How a hand-written pod answers an upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum UpgradeAnswer {
    /// A proper 101, then echoes.
    Accept,
    /// `200 OK` with a page.
    Ok200,
    /// A 101 with a wrong `Sec-WebSocket-Accept`.
    WrongAccept,
    /// A 101 picking a subprotocol the client did not offer.
    UnofferedSubprotocol,
    /// Bytes that are no HTTP.
    Junk,
    /// A 101 head that never ends.
    EndlessHead,
    /// Closes without a word.
    Close,
    /// Reads the request and never answers.
    Never,
    /// A proper 101, then never reads again (its buffers fill up).
    AcceptThenStall,
}

impl UpgradeAnswer {
    const ALL: [UpgradeAnswer; 9] = [
        UpgradeAnswer::Accept,
        UpgradeAnswer::Ok200,
        UpgradeAnswer::WrongAccept,
        UpgradeAnswer::UnofferedSubprotocol,
        UpgradeAnswer::Junk,
        UpgradeAnswer::EndlessHead,
        UpgradeAnswer::Close,
        UpgradeAnswer::Never,
        UpgradeAnswer::AcceptThenStall,
    ];
}

/// A pod written by hand to misbehave in one chosen way.
struct HostilePod {
    name: &'static str,
    addr: SocketAddr,
    /// The current [`UpgradeAnswer`], changeable while it runs.
    upgrade: Arc<AtomicU8>,
    /// Upgrade requests received: dials.
    dials: Arc<AtomicUsize>,
}

/// What a hostile pod's connections share.
struct PodState {
    name: &'static str,
    metric: MetricAnswer,
    upgrade: Arc<AtomicU8>,
    dials: Arc<AtomicUsize>,
    /// Connections it accepted and still holds, for its report.
    live: AtomicU64,
}

impl HostilePod {
    async fn start(name: &'static str, metric: MetricAnswer, upgrade: UpgradeAnswer) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(PodState {
            name,
            metric,
            upgrade: Arc::new(AtomicU8::new(upgrade as u8)),
            dials: Arc::new(AtomicUsize::new(0)),
            live: AtomicU64::new(0),
        });
        let pod = HostilePod {
            name,
            addr,
            upgrade: state.upgrade.clone(),
            dials: state.dials.clone(),
        };
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(serve_hostile(tcp, state.clone()));
            }
        });
        pod
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn dials(&self) -> usize {
        self.dials.load(Ordering::SeqCst)
    }

    fn set_upgrade(&self, answer: UpgradeAnswer) {
        self.upgrade.store(answer as u8, Ordering::SeqCst);
    }
}

/// The value of the first `name` field in `head`.
fn field<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

async fn serve_hostile(mut tcp: TcpStream, state: Arc<PodState>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    if head.starts_with("GET /metric ") {
        answer_metric(tcp, &state).await;
        return;
    }
    state.dials.fetch_add(1, Ordering::SeqCst);
    let key = field(&head, "sec-websocket-key").unwrap_or_default();
    let accept = wsbalancer::wire::accept_key(key.as_bytes());
    let answer = state.upgrade.load(Ordering::SeqCst);
    let answer = UpgradeAnswer::ALL[usize::from(answer)];
    let switch = |extra: &str| {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
             sec-websocket-accept: {accept}\r\nx-pod-name: {}\r\n{extra}\r\n",
            state.name
        )
    };
    match answer {
        UpgradeAnswer::Accept => {
            if tcp.write_all(switch("").as_bytes()).await.is_err() {
                return;
            }
            state.live.fetch_add(1, Ordering::SeqCst);
            let mut ws = WebSocketStream::from_raw_socket(tcp, Role::Server, None).await;
            while let Some(Ok(message)) = ws.next().await {
                if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
                    break;
                }
            }
            state.live.fetch_sub(1, Ordering::SeqCst);
        }
        UpgradeAnswer::Ok200 => {
            let page = "<html>not a websocket</html>";
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\n\r\n{page}",
                page.len()
            );
            let _ = tcp.write_all(answer.as_bytes()).await;
        }
        UpgradeAnswer::WrongAccept => {
            let answer = switch("").replace(&accept, "AAAAAAAAAAAAAAAAAAAAAAAAAAA=");
            let _ = tcp.write_all(answer.as_bytes()).await;
            hold(tcp).await;
        }
        UpgradeAnswer::UnofferedSubprotocol => {
            let answer = switch("sec-websocket-protocol: evil\r\n");
            let _ = tcp.write_all(answer.as_bytes()).await;
            hold(tcp).await;
        }
        UpgradeAnswer::Junk => {
            let _ = tcp.write_all(b"\x00\x01\x02 SSH-2.0-junk\r\n\r\n").await;
            hold(tcp).await;
        }
        UpgradeAnswer::EndlessHead => {
            let _ = tcp
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nx-endless: ")
                .await;
            let filler = [b'a'; 16 * 1024];
            while tcp.write_all(&filler).await.is_ok() {}
        }
        UpgradeAnswer::Close => {}
        UpgradeAnswer::Never => hold(tcp).await,
        UpgradeAnswer::AcceptThenStall => {
            if tcp.write_all(switch("").as_bytes()).await.is_ok() {
                state.live.fetch_add(1, Ordering::SeqCst);
                // Never reads again: the balancer's writes fill the socket
                // buffers, then block.
                hold(tcp).await;
            }
        }
    }
}

/// Keeps a connection open, doing nothing with it, until the test ends.
async fn hold(tcp: TcpStream) {
    std::future::pending::<()>().await;
    drop(tcp);
}

async fn answer_metric(mut tcp: TcpStream, state: &PodState) {
    let report = format!(
        r#"{{"agentsConnections":{}}}"#,
        state.live.load(Ordering::SeqCst)
    );
    let simple = |status: &str, content_type: &str, body: &str| {
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        )
    };
    const HUGE: usize = 10 << 20;
    let answer = match state.metric {
        MetricAnswer::Report => simple("200 OK", "application/json", &report),
        MetricAnswer::ServerError => simple("500 Internal Server Error", "text/plain", "oops\n"),
        MetricAnswer::Html => simple(
            "200 OK",
            "text/html",
            "<html><body>agentsConnections: 0</body></html>",
        ),
        MetricAnswer::Negative => {
            simple("200 OK", "application/json", r#"{"agentsConnections": -5}"#)
        }
        MetricAnswer::Redirect => "HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:1/metric\r\n\
             content-length: 0\r\nconnection: close\r\n\r\n"
            .to_owned(),
        MetricAnswer::Huge => {
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {HUGE}\r\n\r\n"
            );
            if tcp.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let mut body = vec![b' '; HUGE];
            body[0] = b'[';
            let _ = tcp.write_all(&body).await;
            return;
        }
        MetricAnswer::HugeChunked => {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
            if tcp.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, " ".repeat(64 * 1024));
            for _ in 0..HUGE / (64 * 1024) {
                if tcp.write_all(chunk.as_bytes()).await.is_err() {
                    return;
                }
            }
            let _ = tcp.write_all(b"0\r\n\r\n").await;
            return;
        }
        MetricAnswer::Trickle => {
            let answer = simple("200 OK", "application/json", &report);
            for byte in answer.bytes() {
                if tcp.write_all(&[byte]).await.is_err() {
                    return;
                }
                // One byte per second is the behaviour under test.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            return;
        }
        MetricAnswer::Never => {
            hold(tcp).await;
            return;
        }
    };
    let _ = tcp.write_all(answer.as_bytes()).await;
}

fn label(name: &str, value: &str) -> String {
    format!("{name}=\"{value}\"")
}

#[tokio::test]
async fn pods_with_broken_reports_are_ejected_and_get_no_connections() {
    watch_panics();
    init_logs();
    let healthy = Pod::start(PodOptions::new("healthy")).await.unwrap();
    let mut hostile = Vec::new();
    for (name, metric) in [
        ("status-500", MetricAnswer::ServerError),
        ("html", MetricAnswer::Html),
        ("negative", MetricAnswer::Negative),
        ("ten-mib", MetricAnswer::Huge),
        ("ten-mib-chunked", MetricAnswer::HugeChunked),
        ("one-byte-per-second", MetricAnswer::Trickle),
        ("never", MetricAnswer::Never),
        ("redirect", MetricAnswer::Redirect),
    ] {
        // Each would accept upgrades: only its report is broken.
        hostile.push(HostilePod::start(name, metric, UpgradeAnswer::Accept).await);
    }
    let mut urls = vec![healthy.url()];
    urls.extend(hostile.iter().map(HostilePod::url));
    let cfg = support::config(urls);
    let eject_after = cfg.eject_after;
    let balancer = Balancer::start(cfg).await.unwrap();

    for pod in &hostile {
        let url = pod.url();
        wait_until(&format!("{} ejected", pod.name), || {
            balancer
                .registry()
                .snapshots()
                .iter()
                .any(|s| s.url == url && s.health == common::selection::Health::Ejected)
        })
        .await;
    }
    for pod in &hostile {
        let status = pod_status(&balancer, &pod.url()).await;
        assert_eq!(status["healthy"], false, "{}: {status}", pod.name);
        assert_eq!(status["stale"], true, "{}: {status}", pod.name);
        assert!(status.get("reportAge").is_none(), "{}: {status}", pod.name);
        let errors = counter(
            &balancer,
            "wsbalancer_pod_poll_errors_total",
            &[&label("pod", &pod.url())],
        )
        .await;
        assert!(
            errors >= f64::from(eject_after),
            "{}: {errors} poll errors counted",
            pod.name
        );
    }
    let status = pod_status(&balancer, &healthy.url()).await;
    assert_eq!(status["healthy"], true, "{status}");

    let mut held = Vec::new();
    for i in 0..8 {
        let (ws, response) = connect(&ws_url(&balancer, "/ws")).await;
        assert_eq!(landed_on(&response), "healthy", "connection {i}");
        held.push(ws);
    }
    for pod in &hostile {
        assert_eq!(pod.dials(), 0, "{}: dialled", pod.name);
    }
    assert_eq!(echo_once(&balancer, "broken reports").await, "healthy");
    balancer.shutdown(DEADLINE).await;
    assert_no_panics();
}

/// One pod that answers upgrades badly, one healthy pod (speaking the
/// `chat` subprotocol), a balancer with a short dial timeout, and two
/// connections held on the healthy pod, so that from then on the hostile
/// pod (which holds none) is tried first.
async fn hostile_and_healthy(
    answer: UpgradeAnswer,
) -> (HostilePod, Pod, Balancer, Vec<support::Ws>) {
    init_logs();
    let bad = HostilePod::start("hostile", MetricAnswer::Report, answer).await;
    let healthy = Pod::start(PodOptions {
        subprotocols: vec!["chat".into()],
        ..PodOptions::new("healthy")
    })
    .await
    .unwrap();
    let mut cfg = support::config(vec![bad.url(), healthy.url()]);
    cfg.dial_timeout = Duration::from_millis(300);
    let balancer = Balancer::start(cfg).await.unwrap();
    let mut held = Vec::new();
    for _ in 0..2 {
        let (ws, response) = connect(&ws_url(&balancer, "/ws")).await;
        assert_eq!(landed_on(&response), "healthy", "{answer:?}");
        held.push(ws);
    }
    wait_until("the healthy pod counts its connections", || {
        healthy.connections() == 2
    })
    .await;
    (bad, healthy, balancer, held)
}

#[tokio::test]
async fn a_pod_that_fails_its_upgrade_is_skipped_for_the_next() {
    watch_panics();
    for (answer, reason) in [
        (UpgradeAnswer::WrongAccept, "handshake"),
        (UpgradeAnswer::UnofferedSubprotocol, "handshake"),
        (UpgradeAnswer::Junk, "handshake"),
        (UpgradeAnswer::EndlessHead, "handshake"),
        (UpgradeAnswer::Close, "handshake"),
        (UpgradeAnswer::Never, "timeout"),
    ] {
        let (bad, _healthy, balancer, _held) = hostile_and_healthy(answer).await;
        let before = bad.dials();
        let mut request = ws_url(&balancer, "/ws").into_client_request().unwrap();
        request
            .headers_mut()
            .insert("sec-websocket-protocol", "chat".parse().unwrap());
        let started = tokio::time::Instant::now();
        let (mut ws, response) =
            tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(request))
                .await
                .expect("in time")
                .unwrap_or_else(|e| panic!("{answer:?}: the client failed: {e}"));
        assert_eq!(landed_on(&response), "healthy", "{answer:?}");
        assert_eq!(
            response.headers()["sec-websocket-protocol"],
            "chat",
            "{answer:?}: the healthy pod's choice"
        );
        assert!(
            bad.dials() > before,
            "{answer:?}: the hostile pod was not tried"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{answer:?}: took {:?}",
            started.elapsed()
        );
        ws.send(Message::text("after failover")).await.unwrap();
        assert_eq!(
            support::within("echo after failover", ws.next())
                .await
                .unwrap()
                .unwrap(),
            Message::text("after failover"),
            "{answer:?}"
        );
        let pod = label("pod", &bad.url());
        let failed = counter(
            &balancer,
            "wsbalancer_pod_connections_failed_total",
            &[&pod, &label("reason", reason)],
        )
        .await;
        assert!(failed >= 1.0, "{answer:?}: {failed} failed dials counted");
        let failovers = counter(&balancer, "wsbalancer_pod_failovers_total", &[&pod]).await;
        assert!(
            failovers >= 1.0,
            "{answer:?}: {failovers} failovers counted"
        );
        balancer.shutdown(DEADLINE).await;
    }
    assert_no_panics();
}

#[tokio::test]
async fn a_pod_answering_200_is_the_application_speaking() {
    watch_panics();
    init_logs();
    let bad = HostilePod::start("hostile", MetricAnswer::Report, UpgradeAnswer::Ok200).await;
    let healthy = Pod::start(PodOptions::new("healthy")).await.unwrap();
    let balancer = Balancer::start(support::config(vec![bad.url(), healthy.url()]))
        .await
        .unwrap();
    // Until the hostile pod is tried (at once, or once the healthy one
    // holds a connection): its answer reaches the client as it is.
    let mut held = Vec::new();
    let (mut tcp, head) = loop {
        assert!(held.len() < 5, "the hostile pod was never tried");
        let (tcp, head) = support::raw_upgrade(balancer.listen_addr(), "/ws").await;
        if head.starts_with("HTTP/1.1 101") {
            assert_eq!(field(&head, "x-pod-name"), Some("healthy"), "{head}");
            held.push(tcp);
        } else {
            break (tcp, head);
        }
    };
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(field(&head, "content-type"), Some("text/html"), "{head}");
    let mut body = String::new();
    tokio::time::timeout(DEADLINE, tcp.read_to_string(&mut body))
        .await
        .expect("closed in time")
        .expect("read");
    assert_eq!(body, "<html>not a websocket</html>");
    assert_eq!(bad.dials(), 1);
    let failed = counter(
        &balancer,
        "wsbalancer_pod_connections_failed_total",
        &[&label("pod", &bad.url()), &label("reason", "status_2xx")],
    )
    .await;
    assert_eq!(failed, 1.0, "the status answer counted");
    // Once it answers properly again, it is served like any pod.
    bad.set_upgrade(UpgradeAnswer::Accept);
    echo_once(&balancer, "a pod's 200").await;
    balancer.shutdown(DEADLINE).await;
    assert_no_panics();
}

/// Reads one frame the balancer sent a client: (opcode, payload).
async fn read_frame<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> std::io::Result<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    r.read_exact(&mut h).await?;
    let len = match h[1] & 0x7F {
        126 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b).await?;
            u64::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            r.read_exact(&mut b).await?;
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    let mut payload = vec![0u8; usize::try_from(len).expect("length")];
    r.read_exact(&mut payload).await?;
    Ok((h[0] & 0x0F, payload))
}

#[tokio::test]
async fn a_pod_that_stops_reading_is_cut_off_and_others_keep_flowing() {
    use common::frame::{OP_BINARY, OP_CLOSE, OP_TEXT, encode_frame};
    watch_panics();
    init_logs();
    let stalling = HostilePod::start(
        "stalling",
        MetricAnswer::Report,
        UpgradeAnswer::AcceptThenStall,
    )
    .await;
    let healthy = Pod::start(PodOptions::new("healthy")).await.unwrap();
    let mut cfg = support::config(vec![stalling.url(), healthy.url()]);
    let write_timeout = Duration::from_millis(500);
    cfg.write_timeout = write_timeout;
    let balancer = Balancer::start(cfg).await.unwrap();

    // Raw clients (tungstenite would turn the 1014 it gets into a 1002),
    // until one is on each pod; any extra ones stay open, idle.
    let addr = balancer.listen_addr();
    let (mut stalled, mut flowing, mut idle) = (None, None, Vec::new());
    while stalled.is_none() || flowing.is_none() {
        assert!(idle.len() < 20, "never landed on both pods");
        let (tcp, head) = support::raw_upgrade(addr, "/ws").await;
        match field(&head, "x-pod-name") {
            Some("stalling") if stalled.is_none() => stalled = Some(tcp),
            Some("healthy") if flowing.is_none() => flowing = Some(tcp),
            Some(pod) => idle.push((pod.to_owned(), tcp)),
            None => panic!("no x-pod-name: {head}"),
        }
    }
    let (stalled, mut flowing) = (stalled.unwrap(), flowing.unwrap());
    let idle_on_stalling = idle.iter().filter(|(pod, _)| pod == "stalling").count();

    // The stalled client sends as fast as it can; its reader waits for the
    // balancer's verdict.
    let (mut reader, mut writer) = stalled.into_split();
    let started = tokio::time::Instant::now();
    let flood = tokio::spawn(async move {
        let frame = encode_frame(true, OP_BINARY, &vec![7u8; 64 * 1024], Some([1, 2, 3, 4]));
        let mut sent = 0u64;
        while writer.write_all(&frame).await.is_ok() {
            sent += frame.len() as u64;
        }
        sent
    });
    let verdict = tokio::spawn(async move {
        let mut frames = Vec::new();
        while let Ok(frame) = read_frame(&mut reader).await {
            frames.push(frame);
        }
        frames
    });

    // Meanwhile the other connection echoes, promptly, throughout.
    let mut echoes = 0u32;
    while !verdict.is_finished() {
        assert!(
            started.elapsed() < DEADLINE,
            "the stalled connection was never closed"
        );
        let text = format!("flowing {echoes}");
        let sent_at = tokio::time::Instant::now();
        let frame = encode_frame(true, OP_TEXT, text.as_bytes(), Some([9, 8, 7, 6]));
        flowing.write_all(&frame).await.unwrap();
        assert_eq!(
            support::raw_frame(&mut flowing).await,
            (OP_TEXT, text.into_bytes())
        );
        assert!(
            sent_at.elapsed() < Duration::from_secs(1),
            "echo {echoes} took {:?} while the other pod stalled",
            sent_at.elapsed()
        );
        echoes += 1;
        // Pacing the echoes, not waiting for anything.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let closed_after = started.elapsed();
    let frames = verdict.await.unwrap();
    let close: Vec<u8> = 1014u16.to_be_bytes().to_vec();
    assert!(
        matches!(frames.as_slice(), [(OP_CLOSE, payload)] if payload.starts_with(&close)),
        "the client is told the pod failed (1014), then closed: {frames:?}"
    );
    assert!(
        closed_after < write_timeout + wsbalancer::CLOSE_LINGER,
        "closed after {closed_after:?}"
    );
    assert!(echoes >= 5, "only {echoes} echoes during the stall");
    let sent = tokio::time::timeout(DEADLINE, flood)
        .await
        .expect("the flood ends")
        .unwrap();
    assert!(sent > 0);

    // The stalled relay ended and released its pod; the other goes on.
    let url = stalling.url();
    wait_until("the stalled relay ended", || {
        balancer
            .registry()
            .snapshots()
            .iter()
            .any(|s| s.url == url && s.relayed == idle_on_stalling as u64)
    })
    .await;
    assert_eq!(balancer.relayed(), 1 + idle.len());
    let closed = counter(
        &balancer,
        "wsbalancer_pod_connections_closed_total",
        &[&label("pod", &url), &label("code", "1014")],
    )
    .await;
    assert_eq!(
        closed, 1.0,
        "the stalled connection counted closed with 1014"
    );
    let frame = encode_frame(true, OP_TEXT, b"after", Some([1, 1, 1, 1]));
    flowing.write_all(&frame).await.unwrap();
    assert_eq!(
        support::raw_frame(&mut flowing).await,
        (OP_TEXT, b"after".to_vec())
    );
    balancer.shutdown(DEADLINE).await;
    assert_no_panics();
}

#[tokio::test]
async fn a_pod_answering_every_upgrade_with_a_non_4xx_status_is_ejected() {
    watch_panics();
    init_logs();
    // Its count never rises, so without ejection least-connections would
    // send it every new connection.
    let bad = HostilePod::start("hostile", MetricAnswer::Report, UpgradeAnswer::Ok200).await;
    let healthy = Pod::start(PodOptions::new("healthy")).await.unwrap();
    let mut cfg = support::config(vec![bad.url(), healthy.url()]);
    // No poll in between brings it back during the test.
    cfg.cache_ttl = Duration::from_secs(30);
    let eject_after = cfg.eject_after as usize;
    let balancer = Balancer::start(cfg).await.unwrap();
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..12 {
        let (tcp, head) = support::raw_upgrade(balancer.listen_addr(), "/ws").await;
        if head.starts_with("HTTP/1.1 101") {
            assert_eq!(field(&head, "x-pod-name"), Some("healthy"), "{head}");
            held.push(tcp);
        } else {
            assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
            refused += 1;
        }
    }
    assert!(
        refused <= eject_after,
        "{refused} answers from the bad pod, ejectAfter is {eject_after}"
    );
    assert_eq!(bad.dials(), refused, "an ejected pod is not dialled");
    let status = pod_status(&balancer, &bad.url()).await;
    assert_eq!(status["healthy"], false, "{status}");
    echo_once(&balancer, "the balancer still serves").await;
    assert_no_panics();
}
