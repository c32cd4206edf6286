//! `cargo xtask bench silent-pod`: what a pod host that drops off the
//! network (packets vanish, no reset: a node failure, a partition) costs
//! the clients, for wsbalancer at its defaults, for wsbalancer with hedged
//! dials off (`--hedge-delay 0s`: the baseline of the same run), and for
//! HAProxy and NGINX when installed, each configured as a new user would.
//!
//! Each proxy gets a fresh network-namespace lab (`test_server::netns`):
//! two pod hosts, the proxy and the clients on the edge. Busy clients send
//! a message every second and wait for its echo, idle ones send nothing.
//! Then host 0 goes silent, new connections keep arriving, and the run
//! records when each client of the silent pod was told (a Close frame, or
//! its connection cut) and how long each new connection's handshake took.
//!
//! Needs root and `ip` (network namespaces).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::bench_relay::peers::Peer;
use crate::harness::{Procs, start_balancer, with_procs};
use test_server::PodOptions;
use test_server::netns::Lab;

/// Clients that send a message every second, before the silence.
const BUSY: usize = 40;

/// Clients that send nothing, before the silence.
const IDLE: usize = 20;

/// New connections opened during the silence.
const NEW: usize = 400;

/// Pace of the new connections.
const NEW_EVERY: Duration = Duration::from_millis(20);

/// How long the clients of the silent pod are watched.
const WATCH: Duration = Duration::from_secs(60);

/// Bound on one handshake of a new connection (past it, it counts as
/// waiting this long).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// A new connection slower than this is one the issue counts.
const SLOW: Duration = Duration::from_secs(1);

