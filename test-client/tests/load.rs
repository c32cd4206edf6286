//! The load driver against real echo pods: counts, spread, latency and
//! failures by reason, through the library and through the binary.

use std::sync::Arc;
use std::time::Duration;

use test_client::report::Live;
use test_client::{LoadOptions, Report};
use test_server::{Pod, PodOptions};

fn options(url: String) -> LoadOptions {
    LoadOptions {
        urls: vec![url],
        connections: 40,
        concurrency: 10,
        messages: 5,
        size: 100,
        hold: Duration::ZERO,
        timeout: Duration::from_secs(10),
        ..LoadOptions::default()
    }
}

async fn run(options: LoadOptions) -> Report {
    test_client::run(options, Arc::new(Live::default())).await
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

#[tokio::test]
async fn a_reader_that_went_away_does_not_fail_the_run() {
    let pod = Pod::start(PodOptions::new("solo")).await.unwrap();
    // A pipe whose reading end is closed before the report is written, as
    // with `test-client ... | head -c 10`.
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_test-client"))
        .args(["--url", &format!("ws://{}/ws", pod.addr())])
        .args(["--connections", "2", "--hold", "0s", "--json", "-"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        // Spawned, not `output()`, which would pipe stdout itself.
        .spawn()
        .expect("test-client starts")
        .wait_with_output();
    let done = tokio::time::timeout(std::time::Duration::from_secs(30), run)
        .await
        .expect("test-client ends within 30s")
        .expect("test-client's status");
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(done.status.code(), Some(0), "{stderr}");
}

/// The percentiles come from the histogram the JSON carries.
fn assert_consistent(report: &Report) {
    for p in [&report.handshake_ms, &report.round_trip_ms] {
        assert!(p.p50 <= p.p90 && p.p90 <= p.p99 && p.p99 <= p.p999 && p.p999 <= p.max);
    }
    let counted = |raw: &Vec<[u64; 2]>| raw.iter().map(|[_, n]| n).sum::<u64>();
    assert_eq!(
        counted(&report.histograms.round_trip_us),
        report.round_trip_ms.count
    );
    assert_eq!(
        counted(&report.histograms.handshake_us),
        report.handshake_ms.count
    );
}

#[tokio::test]
async fn the_report_agrees_with_what_the_pods_saw() {
    let pods = [
        Pod::start(PodOptions::new("a")).await.unwrap(),
        Pod::start(PodOptions::new("b")).await.unwrap(),
    ];
    let report = run(LoadOptions {
        urls: pods
            .iter()
            .map(|p| format!("ws://{}/ws", p.addr()))
            .collect(),
        connections: 30,
        rate: Some(500.0),
        msg_rate: Some(200.0),
        bind: vec!["127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap()],
        headers: vec![("x-run".into(), "test".into())],
        origin: Some("https://example.com".into()),
        ..options(String::new())
    })
    .await;
    assert!(report.all_ok(), "{}", report.render());
    for pod in &pods {
        assert_eq!(report.per_pod.get(pod.name()), Some(&pod.accepted()));
        assert_eq!(pod.close_codes().iter().filter(|&&c| c == 1000).count(), 15);
    }
    assert_eq!(report.spread, 0);
    assert_eq!(report.messages_received, 30 * 5);
    assert_eq!(report.bytes_received, 30 * 5 * 100);
    assert_eq!(report.round_trip_ms.count, 150);
    assert_consistent(&report);
}

#[tokio::test]
async fn open_loop_latency_shows_a_slow_pod_and_its_queue() {
    let pod = Pod::start(PodOptions::new("slow")).await.unwrap();
    let load = LoadOptions {
        connections: 4,
        concurrency: 4,
        messages: 20,
        // One message every 20 ms per connection.
        msg_rate: Some(50.0),
        ..options(format!("ws://{}/ws", pod.addr()))
    };
    let fast = run(load.clone()).await;
    assert!(fast.all_ok(), "{}", fast.render());
    pod.set_delay(Duration::from_millis(30));
    let slow = run(load).await;
    assert!(slow.all_ok(), "{}", slow.render());
    assert_consistent(&slow);
    // Every echo now takes 30 ms, and they arrive every 20 ms: a queue
    // builds, and latency from the due time keeps growing (closed-loop
    // sending would have hidden it behind a slower send rate).
    assert!(
        slow.round_trip_ms.p50 >= 30.0 && slow.round_trip_ms.p50 > fast.round_trip_ms.p50,
        "fast {:?} slow {:?}",
        fast.round_trip_ms,
        slow.round_trip_ms
    );
    assert!(
        slow.round_trip_ms.max >= 150.0,
        "the queue should show: {:?}",
        slow.round_trip_ms
    );
}

#[tokio::test]
async fn fail_on_thresholds_set_the_exit_code() {
    let pod = Pod::start(PodOptions::new("solo")).await.unwrap();
    let url = format!("ws://{}/ws", pod.addr());
    let bin = env!("CARGO_BIN_EXE_test-client");
    let exit = |thresholds: &'static [&'static str]| {
        let mut command = tokio::process::Command::new(bin);
        command
            .args(["--url", &url, "--connections", "3", "--messages", "2"])
            .args(["--hold", "0s", "--quiet"]);
        for t in thresholds {
            command.args(["--fail-on", t]);
        }
        async move { command.output().await.unwrap() }
    };
    let passed = exit(&["failed>0", "p99>60s"]).await;
    assert_eq!(passed.status.code(), Some(0), "{passed:?}");
    let crossed = exit(&["failed>0", "p99<60s"]).await;
    assert_eq!(crossed.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&crossed.stderr).contains("p99<60000"));
    let malformed = exit(&["latency>5"]).await;
    assert_eq!(malformed.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&malformed.stderr).contains("unknown figure"));
}

#[tokio::test]
async fn workers_split_the_run_and_their_reports_merge() {
    let pods = [
        Pod::start(PodOptions::new("a")).await.unwrap(),
        Pod::start(PodOptions::new("b")).await.unwrap(),
    ];
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_test-client"));
    for pod in &pods {
        command.args(["--url", &format!("ws://{}/ws", pod.addr())]);
    }
    let out = command
        .args(["--workers", "3", "--connections", "31", "--messages", "4"])
        .args([
            "--hold",
            "0s",
            "--bind",
            "127.0.0.1,127.0.0.2",
            "--json",
            "-",
        ])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let report: Report = serde_json::from_slice(&out.stdout).expect("one merged report");
    assert_eq!((report.attempted, report.ok, report.failed), (31, 31, 0));
    assert_eq!(report.messages_received, 31 * 4);
    for pod in &pods {
        assert_eq!(report.per_pod.get(pod.name()), Some(&pod.accepted()));
    }
    // Connections are numbered across workers: the URLs still alternate.
    assert_eq!(report.spread, 1);
    assert_eq!(report.round_trip_ms.count, 31 * 4);
    assert_consistent(&report);
}

/// A pod serving `wss://` with a certificate generated here; returns it and
/// the certificate (PEM) to trust.
async fn tls_pod() -> (Pod, String) {
    let generated = test_server::self_signed::SelfSigned::generate().expect("certificate");
    let pod = Pod::start(PodOptions {
        tls: Some(generated.server_config().unwrap()),
        ..PodOptions::new("tls")
    })
    .await
    .unwrap();
    (pod, generated.cert_pem)
}

#[tokio::test]
async fn wss_is_verified_against_the_ca_file_or_not_at_all_when_insecure() {
    let (pod, pem) = tls_pod().await;
    let url = format!("wss://{}/ws", pod.addr());
    let mut ca = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut ca, pem.as_bytes()).unwrap();

    let trusted = LoadOptions {
        ca_file: Some(ca.path().to_owned()),
        ..options(url.clone())
    };
    trusted.validate().expect("valid options");
    let report = run(trusted).await;
    assert!(report.all_ok(), "{}", report.render());
    assert_eq!((report.ok, report.messages_received), (40, 200));
    assert_eq!(report.per_pod.get("tls"), Some(&40));

    // Unknown issuer: every handshake fails, and says why.
    let report = run(options(url.clone())).await;
    assert_eq!(report.ok, 0, "{}", report.render());
    assert!(
        report
            .failures
            .keys()
            .all(|reason| reason.starts_with("tls: ")),
        "{:?}",
        report.failures
    );

    let report = run(LoadOptions {
        insecure: true,
        ..options(url)
    })
    .await;
    assert!(report.all_ok(), "{}", report.render());
}
