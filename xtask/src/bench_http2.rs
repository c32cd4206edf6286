//! `cargo xtask bench http2`: WebSockets over HTTP/2 (issue 19) against
//! the same WebSockets over HTTP/1.1, both over TLS to the same balancer
//! build and the same pod, in the same run:
//!
//! - memory per idle WebSocket: a fresh balancer holding 1,000 idle
//!   WebSockets, as 1,000 TLS connections (HTTP/1.1) or as 10 connections
//!   of 100 streams each (HTTP/2), resident memory growth per WebSocket;
//! - 128 B echo: 32 WebSockets each echoing in turn for a few seconds,
//!   messages per second (HTTP/2: the 32 as streams of one connection).
//!
//! The balancer is pinned to core 0, the pod to core 1; the clients run
//! in this process. Each figure is the median of the runs, the two
//! protocols alternating within every run.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::bench_relay::{LOAD_CORE, PROXY_CORE, median};
use crate::harness::{self, Procs};

/// Idle WebSockets per memory measure.
const IDLE: usize = 1000;
/// Streams per HTTP/2 connection in the memory measure.
const STREAMS_PER_CONNECTION: usize = 100;
/// WebSockets echoing at once in the echo measure.
const ECHOERS: usize = 32;
/// How long each echo measure lasts.
const ECHO_FOR: Duration = Duration::from_secs(4);
/// Size of each echoed message.
const MESSAGE: usize = 128;
/// Runs per figure (the median is reported).
const RUNS: usize = 3;
/// How long any one step (a connect, an echo) may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a balancer's memory may take to settle.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// The process name of the pod and of the balancer.
const POD: &str = "pod";
const BALANCER: &str = "wsbalancer";

/// Which HTTP version carries the WebSockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    Http1,
    Http2,
}

/// Runs the measures and returns the markdown report.
pub async fn run() -> anyhow::Result<String> {
    let dir = std::env::temp_dir().join(format!("wsb-bench-http2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let cert = test_server::self_signed::SelfSigned::generate()
        .map_err(|e| anyhow::anyhow!("generating a certificate: {e}"))?;
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, &cert.cert_pem)?;
    std::fs::write(&key_path, &cert.key_pem)?;
    let tls = client_tls(cert.cert_der.clone())?;
    let args = [
        "--log-level".to_owned(),
        "warn".to_owned(),
        "--tls-cert".to_owned(),
        cert_path.display().to_string(),
        "--tls-key".to_owned(),
        key_path.display().to_string(),
    ];
    let figures = harness::with_procs(async |procs: &mut Procs| {
        let pods = harness::start_pods(procs, POD, &[0], LOAD_CORE).await?;
        let pod = [pods[0].addr];
        let mut memory = [Vec::new(), Vec::new()];
        let mut echo = [Vec::new(), Vec::new()];
        for run in 0..RUNS {
            println!("  run {} of {RUNS}", run + 1);
            let mut order = [Version::Http1, Version::Http2];
            if run % 2 == 1 {
                order.reverse();
            }
            for version in order {
                // A fresh balancer for each measure: its memory starts
                // from nothing held.
                let balancer =
                    harness::start_balancer(procs, BALANCER, &pod, PROXY_CORE, &args).await?;
                let kib = idle_memory(&balancer, &tls, version).await?;
                let rate = echo_rate(balancer.listen, &tls, version).await?;
                println!("    {version:?}: {kib:.2} KiB per idle WebSocket, {rate:.0} echoes/s");
                memory[version as usize].push(kib);
                echo[version as usize].push(rate);
                procs.stop(BALANCER).await;
            }
        }
        procs.stop(POD).await;
        anyhow::Ok((memory, echo))
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    let (memory, echo) = figures?;
    Ok(report(&memory, &echo))
}

/// The table and the target, from the medians.
fn report(memory: &[Vec<f64>; 2], echo: &[Vec<f64>; 2]) -> String {
    let (m1, m2) = (median(memory[0].clone()), median(memory[1].clone()));
    let (e1, e2) = (median(echo[0].clone()), median(echo[1].clone()));
    let ratio = e2 / e1;
    format!(
        "WebSockets over TLS to one wsbalancer (pinned to core 0) and one pod (core 1), \
         clients in the bench process; median of {RUNS} runs, the two protocols alternating.\n\n\
         | | HTTP/1.1 | HTTP/2 | HTTP/2 / HTTP/1.1 |\n|---|---|---|---|\n\
         | memory per idle WebSocket ({} held; HTTP/2: {} per connection) | {m1:.2} KiB | {m2:.2} KiB | {:.2}x |\n\
         | {MESSAGE} B echo, {ECHOERS} WebSockets (HTTP/2: one connection) | {e1:.0}/s | {e2:.0}/s | {ratio:.2}x |\n\n\
         Target (issue 19): 128 B echo over HTTP/2 ≥ 0.8 × HTTP/1.1: {ratio:.2}x, {}.\n",
        harness_thousands(IDLE),
        STREAMS_PER_CONNECTION,
        m2 / m1,
        if ratio >= 0.8 { "met" } else { "NOT met" },
    )
}

fn harness_thousands(n: usize) -> String {
    crate::bench_relay::thousands(n)
}

/// A client TLS config trusting `cert`, offering `h2` and `http/1.1`.
fn client_tls(cert: CertificateDer<'static>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert)?;
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A TLS connection to `addr` offering only `alpn`.
async fn tls_connect(
    addr: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
    alpn: &[u8],
) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut config = (**tls).clone();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("127.0.0.1")?;
    let stream = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    if stream.get_ref().1.alpn_protocol() != Some(alpn) {
        bail!(
            "the balancer did not pick {}",
            String::from_utf8_lossy(alpn)
        );
    }
    Ok(stream)
}

/// A WebSocket over HTTP/1.1 and TLS.
async fn ws_http1(
    addr: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
) -> anyhow::Result<WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>> {
    let stream = tls_connect(addr, tls, b"http/1.1").await?;
    let url = format!("wss://127.0.0.1:{}/ws", addr.port());
    let (ws, _) = tokio_tungstenite::client_async(url, stream).await?;
    Ok(ws)
}

/// An HTTP/2 connection, ready for extended CONNECT.
async fn h2_connection(
    addr: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
) -> anyhow::Result<SendRequest<Empty<Bytes>>> {
    let stream = tls_connect(addr, tls, b"h2").await?;
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(stream))
        .await?;
    tokio::spawn(conn);
    // Answered after the balancer's SETTINGS, which allow extended CONNECT.
    let request = http::Request::builder()
        .uri("https://127.0.0.1/metric")
        .body(Empty::new())?;
    send.send_request(request).await?;
    Ok(send)
}

/// A WebSocket on a new stream of `send`'s connection.
async fn ws_http2(
    send: &mut SendRequest<Empty<Bytes>>,
) -> anyhow::Result<WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>> {
    let mut request = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri("https://127.0.0.1/ws")
        .header("sec-websocket-version", "13")
        .body(Empty::new())?;
    request
        .extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let response = send.send_request(request).await?;
    if response.status() != http::StatusCode::OK {
        bail!("extended CONNECT answered {}", response.status());
    }
    let upgraded = hyper::upgrade::on(response).await?;
    Ok(WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await)
}

/// `fut`, or an error after [`STEP_TIMEOUT`].
async fn step<T>(what: &str, fut: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::time::timeout(STEP_TIMEOUT, fut)
        .await
        .with_context(|| format!("{what}: nothing within {STEP_TIMEOUT:?}"))?
}

/// The balancer's resident memory, once two readings a second apart agree.
async fn settled_rss(pid: u32) -> anyhow::Result<u64> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut last = harness::rss_kib(pid)?;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = harness::rss_kib(pid)?;
        if now == last || Instant::now() > deadline {
            return Ok(now);
        }
        last = now;
    }
}

