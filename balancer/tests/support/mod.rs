//! Shared helpers for the balancer's integration tests: real pods and a real
//! balancer on ephemeral loopback ports, and condition waits with deadlines.

#![allow(dead_code)]

pub mod browser;

use std::net::SocketAddr;
use std::time::Duration;

use common::Config;
use test_server::{Pod, PodOptions};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::Response;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wsbalancer::Balancer;

/// A client WebSocket as tokio-tungstenite gives it.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Longest any condition in a test may take to become true.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// Polls `condition` every 10 ms until it holds; panics naming `what`
/// after [`DEADLINE`].
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Awaits `fut`; panics naming `what` when it takes longer than
/// [`DEADLINE`] (a test waits on nothing without one).
pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {DEADLINE:?}"))
}

/// Starts `n` plain pods named `pod-0`...
pub async fn pods(n: usize) -> Vec<Pod> {
    let mut pods = Vec::new();
    for i in 0..n {
        pods.push(
            Pod::start(PodOptions::new(format!("pod-{i}")))
                .await
                .expect("pod starts"),
        );
    }
    pods
}

/// A config for tests: loopback listeners on port 0 and a short TTL.
pub fn config(pods: Vec<String>) -> Config {
    Config {
        pods,
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        cache_ttl: Duration::from_millis(400),
        dial_timeout: Duration::from_secs(2),
        ..Config::default()
    }
}

/// Sends the balancer's logs to the test output (shown for failing tests),
/// and keeps its warnings and errors for [`logged`].
pub fn init_logs() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let _ = tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("wsbalancer=debug,info"))
        .with(tracing_subscriber::fmt::layer().with_test_writer())
        .with(Warnings)
        .try_init();
}

/// Every warning and error logged in this test process, each as its
/// message followed by ` field=value` pairs.
static WARNINGS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Whether a warning or error logged since [`init_logs`] (by any test of
/// this process: match on something of your own, a path or an address)
/// contains every one of `parts`.
pub fn logged(parts: &[&str]) -> bool {
    WARNINGS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .any(|line| parts.iter().all(|part| line.contains(part)))
}

/// The layer that fills [`WARNINGS`]: a log line is the one observable
/// sign of some events (a certificate reload that failed).
struct Warnings;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Warnings {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if *event.metadata().level() > tracing::Level::WARN {
            return;
        }
        struct Line(String);
        impl tracing::field::Visit for Line {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                use std::fmt::Write;
                match field.name() {
                    "message" => {
                        let _ = write!(self.0, "{value:?}");
                    }
                    name => {
                        let _ = write!(self.0, " {name}={value:?}");
                    }
                }
            }
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                self.record_debug(field, &format_args!("{value}"));
            }
        }
        let mut line = Line(String::new());
        event.record(&mut line);
        WARNINGS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(line.0);
    }
}

/// Starts a balancer in front of `pods`.
pub async fn balancer_for(pods: &[Pod]) -> Balancer {
    init_logs();
    Balancer::start(config(pods.iter().map(Pod::url).collect()))
        .await
        .expect("balancer starts")
}

/// `ws://` URL of the balancer's listener.
pub fn ws_url(balancer: &Balancer, path: &str) -> String {
    format!("ws://{}{path}", balancer.listen_addr())
}

/// Connects through the balancer, failing the test on error.
pub async fn connect(url: &str) -> (Ws, Response<Option<Vec<u8>>>) {
    tokio::time::timeout(
        DEADLINE,
        tokio_tungstenite::connect_async(url.into_client_request().expect("url")),
    )
    .await
    .expect("connect in time")
    .expect("connects")
}

/// The pod a connection landed on, from `x-pod-name`.
pub fn landed_on(response: &Response<Option<Vec<u8>>>) -> String {
    response
        .headers()
        .get("x-pod-name")
        .and_then(|v| v.to_str().ok())
        .expect("x-pod-name header")
        .to_owned()
}

