//! `cargo xtask soak`: connections churn through a balancer for a while
//! (open, echo, hold, close) while pods are killed and restarted at random.
//! At the end nothing may be left behind and nothing may be lost:
//!
//! - the balancer's descriptors are back to where they were after warm-up,
//!   its relayed connections back to 0, and its RSS near where it was;
//! - every connection either completed with every echo checked in order
//!   (test-client checks each one byte for byte), or was deliberately
//!   broken by a pod kill and ended with a Close code (1014 from the
//!   balancer, or 1001/1006-free codes it forwarded), never silently.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::Command;

use crate::procs::{Procs, http_get};
use crate::{field, release_bin};

/// Pods behind the balancer (each its own process, so it can be killed).
const PODS: usize = 3;

/// How often a pod is killed (and then restarted on the same port).
const KILL_EVERY: Duration = Duration::from_secs(6);

/// How long a killed pod stays down.
const DOWN_FOR: Duration = Duration::from_secs(1);

/// Failure reasons that a pod kill explains: the relay's 1014 toward a
/// client whose pod vanished, and the pod's own going-away. test-client's
/// WebSocket library (tungstenite 0.29) does not accept 1014 as a code a
/// peer may send and reports such a Close as a protocol error, 1002; the
/// relay's own tests check on raw frames that 1014 is what goes out.
const EXPLAINED: &[&str] = &[
    "closed early (1014)",
    "closed early (1002)",
    "closed early (1001)",
];

/// Descriptors a process has open.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    crate::bench_relay::rss_kib(pid) as u64
}

/// Relayed connections the balancer reports, from its `/metrics`.
async fn active(admin: &str) -> Option<u64> {
    let body = http_get(admin, "/metrics").await.ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix("wsbalancer_connections_active "))
        .and_then(|v| v.trim().parse().ok())
}

/// Waits until the balancer relays nothing.
async fn wait_idle(admin: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if active(admin).await == Some(0) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the balancer still relays connections a minute after the load ended");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One batch of churn: open, echo, hold a little, close.
async fn batch(url: &str) -> anyhow::Result<serde_json::Value> {
    let out = Command::new(release_bin("test-client"))
        .args(["--url", url, "--json", "-", "--quiet", "--timeout", "20s"])
        .args(["--connections", "300", "--concurrency", "60"])
        .args(["--messages", "5", "--size", "200", "--hold", "400ms"])
        .kill_on_drop(true)
        .output()
        .await
        .context("running test-client")?;
    serde_json::from_slice(&out.stdout).context("test-client JSON")
}

/// What the churn did, summed over batches.
#[derive(Default)]
struct Tally {
    batches: u64,
    attempted: u64,
    ok: u64,
    messages: u64,
    kills: u64,
    /// Failures a kill explains, and the rest, by reason.
    explained: u64,
    unexplained: std::collections::BTreeMap<String, u64>,
}

impl Tally {
    fn add(&mut self, report: &serde_json::Value) {
        self.batches += 1;
        self.attempted += report["attempted"].as_u64().unwrap_or(0);
        self.ok += report["ok"].as_u64().unwrap_or(0);
        self.messages += report["messages_received"].as_u64().unwrap_or(0);
        if let Some(failures) = report["failures"].as_object() {
            for (reason, n) in failures {
                let n = n.as_u64().unwrap_or(0);
                if EXPLAINED.contains(&reason.as_str()) {
                    self.explained += n;
                } else {
                    *self.unexplained.entry(reason.clone()).or_default() += n;
                }
            }
        }
    }
}

/// Runs the soak for `duration` and returns the report; an error when
/// anything leaked or was lost.
pub async fn run(duration: Duration) -> anyhow::Result<String> {
    let mut procs = Procs::default();
    let result = soak(&mut procs, duration).await;
    procs.stop_all().await;
    result
}

async fn soak(procs: &mut Procs, duration: Duration) -> anyhow::Result<String> {
    let mut urls = Vec::with_capacity(PODS);
    for index in 0..PODS {
        urls.push(crate::bench_balance::pod(procs, index, 0).await?);
    }
    let ports: Vec<u16> = urls
        .iter()
        .map(|u| {
            u.rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .context("pod port")
        })
        .collect::<anyhow::Result<_>>()?;
    let lines = procs
        .start(
            "wsbalancer",
            Command::new(release_bin("wsbalancer"))
                .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
                .args(["--log-level", "error", "--cache-ttl", "1s"])
                .args(["--pods", &urls.join(",")]),
            1,
        )
        .await?;
    let line = lines.first().context("balancer ready line")?;
    let listen = field(line, "listen").context("listen")?;
    let admin = field(line, "admin").context("admin")?;
    let pid = procs.pid("wsbalancer").context("balancer pid")?;
    let url = format!("ws://{listen}/ws");

    // Warm-up: pools and caches reach their working size first.
    let warm = batch(&url).await?;
    if warm["failed"].as_u64() != Some(0) {
        bail!("warm-up failed: {}", warm["failures"]);
    }
    wait_idle(&admin).await?;
    let (fds_before, rss_before) = (fds(pid), rss_kib(pid));
    println!("==> soak for {duration:?}: baseline {fds_before} descriptors, {rss_before} KiB");

    let mut tally = Tally::default();
    let end = Instant::now() + duration;
    let mut next_kill = Instant::now() + KILL_EVERY;
    let mut victim = 0usize;
    while Instant::now() < end {
        let load = batch(&url);
        tokio::pin!(load);
        let report = loop {
            tokio::select! {
                report = &mut load => break report?,
                () = tokio::time::sleep_until(next_kill.into()) => {
                    // Kill one pod mid-batch, as a crash would, and bring it
                    // back on the same port.
                    let name = format!("pod{victim}");
                    procs.kill(&name).await?;
                    tally.kills += 1;
                    tokio::time::sleep(DOWN_FOR).await;
                    crate::bench_balance::pod(procs, victim, ports[victim]).await?;
                    victim = (victim + 1) % PODS;
                    next_kill = Instant::now() + KILL_EVERY;
                }
            }
        };
        tally.add(&report);
    }
    wait_idle(&admin).await?;
    let (fds_after, rss_after) = (fds(pid), rss_kib(pid));

    let mut out = String::new();
    let _ = writeln!(
        out,
        "| soak | value |\n|---|---|\n| duration | {duration:?} |\n| batches | {} |\n| connections | {} attempted, {} ok |\n| messages echoed and checked | {} |\n| pods killed and restarted | {} |\n| connections broken by a kill, ended with a Close | {} |\n| other failures | {:?} |\n| balancer descriptors | {fds_before} -> {fds_after} |\n| balancer RSS | {rss_before} -> {rss_after} KiB |",
        tally.batches,
        tally.attempted,
        tally.ok,
        tally.messages,
        tally.kills,
        tally.explained,
        tally.unexplained
    );
    let mut problems = Vec::new();
    if !tally.unexplained.is_empty() {
        problems.push(format!(
            "failures no kill explains: {:?}",
            tally.unexplained
        ));
    }
    if fds_after > fds_before + 2 {
        problems.push(format!("descriptors leaked: {fds_before} -> {fds_after}"));
    }
    // Allocator pools may keep some; a leak grows with the churn.
    if rss_after > rss_before + rss_before / 4 + 4096 {
        problems.push(format!("RSS grew: {rss_before} -> {rss_after} KiB"));
    }
    if tally.ok == 0 {
        problems.push("no connection completed".into());
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        bail!("{out}\nsoak failed: {}", problems.join("; "))
    }
}
