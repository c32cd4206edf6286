//! `cargo xtask bench relay`: what the relay costs, as ratios against a
//! direct connection to the pod measured in the same run: idle memory per
//! relayed connection, new connections per second, echo throughput and
//! latency (small and large messages), and the balancer's CPU per operation.
//! Each figure is the median of `runs` runs. As the relay issue's method
//! asks, the balancer is pinned to core 0 and the pod and clients to core 1.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::Command;

use crate::peers::Peer;
use crate::procs::{Procs, http_get};
use crate::{field, release_bin};

/// A command pinned to one core with `taskset` (util-linux), as the relay
/// issue's method asks: the proxy on core 0, pods and clients on core 1.
/// Without `taskset` the command runs unpinned.
fn pinned(core: u32, program: std::path::PathBuf) -> Command {
    if std::path::Path::new("/usr/bin/taskset").exists() {
        let mut cmd = Command::new("/usr/bin/taskset");
        cmd.arg("-c").arg(core.to_string()).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

/// One load run's result, from test-client's JSON.
struct Load {
    ok: u64,
    messages: u64,
    seconds: f64,
    p99_ms: f64,
}

async fn load(url: &str, args: &[&str]) -> anyhow::Result<Load> {
    let out = pinned(1, release_bin("test-client"))
        .args(["--url", url, "--json", "-", "--timeout", "30s"])
        .args(args)
        .output()
        .await
        .context("running test-client")?;
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("test-client JSON")?;
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

/// CPU seconds (user + system) a process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // Fields after the command name, which is in parentheses.
    let Some((_, rest)) = stat.rsplit_once(") ") else {
        return f64::NAN;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    // utime and stime are fields 14 and 15 of the whole line (11, 12 here).
    (ticks(11) + ticks(12)) / 100.0
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(f64::NAN)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// One thing the load goes through: the pod itself, wsbalancer, or a peer.
struct Target {
    name: &'static str,
    url: String,
    /// The proxy's process, for CPU; `None` for the direct connection.
    pid: Option<u32>,
}

/// What one target measured over the runs (one value per run).
#[derive(Default)]
struct Figures {
    conn_rate: Vec<f64>,
    cpu_conn: Vec<f64>,
    /// Per echo scenario: (msg/s, p99 ms, CPU µs per message).
    echo: [(Vec<f64>, Vec<f64>, Vec<f64>); 2],
    idle_kib: Vec<f64>,
}

/// The pod, started once for the whole benchmark.
struct PodInfo {
    /// `host:port`.
    authority: String,
    /// `ws://host:port/ws`.
    ws: String,
}

async fn start_pod(procs: &mut Procs) -> anyhow::Result<PodInfo> {
    let lines = procs
        .start(
            "test-server",
            pinned(1, release_bin("test-server")).args(["--pods", "1", "--base-port", "0"]),
            1,
        )
        .await?;
    let url = lines
        .first()
        .and_then(|l| field(l, "url"))
        .context("pod url")?;
    let authority = url.trim_start_matches("http://").to_owned();
    Ok(PodInfo {
        ws: format!("ws://{authority}/ws"),
        authority,
    })
}

/// Starts a wsbalancer in front of `pod`, pinned to core 0, under the
/// process name `name`; returns (ws url, pid).
async fn start_balancer(
    procs: &mut Procs,
    name: &str,
    pod: &PodInfo,
) -> anyhow::Result<(String, u32)> {
    let lines = procs
        .start(
            name,
            pinned(0, release_bin("wsbalancer"))
                .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
                .args(["--log-level", "error", "--read-timeout", "10m"])
                .args(["--pods", &format!("http://{}", pod.authority)]),
            1,
        )
        .await?;
    let line = lines.first().context("balancer ready line")?;
    let listen = field(line, "listen").context("listen")?;
    let pid = procs.pid(name).context("balancer pid")?;
    Ok((format!("ws://{listen}/ws"), pid))
}

/// Process name of the fresh proxy started for the idle measure.
const IDLE_PROXY: &str = "idle-proxy";

/// Starts the proxy whose column is `name` afresh as [`IDLE_PROXY`] (the
/// idle measure must start from an empty process); returns (ws url, pid).
async fn start_fresh(
    procs: &mut Procs,
    name: &str,
    pod: &PodInfo,
    dir: &std::path::Path,
) -> anyhow::Result<(String, u32)> {
    match Peer::named(name) {
        None => start_balancer(procs, IDLE_PROXY, pod).await,
        Some(peer) => {
            let (addr, pid) = peer
                .start(procs, IDLE_PROXY, dir, &pod.authority, |p| pinned(0, p))
                .await?;
            Ok((format!("ws://{addr}/ws"), pid))
        }
    }
}

/// Connections the pod holds now, from its own `/metric`.
async fn pod_connections(pod: &PodInfo) -> u64 {
    let body = http_get(&pod.authority, "/metric")
        .await
        .unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|j| j["agentsConnections"].as_u64())
        .unwrap_or(u64::MAX)
}

/// Waits until the pod reports a count for which `done` holds.
async fn wait_pod(pod: &PodInfo, what: &str, done: impl Fn(u64) -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let n = pod_connections(pod).await;
        if n != u64::MAX && done(n) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("pod at {n} connections: {what} not reached");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// RSS growth per idle relayed connection of a fresh proxy process, in KiB.
/// Connections arrive in waves of 500 (one client process each), as they
/// would over time, rather than all handshakes at the same instant.
async fn idle_memory(
    procs: &mut Procs,
    name: &'static str,
    pod: &PodInfo,
    dir: &std::path::Path,
    idle: usize,
) -> anyhow::Result<f64> {
    let (url, pid) = start_fresh(procs, name, pod, dir).await?;
    let before = rss_kib(pid);
    let wave = 500usize;
    let mut opened = 0usize;
    while opened < idle {
        let n = wave.min(idle - opened);
        procs.spawn(
            "idle-clients",
            pinned(1, release_bin("test-client"))
                .args(["--url", &url, "--connections", &n.to_string()])
                .args(["--concurrency", &n.to_string()])
                .args(["--messages", "1", "--size", "16"])
                .args(["--hold", "600s", "--timeout", "60s"]),
        )?;
        opened += n;
        let target = opened as u64;
        wait_pod(pod, "idle connections open", |c| c >= target).await?;
    }
    // Let allocations settle after the last wave.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid);
    let per = (after - before) / idle as f64;
    println!(
        "    idle {name}: {idle} connections, RSS {before:.0} KiB -> {after:.0} KiB, {per:.2} KiB each"
    );
    procs.kill_all("idle-clients").await;
    wait_pod(pod, "idle connections closed", |c| c == 0).await?;
    procs.stop(IDLE_PROXY).await;
    Ok(per)
}

/// Runs the relay benchmark and returns the markdown report.
pub async fn run(runs: usize, idle_connections: usize, peers: bool) -> anyhow::Result<String> {
    let mut procs = Procs::default();
    let result = measure(&mut procs, runs.max(1), idle_connections, peers).await;
    procs.stop_all().await;
    result
}

const CONNS: [&str; 10] = [
    "--connections",
    "20000",
    "--concurrency",
    "64",
    "--messages",
    "1",
    "--size",
    "16",
    "--hold",
    "0s",
];

const ECHOES: [(&str, [&str; 10]); 2] = [
    (
        "echo 64 conns x 128 B",
        [
            "--connections",
            "64",
            "--concurrency",
            "64",
            "--messages",
            "2000",
            "--size",
            "128",
            "--hold",
            "0s",
        ],
    ),
    (
        "echo 8 conns x 64 KiB",
        [
            "--connections",
            "8",
            "--concurrency",
            "8",
            "--messages",
            "400",
            "--size",
            "65536",
            "--hold",
            "0s",
        ],
    ),
];

async fn measure(
    procs: &mut Procs,
    runs: usize,
    idle: usize,
    with_peers: bool,
) -> anyhow::Result<String> {
    let dir = std::env::temp_dir().join(format!("wsb-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let pod = start_pod(procs).await?;
    let (ours, pid) = start_balancer(procs, "wsbalancer", &pod).await?;
    let mut targets = vec![
        Target {
            name: "direct",
            url: pod.ws.clone(),
            pid: None,
        },
        Target {
            name: "wsbalancer",
            url: ours,
            pid: Some(pid),
        },
    ];
    let mut versions = Vec::new();
    for peer in [Peer::Haproxy, Peer::Nginx] {
        if !with_peers {
            continue;
        }
        if peer.binary().is_none() {
            println!(
                "    {} is not installed: no column for it (scripts/install-bench-peers installs it)",
                peer.name()
            );
            continue;
        }
        let (addr, pid) = peer
            .start(procs, peer.program(), &dir, &pod.authority, |p| {
                pinned(0, p)
            })
            .await?;
        versions.push(peer.version().await);
        targets.push(Target {
            name: peer.name(),
            url: format!("ws://{addr}/ws"),
            pid: Some(pid),
        });
    }
    let mut figures: Vec<Figures> = targets.iter().map(|_| Figures::default()).collect();

    for run in 0..runs {
        println!("  run {} of {runs}", run + 1);
        for (target, fig) in targets.iter().zip(figures.iter_mut()) {
            let cpu = target.pid.map(cpu_seconds);
            let r = load(&target.url, &CONNS).await?;
            let rate = r.ok as f64 / r.seconds;
            fig.conn_rate.push(rate);
            if let (Some(pid), Some(cpu)) = (target.pid, cpu) {
                fig.cpu_conn
                    .push((cpu_seconds(pid) - cpu) / r.ok as f64 * 1e6);
            }
            println!("    connections/s {}: {rate:.0}", target.name);
        }
        for (i, (name, args)) in ECHOES.iter().enumerate() {
            for (target, fig) in targets.iter().zip(figures.iter_mut()) {
                let cpu = target.pid.map(cpu_seconds);
                let r = load(&target.url, args).await?;
                let rate = r.messages as f64 / r.seconds;
                fig.echo[i].0.push(rate);
                fig.echo[i].1.push(r.p99_ms);
                if let (Some(pid), Some(cpu)) = (target.pid, cpu) {
                    fig.echo[i]
                        .2
                        .push((cpu_seconds(pid) - cpu) / r.messages as f64 * 1e6);
                }
                println!(
                    "    {name} {}: {rate:.0} msg/s, p99 {:.2} ms",
                    target.name, r.p99_ms
                );
            }
        }
        if idle > 0 {
            for (target, fig) in targets.iter().zip(figures.iter_mut()) {
                if target.pid.is_some() {
                    fig.idle_kib
                        .push(idle_memory(procs, target.name, &pod, &dir, idle).await?);
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(report(&targets, &figures, runs, idle, &versions))
}

/// The markdown table: one column per target, ratios against direct.
fn report(
    targets: &[Target],
    figures: &[Figures],
    runs: usize,
    idle: usize,
    versions: &[String],
) -> String {
    let mut out = String::new();
    let names: Vec<&str> = targets.iter().map(|t| t.name).collect();
    let _ = writeln!(
        out,
        "| measure (median of {runs}) | {} |",
        names.join(" | ")
    );
    let _ = writeln!(out, "|---|{}", "---|".repeat(names.len()));
    let direct_rate = median(figures[0].conn_rate.clone());
    let row = |out: &mut String, label: &str, cell: &dyn Fn(usize, &Figures) -> String| {
        let cells: Vec<String> = figures
            .iter()
            .enumerate()
            .map(|(i, f)| cell(i, f))
            .collect();
        let _ = writeln!(out, "| {label} | {} |", cells.join(" | "));
    };
    row(
        &mut out,
        "new connections/s (20,000 open+echo+close, concurrency 64)",
        &|i, f| {
            let m = median(f.conn_rate.clone());
            if i == 0 {
                format!("{m:.0}")
            } else {
                format!("{m:.0} ({:.2}x)", m / direct_rate)
            }
        },
    );
    for (e, (name, _)) in ECHOES.iter().enumerate() {
        let direct = median(figures[0].echo[e].0.clone());
        row(&mut out, &format!("{name}: messages/s"), &|i, f| {
            let m = median(f.echo[e].0.clone());
            if i == 0 {
                format!("{m:.0}")
            } else {
                format!("{m:.0} ({:.2}x)", m / direct)
            }
        });
        row(&mut out, &format!("{name}: p99 round trip"), &|_, f| {
            format!("{:.2} ms", median(f.echo[e].1.clone()))
        });
    }
    row(
        &mut out,
        "proxy CPU per op: connection (handshake + 1 echo + close) / 128 B echo / 64 KiB echo",
        &|i, f| {
            if i == 0 {
                "–".into()
            } else {
                format!(
                    "{:.0} / {:.1} / {:.0} µs",
                    median(f.cpu_conn.clone()),
                    median(f.echo[0].2.clone()),
                    median(f.echo[1].2.clone())
                )
            }
        },
    );
    if idle > 0 {
        row(
            &mut out,
            &format!("idle memory: RSS growth per relayed connection at {idle}"),
            &|i, f| {
                if i == 0 {
                    "–".into()
                } else {
                    format!("{:.2} KiB", median(f.idle_kib.clone()))
                }
            },
        );
    }
    if !versions.is_empty() {
        let _ = writeln!(out, "\nPeers: {}.", versions.join("; "));
    }
    out
}
