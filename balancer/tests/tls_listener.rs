//! TLS termination on the listener with certificates generated here: a
//! `wss://` client gets its echo through, and a certificate replaced on disk
//! is served to the next client without a restart.

mod support;

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::{CertificateDer, ServerName};
use support::{DEADLINE, config, init_logs, pods};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;
use wsbalancer::Balancer;

/// A fresh self-signed certificate for 127.0.0.1: (cert PEM, key PEM, DER).
fn certificate() -> (String, String, CertificateDer<'static>) {
    let generated = test_server::self_signed::SelfSigned::generate().unwrap();
    (generated.cert_pem, generated.key_pem, generated.cert_der)
}

/// A TLS client trusting `trusted`; returns the stream and the certificate
/// the server presented.
async fn tls_connect(
    addr: std::net::SocketAddr,
    trusted: &[CertificateDer<'static>],
) -> std::io::Result<(
    tokio_rustls::client::TlsStream<TcpStream>,
    CertificateDer<'static>,
)> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in trusted {
        roots.add(cert.clone()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(common::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let stream = support::within(
        "a TLS handshake with the balancer",
        TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await?;
    let presented = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first().cloned())
        .expect("server certificate")
        .into_owned();
    Ok((stream, presented))
}

#[tokio::test]
async fn wss_through_the_balancer_and_certificate_reload() {
    init_logs();
    let pods = pods(1).await;
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let (cert_pem, key_pem, first) = certificate();
    std::fs::write(&cert_path, cert_pem).unwrap();
    std::fs::write(&key_path, key_pem).unwrap();
    let mut cfg = config(vec![pods[0].url()]);
    cfg.tls_cert = Some(cert_path.clone());
    cfg.tls_key = Some(key_path.clone());
    let balancer = Balancer::start(cfg).await.unwrap();

    let (stream, presented) = tls_connect(balancer.listen_addr(), std::slice::from_ref(&first))
        .await
        .unwrap();
    assert_eq!(presented, first);
    let url = format!("wss://127.0.0.1:{}/ws", balancer.listen_addr().port());
    let (mut ws, response) = support::within(
        "wss handshake",
        tokio_tungstenite::client_async(url, stream),
    )
    .await
    .unwrap();
    assert_eq!(response.headers()["x-pod-name"], "pod-0");
    ws.send(Message::text("over tls")).await.unwrap();
    assert_eq!(
        support::within("echo over tls", ws.next())
            .await
            .unwrap()
            .unwrap(),
        Message::text("over tls")
    );

    // Renew the certificate on disk; new handshakes get it, no restart.
    let (cert_pem, key_pem, second) = certificate();
    std::fs::write(&key_path, key_pem).unwrap();
    std::fs::write(&cert_path, cert_pem).unwrap();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let trusted = [first.clone(), second.clone()];
        if let Ok((_, presented)) = tls_connect(balancer.listen_addr(), &trusted).await
            && presented == second
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The connection opened before the reload is still relayed.
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        support::within("echo over tls", ws.next())
            .await
            .unwrap()
            .unwrap(),
        Message::text("still here")
    );
    balancer.shutdown(DEADLINE).await;
}

#[tokio::test]
async fn plain_http_to_the_tls_port_gets_no_upgrade() {
    init_logs();
    let pods = pods(1).await;
    let dir = tempfile::tempdir().unwrap();
    let (cert_pem, key_pem, _) = certificate();
    std::fs::write(dir.path().join("c.pem"), cert_pem).unwrap();
    std::fs::write(dir.path().join("k.pem"), key_pem).unwrap();
    let mut cfg = config(vec![pods[0].url()]);
    cfg.tls_cert = Some(dir.path().join("c.pem"));
    cfg.tls_key = Some(dir.path().join("k.pem"));
    let balancer = Balancer::start(cfg).await.unwrap();
    let result = tokio::time::timeout(
        DEADLINE,
        tokio_tungstenite::connect_async(format!("ws://{}/ws", balancer.listen_addr())),
    )
    .await
    .expect("answered in time");
    assert!(result.is_err(), "plain WebSocket on the TLS port must fail");
    assert_eq!(pods[0].accepted(), 0);
    balancer.shutdown(DEADLINE).await;
}
