//! WebSockets over HTTP/2 in a real browser: headless Chromium loads a
//! page through the balancer's TLS listener (over HTTP/2, by ALPN), and the
//! page opens WebSockets to the same origin. The balancer's metrics prove
//! they went over HTTP/2 streams, on fewer connections than WebSockets:
//! every handshake was an extended CONNECT, none an HTTP/1.1 upgrade. The
//! pod proves each WebSocket carried its echo: it gets the page's close
//! code once per WebSocket.
//!
//! Chromium is a real child process with a deadline, trusting the test's
//! own certificate by its key; `scripts/install-chromium` installs it when
//! none is on PATH.

mod support;

use std::time::Duration;

use base64::Engine;
use support::DEADLINE;
use support::browser::{HEADLESS, Running, browser};
use test_server::{PAGE_CLOSE_CODE, PAGE_WEBSOCKETS};
use tokio::process::Command;
use wsbalancer::Balancer;

/// How long the page may take to open, echo and close its WebSockets
/// (Chromium's own start included).
const PAGE_DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn chromium_opens_its_websockets_over_the_pages_http2_connection() {
    support::init_logs();
    let browser = browser().await;
    let pods = support::pods(1).await;
    let files = support::CertFiles::generate();
    let mut config = support::config(pods.iter().map(test_server::Pod::url).collect());
    files.serve_with(&mut config);
    let balancer = Balancer::start(config).await.expect("balancer starts");

    let spki = ring::digest::digest(&ring::digest::SHA256, &files.generated.spki_der);
    let spki = base64::engine::general_purpose::STANDARD.encode(spki.as_ref());
    let profile = tempfile::tempdir().expect("a profile dir");
    let mut command = Command::new(&browser);
    command
        .arg("--headless")
        .args(HEADLESS)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--ignore-certificate-errors-spki-list={spki}"))
        .arg(format!(
            "https://127.0.0.1:{}/websockets.html",
            balancer.listen_addr().port()
        ));
    let mut chromium = Running::start(command);

    // The page's whole run, seen by the pod: each WebSocket echoed, then
    // closed with the page's code.
    let deadline = tokio::time::Instant::now() + PAGE_DEADLINE;
    loop {
        let codes = pods[0].close_codes();
        if codes.len() >= PAGE_WEBSOCKETS {
            assert_eq!(codes, vec![PAGE_CLOSE_CODE; PAGE_WEBSOCKETS]);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the page's {PAGE_WEBSOCKETS} WebSockets did not all echo and close within \
             {PAGE_DEADLINE:?}: close codes {codes:?}, chromium running: {}",
            chromium.is_running()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let scraped = &balancer;
    let metric =
        |name, protocol| async move { support::by_protocol(scraped, name, protocol).await as u64 };
    let websockets = u64::try_from(PAGE_WEBSOCKETS).expect("small");
    let handshakes = (
        metric("wsbalancer_handshakes_by_protocol_total", "http2").await,
        metric("wsbalancer_handshakes_by_protocol_total", "http1").await,
    );
    let connections = (
        metric("wsbalancer_client_connections_by_protocol_total", "http2").await,
        metric("wsbalancer_client_connections_by_protocol_total", "http1").await,
    );
    // Every figure in each message, so that a failure says what Chromium
    // did instead.
    let seen = format!("handshakes (http2, http1) {handshakes:?}, connections {connections:?}");
    assert_eq!(
        handshakes,
        (websockets, 0),
        "every WebSocket was an extended CONNECT, none an HTTP/1.1 upgrade: {seen}"
    );
    assert!(
        (1..websockets).contains(&connections.0) && connections.1 == 0,
        "{PAGE_WEBSOCKETS} WebSockets shared the page's HTTP/2 connections: {seen}"
    );
    drop(chromium);
    balancer.shutdown(DEADLINE).await;
}
