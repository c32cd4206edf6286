//! Echo pods as the balancer and users see them: `/metric` counts exactly
//! the upgraded connections, the 101 names the pod, subprotocols are chosen
//! in the client's order, and the binary starts and stops cleanly.

use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use test_server::{Pod, PodOptions};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const DEADLINE: Duration = Duration::from_secs(15);

async fn metric(pod: &Pod) -> serde_json::Value {
    let mut tcp = tokio::net::TcpStream::connect(pod.addr()).await.unwrap();
    tcp.write_all(b"GET /metric HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    let body = out.split_once("\r\n\r\n").unwrap().1;
    serde_json::from_str(body).unwrap()
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