/// A loopback address where nothing listens, and the socket that keeps the
/// port reserved (bound, never listening: connections are refused) for as
/// long as it lives.
pub fn dead_addr() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind");
    let addr = socket.local_addr().expect("addr");
    (socket, addr)
}

/// A WebSocket opened by hand on raw TCP (no library in the way): sends
/// the upgrade, reads the response head, returns the stream and the head.
pub async fn raw_upgrade(addr: SocketAddr, path: &str) -> (TcpStream, String) {
    use tokio::io::AsyncWriteExt;
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(request.as_bytes())
        .await
        .expect("send upgrade");
    let head = read_response_head(&mut tcp).await;
    (tcp, head)
}

/// Reads a response head byte by byte (nothing past it), within the
/// deadline.
pub async fn read_response_head(tcp: &mut TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(DEADLINE, tcp.read(&mut byte))
            .await
            .expect("response in time")
            .expect("read");
        assert_eq!(n, 1, "closed during the handshake");
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A certificate made for one test and written to files a balancer's
/// `tlsCert`/`tlsKey` can name; the files go with it.
pub struct CertFiles {
    /// The certificate as generated (PEM, DER, SPKI).
    pub generated: test_server::self_signed::SelfSigned,
    /// The certificate's file.
    pub cert: std::path::PathBuf,
    /// The key's file.
    pub key: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl CertFiles {
    /// A new self-signed certificate, written out.
    pub fn generate() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let generated = test_server::self_signed::SelfSigned::generate().expect("a certificate");
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert, &generated.cert_pem).expect("write cert");
        std::fs::write(&key, &generated.key_pem).expect("write key");
        CertFiles {
            generated,
            cert,
            key,
            _dir: dir,
        }
    }

    /// `config` serving TLS with this certificate.
    pub fn serve_with(&self, config: &mut Config) {
        config.tls_cert = Some(self.cert.clone());
        config.tls_key = Some(self.key.clone());
    }
}

/// A pod written by hand, for what test-server will not do: it answers
/// `/metric` (0 connections) itself and hands every other request to
/// `on_upgrade` with the stream, the `Sec-WebSocket-Accept` that answers its
/// key, and the bytes read past the request head.
pub async fn hand_pod<F, Fut>(on_upgrade: F) -> SocketAddr
where
    F: Fn(TcpStream, String, Vec<u8>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    hand_pod_seeing_heads(move |tcp, request| on_upgrade(tcp, request.accept, request.early)).await
}

/// A request a [`hand_pod_seeing_heads`] pod got (other than `/metric`).
pub struct HandRequest {
    /// The request head as it arrived, up to and with its blank line.
    pub head: String,
    /// The `Sec-WebSocket-Accept` that answers its key.
    pub accept: String,
    /// The bytes read past the head.
    pub early: Vec<u8>,
}

/// [`hand_pod`], whose `on_upgrade` also sees the request head: for tests
/// of what the balancer sends a pod.
pub async fn hand_pod_seeing_heads<F, Fut>(on_upgrade: F) -> SocketAddr
where
    F: Fn(TcpStream, HandRequest) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let on_upgrade = std::sync::Arc::new(on_upgrade);
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let on_upgrade = on_upgrade.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let end = loop {
                    match tcp.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                if head.starts_with("GET /metric") {
                    let _ = tcp.write_all(EMPTY_REPORT.as_bytes()).await;
                    return;
                }
                let key = head
                    .lines()
                    .find(|l| l.to_ascii_lowercase().starts_with("sec-websocket-key:"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
                    .unwrap_or_default();
                let accept = wsbalancer::wire::accept_key(key.as_bytes());
                let early = buf[end..].to_vec();
                on_upgrade(
                    tcp,
                    HandRequest {
                        head,
                        accept,
                        early,
                    },
                )
                .await;
            });
        }
    });
    addr
}

/// A pod's 101 head answering with `accept`.
pub fn switching_protocols_head(accept: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
         sec-websocket-accept: {accept}\r\n\r\n"
    )
    .into_bytes()
}

