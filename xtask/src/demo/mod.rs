//! `cargo xtask demo`: the whole path on one machine. Builds the release
//! binaries, starts echo pods and a balancer in front of them on free
//! ports, runs the load client through the balancer and prints its report,
//! then the balancer's own view once it has seen the pods emptied, and
//! stops everything it started, also on failure or Ctrl-C. With
//! `--scale-up`, the live-rebalancing run instead ([`scale_up`]).

mod scale_up;

use std::time::Duration;

use anyhow::bail;

use crate::harness::{self, Balancer, Procs};
use crate::release;

/// Options of the demo.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Echo pods to start.
    #[arg(long, default_value_t = 3)]
    pods: u16,
    /// Connections the client opens through the balancer.
    #[arg(long, default_value_t = 300)]
    connections: usize,
    /// Connections in progress at once.
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
    /// Messages per connection.
    #[arg(long, default_value_t = 10)]
    messages: usize,
    /// How long each connection stays open.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    hold: Duration,
    /// Instead: the connections are held by reconnecting clients, two more
    /// pods come up, and rebalancing moves live connections onto them
    /// until the counts are even (--messages and --hold do not apply).
    #[arg(long)]
    scale_up: bool,
}

/// What a connection may take besides its hold (handshake, echoes, close),
/// for the client's deadline; generous, as a stuck client is all it is for.
const PER_ROUND: Duration = Duration::from_secs(30);

/// How long the balancer may take to see the pods emptied: its next poll
/// (`--cache-ttl 1s`) and then some.
const VIEW_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the demo; an error when the client reported failures.
pub async fn run(args: &DemoArgs) -> anyhow::Result<()> {
    release::build().await?;
    harness::with_procs(async |procs: &mut Procs| {
        if args.scale_up {
            scale_up::run(procs, args).await
        } else {
            demo(procs, args).await
        }
    })
    .await
}

async fn demo(procs: &mut Procs, args: &DemoArgs) -> anyhow::Result<()> {
    println!("==> starting {} echo pods", args.pods);
    let ports = vec![0; usize::from(args.pods)];
    let pods = harness::start_pods(procs, "pod", &ports, None).await?;
    for pod in &pods {
        println!("    {} http://{}", pod.name, pod.addr);
    }

    println!("==> starting the balancer");
    let addrs: Vec<_> = pods.iter().map(|p| p.addr).collect();
    let balancer = harness::start_balancer(
        procs,
        "wsbalancer",
        &addrs,
        None,
        ["--cache-ttl", "1s", "--log-level", "warn"],
    )
    .await?;
    announce(&balancer);

    println!(
        "==> {} connections through the balancer ({} at a time, {} messages each)",
        args.connections, args.concurrency, args.messages
    );
    let rounds = args.connections.div_ceil(args.concurrency.max(1));
    let within = (args.hold + PER_ROUND) * u32::try_from(rounds).unwrap_or(u32::MAX);
    let mut client = tokio::process::Command::new(harness::bin("test-client"));
    client
        .args(["--url", &balancer.ws_url()])
        .args(["--connections", &args.connections.to_string()])
        .args(["--concurrency", &args.concurrency.to_string()])
        .args(["--messages", &args.messages.to_string()])
        .args(["--size", "64", "--hold"])
        .arg(humantime::format_duration(args.hold).to_string());
    let status = harness::status("test-client", &mut client, within).await?;

    println!("==> the balancer's view (/balancer-metrics)");
    println!("    {}", emptied_view(&balancer).await);
    if !status.success() {
        bail!("test-client reported failures");
    }
    println!("==> demo ok");
    Ok(())
}

/// Where the demo's balancer listens, for a reader who wants to look.
fn announce(balancer: &Balancer) {
    println!(
        "    listen {}  admin http://{}/balancer-metrics",
        balancer.ws_url(),
        balancer.admin
    );
}

/// The balancer's `/balancer-metrics` once it counts no connection on any
/// pod (the client is gone, and a poll has told the balancer), or as it
/// stands at [`VIEW_TIMEOUT`], or why it could not be read.
async fn emptied_view(balancer: &Balancer) -> String {
    let emptied = harness::poll(VIEW_TIMEOUT, Duration::from_millis(100), async || {
        let body = harness::http_get(balancer.admin, "/balancer-metrics")
            .await
            .ok()?;
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        (json["totalConnections"] == 0).then_some(body)
    })
    .await;
    if let Some(body) = emptied {
        return body;
    }
    match harness::http_get(balancer.admin, "/balancer-metrics").await {
        Ok(body) => format!("{body}\n    (pods not yet seen emptied after {VIEW_TIMEOUT:?})"),
        Err(error) => format!("unavailable: {error:#}"),
    }
}