/// Resident memory growth of a fresh balancer per idle WebSocket, in KiB,
/// with [`IDLE`] of them open over `version`.
async fn idle_memory(
    balancer: &harness::Balancer,
    tls: &Arc<rustls::ClientConfig>,
    version: Version,
) -> anyhow::Result<f64> {
    // Warm up: one WebSocket of each kind, closed, so that what is
    // allocated once (TLS, the HTTP/2 machinery) is not counted per socket.
    drop(step("a warm-up WebSocket", ws_http1(balancer.listen, tls)).await?);
    let mut send = step("a warm-up connection", h2_connection(balancer.listen, tls)).await?;
    drop(step("a warm-up stream", ws_http2(&mut send)).await?);
    drop(send);
    let before = settled_rss(balancer.pid).await?;
    let mut http1 = Vec::new();
    let mut http2 = Vec::new();
    let mut connections = Vec::new();
    match version {
        Version::Http1 => {
            for _ in 0..IDLE {
                http1.push(step("a WebSocket", ws_http1(balancer.listen, tls)).await?);
            }
        }
        Version::Http2 => {
            for _ in 0..IDLE / STREAMS_PER_CONNECTION {
                let mut send = step("a connection", h2_connection(balancer.listen, tls)).await?;
                for _ in 0..STREAMS_PER_CONNECTION {
                    http2.push(step("a stream", ws_http2(&mut send)).await?);
                }
                connections.push(send);
            }
        }
    }
    let after = settled_rss(balancer.pid).await?;
    drop((http1, http2, connections));
    Ok(after.saturating_sub(before) as f64 / IDLE as f64)
}

/// Echoes of [`MESSAGE`] bytes per second over [`ECHOERS`] WebSockets,
/// each sending its next message once the last came back.
async fn echo_rate(
    addr: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
    version: Version,
) -> anyhow::Result<f64> {
    let mut tasks = tokio::task::JoinSet::new();
    match version {
        Version::Http1 => {
            for _ in 0..ECHOERS {
                let ws = step("a WebSocket", ws_http1(addr, tls)).await?;
                tasks.spawn(echo_loop(ws));
            }
        }
        Version::Http2 => {
            let mut send = step("a connection", h2_connection(addr, tls)).await?;
            for _ in 0..ECHOERS {
                let ws = step("a stream", ws_http2(&mut send)).await?;
                tasks.spawn(echo_loop(ws));
            }
        }
    }
    let mut total = 0u64;
    while let Some(done) = tasks.join_next().await {
        total += done??;
    }
    Ok(total as f64 / ECHO_FOR.as_secs_f64())
}

/// Echoes in turn for [`ECHO_FOR`]; returns how many came back.
async fn echo_loop<S>(mut ws: WebSocketStream<S>) -> anyhow::Result<u64>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let payload = Bytes::from(vec![b'x'; MESSAGE]);
    let until = Instant::now() + ECHO_FOR;
    let mut echoed = 0u64;
    while Instant::now() < until {
        ws.send(Message::Binary(payload.clone())).await?;
        match tokio::time::timeout(STEP_TIMEOUT, ws.next()).await {
            Ok(Some(Ok(Message::Binary(_)))) => echoed += 1,
            other => bail!("an echo: {other:?}"),
        }
    }
    Ok(echoed)
}
