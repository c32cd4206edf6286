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

/// Starts pods and a balancer; returns (pod ws url, balancer ws url, balancer pid, admin).
async fn setup(procs: &mut Procs) -> anyhow::Result<(String, String, u32, String)> {
    let lines = procs
        .start(
            "test-server",
            pinned(1, release_bin("test-server")).args(["--pods", "1", "--base-port", "0"]),
            1,
        )
        .await?;
    let pod = lines
        .first()
        .and_then(|l| field(l, "url"))
        .context("pod url")?;
    let lines = procs
        .start(
            "wsbalancer",
            pinned(0, release_bin("wsbalancer"))
                .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
                .args([
                    "--log-level",
                    "error",
                    "--pods",
                    &pod,
                    "--read-timeout",
                    "10m",
                ]),
            1,
        )
        .await?;
    let line = lines.first().context("balancer ready line")?;
    let listen = field(line, "listen").context("listen")?;
    let admin = field(line, "admin").context("admin")?;
    let pid = procs.pid("wsbalancer").context("balancer pid")?;
    Ok((
        pod.replacen("http://", "ws://", 1) + "/ws",
        format!("ws://{listen}/ws"),
        pid,
        admin,
    ))
}

/// Runs the relay benchmark and returns the markdown report.
pub async fn run(runs: usize, idle_connections: usize) -> anyhow::Result<String> {
    let mut procs = Procs::default();
    let result = measure(&mut procs, runs.max(1), idle_connections).await;
    procs.stop_all().await;
    result
}

async fn measure(procs: &mut Procs, runs: usize, idle: usize) -> anyhow::Result<String> {
    let (direct, through, pid, admin) = setup(procs).await?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| measure (median of {runs}) | direct | wsbalancer | ratio |"
    );
    let _ = writeln!(out, "|---|---|---|---|");

    // New connections per second: open, one echo, close.
    let conns = [
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
    let (mut direct_rate, mut ours_rate, mut cpu_handshake) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let d = load(&direct, &conns).await?;
        direct_rate.push(d.ok as f64 / d.seconds);
        let cpu = cpu_seconds(pid);
        let o = load(&through, &conns).await?;
        cpu_handshake.push((cpu_seconds(pid) - cpu) / o.ok as f64 * 1e6);
        ours_rate.push(o.ok as f64 / o.seconds);
        println!(
            "    connections/s: direct {:.0}, wsbalancer {:.0}",
            d.ok as f64 / d.seconds,
            o.ok as f64 / o.seconds
        );
    }
    let (d, o) = (median(direct_rate), median(ours_rate));
    let _ = writeln!(
        out,
        "| new connections/s (20,000 open+echo+close, concurrency 64) | {d:.0} | {o:.0} | {:.2}x |",
        o / d
    );

    for (name, args) in [
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
    ] {
        let (mut dm, mut om, mut dp, mut op, mut cpu_msg) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            let d = load(&direct, &args).await?;
            let cpu = cpu_seconds(pid);
            let o = load(&through, &args).await?;
            cpu_msg.push((cpu_seconds(pid) - cpu) / o.messages as f64 * 1e6);
            dm.push(d.messages as f64 / d.seconds);
            om.push(o.messages as f64 / o.seconds);
            dp.push(d.p99_ms);
            op.push(o.p99_ms);
            println!(
                "    {name}: direct {:.0} msg/s p99 {:.2} ms, wsbalancer {:.0} msg/s p99 {:.2} ms",
                d.messages as f64 / d.seconds,
                d.p99_ms,
                o.messages as f64 / o.seconds,
                o.p99_ms
            );
        }
        let (d, o) = (median(dm), median(om));
        let _ = writeln!(
            out,
            "| {name}: messages/s | {d:.0} | {o:.0} | {:.2}x |",
            o / d
        );
        let _ = writeln!(
            out,
            "| {name}: p99 round trip | {:.2} ms | {:.2} ms | |",
            median(dp),
            median(op)
        );
        let _ = writeln!(
            out,
            "| {name}: balancer CPU per echoed message | | {:.1} µs | |",
            median(cpu_msg)
        );
    }
    let _ = writeln!(
        out,
        "| balancer CPU per connection (handshake + 1 echo + close) | | {:.0} µs | |",
        median(cpu_handshake)
    );

    // Idle memory: RSS growth per relayed idle connection. Connections
    // arrive in waves of 500 (one client process each), as they would over
    // time, rather than 9,000 handshakes at the same instant.
    let before = rss_kib(pid);
    let started = Instant::now();
    let wave = 500usize;
    let mut opened = 0usize;
    while opened < idle {
        let n = wave.min(idle - opened);
        procs.spawn(
            "idle-clients",
            pinned(1, release_bin("test-client"))
                .args(["--url", &through, "--connections", &n.to_string()])
                .args([
                    "--concurrency",
                    &n.to_string(),
                    "--messages",
                    "1",
                    "--size",
                    "16",
                ])
                .args(["--hold", "600s", "--timeout", "60s"]),
        )?;
        opened += n;
        loop {
            let body = http_get(&admin, "/balancer-metrics")
                .await
                .unwrap_or_default();
            let relayed = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|j| j["services"][0]["relayed"].as_u64())
                .unwrap_or(0);
            if relayed >= opened as u64 {
                break;
            }
            if started.elapsed() > Duration::from_secs(180) {
                bail!("only {relayed} of {opened} idle connections opened");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Let allocations settle after the last wave.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid);
    let per = (after - before) / idle as f64;
    println!(
        "    idle: {idle} connections, RSS {before:.0} KiB -> {after:.0} KiB, {per:.2} KiB each"
    );
    let _ = writeln!(
        out,
        "| idle memory: RSS growth per relayed connection at {idle} | | {per:.2} KiB | |"
    );
    Ok(out)
}