/// One proxy under test.
#[derive(Debug, Clone, Copy)]
enum Subject {
    /// wsbalancer with these extra arguments.
    Ours(&'static str, &'static [&'static str]),
    /// A comparison proxy.
    Peer(Peer),
}

impl Subject {
    fn name(self) -> &'static str {
        match self {
            Subject::Ours(name, _) => name,
            Subject::Peer(peer) => peer.name(),
        }
    }
}

/// What one proxy's run measured.
#[derive(Debug, Default)]
struct Outcome {
    /// When each busy client of the silent pod was told (`None`: not
    /// within [`WATCH`]).
    busy: Vec<Option<Duration>>,
    /// The same for the idle clients.
    idle: Vec<Option<Duration>>,
    /// Close codes the told clients got (0: cut without a Close).
    codes: Vec<u16>,
    /// Handshake time of every new connection.
    new: Vec<Duration>,
    /// New connections that failed (refused, or no 101).
    new_failed: usize,
}

/// Runs every subject and returns the report.
pub async fn run() -> anyhow::Result<String> {
    if !Lab::available() {
        bail!("the silent-pod benchmark needs root and `ip` (network namespaces)");
    }
    let mut subjects = vec![
        Subject::Ours("wsbalancer", &[]),
        Subject::Ours("wsbalancer, hedging off", &["--hedge-delay", "0s"]),
    ];
    let mut missing = Vec::new();
    for peer in [Peer::Haproxy, Peer::Nginx] {
        if peer.binary().is_some() {
            subjects.push(Subject::Peer(peer));
        } else {
            missing.push(peer.program());
        }
    }
    let mut outcomes = Vec::new();
    for subject in subjects {
        eprintln!("silent pod: {}", subject.name());
        outcomes.push((subject, one(subject).await?));
    }
    Ok(report(&outcomes, &missing))
}

/// One proxy in a lab of its own.
async fn one(subject: Subject) -> anyhow::Result<Outcome> {
    let lab = Lab::create(2).context("network namespaces")?;
    let silent = lab.start_pod(0, PodOptions::new("silent"))?;
    let healthy = lab.start_pod(1, PodOptions::new("healthy"))?;
    let pods = [silent.pod.addr(), healthy.pod.addr()];
    let edge = lab.edge.clone();
    let lab = std::sync::Arc::new(lab);
    let in_edge = lab.clone();
    // Everything the run starts (the proxy's process, the clients'
    // sockets) is created from inside the edge namespace.
    let outcome = test_server::netns::run_in(&edge, move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        runtime.block_on(with_procs(async |procs| {
            scenario(procs, &in_edge, subject, &pods).await
        }))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the edge thread panicked"))??;
    drop((silent, healthy));
    outcome
}

async fn scenario(
    procs: &mut Procs,
    lab: &Lab,
    subject: Subject,
    pods: &[SocketAddr],
) -> anyhow::Result<Outcome> {
    let listen = match subject {
        Subject::Ours(name, args) => {
            let args = [&["--log-level", "warn"][..], args].concat();
            start_balancer(procs, name, pods, None, args).await?.listen
        }
        Subject::Peer(peer) => {
            let dir = std::env::temp_dir().join(format!("wsb-silent-{}", std::process::id()));
            peer.start(procs, peer.program(), &dir, pods, None).await?.0
        }
    };
    let mut busy = Vec::new();
    let mut idle = Vec::new();
    for n in 0..BUSY + IDLE {
        let client = Client::open(listen)
            .await
            .with_context(|| format!("client {n}"))?;
        if n < BUSY {
            busy.push(client);
        } else {
            idle.push(client);
        }
    }
    for client in &mut busy {
        client.echo().await?;
    }
    lab.silence(0)?;
    let silenced = Instant::now();
    let watch = |clients: Vec<Client>, sends: bool| {
        clients
            .into_iter()
            .filter(|c| c.pod == "silent")
            .map(|c| tokio::spawn(c.watch(silenced, sends)))
            .collect::<Vec<_>>()
    };
    let busy = watch(busy, true);
    let idle = watch(idle, false);
    let mut outcome = Outcome::default();
    let mut held = Vec::new();
    let mut pace = tokio::time::interval(NEW_EVERY);
    let mut opening = tokio::task::JoinSet::new();
    for _ in 0..NEW {
        pace.tick().await;
        opening.spawn(async move {
            let started = Instant::now();
            let opened = tokio::time::timeout(HANDSHAKE_TIMEOUT, Client::open(listen)).await;
            (started.elapsed(), opened)
        });
    }
    while let Some(joined) = opening.join_next().await {
        let (took, opened) = joined?;
        outcome.new.push(took);
        match opened {
            Ok(Ok(client)) => held.push(client),
            _ => outcome.new_failed += 1,
        }
    }
    for (tasks, into) in [(busy, &mut outcome.busy), (idle, &mut outcome.idle)] {
        for task in tasks {
            let told = task.await?;
            into.push(told.map(|(after, _)| after));
            outcome.codes.extend(told.map(|(_, code)| code));
        }
    }
    drop(held);
    Ok(outcome)
}

/// A raw WebSocket client (a library would turn the 1014 it gets into a
/// protocol error).
struct Client {
    tcp: TcpStream,
    /// The pod it landed on (`x-pod-name`).
    pod: String,
}

impl Client {
    /// Opens a WebSocket through `addr`.
    async fn open(addr: SocketAddr) -> anyhow::Result<Client> {
        let mut tcp = TcpStream::connect(addr).await?;
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).await?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if tcp.read(&mut byte).await? == 0 || head.len() > 16 * 1024 {
                bail!("no complete answer to the upgrade");
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        if !head.starts_with("http/1.1 101") {
            bail!("no 101: {}", head.lines().next().unwrap_or_default());
        }
        let pod = head
            .lines()
            .find_map(|l| l.strip_prefix("x-pod-name:"))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default();
        Ok(Client { tcp, pod })
    }

    /// Sends a message and waits for its echo.
    async fn echo(&mut self) -> anyhow::Result<()> {
        self.tcp.write_all(&masked_text(b"ping")).await?;
        let (opcode, payload) = tokio::time::timeout(HANDSHAKE_TIMEOUT, frame(&mut self.tcp))
            .await
            .context("no echo in time")??;
        if opcode != 0x1 || payload != b"ping" {
            bail!("not an echo: opcode {opcode}");
        }
        Ok(())
    }

    /// Watches the connection from `since` for [`WATCH`] (sending a message
    /// every second when `sends`): when it was told, and the close code
    /// (0: cut without one). `None`: not told in time.
    async fn watch(mut self, since: Instant, sends: bool) -> Option<(Duration, u16)> {
        let until = tokio::time::Instant::from_std(since + WATCH);
        let (mut reader, mut writer) = self.tcp.split();
        // Each side is one future for the whole watch: a frame is never
        // cut in half by the other side's turn.
        let reading = async {
            loop {
                match frame(&mut reader).await {
                    Ok((0x8, payload)) => {
                        return payload
                            .get(..2)
                            .map_or(0, |c| u16::from_be_bytes([c[0], c[1]]));
                    }
                    Ok(_) => {}
                    Err(_) => return 0,
                }
            }
        };
        let sending = async {
            if !sends {
                return std::future::pending().await;
            }
            let mut every = tokio::time::interval(Duration::from_secs(1));
            loop {
                every.tick().await;
                if writer.write_all(&masked_text(b"ping")).await.is_err() {
                    return 0;
                }
            }
        };
        tokio::select! {
            () = tokio::time::sleep_until(until) => None,
            code = reading => Some((since.elapsed(), code)),
            code = sending => Some((since.elapsed(), code)),
        }
    }
}

/// A masked client text frame of `payload` (at most 125 bytes).
fn masked_text(payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![0x81, 0x80 | (payload.len().min(125) as u8)];
    out.extend_from_slice(&mask);
    out.extend(
        payload
            .iter()
            .take(125)
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4]),
    );
    out
}

