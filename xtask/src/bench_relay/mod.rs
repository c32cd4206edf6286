//! `cargo xtask bench`: what the relay costs, as ratios against a direct
//! connection to the pod, a bare TCP relay ([`floor`]) and HAProxy (NGINX
//! too when installed), measured in the same run: new connections per
//! second, echo throughput and latency (small and large messages), each
//! proxy's CPU per operation, and idle memory per relayed connection. Each
//! figure is the median of the runs, and targets alternate within every
//! run, so a noisy moment hits them all. As the relay issue's method asks,
//! the proxies are pinned to core 0 and the pod and clients to core 1.

mod args;
mod docs;
pub mod floor;
pub mod peers;
mod plan;
mod table;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::harness::{self, Pod, Procs, bin, pinned};

pub use self::args::CompareArgs;
use self::peers::Peer;
use self::plan::Plan;
pub use self::plan::args;
use self::table::Figures;
pub use self::table::{median, thousands};

/// Core the proxies run on (the pod-count sweep pins them the same way).
pub const PROXY_CORE: Option<u32> = Some(0);

/// Core the pod and every client run on: never the proxy's.
pub const LOAD_CORE: Option<u32> = Some(1);

/// Process name of the pod (one pod, `pod-0`).
const POD: &str = "pod";

/// Process name of the fresh proxy started for each idle measure.
const IDLE_PROXY: &str = "idle-proxy";

/// Process name of the clients holding idle connections.
const IDLE_CLIENTS: &str = "idle-clients";

/// Idle connections are opened in waves of this many (one client process
/// each), as they would arrive over time, rather than all at one instant.
const IDLE_WAVE: usize = 500;

/// How long one load run may take: the largest (20,000 connections) takes
/// seconds; one still going after this is stuck.
const LOAD_TIMEOUT: Duration = Duration::from_secs(300);

/// How long the pod may take to reach the count an idle measure waits for.
const POD_COUNT_TIMEOUT: Duration = Duration::from_secs(180);

/// How long a proxy's memory may take to settle after the last idle wave.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Readings of a settling proxy's memory are this far apart; two equal
/// ones in a row mean it has settled.
const SETTLE_EVERY: Duration = Duration::from_secs(1);

/// How long the Python baseline client may take.
const BASELINE_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs the comparison (installing the peers first when asked) and returns
/// the markdown report; a full run also writes it to docs/benchmarks.md.
pub async fn run(args: CompareArgs) -> anyhow::Result<String> {
    if args.installs_peers() {
        peers::install().await?;
    }
    let plan = args.plan();
    let report = harness::with_procs(async |procs: &mut Procs| measure(procs, &plan).await).await?;
    if args.updates_docs() {
        let path = harness::workspace_root().join("docs/benchmarks.md");
        docs::write(&path, &report)?;
        println!("==> results written to {}", path.display());
    }
    Ok(report)
}

/// One thing the load goes through: the pod itself, wsbalancer, the bare
/// relay or a peer.
struct Target {
    name: &'static str,
    url: String,
    /// The proxy's process, for CPU; `None` for the direct connection.
    pid: Option<u32>,
}

/// One load run's result, from test-client's JSON.
pub struct Load {
    /// Connections that completed.
    pub ok: u64,
    /// Echoes received.
    pub messages: u64,
    /// Wall time of the run, as test-client measured it.
    pub seconds: f64,
    /// 99th percentile of the echo round trips.
    pub p99_ms: f64,
}

/// Runs test-client against `url` with `args`, on the load core; an error
/// when any connection failed.
pub async fn load(url: &str, args: &[String]) -> anyhow::Result<Load> {
    let mut cmd = pinned(LOAD_CORE, bin("test-client"));
    cmd.args(["--url", url, "--json", "-", "--timeout", "30s"])
        .args(args);
    let out = harness::output("test-client", &mut cmd, LOAD_TIMEOUT).await?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "test-client JSON (stderr: {})",
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })?;
    if json["failed"].as_u64().unwrap_or(1) > 0 {
        bail!("test-client reported failures: {}", json["failures"]);
    }
    Ok(Load {
        ok: json["ok"].as_u64().unwrap_or(0),
        messages: json["messages_received"].as_u64().unwrap_or(0),
        seconds: json["duration_secs"].as_f64().unwrap_or(f64::NAN),
        p99_ms: json["round_trip_ms"]["p99"].as_f64().unwrap_or(f64::NAN),
    })
}

