//! TLS termination on the listener with certificates generated here: a
//! `wss://` client gets its echo through, a certificate replaced on disk
//! is served to the next client without a restart, one caught half written
//! is not (the old one serves until the write completes), and plaintext on
//! the TLS port gets a TLS alert, not HTTP.

mod support;

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::{CertificateDer, ServerName};
use support::{DEADLINE, config, init_logs, pods, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
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
    wait_until_presented(
        balancer.listen_addr(),
        &[first.clone(), second.clone()],
        &second,
        "the renewed certificate",
    )
    .await;
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

/// What rustls answers a first byte that starts no TLS record (`G` of
/// `GET`): a fatal `decode_error` alert, in a plaintext record of version
/// TLS 1.2 — content type 21 (alert), version 3.3, length 2, level 2
/// (fatal), description 50 (decode_error).
const DECODE_ERROR_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x32];

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

    // A plaintext upgrade, by hand, to see every byte of the answer.
    let mut tcp = TcpStream::connect(balancer.listen_addr()).await.unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        balancer.listen_addr()
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let ended = support::within(
        "the balancer's answer to plaintext, then its close",
        async {
            let mut chunk = [0u8; 1024];
            loop {
                match tcp.read(&mut chunk).await {
                    Ok(0) => return Ok(()),
                    Ok(n) => answer.extend_from_slice(&chunk[..n]),
                    Err(e) => return Err(e),
                }
            }
        },
    )
    .await;
    // No HTTP at all: the TLS alert, and then the connection closed
    // cleanly (EOF, not a reset: the balancer read the whole request).
    assert_eq!(
        answer,
        DECODE_ERROR_ALERT,
        "answer: {:?}",
        String::from_utf8_lossy(&answer)
    );
    assert!(ended.is_ok(), "closed with {ended:?}, not EOF");
    // The same through a WebSocket client: no upgrade.
    let result = support::within(
        "a plaintext WebSocket client's handshake",
        tokio_tungstenite::connect_async(format!("ws://{}/ws", balancer.listen_addr())),
    )
    .await;
    assert!(
        matches!(
            result,
            Err(WsError::Protocol(ProtocolError::HttparseError(
                httparse::Error::Version
            )))
        ),
        "the alert does not parse as an HTTP response: {result:?}"
    );
    // And TLS still works on the same port.
    let (_, presented) = tls_connect(balancer.listen_addr(), &[presented_cert(&dir)])
        .await
        .expect("a TLS client after the plaintext ones");
    assert_eq!(presented, presented_cert(&dir));
    assert_eq!(pods[0].accepted(), 0, "nothing reached the pod");
    balancer.shutdown(DEADLINE).await;
}

/// The certificate in `dir/c.pem`, DER.
fn presented_cert(dir: &tempfile::TempDir) -> CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_file(dir.path().join("c.pem")).expect("c.pem")
}

/// Connects until the balancer presents `expected` (the only one of
/// `trusted` it should present once it reloaded), within the deadline.
async fn wait_until_presented(
    addr: std::net::SocketAddr,
    trusted: &[CertificateDer<'static>],
    expected: &CertificateDer<'static>,
    what: &str,
) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let last = tls_connect(addr, trusted).await;
        if matches!(&last, Ok((_, presented)) if presented == expected) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not served within {DEADLINE:?}; last handshake: {:?}",
            last.map(|(_, presented)| fingerprint(&presented))
        );
        // Polling the handshake, with the deadline above.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A short, printable identity of a certificate (its DER's last bytes,
/// which hold the signature).
fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let der = cert.as_ref();
    der[der.len().saturating_sub(8)..]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn a_half_written_renewal_keeps_the_old_certificate_until_it_is_complete() {
    init_logs();
    let pods = pods(1).await;
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let (old_pem, old_key, old) = certificate();
    std::fs::write(&cert_path, &old_pem).unwrap();
    std::fs::write(&key_path, old_key).unwrap();
    let mut cfg = config(vec![pods[0].url()]);
    cfg.tls_cert = Some(cert_path.clone());
    cfg.tls_key = Some(key_path.clone());
    let balancer = Balancer::start(cfg).await.unwrap();
    let addr = balancer.listen_addr();
    let (new_pem, new_key, new) = certificate();
    let both = [old.clone(), new.clone()];
    let (_, presented) = tls_connect(addr, &both).await.expect("a handshake");
    assert!(presented == old, "served {}", fingerprint(&presented));

    // The renewal writes the new key, then the certificate, which the
    // balancer finds half written: its BEGIN line and half its body, no
    // END line.
    std::fs::write(&key_path, new_key).unwrap();
    std::fs::write(&cert_path, &new_pem[..new_pem.len() / 2]).unwrap();
    let cert_shown = cert_path.display().to_string();
    wait_until("the balancer tried the half-written certificate", || {
        support::logged(&[
            "TLS certificate reload failed",
            "`tlsCert`",
            cert_shown.as_str(),
        ])
    })
    .await;
    // It still serves, with the old certificate (and its old key).
    let (stream, presented) = tls_connect(addr, &both)
        .await
        .expect("a handshake while the certificate is half written");
    assert!(
        presented == old,
        "the old certificate ({}) is served meanwhile, not {}",
        fingerprint(&old),
        fingerprint(&presented)
    );
    let url = format!("wss://127.0.0.1:{}/ws", addr.port());
    let (mut ws, _) = support::within(
        "wss handshake",
        tokio_tungstenite::client_async(url, stream),
    )
    .await
    .expect("an upgrade while the certificate is half written");
    ws.send(Message::text("half written")).await.unwrap();
    assert_eq!(
        support::within("echo over tls", ws.next())
            .await
            .unwrap()
            .unwrap(),
        Message::text("half written")
    );

    // The write completes: the new certificate is served.
    std::fs::write(&cert_path, &new_pem).unwrap();
    wait_until_presented(addr, &both, &new, "the completed certificate").await;
    balancer.shutdown(DEADLINE).await;
}
