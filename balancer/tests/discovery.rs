//! DNS discovery against a real DNS server the test runs (a tiny UDP
//! responder answering A queries from a list the test changes): the
//! balancer follows the records, the new pod gets connections, the removed
//! one gets none and its connections survive.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::Discovery;
use futures_util::{SinkExt, StreamExt};
use support::{DEADLINE, Ws, config, connect, init_logs, landed_on, wait_until, ws_url};
use test_server::{Pod, PodOptions};
use tokio::net::UdpSocket;
use tokio_tungstenite::tungstenite::Message;
use wsbalancer::Balancer;

/// Answers A queries with `records` (TTL 0), anything else with no answer;
/// counts the queries in `queries`.
async fn dns_server(records: Arc<Mutex<Vec<Ipv4Addr>>>, queries: Arc<AtomicUsize>) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                return;
            };
            queries.fetch_add(1, Ordering::Relaxed);
            let answer = answer(&buf[..n], &records.lock().unwrap());
            if let Some(answer) = answer {
                let _ = socket.send_to(&answer, from).await;
            }
        }
    });
    addr
}

/// The response to one query.
fn answer(query: &[u8], records: &[Ipv4Addr]) -> Option<Vec<u8>> {
    let mut at = 12;
    while *query.get(at)? != 0 {
        at += 1 + usize::from(query[at]);
    }
    let question_end = at + 5;
    let qtype = u16::from_be_bytes([*query.get(at + 1)?, *query.get(at + 2)?]);
    let answers: &[Ipv4Addr] = if qtype == 1 { records } else { &[] };
    let mut out = Vec::new();
    out.extend_from_slice(&query[..2]);
    out.extend_from_slice(&[0x81, 0x80, 0, 1]);
    out.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(query.get(12..question_end)?);
    for ip in answers {
        out.extend_from_slice(&[0xC0, 0x0C, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4]);
        out.extend_from_slice(&ip.octets());
    }
    Some(out)
}

/// Two pods on the same port of two loopback addresses, as a headless
/// Service's pods share a port.
async fn two_pods() -> (Pod, Pod) {
    for _ in 0..20 {
        let mut first = PodOptions::new("pod-a");
        first.listen = "127.0.0.2:0".parse().unwrap();
        let a = Pod::start(first).await.unwrap();
        let mut second = PodOptions::new("pod-b");
        second.listen = SocketAddr::new("127.0.0.3".parse().unwrap(), a.addr().port());
        if let Ok(b) = Pod::start(second).await {
            return (a, b);
        }
    }
    panic!("no port free on both loopback addresses");
}

async fn echo(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    let got = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .expect("echo in time")
        .unwrap()
        .unwrap();
    assert_eq!(got, Message::text(text));
}

#[tokio::test]
async fn the_pod_set_follows_the_dns_records() {
    init_logs();
    let (a, b) = two_pods().await;
    let ip = |pod: &Pod| match pod.addr().ip() {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(_) => unreachable!(),
    };
    let records = Arc::new(Mutex::new(vec![ip(&a)]));
    let queries = Arc::new(AtomicUsize::new(0));
    let nameserver = dns_server(records.clone(), queries.clone()).await;
    let mut cfg = config(Vec::new());
    cfg.discovery = Some(Discovery {
        dns: "chat-headless.test.".into(),
        port: a.addr().port(),
        scheme: "http".into(),
        interval: std::time::Duration::from_millis(100),
        nameserver: Some(nameserver),
    });
    let balancer = Balancer::start(cfg).await.unwrap();
    let url = ws_url(&balancer, "/ws");

    wait_until("a is discovered", || balancer.registry().pods().len() == 1).await;
    let (mut on_a, response) = connect(&url).await;
    assert_eq!(landed_on(&response), "pod-a");

    *records.lock().unwrap() = vec![ip(&b)];
    wait_until("b replaces a", || {
        let pods = balancer.registry().pods();
        pods.len() == 1 && pods[0].address.url.contains("127.0.0.3")
    })
    .await;
    for _ in 0..5 {
        let (mut ws, response) = connect(&url).await;
        assert_eq!(landed_on(&response), "pod-b");
        echo(&mut ws, "on b").await;
    }
    echo(&mut on_a, "a's connection survived").await;
    assert_eq!(a.accepted(), 1, "the removed pod got nothing new");

    // A DNS failure (no answer at all) keeps the last set, and is counted
    // once however many lookups fail.
    *records.lock().unwrap() = Vec::new();
    let failures = || async {
        let metrics = support::plain_get(balancer.admin_addr(), "/metrics").await;
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("wsbalancer_discovery_errors_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while failures().await < 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "no failure counted");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let asked = queries.load(Ordering::Relaxed);
    wait_until("several more failed lookups", || {
        queries.load(Ordering::Relaxed) >= asked + 6
    })
    .await;
    assert_eq!(failures().await, 1.0, "counted once per streak");
    assert_eq!(balancer.registry().pods().len(), 1);
    let (mut ws, response) = connect(&url).await;
    assert_eq!(landed_on(&response), "pod-b");
    echo(&mut ws, "still b").await;
}
