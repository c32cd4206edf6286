//! The load driver against real echo pods: counts, spread, latency and
//! failures by reason, through the library and through the binary.

use std::time::Duration;

use test_client::{LoadOptions, run};
use test_server::{Pod, PodOptions};

fn options(url: String) -> LoadOptions {
    LoadOptions {
        url,
        connections: 40,
        concurrency: 10,
        messages: 5,
        size: 100,
        hold: Duration::ZERO,
        timeout: Duration::from_secs(10),
        ..LoadOptions::default()
    }
}

#[tokio::test]
async fn every_connection_and_echo_is_counted() {
    let pod = Pod::start(PodOptions::new("solo")).await.unwrap();
    let report = run(LoadOptions {
        binary: true,
        ..options(format!("ws://{}/ws", pod.addr()))
    })
    .await;
    assert!(report.all_ok(), "{}", report.render());
    assert_eq!((report.attempted, report.ok, report.failed), (40, 40, 0));
    assert_eq!((report.messages_sent, report.messages_received), (200, 200));
    assert_eq!(report.per_pod.get("solo"), Some(&40));
    assert_eq!(report.close_codes.get(&1000), Some(&40));
    assert_eq!(report.handshake_ms.count, 40);
    assert_eq!(report.round_trip_ms.count, 200);
    assert!(report.round_trip_ms.p50 <= report.round_trip_ms.p99);
    assert!(report.round_trip_ms.p99 <= report.round_trip_ms.max);
    assert_eq!(pod.accepted(), 40);
}

#[tokio::test]
async fn failures_are_reported_by_reason() {
    let pod = Pod::start(PodOptions::new("solo")).await.unwrap();
    // The pod answers 404 on any path but /ws.
    let report = run(options(format!("ws://{}/missing", pod.addr()))).await;
    assert!(!report.all_ok());
    assert_eq!(report.failed, 40);
    assert_eq!(
        report.failures.get("http 404"),
        Some(&40),
        "{:?}",
        report.failures
    );

    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let report = run(options(format!("ws://{dead}/ws"))).await;
    assert_eq!(report.failed, 40);
    assert!(
        report.failures.keys().all(|k| k.starts_with("connect")),
        "{:?}",
        report.failures
    );
}

#[tokio::test]
async fn binary_writes_json_and_sets_the_exit_code() {
    let pod = Pod::start(PodOptions::new("solo")).await.unwrap();
    let bin = env!("CARGO_BIN_EXE_test-client");
    let ok = tokio::process::Command::new(bin)
        .args(["--url", &format!("ws://{}/ws", pod.addr())])
        .args([
            "--connections",
            "5",
            "--messages",
            "2",
            "--hold",
            "0s",
            "--json",
            "-",
        ])
        .output()
        .await
        .unwrap();
    assert!(ok.status.success());
    let json: serde_json::Value =
        serde_json::from_slice(&ok.stdout).expect("stdout is one JSON object");
    assert_eq!(json["ok"], 5);
    assert_eq!(json["per_pod"]["solo"], 5);
    assert!(json["round_trip_ms"]["p99"].is_number());

    let failing = tokio::process::Command::new(bin)
        .args(["--url", &format!("ws://{}/missing", pod.addr())])
        .args(["--connections", "2", "--hold", "0s"])
        .output()
        .await
        .unwrap();
    assert_eq!(failing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&failing.stdout).contains("http 404"));
}
