//! Echo pods as the balancer and users see them: `/metric` counts exactly
//! the upgraded connections, `/metrics` exports the same count and the echo
//! and close counters in the Prometheus text format, one registry per pod,
//! the 101 names the pod, subprotocols are chosen in the client's order, and
//! the binary starts and stops cleanly.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use test_server::{Pod, PodOptions};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const DEADLINE: Duration = Duration::from_secs(15);

/// `GET path` on a plain pod: the response head and body.
async fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (head.to_owned(), body.to_owned())
}

async fn metric(pod: &Pod) -> serde_json::Value {
    let (_, body) = get(pod.addr(), "/metric").await;
    serde_json::from_str(&body).unwrap()
}

/// One `/metrics` answer, checked line by line: each series as printed
/// (`name{labels}`) and its value.
struct Scrape {
    series: HashMap<String, f64>,
}

impl Scrape {
    async fn of(addr: SocketAddr) -> Scrape {
        let (head, body) = get(addr, "/metrics").await;
        let head = head.to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(
            head.contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
            "{head}"
        );
        Scrape::parse(&body)
    }

    /// Checks the Prometheus text format: `# HELP`/`# TYPE` comments and
    /// `name{label="value",...} value` samples, all named `test_server_*`.
    fn parse(text: &str) -> Scrape {
        let mut series = HashMap::new();
        for line in text.lines() {
            if let Some(comment) = line.strip_prefix("# ") {
                let mut words = comment.splitn(3, ' ');
                let (kind, name) = (words.next().unwrap(), words.next().unwrap());
                assert!(kind == "HELP" || kind == "TYPE", "{line}");
                assert!(name.starts_with("test_server_"), "{line}");
                if kind == "TYPE" {
                    let ty = words.next().unwrap();
                    assert!(["counter", "gauge"].contains(&ty), "{line}");
                }
                continue;
            }
            let (key, value) = sample(line).unwrap_or_else(|| panic!("not a sample: {line:?}"));
            assert!(key.starts_with("test_server_"), "{line}");
            assert!(
                series.insert(key.to_owned(), value).is_none(),
                "twice: {line}"
            );
        }
        Scrape { series }
    }

    fn value(&self, key: &str) -> f64 {
        match self.series.get(key) {
            Some(v) => *v,
            None => panic!("no series {key} in {:?}", self.series),
        }
    }
}

/// Splits `name{label="value",...} value` into the series and its value.
fn sample(line: &str) -> Option<(&str, f64)> {
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut chars = name.chars();
    let first = chars.next()?;
    let name_ok = (first.is_ascii_alphabetic() || first == '_' || first == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
    if !name_ok {
        return None;
    }
    let mut rest = &line[name_end..];
    if let Some(labels) = rest.strip_prefix('{') {
        rest = labels_end(labels)?;
    }
    let value = rest.strip_prefix(' ')?.parse().ok()?;
    Some((&line[..line.len() - rest.len()], value))
}

/// Given what follows `{`, returns what follows the matching `}` if the
/// labels in between are `name="value"` pairs separated by commas.
fn labels_end(mut s: &str) -> Option<&str> {
    if let Some(rest) = s.strip_prefix('}') {
        return Some(rest);
    }
    loop {
        let eq = s.find('=')?;
        let name = &s[..eq];
        let mut chars = name.chars();
        let first = chars.next()?;
        if !(first.is_ascii_alphabetic() || first == '_')
            || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return None;
        }
        s = s[eq + 1..].strip_prefix('"')?;
        let mut escaped = false;
        let close = s.char_indices().find_map(|(i, c)| {
            let end = c == '"' && !escaped;
            escaped = c == '\\' && !escaped;
            end.then_some(i)
        })?;
        s = &s[close + 1..];
        if let Some(rest) = s.strip_prefix('}') {
            return Some(rest);
        }
        s = s.strip_prefix(',')?;
    }
}