/// One load run through `target`, with the CPU seconds its proxy spent
/// meanwhile (`None` for the direct connection).
async fn load_through(target: &Target, args: &[String]) -> anyhow::Result<(Load, Option<f64>)> {
    let before = target.pid.map(harness::cpu_seconds).transpose()?;
    let load = load(&target.url, args).await?;
    let spent = match (target.pid, before) {
        (Some(pid), Some(before)) => Some(harness::cpu_seconds(pid)? - before),
        _ => None,
    };
    Ok((load, spent))
}

/// Starts a wsbalancer in front of `pod` as process `name`, on the proxy
/// core; returns (ws url, pid).
async fn start_wsbalancer(
    procs: &mut Procs,
    name: &str,
    pod: &Pod,
) -> anyhow::Result<(String, u32)> {
    let balancer = harness::start_balancer(
        procs,
        name,
        &[pod.addr],
        PROXY_CORE,
        ["--log-level", "error", "--read-timeout", "10m"],
    )
    .await?;
    Ok((balancer.ws_url(), balancer.pid))
}

/// Starts the bare relay in front of `pod`, on the proxy core; returns
/// (ws url, pid).
async fn start_tcp_relay(procs: &mut Procs, pod: &Pod) -> anyhow::Result<(String, u32)> {
    let mut cmd = pinned(PROXY_CORE, bin("xtask"));
    cmd.args(["tcp-relay", "--to", &pod.addr.to_string()]);
    let ready = procs.start(floor::NAME, &mut cmd, 1).await?;
    let listen = ready
        .lines
        .first()
        .and_then(|l| harness::field(l, "listen"))
        .context("tcp relay listen address")?;
    Ok((format!("ws://{listen}/ws"), ready.pid))
}

/// Starts the proxy whose column is `name` afresh as [`IDLE_PROXY`] (the
/// idle measure must start from an empty process); returns (ws url, pid).
async fn start_fresh(
    procs: &mut Procs,
    name: &str,
    pod: &Pod,
    dir: &Path,
) -> anyhow::Result<(String, u32)> {
    match Peer::named(name) {
        None => start_wsbalancer(procs, IDLE_PROXY, pod).await,
        Some(peer) => {
            let (addr, pid) = peer
                .start(procs, IDLE_PROXY, dir, &[pod.addr], PROXY_CORE)
                .await?;
            Ok((ws_url(addr), pid))
        }
    }
}

fn ws_url(addr: SocketAddr) -> String {
    format!("ws://{addr}/ws")
}

/// Waits until the pod reports a count for which `done` holds. When it
/// does not in time, the error says what the pod last answered and
/// whether its process still runs.
async fn wait_pod(
    procs: &mut Procs,
    pod: &Pod,
    what: &str,
    done: impl Fn(u64) -> bool,
) -> anyhow::Result<()> {
    let mut last = None;
    let reached = harness::poll(POD_COUNT_TIMEOUT, Duration::from_millis(50), async || {
        let count = harness::pod_connections(pod.addr).await;
        let reached = count.as_ref().is_ok_and(|&n| done(n));
        last = Some(count);
        reached.then_some(())
    })
    .await;
    if reached.is_some() {
        return Ok(());
    }
    let last = match last {
        Some(Ok(count)) => count.to_string(),
        Some(Err(error)) => format!("{error:#}"),
        None => "nothing".to_owned(),
    };
    let process = match procs.exit_status(POD) {
        Some(status) => format!("the pod process exited ({status})"),
        None => "the pod process still runs".to_owned(),
    };
    bail!("{what} not reached: the pod last answered {last}; {process}")
}

