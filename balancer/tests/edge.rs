//! The edge a client meets before any pod: origin checks, oversized and
//! trickled request heads, and no descriptor or task left behind after many
//! connections come and go.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::{DEADLINE, config, init_logs, pods, raw_exchange, wait_until, ws_url};
use test_server::Pod;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use wsbalancer::Balancer;

async fn status_with_origin(url: &str, origin: Option<&str>) -> u16 {
    let mut request = url.into_client_request().unwrap();
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
    }
    match support::within("handshake", tokio_tungstenite::connect_async(request)).await {
        Ok((_, response)) => response.status().as_u16(),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("{other}"),
    }
}

#[tokio::test]
async fn origins_not_listed_get_403_before_any_dial() {
    init_logs();
    let pods = pods(1).await;
    let mut cfg = config(vec![pods[0].url()]);
    cfg.allowed_origins = vec!["https://app.example.com".into()];
    let balancer = Balancer::start(cfg).await.unwrap();
    let url = ws_url(&balancer, "/ws");
    assert_eq!(
        status_with_origin(&url, Some("https://evil.example.com")).await,
        403
    );
    assert_eq!(pods[0].accepted(), 0, "no dial for a refused origin");
    assert_eq!(
        status_with_origin(&url, Some("https://APP.example.com")).await,
        101
    );
    assert_eq!(status_with_origin(&url, None).await, 101);
    balancer.shutdown(DEADLINE).await;
}

#[tokio::test]
async fn an_oversized_head_gets_431_and_a_trickled_one_is_cut_off() {
    init_logs();
    let pods = pods(1).await;
    let mut cfg = config(vec![pods[0].url()]);
    cfg.max_handshake_header_bytes = 8192;
    cfg.handshake_timeout = Duration::from_millis(300);
    let balancer = Balancer::start(cfg).await.unwrap();

    let big = format!(
        "GET /ws HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let answer = raw_exchange(balancer.listen_addr(), big.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    // Half a head, then nothing: the connection is closed after the timeout.
    let started = std::time::Instant::now();
    let answer = raw_exchange(balancer.listen_addr(), b"GET /ws HTTP/1.1\r\nHost: x\r\n").await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!answer.contains("101"), "{answer}");
    assert_eq!(pods[0].accepted(), 0);
    balancer.shutdown(DEADLINE).await;
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_thousand_connections_leave_no_descriptor_or_task_behind() {
    init_logs();
    let pods = pods(2).await;
    let balancer = support::balancer_for(&pods).await;
    let url = ws_url(&balancer, "/ws");
    // Warm up pools, pollers and lazy statics before counting.
    let (mut ws, _) = support::connect(&url).await;
    ws.close(None).await.unwrap();
    while support::within("close answered", ws.next()).await.is_some() {}
    drop(ws);
    wait_until("warm-up relay ended", || balancer.relayed() == 0).await;
    let before = open_fds();

    let mut batches = tokio::task::JoinSet::new();
    for batch in 0..20 {
        let url = url.clone();
        batches.spawn(async move {
            for i in 0..50 {
                let (mut ws, _) = support::connect(&url).await;
                let text = format!("{batch}-{i}");
                ws.send(Message::text(text.clone())).await.unwrap();
                assert_eq!(
                    support::within("echo", ws.next()).await.unwrap().unwrap(),
                    Message::text(text)
                );
                ws.close(None).await.unwrap();
                while support::within("close answered", ws.next()).await.is_some() {}
            }
        });
    }
    while let Some(done) = batches.join_next().await {
        done.unwrap();
    }
    assert_eq!(pods.iter().map(Pod::accepted).sum::<u64>(), 1001);
    wait_until("every relay ended", || balancer.relayed() == 0).await;
    wait_until("pods hold nothing", || {
        pods.iter().all(|p| p.connections() == 0)
    })
    .await;
    wait_until("descriptors back to where they were", || {
        open_fds() <= before + 4
    })
    .await;
    balancer.shutdown(DEADLINE).await;
}
