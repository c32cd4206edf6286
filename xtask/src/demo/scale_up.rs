//! `cargo xtask demo --scale-up`: live rebalancing, watched. Reconnecting
//! clients hold connections through a balancer with `--rebalance true` on
//! `--pods` pods; then two more pods come up and no client arrives. Every
//! proxy would leave the new pods empty for as long as the clients stay;
//! here the balancer closes the excess on the old pods (1012, paced), the
//! clients reconnect, and the counts even out. The demo prints the
//! per-pod counts as they change, then what the clients saw, and fails
//! when the counts did not even out or a reconnect failed.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::Command;

use super::DemoArgs;
use crate::harness::{self, Procs};

/// Pods that come up once the connections are held.
const LATE_PODS: usize = 2;

/// The balancer's minimum connection age for the demo: short, so that the
/// connections just opened may move soon (production's default is 30 s).
const MIN_AGE: &str = "5s";

/// How long the clients hold and reconnect: enough for the connections to
/// reach the minimum age and for the moves at the default pace.
const CLIENT_RUN: Duration = Duration::from_secs(40);

/// Spread, `(max - min) / mean`, that counts as even.
const EVEN: f64 = 0.10;

/// How often the counts are printed.
const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// How long the connections may take to open, and the client's report to
/// be written after its run.
const SETTLE: Duration = Duration::from_secs(30);

/// Runs the scale-up demo in `procs`.
pub async fn run(procs: &mut Procs, args: &DemoArgs) -> anyhow::Result<()> {
    println!("==> starting {} echo pods", args.pods);
    let ports = vec![0; usize::from(args.pods)];
    let first = harness::start_pods(procs, "pod", &ports, None).await?;
    let mut pods: Vec<SocketAddr> = first.iter().map(|p| p.addr).collect();
    // The balancer lists the late pods from the start: until they listen,
    // their polls fail and they take nothing.
    let late = (0..LATE_PODS)
        .map(|_| harness::free_port())
        .collect::<anyhow::Result<Vec<u16>>>()?;
    pods.extend(late.iter().map(|&p| SocketAddr::from(([127, 0, 0, 1], p))));

    println!("==> starting the balancer, rebalance on (minimum age {MIN_AGE})");
    let balancer = harness::start_balancer(
        procs,
        "wsbalancer",
        &pods,
        None,
        [
            "--cache-ttl",
            "1s",
            // Not the failovers away from the pods not up yet.
            "--log-level",
            "error",
            "--rebalance",
            "true",
            "--rebalance-min-age",
            MIN_AGE,
            // The clients hold their connections idle.
            "--read-timeout",
            "600s",
        ],
    )
    .await?;
    super::announce(&balancer);

    println!(
        "==> {} reconnecting clients hold their connections for {}s",
        args.connections,
        CLIENT_RUN.as_secs()
    );
    let report =
        std::env::temp_dir().join(format!("wsb-demo-scale-up-{}.json", std::process::id()));
    procs.spawn(
        "test-client",
        Command::new(harness::bin("test-client"))
            .args(["--url", &balancer.ws_url()])
            .args(["--connections", &args.connections.to_string()])
            .args(["--concurrency", &args.concurrency.to_string()])
            .args([
                "--messages",
                "1",
                "--reconnect",
                "--quiet",
                "--timeout",
                "20s",
            ])
            .arg("--duration")
            .arg(format!("{}s", CLIENT_RUN.as_secs()))
            .arg("--json")
            .arg(&report),
    )?;
    let total = args.connections as u64;
    let held = harness::poll(SETTLE, Duration::from_millis(100), async || {
        let counts = harness::pod_counts(&pods).await;
        (counts.iter().sum::<u64>() >= total).then_some(counts)
    })
    .await
    .with_context(|| format!("the pods did not hold {total} connections within {SETTLE:?}"))?;
    let started = tokio::time::Instant::now();
    print_counts(Duration::ZERO, &held);

    println!("==> {LATE_PODS} more pods come up; no new client arrives");
    for (i, &port) in late.iter().enumerate() {
        harness::start_pod(procs, first.len() + i, port).await?;
    }
    let mut even_after = None;
    let mut counts = held;
    let client = loop {
        tokio::time::sleep(SAMPLE_EVERY).await;
        if let Some(status) = procs.exit_status("test-client") {
            break status;
        }
        counts = harness::pod_counts(&pods).await;
        print_counts(started.elapsed(), &counts);
        if even_after.is_none() && harness::spread(&counts) <= EVEN {
            even_after = Some(started.elapsed());
        }
        if started.elapsed() > CLIENT_RUN + SETTLE {
            bail!("test-client still running {SETTLE:?} past its --duration");
        }
    };
    let shed = balancer.shed_total().await?;
    let json = read_report(&report).await?;
    let reconnect = &json["reconnect"];
    let needed = total * LATE_PODS as u64 / pods.len() as u64;
    println!("==> what it took");
    println!(
        "    shed by the balancer {shed}; moves the clients saw {} (the fewest that even the pods: {needed}); failed reconnects {}; close codes {}",
        reconnect["moves"], reconnect["failed_attempts"], reconnect["close_codes"]
    );
    let Some(after) = even_after else {
        bail!(
            "the counts never came within {:.0}% of each other: {counts:?}",
            EVEN * 100.0
        );
    };
    if !client.success() {
        bail!("test-client reported failures ({client})");
    }
    if reconnect["failed_attempts"].as_u64() != Some(0) {
        bail!("failed reconnects: {}", reconnect["failed_attempts"]);
    }
    println!(
        "==> demo ok: even (spread <= {:.0}%) {}s after the scale-up",
        EVEN * 100.0,
        after.as_secs()
    );
    Ok(())
}

/// One line of per-pod counts, `at` after the scale-up.
fn print_counts(at: Duration, counts: &[u64]) {
    let line = counts
        .iter()
        .map(|c| format!("{c:>5}"))
        .collect::<Vec<_>>()
        .join(" ");
    println!(
        "    {:>3}s  {line}   spread {:.0}%",
        at.as_secs(),
        harness::spread(counts) * 100.0
    );
}

/// The client's JSON report, removed once read.
async fn read_report(path: &std::path::Path) -> anyhow::Result<serde_json::Value> {
    harness::poll(SETTLE, Duration::from_millis(200), async || {
        path.exists().then_some(())
    })
    .await
    .with_context(|| format!("test-client wrote no report to {}", path.display()))?;
    let text = std::fs::read_to_string(path);
    let _ = std::fs::remove_file(path);
    let text = text.with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("test-client's report {text:?}"))
}