/// Resident memory of `pid` once it has stopped changing (two equal
/// readings [`SETTLE_EVERY`] apart), or the last reading at
/// [`SETTLE_TIMEOUT`]: the allocations that follow the last handshakes
/// count, and one that never settles does not hold the run.
async fn settled_rss(pid: u32) -> anyhow::Result<u64> {
    let mut previous = None;
    let settled = harness::poll(
        SETTLE_TIMEOUT,
        SETTLE_EVERY,
        async || match harness::rss_kib(pid) {
            Ok(now) if previous == Some(now) => Some(Ok(now)),
            Ok(now) => {
                previous = Some(now);
                None
            }
            Err(error) => Some(Err(error)),
        },
    )
    .await;
    match settled {
        Some(rss) => rss,
        None => previous.context("no RSS reading"),
    }
}

/// RSS growth per idle relayed connection of a fresh proxy process, in KiB.
/// Connections arrive in waves of [`IDLE_WAVE`].
async fn idle_memory(
    procs: &mut Procs,
    name: &'static str,
    pod: &Pod,
    dir: &Path,
    idle: usize,
) -> anyhow::Result<f64> {
    let (url, pid) = start_fresh(procs, name, pod, dir).await?;
    let before = harness::rss_kib(pid)?;
    let mut opened = 0usize;
    while opened < idle {
        let n = IDLE_WAVE.min(idle - opened);
        let mut clients = pinned(LOAD_CORE, bin("test-client"));
        clients
            .args(["--url", &url, "--connections", &n.to_string()])
            .args(["--concurrency", &n.to_string()])
            .args(["--messages", "1", "--size", "16"])
            .args(["--hold", "600s", "--timeout", "60s"]);
        procs.spawn(IDLE_CLIENTS, &mut clients)?;
        opened += n;
        let target = opened as u64;
        wait_pod(procs, pod, "idle connections open", |c| c >= target).await?;
    }
    let after = settled_rss(pid).await?;
    let per = (after as f64 - before as f64) / idle as f64;
    println!(
        "    idle {name}: {idle} connections, RSS {before} KiB -> {after} KiB, {per:.2} KiB each"
    );
    procs.kill_all(IDLE_CLIENTS).await;
    wait_pod(procs, pod, "idle connections closed", |c| c == 0).await?;
    procs.stop(IDLE_PROXY).await;
    Ok(per)
}

