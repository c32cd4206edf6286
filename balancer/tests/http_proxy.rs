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
