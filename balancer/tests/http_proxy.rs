//! Plain HTTP requests on the WebSocket listener: reverse-proxied to a pod
//! with bodies streamed both ways (`httpMode: proxy`, the default), or
//! refused with 426 (`httpMode: reject`).

mod support;

use common::HttpMode;
use support::{DEADLINE, balancer_for, config, init_logs, pods};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wsbalancer::Balancer;

/// Reads from `tcp` into `seen` until `seen` contains `needle`.
async fn read_until(tcp: &mut TcpStream, seen: &mut Vec<u8>, needle: &str) {
    let found = tokio::time::timeout(DEADLINE, async {
        let mut chunk = [0u8; 4096];
        while !String::from_utf8_lossy(seen).contains(needle) {
            let n = tcp.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "closed before {needle:?}: {}",
                String::from_utf8_lossy(seen)
            );
            seen.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    assert!(
        found.is_ok(),
        "no {needle:?} in time: {}",
        String::from_utf8_lossy(seen)
    );
}

#[tokio::test]
async fn request_body_and_response_body_stream_through() {
    init_logs();
    let pods = pods(1).await;
    let balancer = balancer_for(&pods).await;
    let mut tcp = TcpStream::connect(balancer.listen_addr()).await.unwrap();
    tcp.write_all(
        b"POST /echo?x=1 HTTP/1.1\r\nHost: app.example.com\r\nTransfer-Encoding: chunked\r\n\
          Connection: keep-alive, x-hop\r\nX-Hop: secret\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n\
          11\r\nfirst-chunk-12345\r\n",
    )
    .await
    .unwrap();
    // The first chunk comes back before the client has sent the rest: the
    // balancer streams, it does not collect the body.
    let mut seen = Vec::new();
    read_until(&mut tcp, &mut seen, "first-chunk-12345").await;
    let head = String::from_utf8_lossy(&seen).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("x-seen-method: post"), "{head}");
    assert!(head.contains("x-seen-uri: /echo?x=1"), "{head}");
    assert!(
        head.contains("x-seen-forwarded-for: 127.0.0.1\r\n"),
        "{head}"
    );
    assert!(head.contains(&format!("x-pod-name: {}", pods[0].name())));
    let names = head
        .lines()
        .find_map(|l| l.strip_prefix("x-seen-header-names: "))
        .unwrap_or_default()
        .to_owned();
    assert!(
        !names.contains("x-hop"),
        "hop-by-hop header forwarded: {names}"
    );
    assert!(names.contains("x-forwarded-host"), "{names}");
    tcp.write_all(b"6\r\nsecond\r\n0\r\n\r\n").await.unwrap();
    read_until(&mut tcp, &mut seen, "second").await;
    read_until(&mut tcp, &mut seen, "0\r\n\r\n").await;

    // The same connection is kept alive for the next request.
    seen.clear();
    tcp.write_all(b"GET /metric HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut tcp, &mut seen, "agentsConnections").await;
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"));
    assert_eq!(pods[0].accepted(), 0, "plain requests are not connections");
    balancer.shutdown(DEADLINE).await;
}

#[tokio::test]
async fn head_keeps_the_pods_content_length_and_pod_statuses_pass_through() {
    let pods = pods(1).await;
    let balancer = balancer_for(&pods).await;
    let addr = balancer.listen_addr();
    let get = support::plain_get(addr, "/metric").await;
    let length = get
        .to_ascii_lowercase()
        .lines()
        .find_map(|l| l.strip_prefix("content-length: ").map(str::to_owned))
        .expect("GET has a length");
    let head = support::raw_exchange(
        addr,
        "HEAD /metric HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".as_bytes(),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("content-length: {length}")),
        "{head}"
    );
    let missing = support::plain_get(addr, "/nope").await;
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    balancer.shutdown(DEADLINE).await;
}

#[tokio::test]
async fn no_reachable_pod_gives_502_and_reject_mode_gives_426() {
    let (_held, dead) = support::dead_addr();
    let balancer = Balancer::start(config(vec![format!("http://{dead}")]))
        .await
        .unwrap();
    let answer = support::plain_get(balancer.listen_addr(), "/").await;
    assert!(
        answer.starts_with("HTTP/1.1 502") || answer.starts_with("HTTP/1.1 503"),
        "{answer}"
    );
    balancer.shutdown(DEADLINE).await;

    let pods = pods(1).await;
    let mut cfg = config(vec![pods[0].url()]);
    cfg.http_mode = HttpMode::Reject;
    let balancer = Balancer::start(cfg).await.unwrap();
    let answer = support::plain_get(balancer.listen_addr(), "/metric").await;
    assert!(answer.starts_with("HTTP/1.1 426"), "{answer}");
    balancer.shutdown(DEADLINE).await;
}

#[tokio::test]
async fn an_upgrade_after_a_plain_request_on_the_same_connection_is_relayed() {
    let pods = pods(1).await;
    let balancer = balancer_for(&pods).await;
    let mut tcp = TcpStream::connect(balancer.listen_addr()).await.unwrap();
    tcp.write_all(b"GET /metric HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    read_until(&mut tcp, &mut seen, "agentsConnections").await;
    read_until(&mut tcp, &mut seen, "}").await;
    tcp.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let head = support::read_response_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let frame = common::frame::encode_frame(true, 1, b"again", Some([9, 8, 7, 6]));
    tcp.write_all(&frame).await.unwrap();
    assert_eq!(support::raw_frame(&mut tcp).await, (1, b"again".to_vec()));
    balancer.shutdown(DEADLINE).await;
}

/// The value of `series` (a name with its labels) in the balancer's
/// `/metrics`, if it is there.
async fn metric(balancer: &Balancer, series: &str) -> Option<u64> {
    let text = support::plain_get(balancer.admin_addr(), "/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Waits until `series` reads `value`.
async fn wait_for_metric(balancer: &Balancer, series: &str, value: u64) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let now = metric(balancer, series).await;
        if now == Some(value) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} is {now:?}, not {value}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn plain_requests_past_max_http_requests_get_503_until_one_is_sent_whole() {
    init_logs();
    let pods = pods(1).await;
    let mut cfg = config(vec![pods[0].url()]);
    cfg.max_http_requests = 2;
    let balancer = Balancer::start(cfg).await.unwrap();
    let addr = balancer.listen_addr();
    // Two requests whose bodies, and so the pod's echoed responses, stay
    // open: their heads went out long ago, and they still count.
    let mut streams = Vec::new();
    for _ in 0..2 {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n",
        )
        .await
        .unwrap();
        let mut seen = Vec::new();
        read_until(&mut tcp, &mut seen, "first").await;
        streams.push((tcp, seen));
    }
    let active = "wsbalancer_http_requests_active";
    assert_eq!(metric(&balancer, active).await, Some(2));
    let refused = support::plain_get(addr, "/metric").await;
    assert!(
        refused.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{refused}"
    );
    assert!(
        refused.to_ascii_lowercase().contains("retry-after: 1\r\n"),
        "{refused}"
    );
    assert!(
        refused.ends_with("\r\n\r\ntoo many plain HTTP requests in flight (maxHttpRequests)\n"),
        "{refused}"
    );
    let series =
        r#"wsbalancer_http_requests_refused_total{status="503",reason="max_http_requests"}"#;
    assert_eq!(metric(&balancer, series).await, Some(1));
    // Upgrades are not plain requests.
    let (_ws, response) = support::connect(&support::ws_url(&balancer, "/ws")).await;
    assert_eq!(response.status(), 101);

    // One ends: its place is free once its response has been sent whole.
    let (mut tcp, mut seen) = streams.pop().unwrap();
    tcp.write_all(b"0\r\n\r\n").await.unwrap();
    read_until(&mut tcp, &mut seen, "0\r\n\r\n").await;
    wait_for_metric(&balancer, active, 1).await;
    let answer = support::plain_get(addr, "/metric").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // A client that goes away mid-response frees its place too.
    drop(streams);
    wait_for_metric(&balancer, active, 0).await;
    assert_eq!(metric(&balancer, series).await, Some(1));
    balancer.shutdown(DEADLINE).await;
}

#[tokio::test]
async fn plain_requests_take_from_the_same_rate_limit_as_upgrades() {
    init_logs();
    let pods = pods(1).await;
    let mut cfg = config(vec![pods[0].url()]);
    // Two a second: the three requests below must come within a second.
    cfg.rate_limit = 2;
    let balancer = Balancer::start(cfg).await.unwrap();
    let addr = balancer.listen_addr();
    let answer = support::plain_get(addr, "/metric").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let (_ws, head) = support::raw_upgrade(addr, "/ws").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let limited = support::plain_get(addr, "/metric").await;
    assert!(limited.starts_with("HTTP/1.1 429"), "{limited}");
    assert!(
        limited.to_ascii_lowercase().contains("retry-after: 1\r\n"),
        "{limited}"
    );
    let series = r#"wsbalancer_http_requests_refused_total{status="429",reason="rate_limited"}"#;
    assert_eq!(metric(&balancer, series).await, Some(1));
    balancer.shutdown(DEADLINE).await;
}