/// Starts the pod and every target, measures them as `plan` says, and
/// returns the report.
async fn measure(procs: &mut Procs, plan: &Plan) -> anyhow::Result<String> {
    let dir = std::env::temp_dir().join(format!("wsb-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let pod = harness::start_pods(procs, POD, &[0], LOAD_CORE)
        .await?
        .pop()
        .context("test-server started no pod")?;
    let (ours, pid) = start_wsbalancer(procs, "wsbalancer", &pod).await?;
    let mut targets = vec![
        Target {
            name: "direct",
            url: pod.ws_url(),
            pid: None,
        },
        Target {
            name: "wsbalancer",
            url: ours,
            pid: Some(pid),
        },
    ];
    let (url, pid) = start_tcp_relay(procs, &pod).await?;
    targets.push(Target {
        name: floor::NAME,
        url,
        pid: Some(pid),
    });
    let mut notes = vec![format!(
        "{}: about the least a proxy can do here, tokio's `copy_bidirectional` with 64 KiB buffers between the client and the pod (no parsing, no frames, no choice of pod): for the echoes, what the extra hop itself costs on this machine. No floor for new connections (two 64 KiB buffers each), and no idle figure: it holds those buffers by design.",
        floor::NAME
    )];
    for peer in [Peer::Haproxy, Peer::Nginx] {
        if !plan.peers {
            notes.push(format!("{} left out (--no-peers).", peer.name()));
            continue;
        }
        if peer.binary().is_none() {
            let note = format!(
                "{} is not installed, so it has no column (`cargo xtask bench --install-peers` installs it).",
                peer.name()
            );
            println!("    {note}");
            notes.push(note);
            continue;
        }
        let (addr, pid) = peer
            .start(procs, peer.program(), &dir, &[pod.addr], PROXY_CORE)
            .await?;
        notes.push(format!("{}: {}.", peer.name(), peer.version().await));
        targets.push(Target {
            name: peer.name(),
            url: ws_url(addr),
            pid: Some(pid),
        });
    }
    let mut figures: Vec<Figures> = targets
        .iter()
        .map(|_| Figures {
            idle_kib: vec![Vec::new(); plan.idle.len()],
            ..Figures::default()
        })
        .collect();
    let conns = plan.conns();
    let echoes = plan.echoes();

    for run in 0..plan.runs {
        println!("  run {} of {}", run + 1, plan.runs);
        for (target, fig) in targets.iter().zip(figures.iter_mut()) {
            let (r, cpu) = load_through(target, &conns).await?;
            let rate = r.ok as f64 / r.seconds;
            fig.conn_rate.push(rate);
            if let Some(cpu) = cpu {
                fig.cpu_conn.push(cpu / r.ok as f64 * 1e6);
            }
            println!("    connections/s {}: {rate:.0}", target.name);
        }
        for (i, (name, args)) in echoes.iter().enumerate() {
            for (target, fig) in targets.iter().zip(figures.iter_mut()) {
                let (r, cpu) = load_through(target, args).await?;
                let rate = r.messages as f64 / r.seconds;
                fig.echo[i].0.push(rate);
                fig.echo[i].1.push(r.p99_ms);
                if let Some(cpu) = cpu {
                    fig.echo[i].2.push(cpu / r.messages as f64 * 1e6);
                }
                println!(
                    "    {name} {}: {rate:.0} msg/s, p99 {:.2} ms",
                    target.name, r.p99_ms
                );
            }
        }
        for (level, &idle) in plan.idle.iter().enumerate() {
            for (target, fig) in targets.iter().zip(figures.iter_mut()) {
                if target.pid.is_some() && target.name != floor::NAME && idle > 0 {
                    fig.idle_kib[level]
                        .push(idle_memory(procs, target.name, &pod, &dir, idle).await?);
                }
            }
        }
    }
    let baseline = python_baseline(&pod).await;
    let _ = std::fs::remove_dir_all(&dir);
    let names: Vec<&str> = targets.iter().map(|t| t.name).collect();
    let mut out = table::render(&names, &figures, plan, &echoes);
    let _ = writeln!(out);
    for note in notes {
        let _ = writeln!(out, "- {note}");
    }
    let _ = writeln!(out, "- {baseline}");
    let _ = writeln!(
        out,
        "- Cores: each proxy pinned to core 0; the pod and every client process to core 1 (`taskset`)."
    );
    Ok(out)
}

/// test-client against Python's `websockets` on the small echo scenario,
/// both straight to the pod on the same core: the load tool must not be
/// what limits the figures.
async fn python_baseline(pod: &Pod) -> String {
    let script = harness::workspace_root().join("scripts/python-echo-client.py");
    // Same shape as the scenario: 64 connections x 128 B, fewer messages
    // (the Python client is slow, which is the point).
    let messages = "200";
    let ours = load(&pod.ws_url(), &args(64, 64, 200, 128)).await;
    let mut cmd = pinned(LOAD_CORE, "python3");
    cmd.arg(&script)
        .args([&pod.ws_url(), "64", messages, "128"]);
    let python = harness::output("python3", &mut cmd, BASELINE_TIMEOUT).await;
    let python = python.ok().filter(|o| o.status.success()).and_then(|o| {
        let json: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
        Some(json["messages"].as_f64()? / json["seconds"].as_f64()?)
    });
    match (ours, python) {
        (Ok(ours), Some(python)) => {
            let ours = ours.messages as f64 / ours.seconds;
            format!(
                "Load tool check (64 conns x 128 B echo, direct to the pod, one core): test-client {ours:.0} msg/s, Python websockets {python:.0} msg/s ({:.1}x).",
                ours / python
            )
        }
        _ => "Load tool check skipped: python3 with `websockets` is not available (`--install-peers` installs it).".into(),
    }
}