/// Reads one unmasked server frame: (opcode, payload).
pub async fn raw_frame(tcp: &mut TcpStream) -> (u8, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let read = async {
        let mut h = [0u8; 2];
        tcp.read_exact(&mut h).await?;
        let len = match h[1] & 0x7F {
            126 => {
                let mut b = [0u8; 2];
                tcp.read_exact(&mut b).await?;
                usize::from(u16::from_be_bytes(b))
            }
            127 => {
                let mut b = [0u8; 8];
                tcp.read_exact(&mut b).await?;
                u64::from_be_bytes(b) as usize
            }
            n => usize::from(n),
        };
        let mut payload = vec![0u8; len];
        tcp.read_exact(&mut payload).await?;
        std::io::Result::Ok((h[0] & 0x0F, payload))
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .expect("frame in time")
        .expect("frame")
}

/// Waits until every pod holds no connection and the balancer relays none:
/// nothing left behind once the clients are gone.
pub async fn wait_all_closed(pods: &[Pod], balancer: &Balancer) {
    wait_until("pods hold nothing", || {
        pods.iter().all(|p| p.connections() == 0)
    })
    .await;
    wait_until("balancer relays nothing", || {
        balancer
            .registry()
            .snapshots()
            .iter()
            .all(|s| s.relayed == 0)
    })
    .await;
}

/// Sends `head` raw and returns whatever comes back before the close.
pub async fn raw_exchange(addr: SocketAddr, head: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let _ = tcp.write_all(head).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut out))
        .await
        .expect("the balancer answers or closes in time");
    String::from_utf8_lossy(&out).into_owned()
}

/// A plain `GET path` with `Connection: close`; the whole response text.
pub async fn plain_get(addr: SocketAddr, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    raw_exchange(addr, request.as_bytes()).await
}

/// A `wsbalancer` process started with `args` (and no inherited `WSB_*`
/// environment), killed when dropped (`kill_on_drop`: a failed assertion
/// leaves nothing running), with its `ready` line's fields.
pub struct Process {
    /// The running child.
    pub child: tokio::process::Child,
    /// The `ready listen=... admin=...` line.
    pub ready: String,
}

