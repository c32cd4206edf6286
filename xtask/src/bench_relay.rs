//! `cargo xtask bench`: what the relay costs, as ratios against a direct
//! connection to the pod, a bare TCP relay ([`crate::floor`]) and HAProxy
//! (NGINX too when installed), measured in the same run:
//! new connections per second, echo throughput and latency (small and
//! large messages), each proxy's CPU per operation, and idle memory per
//! relayed connection. Each figure is the median of the runs, and targets
//! alternate within every run, so a noisy moment hits them all. As the
//! relay issue's method asks, the proxies are pinned to core 0 and the pod
//! and clients to core 1.

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

async fn load(url: &str, args: &[String]) -> anyhow::Result<Load> {
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

/// Resident memory of a process, in KiB (NaN when unknown).
pub(crate) fn rss_kib(pid: u32) -> f64 {
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
    /// Per idle level: KiB per connection, one value per run.
    idle_kib: Vec<Vec<f64>>,
}

/// The pod, started once for the whole benchmark.
struct PodInfo {
    /// `host:port`.
    authority: String,
    /// `ws://host:port/ws`.
    ws: String,
}

/// Process name of the pod.
const POD: &str = "test-server";

async fn start_pod(procs: &mut Procs) -> anyhow::Result<PodInfo> {
    let lines = procs
        .start(
            POD,
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
    let admin = field(line, "admin").context("admin")?;
    let pid = procs.pid(name).context("balancer pid")?;
    // Started means serving: its first poll of the pod done (and what that
    // sets up, such as the HTTP client's certificate store, in place), as
    // a balancer is before any client arrives.
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(&admin, "/readyz").await.unwrap_or_default() != "ready\n" {
        if Instant::now() > deadline {
            bail!("the balancer never became ready");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((format!("ws://{listen}/ws"), pid))
}

/// Column (and process) name of the bare relay [`crate::floor`].
const TCP_RELAY: &str = "TCP relay";

/// Starts the bare relay in front of `pod`, pinned to core 0; returns
/// (ws url, pid).
async fn start_tcp_relay(procs: &mut Procs, pod: &PodInfo) -> anyhow::Result<(String, u32)> {
    let lines = procs
        .start(
            TCP_RELAY,
            pinned(0, release_bin("xtask")).args(["tcp-relay", "--to", &pod.authority]),
            1,
        )
        .await?;
    let listen = lines
        .first()
        .and_then(|l| field(l, "listen"))
        .context("tcp relay listen address")?;
    let pid = procs.pid(TCP_RELAY).context("tcp relay pid")?;
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
async fn pod_connections(pod: &PodInfo) -> Result<u64, String> {
    let body = http_get(&pod.authority, "/metric")
        .await
        .map_err(|e| format!("GET /metric: {e}"))?;
    serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|j| j["agentsConnections"].as_u64())
        .ok_or_else(|| format!("no agentsConnections in {body:?}"))
}

/// Waits until the pod reports a count for which `done` holds. When it
/// does not in time, the error says what the pod last answered and
/// whether its process still runs.
async fn wait_pod(
    procs: &mut Procs,
    pod: &PodInfo,
    what: &str,
    done: impl Fn(u64) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let last = pod_connections(pod).await;
        if last.as_ref().is_ok_and(|&n| done(n)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            let process = match procs.exit_status(POD) {
                Some(status) => format!("the pod process exited ({status})"),
                None => "the pod process still runs".to_owned(),
            };
            bail!("{what} not reached: the pod last answered {last:?}; {process}");
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
        wait_pod(procs, pod, "idle connections open", |c| c >= target).await?;
    }
    // Let allocations settle after the last wave.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid);
    let per = (after - before) / idle as f64;
    println!(
        "    idle {name}: {idle} connections, RSS {before:.0} KiB -> {after:.0} KiB, {per:.2} KiB each"
    );
    procs.kill_all("idle-clients").await;
    wait_pod(procs, pod, "idle connections closed", |c| c == 0).await?;
    procs.stop(IDLE_PROXY).await;
    Ok(per)
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Runs per figure.
    pub runs: usize,
    /// Held connections for each idle memory figure.
    pub idle: Vec<usize>,
    /// Include HAProxy and NGINX when installed.
    pub peers: bool,
    /// Smaller loads, for a check that finishes in about a minute.
    pub quick: bool,
}

impl Plan {
    /// The quick check: one run of small loads.
    pub fn quick(peers: bool) -> Self {
        Plan {
            runs: 1,
            idle: vec![500],
            peers,
            quick: true,
        }
    }

    /// test-client arguments of the connections/s scenario.
    fn conns(&self) -> Vec<String> {
        let n = if self.quick { 1000 } else { 20_000 };
        args(n, 64, 0, 16)
    }

    /// Name and test-client arguments of the echo scenarios.
    fn echoes(&self) -> [(&'static str, Vec<String>); 2] {
        // Full runs last a few seconds per phase: shorter ones are mostly
        // noise on a shared machine.
        let (small, large) = if self.quick { (100, 10) } else { (3000, 1600) };
        [
            ("echo 64 conns x 128 B", args(64, 64, small, 128)),
            ("echo 8 conns x 64 KiB", args(8, 8, large, 65536)),
        ]
    }
}

/// test-client arguments: `connections` at `concurrency`, `messages` of
/// `size` bytes each, closed loop, closed at once.
fn args(connections: usize, concurrency: usize, messages: usize, size: usize) -> Vec<String> {
    [
        "--connections",
        &connections.to_string(),
        "--concurrency",
        &concurrency.to_string(),
        "--messages",
        &messages.to_string(),
        "--size",
        &size.to_string(),
        "--hold",
        "0s",
        "--quiet",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Runs the comparison and returns the markdown report.
pub async fn run(plan: &Plan) -> anyhow::Result<String> {
    let mut procs = Procs::default();
    let result = measure(&mut procs, plan).await;
    procs.stop_all().await;
    result
}

async fn measure(procs: &mut Procs, plan: &Plan) -> anyhow::Result<String> {
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
    let (url, pid) = start_tcp_relay(procs, &pod).await?;
    targets.push(Target {
        name: TCP_RELAY,
        url,
        pid: Some(pid),
    });
    let mut notes = vec![format!(
        "{TCP_RELAY}: about the least a proxy can do here, tokio's `copy_bidirectional` with 64 KiB buffers between the client and the pod (no parsing, no frames, no choice of pod): for the echoes, what the extra hop itself costs on this machine. No floor for new connections (two 64 KiB buffers each), and no idle figure: it holds those buffers by design."
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
            .start(procs, peer.program(), &dir, &pod.authority, |p| {
                pinned(0, p)
            })
            .await?;
        notes.push(format!("{}: {}.", peer.name(), peer.version().await));
        targets.push(Target {
            name: peer.name(),
            url: format!("ws://{addr}/ws"),
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
            let cpu = target.pid.map(cpu_seconds);
            let r = load(&target.url, &conns).await?;
            let rate = r.ok as f64 / r.seconds;
            fig.conn_rate.push(rate);
            if let (Some(pid), Some(cpu)) = (target.pid, cpu) {
                fig.cpu_conn
                    .push((cpu_seconds(pid) - cpu) / r.ok as f64 * 1e6);
            }
            println!("    connections/s {}: {rate:.0}", target.name);
        }
        for (i, (name, args)) in echoes.iter().enumerate() {
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
        for (level, &idle) in plan.idle.iter().enumerate() {
            for (target, fig) in targets.iter().zip(figures.iter_mut()) {
                if target.pid.is_some() && target.name != TCP_RELAY && idle > 0 {
                    fig.idle_kib[level]
                        .push(idle_memory(procs, target.name, &pod, &dir, idle).await?);
                }
            }
        }
    }
    let baseline = python_baseline(&pod).await;
    let _ = std::fs::remove_dir_all(&dir);
    let mut out = report(&targets, &figures, plan, &echoes);
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
async fn python_baseline(pod: &PodInfo) -> String {
    let script = crate::workspace_root().join("scripts/python-echo-client.py");
    // Same shape as the scenario: 64 connections x 128 B, fewer messages
    // (the Python client is slow, which is the point).
    let messages = "200";
    let ours = load(&pod.ws, &args(64, 64, 200, 128)).await;
    let python = pinned(1, "python3".into())
        .arg(&script)
        .args([&pod.ws, "64", messages, "128"])
        .output()
        .await;
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

/// "value (ratio to each reference)" for a throughput cell of column `i`:
/// `figure` gives a column's value, and the references are direct (column
/// 0), the TCP relay and HAProxy, each left out of its own column.
fn with_ratios(i: usize, figure: &dyn Fn(usize) -> f64, references: &[(usize, &str)]) -> String {
    let value = figure(i);
    if i == 0 {
        return format!("{value:.0}");
    }
    let ratios: Vec<String> = references
        .iter()
        .filter(|(r, _)| *r != i)
        .map(|&(r, name)| format!("{:.2}x {name}", value / figure(r)))
        .collect();
    format!("{value:.0} ({})", ratios.join(", "))
}

/// The markdown table: one column per target, ratios against direct, the
/// bare TCP relay and HAProxy.
fn report(
    targets: &[Target],
    figures: &[Figures],
    plan: &Plan,
    echoes: &[(&'static str, Vec<String>); 2],
) -> String {
    let mut out = String::new();
    let names: Vec<&str> = targets.iter().map(|t| t.name).collect();
    let references: Vec<(usize, &str)> = targets
        .iter()
        .enumerate()
        .filter(|(i, t)| *i == 0 || t.name == TCP_RELAY || t.name == Peer::Haproxy.name())
        .map(|(i, t)| (i, t.name))
        .collect();
    let _ = writeln!(
        out,
        "| measure (median of {}) | {} |",
        plan.runs,
        names.join(" | ")
    );
    let _ = writeln!(out, "|---|{}", "---|".repeat(names.len()));
    let row = |out: &mut String, label: &str, cell: &dyn Fn(usize, &Figures) -> String| {
        let cells: Vec<String> = figures
            .iter()
            .enumerate()
            .map(|(i, f)| cell(i, f))
            .collect();
        let _ = writeln!(out, "| {label} | {} |", cells.join(" | "));
    };
    let conns = if plan.quick { "1,000" } else { "20,000" };
    let rate = |f: &Figures| median(f.conn_rate.clone());
    row(
        &mut out,
        &format!("new connections/s ({conns} open+close, concurrency 64)"),
        &|i, _| with_ratios(i, &|c| rate(&figures[c]), &references),
    );
    for (e, (name, _)) in echoes.iter().enumerate() {
        let msgs = |f: &Figures| median(f.echo[e].0.clone());
        row(&mut out, &format!("{name}: messages/s"), &|i, _| {
            with_ratios(i, &|c| msgs(&figures[c]), &references)
        });
        row(&mut out, &format!("{name}: p99 round trip"), &|_, f| {
            format!("{:.2} ms", median(f.echo[e].1.clone()))
        });
    }
    row(
        &mut out,
        "proxy CPU per op: connection (handshake + close) / 128 B echo / 64 KiB echo",
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
    for (level, idle) in plan.idle.iter().enumerate() {
        row(
            &mut out,
            &format!("idle memory: RSS growth per relayed connection at {idle}"),
            &|_, f| {
                if f.idle_kib[level].is_empty() {
                    "–".into()
                } else {
                    format!("{:.2} KiB", median(f.idle_kib[level].clone()))
                }
            },
        );
    }
    out
}

/// Start and end of the generated part of the benchmark docs.
const DOCS_START: &str = "<!-- cargo xtask bench: start -->";
const DOCS_END: &str = "<!-- cargo xtask bench: end -->";

/// Replaces the generated part of `path` (between the markers, or appended
/// when there are none) with `report` and a description of this machine.
pub fn write_docs(path: &std::path::Path, report: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let block = format!(
        "{DOCS_START}\n### Latest `cargo xtask bench` ({})\n\n{}\n\n{report}{DOCS_END}",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        machine()
    );
    let updated = match (text.find(DOCS_START), text.find(DOCS_END)) {
        (Some(start), Some(end)) if start < end => {
            format!("{}{block}{}", &text[..start], &text[end + DOCS_END.len()..])
        }
        _ => format!("{text}\n{block}\n"),
    };
    std::fs::write(path, updated).with_context(|| format!("writing {}", path.display()))
}

/// One line about the machine: CPU model, cores, memory, kernel.
fn machine() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim())
        .to_owned();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let kernel = read("/proc/sys/kernel/osrelease");
    format!(
        "Machine: {model}, {cores} cores, {mem_gib:.0} GiB, Linux {}.",
        kernel.trim()
    )
}
