//! End-to-end relay through a real balancer to real echo pods: messages of
//! every shape, subprotocols, close codes both ways, and pod answers other
//! than 101.

mod support;

use futures_util::{SinkExt, StreamExt};
use support::{DEADLINE, balancer_for, connect, pods, wait_until, ws_url};
use test_server::{Pod, PodOptions};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

async fn next_data(ws: &mut support::Ws) -> Message {
    loop {
        let m = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("message in time")
            .expect("stream open")
            .expect("no error");
        if m.is_text() || m.is_binary() || m.is_close() {
            return m;
        }
    }
}

#[tokio::test]
async fn text_binary_large_and_fragmented_messages_echo() {
    let pods = pods(2).await;
    let balancer = balancer_for(&pods).await;
    let (mut ws, _) = connect(&ws_url(&balancer, "/ws")).await;

    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("hello"));

    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(
        next_data(&mut ws).await,
        Message::binary(vec![0u8, 1, 2, 255])
    );

    let big: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::binary(big));

    // One text message in three frames: the pod reassembles and echoes it.
    ws.send(Message::Frame(Frame::message(
        "frag",
        OpCode::Data(Data::Text),
        false,
    )))
    .await
    .unwrap();
    ws.send(Message::Frame(Frame::message(
        "ment",
        OpCode::Data(Data::Continue),
        false,
    )))
    .await
    .unwrap();
    ws.send(Message::Frame(Frame::message(
        "ed",
        OpCode::Data(Data::Continue),
        true,
    )))
    .await
    .unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("fragmented"));

    ws.close(None).await.unwrap();
    balancer.shutdown(DEADLINE).await;
}

#[tokio::test]
async fn subprotocol_chosen_by_pod_reaches_client() {
    let pod = Pod::start(PodOptions {
        subprotocols: vec!["chat".into(), "superchat".into()],
        ..PodOptions::new("proto-pod")
    })
    .await
    .unwrap();
    let balancer = balancer_for(std::slice::from_ref(&pod)).await;
    let mut request = ws_url(&balancer, "/ws").into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "v9, superchat, chat".parse().unwrap(),
    );
    let (mut ws, response) =
        support::within("handshake", tokio_tungstenite::connect_async(request))
            .await
            .unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "superchat");
    ws.send(Message::text("p")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("p"));
    balancer.shutdown(DEADLINE).await;
}

#[tokio::test]
async fn client_close_code_reaches_pod_and_pod_close_reaches_client() {
    let pods = pods(1).await;
    let balancer = balancer_for(&pods).await;

    let (mut ws, _) = connect(&ws_url(&balancer, "/ws")).await;
    ws.close(Some(CloseFrame {
        code: CloseCode::from(4001),
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    // The pod completes the handshake with the same code.
    match next_data(&mut ws).await {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 4001),
        other => panic!("expected close, got {other:?}"),
    }
    wait_until("pod saw 4001", || pods[0].close_codes() == [4001]).await;
    drop(ws);

    let (mut ws, _) = connect(&ws_url(&balancer, "/ws")).await;
    ws.send(Message::text("close:4002")).await.unwrap();
    match next_data(&mut ws).await {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 4002),
        other => panic!("expected close, got {other:?}"),
    }
    // Both sides end: the pod's count returns to zero and nothing is relayed.
    while tokio::time::timeout(DEADLINE, ws.next())
        .await
        .expect("ends")
        .is_some()
    {}
    drop(ws);
    wait_until("pod count back to 0", || pods[0].connections() == 0).await;
    wait_until("nothing relayed", || {
        balancer.registry().snapshots()[0].relayed == 0
    })
    .await;
    balancer.shutdown(DEADLINE).await;
}

#[tokio::test]
async fn pod_http_status_is_passed_to_client() {
    let pods = pods(1).await;
    let balancer = balancer_for(&pods).await;
    // The echo pod only serves /ws: its 404 is the application's answer.
    let request = ws_url(&balancer, "/nope").into_client_request().unwrap();
    match support::within("handshake", tokio_tungstenite::connect_async(request)).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 404),
        other => panic!("expected 404, got {:?}", other.map(|(_, r)| r.status())),
    }
    assert_eq!(pods[0].accepted(), 0);
    balancer.shutdown(DEADLINE).await;
}

#[tokio::test]
async fn plain_http_request_gets_426_and_no_dial_when_rejected() {
    let pods = pods(1).await;
    let mut cfg = support::config(vec![pods[0].url()]);
    cfg.http_mode = common::HttpMode::Reject;
    let balancer = wsbalancer::Balancer::start(cfg).await.unwrap();
    let response = support::plain_get(balancer.listen_addr(), "/ws").await;
    assert!(response.starts_with("HTTP/1.1 426"), "{response}");
    assert!(
        response.to_ascii_lowercase().contains("upgrade: websocket"),
        "{response}"
    );
    assert_eq!(pods[0].accepted(), 0);
    balancer.shutdown(DEADLINE).await;
}

/// A hand-written pod that answers an upgrade with its 101 and a first
/// frame in the same write, then passes on the first frame it reads from
/// the balancer.
async fn eager_pod() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (seen_tx, seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let addr = support::hand_pod(move |mut tcp, accept, mut rest| {
        let seen_tx = seen_tx.clone();
        async move {
            let mut answer = support::switching_protocols_head(&accept);
            answer.extend(common::frame::encode_frame(true, 1, b"pod-first", None));
            tcp.write_all(&answer).await.unwrap();
            // Whatever followed the request head, then the next frame.
            let mut chunk = [0u8; 4096];
            while rest.len() < 2 + 4 + 11 {
                let n = tcp.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                rest.extend_from_slice(&chunk[..n]);
            }
            let _ = seen_tx.send(rest);
        }
    })
    .await;
    (addr, seen_rx)
}

#[tokio::test]
async fn bytes_sent_with_either_handshake_are_not_lost() {
    use tokio::io::AsyncWriteExt;
    let (pod, mut seen) = eager_pod().await;
    let balancer = wsbalancer::Balancer::start(support::config(vec![format!("http://{pod}")]))
        .await
        .unwrap();
    let mut tcp = tokio::net::TcpStream::connect(balancer.listen_addr())
        .await
        .unwrap();
    // The upgrade request and the client's first frame in one write, so
    // the frame arrives in the same read as the request head.
    let mut request =
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            .to_vec();
    let mask = [1, 2, 3, 4];
    let frame = common::frame::encode_frame(true, 1, b"client-says", Some(mask));
    request.extend_from_slice(&frame);
    tcp.write_all(&request).await.unwrap();
    let head = support::read_response_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(
        support::raw_frame(&mut tcp).await,
        (1, b"pod-first".to_vec())
    );
    let got = tokio::time::timeout(DEADLINE, seen.recv())
        .await
        .expect("pod got the frame in time")
        .unwrap();
    assert_eq!(
        got, frame,
        "the client's first frame reached the pod intact"
    );
    balancer.shutdown(DEADLINE).await;
}