/// Scrapes until `key` reads `want`, or fails at the deadline.
async fn wait_series(addr: SocketAddr, key: &str, want: f64) -> Scrape {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let scrape = Scrape::of(addr).await;
        if scrape.series.get(key) == Some(&want) {
            return scrape;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{key} never reached {want}: {:?}",
            scrape.series.get(key)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_count(pod: &Pod, n: u64) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while metric(pod).await["agentsConnections"] != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "count never reached {n}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn metric_counts_upgraded_connections_exactly_once() {
    let pod = Pod::start(PodOptions::new("p-1")).await.unwrap();
    let m = metric(&pod).await;
    assert_eq!(m["agentsConnections"], 0);
    assert_eq!(m["podName"], "p-1");
    assert_eq!(m["podIP"], "127.0.0.1");

    let url = format!("ws://{}/ws", pod.addr());
    let (mut a, response) = tokio_tungstenite::connect_async(&url).await.unwrap();
    assert_eq!(response.headers()["x-pod-name"], "p-1");
    let (b, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    wait_count(&pod, 2).await;

    a.send(Message::text("echo me")).await.unwrap();
    assert_eq!(a.next().await.unwrap().unwrap(), Message::text("echo me"));
    a.close(None).await.unwrap();
    while a.next().await.is_some() {}
    drop(b); // vanishes without a close handshake
    wait_count(&pod, 0).await;
    assert_eq!(pod.accepted(), 2);
}

#[tokio::test]
async fn first_client_offered_supported_subprotocol_wins() {
    let pod = Pod::start(PodOptions {
        subprotocols: vec!["a".into(), "b".into()],
        ..PodOptions::new("p")
    })
    .await
    .unwrap();
    let mut request = format!("ws://{}/ws", pod.addr())
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "x, b, a".parse().unwrap());
    let (_ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "b");
}

#[tokio::test]
async fn binary_prints_ready_lines_and_stops_on_sigterm() {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_test-server"))
        .args(["--pods", "2", "--base-port", "0"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for i in 0..2 {
        let line = tokio::time::timeout(DEADLINE, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(
            line.starts_with(&format!("ready pod=pod-{i} url=http://127.0.0.1:")),
            "{line}"
        );
        let addr: SocketAddr = line.rsplit_once("http://").unwrap().1.parse().unwrap();
        let scrape = Scrape::of(addr).await;
        let state = format!(r#"test_server_pod_state{{pod="pod-{i}",state="ready"}}"#);
        assert_eq!(scrape.value(&state), 1.0);
    }
    let pid = child.id().unwrap().to_string();
    tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
}

#[test]
fn sample_parser_rejects_what_is_not_prometheus_text() {
    assert_eq!(sample("a_b 1"), Some(("a_b", 1.0)));
    assert_eq!(
        sample(r#"a{x="1",y="q\"}"} 2.5"#),
        Some((r#"a{x="1",y="q\"}"}"#, 2.5))
    );
    for bad in [
        "a",
        "a{x=1} 1",
        "a{x=\"1\" 1",
        "1a 1",
        "a 1 2",
        "a one",
        "a{x=\"1\"}",
    ] {
        assert_eq!(sample(bad), None, "{bad}");
    }
}

#[tokio::test]
async fn prometheus_metrics_follow_connections_echoes_and_closes() {
    let pod = Pod::start(PodOptions::new("p-1")).await.unwrap();
    let scrape = Scrape::of(pod.addr()).await;
    for key in [
        "test_server_connections_active",
        "test_server_connections_accepted_total",
        "test_server_echoed_messages_total",
        "test_server_echoed_bytes_total",
        r#"test_server_pod_state{pod="p-1",state="drain"}"#,
    ] {
        assert_eq!(scrape.value(key), 0.0, "{key}");
    }
    assert_eq!(
        scrape.value(r#"test_server_pod_state{pod="p-1",state="ready"}"#),
        1.0
    );

    let url = format!("ws://{}/ws", pod.addr());
    let (mut a, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let (mut b, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    wait_series(pod.addr(), "test_server_connections_active", 2.0).await;
    assert_eq!(metric(&pod).await["agentsConnections"], 2);

    let sent = [
        ("a", Message::text("hello")),
        ("b", Message::binary(vec![1, 2, 3])),
        ("a", Message::text("ok")),
    ];
    for (client, message) in sent {
        let ws = if client == "a" { &mut a } else { &mut b };
        ws.send(message.clone()).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), message);
    }
    wait_series(pod.addr(), "test_server_echoed_messages_total", 3.0).await;
    wait_series(pod.addr(), "test_server_echoed_bytes_total", 10.0).await;

    for (ws, code) in [(&mut a, CloseCode::Normal), (&mut b, CloseCode::from(4002))] {
        let frame = CloseFrame {
            code,
            reason: "bye".into(),
        };
        ws.close(Some(frame)).await.unwrap();
        while ws.next().await.is_some() {}
    }
    let scrape = wait_series(pod.addr(), "test_server_connections_active", 0.0).await;
    assert_eq!(metric(&pod).await["agentsConnections"], 0);
    assert_eq!(scrape.value("test_server_connections_accepted_total"), 2.0);
    assert_eq!(scrape.value("test_server_echoed_messages_total"), 3.0);
    for code in ["1000", "4002"] {
        let key = format!(r#"test_server_close_frames_received_total{{code="{code}"}}"#);
        wait_series(pod.addr(), &key, 1.0).await;
    }

    pod.set_state(common::PodState::Drain);
    let scrape = Scrape::of(pod.addr()).await;
    assert_eq!(
        scrape.value(r#"test_server_pod_state{pod="p-1",state="drain"}"#),
        1.0
    );
    assert_eq!(
        scrape.value(r#"test_server_pod_state{pod="p-1",state="ready"}"#),
        0.0
    );
    assert_eq!(metric(&pod).await["state"], "drain");
}

#[tokio::test]
async fn every_pod_in_a_process_has_its_own_registry() {
    let a = Pod::start(PodOptions::new("p-a")).await.unwrap();
    let b = Pod::start(PodOptions::new("p-b")).await.unwrap();
    let (_ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", a.addr()))
        .await
        .unwrap();
    wait_series(a.addr(), "test_server_connections_active", 1.0).await;
    assert_eq!(metric(&a).await["agentsConnections"], 1);

    let scrape = Scrape::of(b.addr()).await;
    assert_eq!(scrape.value("test_server_connections_active"), 0.0);
    assert_eq!(scrape.value("test_server_connections_accepted_total"), 0.0);
    assert_eq!(
        scrape.value(r#"test_server_pod_state{pod="p-b",state="ready"}"#),
        1.0
    );
    assert!(scrape.series.keys().all(|k| !k.contains("p-a")));
}
