//! `wss` pods with a self-signed certificate generated here: refused while
//! verification is on and the CA is unknown, accepted with `caFile` or with
//! `tlsVerify: false`, and trusted everywhere once a reload adds `caFile`.

mod support;

use std::io::Write;

use support::{DEADLINE, config, connect, init_logs, landed_on, wait_until, ws_url};
use test_server::self_signed::SelfSigned;
use test_server::{Pod, PodOptions};
use tokio_tungstenite::tungstenite::Error as WsError;
use wsbalancer::Balancer;

struct TlsPod {
    pod: Pod,
    ca_pem: String,
}

async fn tls_pod() -> TlsPod {
    let generated = SelfSigned::generate().expect("certificate");
    let pod = Pod::start(PodOptions {
        tls: Some(generated.server_config().unwrap()),
        ..PodOptions::new("tls-pod")
    })
    .await
    .unwrap();
    TlsPod {
        pod,
        ca_pem: generated.cert_pem,
    }
}

fn wss_url(pod: &Pod) -> String {
    format!("wss://{}", pod.addr())
}

#[tokio::test]
async fn unknown_ca_is_refused_when_verifying() {
    init_logs();
    let tls = tls_pod().await;
    let balancer = Balancer::start(config(vec![wss_url(&tls.pod)]))
        .await
        .unwrap();
    match support::within(
        "handshake",
        tokio_tungstenite::connect_async(ws_url(&balancer, "/ws")),
    )
    .await
    {
        Err(WsError::Http(response)) => {
            assert!(
                [502, 503].contains(&response.status().as_u16()),
                "{}",
                response.status()
            )
        }
        other => panic!(
            "expected a refusal, got {:?}",
            other.map(|(_, r)| r.status())
        ),
    }
    assert_eq!(tls.pod.accepted(), 0);
    balancer.shutdown(DEADLINE).await;
}

#[tokio::test]
async fn ca_file_makes_the_pod_trusted() {
    init_logs();
    let tls = tls_pod().await;
    let mut ca = tempfile::NamedTempFile::new().unwrap();
    ca.write_all(tls.ca_pem.as_bytes()).unwrap();
    let mut cfg = config(vec![wss_url(&tls.pod)]);
    cfg.ca_file = Some(ca.path().to_owned());
    let balancer = Balancer::start(cfg).await.unwrap();
    let (_ws, response) = connect(&ws_url(&balancer, "/ws")).await;
    assert_eq!(landed_on(&response), "tls-pod");
    // The poller reads the report over the same verified TLS.
    wait_until("report over https", || {
        balancer.registry().snapshots()[0].reported == Some(1)
    })
    .await;
    // Plain HTTP requests reach the pod over the same verified TLS too.
    let answer = support::plain_get(balancer.listen_addr(), "/metric").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("tls-pod"), "{answer}");
    balancer.shutdown(DEADLINE).await;
}

#[tokio::test]
async fn tls_verify_false_accepts_any_certificate() {
    init_logs();
    let tls = tls_pod().await;
    let mut cfg = config(vec![wss_url(&tls.pod)]);
    cfg.tls_verify = false;
    let balancer = Balancer::start(cfg).await.unwrap();
    let (_ws, response) = connect(&ws_url(&balancer, "/ws")).await;
    assert_eq!(landed_on(&response), "tls-pod");
    balancer.shutdown(DEADLINE).await;
}

#[tokio::test]
async fn a_reload_that_adds_the_ca_reaches_polls_dials_and_plain_http() {
    init_logs();
    let tls = tls_pod().await;
    let mut cfg = config(vec![wss_url(&tls.pod)]);
    let balancer = Balancer::start(cfg.clone()).await.unwrap();
    // Unknown CA: polls fail.
    wait_until("a failed poll", || {
        balancer.registry().snapshots()[0].consecutive_failures > 0
    })
    .await;
    assert_eq!(balancer.registry().snapshots()[0].reported, None);

    let mut ca = tempfile::NamedTempFile::new().unwrap();
    ca.write_all(tls.ca_pem.as_bytes()).unwrap();
    cfg.ca_file = Some(ca.path().to_owned());
    cfg.dial_timeout = std::time::Duration::from_secs(4);
    let report = balancer.reload(cfg).unwrap();
    assert!(report.restart_needed.is_empty(), "{report:?}");

    // The pollers' next round goes with the new TLS settings.
    wait_until("report over https after the reload", || {
        balancer.registry().snapshots()[0].reported == Some(0)
    })
    .await;
    let answer = support::plain_get(balancer.listen_addr(), "/metric").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("tls-pod"), "{answer}");
    let (_ws, response) = connect(&ws_url(&balancer, "/ws")).await;
    assert_eq!(landed_on(&response), "tls-pod");
    balancer.shutdown(DEADLINE).await;
}