/// Reads one server frame: (opcode, payload), refusing payloads over
/// 64 KiB (an echo here is four bytes).
async fn frame<R: AsyncReadExt + Unpin>(r: &mut R) -> anyhow::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    r.read_exact(&mut head).await?;
    let len = match head[1] & 0x7f {
        126 => u64::from(r.read_u16().await?),
        127 => r.read_u64().await?,
        n => u64::from(n),
    };
    if len > 64 * 1024 {
        bail!("a {len}-byte frame");
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).await?;
    Ok((head[0] & 0x0f, payload))
}

/// The report: one row per proxy.
fn report(outcomes: &[(Subject, Outcome)], missing: &[&str]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "A pod host goes silent (packets dropped, no reset) under {BUSY} busy clients (a \
         message a second) and {IDLE} idle ones, spread over 2 pods; then {NEW} new \
         connections arrive, one every {NEW_EVERY:?}. Clients of the silent pod are watched \
         for {WATCH:?}.\n"
    );
    let _ = writeln!(
        out,
        "| proxy | busy clients of the silent pod told | slowest | idle clients told | slowest | close codes | new connections over {SLOW:?} | slowest new | failed new |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    for (subject, o) in outcomes {
        let told = |v: &[Option<Duration>]| v.iter().filter(|t| t.is_some()).count();
        let slowest = |v: &[Option<Duration>]| {
            if v.iter().any(Option::is_none) {
                format!("over {}s", WATCH.as_secs())
            } else {
                let max = v.iter().flatten().max().copied().unwrap_or_default();
                format!("{:.1}s", max.as_secs_f64())
            }
        };
        let mut codes = o.codes.clone();
        codes.sort_unstable();
        codes.dedup();
        let codes: Vec<String> = codes
            .iter()
            .map(|c| if *c == 0 { "cut".into() } else { c.to_string() })
            .collect();
        let slow = o.new.iter().filter(|t| **t > SLOW).count();
        let slowest_new = o.new.iter().max().copied().unwrap_or_default();
        let _ = writeln!(
            out,
            "| {} | {} of {} | {} | {} of {} | {} | {} | {slow} of {} | {:.2}s | {} |",
            subject.name(),
            told(&o.busy),
            o.busy.len(),
            slowest(&o.busy),
            told(&o.idle),
            o.idle.len(),
            slowest(&o.idle),
            if codes.is_empty() {
                "none".into()
            } else {
                codes.join(", ")
            },
            o.new.len(),
            slowest_new.as_secs_f64(),
            o.new_failed,
        );
    }
    if let [(_, ours), (_, off), ..] = outcomes {
        let max = |o: &Outcome| {
            o.new
                .iter()
                .max()
                .copied()
                .unwrap_or_default()
                .as_secs_f64()
        };
        if max(off) > 0.0 {
            let _ = writeln!(
                out,
                "\nSlowest new connection, hedged against not hedged (same run): {:.3}x.",
                max(ours) / max(off)
            );
        }
    }
    for program in missing {
        let _ = writeln!(
            out,
            "\n{program} is not installed, so it has no row (`cargo xtask bench --install-peers` installs it)."
        );
    }
    out
}