impl Process {
    /// Starts the binary and waits for its ready line.
    pub async fn start<I, S>(args: I) -> Process
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        Process::spawn(Process::command(args)).await
    }

    /// The command [`Process::start`] runs, for a test to adjust before
    /// [`Process::spawn`].
    pub fn command<I, S>(args: I) -> tokio::process::Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsbalancer"));
        command
            .args(args)
            .env_clear()
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// Starts `command` (from [`Process::command`]) and waits for its
    /// ready line.
    pub async fn spawn(mut command: tokio::process::Command) -> Process {
        use tokio::io::{AsyncBufReadExt, BufReader};
        let mut child = command.spawn().expect("wsbalancer starts");
        let stdout = child.stdout.take().expect("stdout");
        let ready = tokio::time::timeout(DEADLINE, BufReader::new(stdout).lines().next_line())
            .await
            .unwrap_or_else(|_| panic!("no ready line from wsbalancer within {DEADLINE:?}"))
            .expect("stdout readable")
            .expect("wsbalancer exited before its ready line");
        Process { child, ready }
    }

    /// A `key=value` field of the ready line (`listen`, `admin`).
    pub fn field(&self, name: &str) -> String {
        self.ready
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in {:?}", self.ready))
            .to_owned()
    }

    /// Sends `signal` (`libc::SIGTERM`, `libc::SIGHUP`) to the process.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = self.child.id().expect("wsbalancer is running");
        let pid = libc::pid_t::try_from(pid).expect("a pid fits pid_t");
        // SAFETY: kill(2) takes plain integers; the pid is our own child,
        // not yet reaped (`child.id()` is `None` once it is).
        let sent = unsafe { libc::kill(pid, signal) };
        assert_eq!(
            sent,
            0,
            "signal {signal} to wsbalancer: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Runs `command` to its end with stdin closed and its output captured. It
/// is killed (`kill_on_drop`) and the test fails, naming `what`, when it
/// runs longer than `limit`.
pub async fn output_within(
    command: &mut tokio::process::Command,
    limit: Duration,
    what: &str,
) -> std::process::Output {
    let child = command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{what} does not start: {e}"));
    // At the deadline the future, and with it the child, is dropped:
    // killed.
    tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{what} still running after {limit:?}: killed"))
        .unwrap_or_else(|e| panic!("waiting for {what}: {e}"))
}

/// A child process killed (and reaped) when dropped, so that a failed
/// assertion leaves nothing running; for tests without a runtime.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// [`output_within`] for tests without a runtime: stdout and stderr are
/// read on threads of their own (a full pipe never blocks the child), the
/// child is polled until it exits, and past `limit` it is killed and the
/// test fails naming `what`, with what it printed so far.
pub fn run_within(
    command: &mut std::process::Command,
    limit: Duration,
    what: &str,
) -> std::process::Output {
    use std::io::Read;
    let mut child = KillOnDrop(
        command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{what} does not start: {e}")),
    );
    let read = |pipe: Option<Box<dyn Read + Send>>| {
        let (sender, received) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut out = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut out);
            }
            let _ = sender.send(out);
        });
        received
    };
    let stdout = read(child.0.stdout.take().map(|p| Box::new(p) as _));
    let stderr = read(child.0.stderr.take().map(|p| Box::new(p) as _));
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        match child.0.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => panic!("waiting for {what}: {e}"),
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.0.kill();
            let _ = child.0.wait();
            let printed = |r: std::sync::mpsc::Receiver<Vec<u8>>| {
                let out = r.recv_timeout(Duration::from_secs(1)).unwrap_or_default();
                String::from_utf8_lossy(&out).into_owned()
            };
            panic!(
                "{what} still running after {limit:?}: killed. stdout:\n{}\nstderr:\n{}",
                printed(stdout),
                printed(stderr)
            );
        }
        // Polling the child's exit, with the deadline above.
        std::thread::sleep(Duration::from_millis(10));
    };
    // The pipes close when the child exits, unless a process it started
    // still holds them.
    let collect = |r: std::sync::mpsc::Receiver<Vec<u8>>, pipe: &str| {
        r.recv_timeout(DEADLINE).unwrap_or_else(|_| {
            panic!("{what} exited but its {pipe} is still open {DEADLINE:?} later")
        })
    };
    std::process::Output {
        status,
        stdout: collect(stdout, "stdout"),
        stderr: collect(stderr, "stderr"),
    }
}

/// A hand-written pod's whole answer to `GET /metric`: no connections.
pub const EMPTY_REPORT: &str =
    "HTTP/1.1 200 OK\r\ncontent-length: 23\r\nconnection: close\r\n\r\n{\"agentsConnections\":0}";

/// A masked client text frame carrying `text` (at most 125 bytes), for raw
/// clients.
pub fn masked_text(text: &str) -> Vec<u8> {
    assert!(text.len() <= 125, "a short frame");
    let mask = [0x5a, 0x1f, 0x33, 0xc4];
    let mut frame = vec![0x81, 0x80 | text.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// `metric{protocol="…"}` (the by-protocol families) from `balancer`'s
/// `/metrics`.
pub async fn by_protocol(balancer: &Balancer, metric: &str, protocol: &str) -> f64 {
    let series = format!("{metric}{{protocol=\"{protocol}\"}}");
    metric_value(balancer.admin_addr(), &series).await
}

/// The value of one series (`name{labels}` exactly as exported) in a
/// scrape of the balancer's `/metrics` on `admin`.
pub async fn metric_value(admin: SocketAddr, series: &str) -> f64 {
    let scrape = plain_get(admin, "/metrics").await;
    let prefix = format!("{series} ");
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in the scrape"))
}
