//! How relayed connections end, with real pods and clients: a drain closes
//! both sides with 1001 (or 1012) at moments spread across the window, a pod that vanishes
//! gives the client 1014, a client that vanishes gives the pod 1001, an idle
//! connection is closed with 1001 on both sides.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::{DEADLINE, config, connect, init_logs, pods, wait_until, ws_url};
use test_server::Pod;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use wsbalancer::Balancer;

/// Reads until a Close frame arrives; returns its code.
async fn close_code(ws: &mut support::Ws) -> u16 {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let next = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("a close in time");
        match next {
            Some(Ok(Message::Close(frame))) => return frame.map_or(1005, |f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            other => panic!("connection ended without a Close frame: {other:?}"),
        }
    }
}

/// Clients in the drain test: enough that 20 uniform close moments all
/// falling within 40 % of the window (probability 20·0.4^19 − 19·0.4^20,
/// about 6·10⁻⁷) does not happen by chance.
const DRAINED_CLIENTS: usize = 20;

/// How late past `drainWindow` a drained client's Close may arrive on a
/// busy machine.
const DRAIN_SLACK: Duration = Duration::from_millis(1000);

#[tokio::test]
async fn drain_spreads_the_closes_across_the_window_with_the_configured_code() {
    init_logs();
    let pods = pods(2).await;
    let window = Duration::from_millis(1500);
    let mut cfg = config(pods.iter().map(Pod::url).collect());
    cfg.drain_window = window;
    cfg.drain_close_code = 1012;
    let balancer = Balancer::start(cfg).await.unwrap();
    let url = ws_url(&balancer, "/ws");
    let mut clients = Vec::new();
    for _ in 0..DRAINED_CLIENTS {
        clients.push(connect(&url).await.0);
    }
    wait_until("every client relayed", || {
        balancer.relayed() == DRAINED_CLIENTS
    })
    .await;

    // Each client waits for its Close on its own task, and notes when it
    // arrived.
    let closes: Vec<_> = clients
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let code = close_code(&mut ws).await;
                (code, Instant::now())
            })
        })
        .collect();
    let started = Instant::now();
    let drain = tokio::spawn(balancer.drain());
    let mut arrivals = Vec::new();
    for close in closes {
        let (code, at) = support::within("a drained client's Close", close)
            .await
            .expect("the client task ends");
        assert_eq!(code, 1012, "the configured drainCloseCode");
        arrivals.push(at - started);
    }
    arrivals.sort_unstable();
    let (first, last) = (arrivals[0], arrivals[DRAINED_CLIENTS - 1]);
    assert!(
        last <= window + DRAIN_SLACK,
        "a Close came {last:?} into a {window:?} drain: {arrivals:?}"
    );
    assert!(
        last - first >= window.mul_f64(0.4),
        "the Closes came within {:?} of each other, not spread across the \
         {window:?} window: {arrivals:?}",
        last - first
    );
    let report = support::within("the drain's report", drain)
        .await
        .expect("the drain task ends");
    assert_eq!(report.left_open, 0);
    wait_until("pods saw 1012 from the balancer", || {
        pods.iter()
            .map(|p| p.close_codes().iter().filter(|&&c| c == 1012).count())
            .sum::<usize>()
            == DRAINED_CLIENTS
    })
    .await;
    // The listener is closed: new clients are refused.
    assert!(
        support::within(
            "a refused handshake",
            tokio_tungstenite::connect_async(&url)
        )
        .await
        .is_err()
    );
}

#[tokio::test]
async fn a_vanished_pod_gives_the_client_1014() {
    init_logs();
    let mut pods = pods(1).await;
    let balancer = support::balancer_for(&pods).await;
    // A raw client: tungstenite does not yet accept 1014, browsers do.
    let (mut tcp, head) = support::raw_upgrade(balancer.listen_addr(), "/ws").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    wait_until("pod counts it", || pods[0].connections() == 1).await;
    pods.pop().unwrap().stop().await; // drops every connection, no Close
    let (opcode, payload) = support::raw_frame(&mut tcp).await;
    assert_eq!(opcode, 0x8);
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1014);
    balancer.shutdown(DEADLINE).await;
}

#[tokio::test]
async fn a_vanished_client_gives_the_pod_1001_and_messages_are_counted() {
    init_logs();
    let pods = pods(1).await;
    let balancer = support::balancer_for(&pods).await;
    let (mut ws, _) = connect(&ws_url(&balancer, "/ws")).await;
    for i in 0..3 {
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
        support::within("echo", ws.next()).await.unwrap().unwrap();
    }
    drop(ws); // TCP closed without a Close frame
    wait_until("pod saw 1001", || pods[0].close_codes() == [1001]).await;
    wait_until("relay ended", || balancer.relayed() == 0).await;
    balancer.shutdown(DEADLINE).await;
}

#[tokio::test]
async fn an_idle_connection_is_closed_with_1001_on_both_sides() {
    init_logs();
    let pods = pods(1).await;
    let mut cfg = config(vec![pods[0].url()]);
    cfg.read_timeout = Duration::from_millis(300);
    let balancer = Balancer::start(cfg).await.unwrap();
    let (mut ws, _) = connect(&ws_url(&balancer, "/ws")).await;
    assert_eq!(close_code(&mut ws).await, 1001);
    wait_until("pod saw 1001", || pods[0].close_codes() == [1001]).await;
    balancer.shutdown(DEADLINE).await;
}

/// A hand-written pod that holds its 101 until `gate` is notified, and
/// tells `asked` when an upgrade arrived. It closes once the balancer's
/// Close reaches it.
async fn slow_pod(
    gate: std::sync::Arc<tokio::sync::Notify>,
    asked: std::sync::Arc<tokio::sync::Notify>,
) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    support::hand_pod(move |mut tcp, accept, _| {
        let (gate, asked) = (gate.clone(), asked.clone());
        async move {
            asked.notify_one();
            gate.notified().await;
            tcp.write_all(&support::switching_protocols_head(&accept))
                .await
                .unwrap();
            // Any frame from the balancer now is its Close: end.
            let _ = tcp.read(&mut [0u8; 4096]).await;
        }
    })
    .await
}

#[tokio::test]
async fn a_drain_waits_for_a_dial_in_flight_and_closes_it_in_the_window() {
    init_logs();
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    let asked = std::sync::Arc::new(tokio::sync::Notify::new());
    let pod = slow_pod(gate.clone(), asked.clone()).await;
    let mut cfg = config(vec![format!("http://{pod}")]);
    cfg.drain_window = Duration::from_millis(200);
    let balancer = Balancer::start(cfg).await.unwrap();
    let addr = balancer.listen_addr();
    let client = tokio::spawn(async move {
        let (mut tcp, head) = support::raw_upgrade(addr, "/ws").await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        support::raw_frame(&mut tcp).await
    });
    tokio::time::timeout(DEADLINE, asked.notified())
        .await
        .expect("the upgrade reached the pod");
    let drain = tokio::spawn(balancer.drain());
    // The drain has begun while the pod still holds its 101.
    gate.notify_one();
    let (opcode, payload) = tokio::time::timeout(DEADLINE, client)
        .await
        .expect("the client's connection went on")
        .unwrap();
    assert_eq!(opcode, 0x8, "a Close frame");
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1001);
    let report = tokio::time::timeout(DEADLINE, drain)
        .await
        .expect("the drain ends")
        .unwrap();
    assert_eq!(report.left_open, 0);
}
