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
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::Command;

use crate::harness::{self, Procs, bin};

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

/// How long the balancer may take to relay nothing once the load ended.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long one batch may take (it takes seconds; test-client bounds each
/// step by 20 s).
const BATCH_TIMEOUT: Duration = Duration::from_secs(120);

/// Relayed connections the balancer reports, from its `/metrics`.
async fn active(admin: SocketAddr) -> Option<u64> {
    let body = harness::http_get(admin, "/metrics").await.ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix("wsbalancer_connections_active "))
        .and_then(|v| v.trim().parse().ok())
}

/// Waits until the balancer relays nothing.
async fn wait_idle(admin: SocketAddr) -> anyhow::Result<()> {
    harness::poll(IDLE_TIMEOUT, Duration::from_millis(100), async || {
        (active(admin).await == Some(0)).then_some(())
    })
    .await
    .with_context(|| {
        format!("the balancer still relays connections {IDLE_TIMEOUT:?} after the load ended")
    })
}

/// One batch of churn: open, echo, hold a little, close.
async fn batch(url: &str) -> anyhow::Result<serde_json::Value> {
    let mut cmd = Command::new(bin("test-client"));
    cmd.args(["--url", url, "--json", "-", "--quiet", "--timeout", "20s"])
        .args(["--connections", "300", "--concurrency", "60"])
        .args(["--messages", "5", "--size", "200", "--hold", "400ms"]);
    let out = harness::output("test-client", &mut cmd, BATCH_TIMEOUT).await?;
    serde_json::from_slice(&out.stdout).context("test-client JSON")
}

/// The balancer's descriptors and resident memory (KiB) now.
fn footprint(pid: u32) -> anyhow::Result<(usize, u64)> {
    Ok((harness::fd_count(pid)?, harness::rss_kib(pid)?))
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
    harness::with_procs(async |procs: &mut Procs| soak(procs, duration).await).await
}

async fn soak(procs: &mut Procs, duration: Duration) -> anyhow::Result<String> {
    let mut pods = Vec::with_capacity(PODS);
    for index in 0..PODS {
        pods.push(harness::start_pod(procs, index, 0).await?.addr);
    }
    let balancer = harness::start_balancer(
        procs,
        "wsbalancer",
        &pods,
        None,
        ["--log-level", "error", "--cache-ttl", "1s"],
    )
    .await?;
    let (admin, pid, url) = (balancer.admin, balancer.pid, balancer.ws_url());

    // Warm-up: pools and caches reach their working size first.
    let warm = batch(&url).await?;
    if warm["failed"].as_u64() != Some(0) {
        bail!("warm-up failed: {}", warm["failures"]);
    }
    wait_idle(admin).await?;
    let (fds_before, rss_before) = footprint(pid)?;
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
                    // back on the same port once it has been down a while
                    // (the scenario's pace, not a wait for anything).
                    let name = format!("pod{victim}");
                    procs.kill(&name).await?;
                    tally.kills += 1;
                    tokio::time::sleep(DOWN_FOR).await;
                    harness::start_pod(procs, victim, pods[victim].port()).await?;
                    victim = (victim + 1) % PODS;
                    next_kill = Instant::now() + KILL_EVERY;
                }
            }
        };
        tally.add(&report);
    }
    wait_idle(admin).await?;
    let (fds_after, rss_after) = footprint(pid)?;

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
