//! `cargo xtask bench balance`: how evenly connections end up spread, with
//! real pods, real balancer replicas and real clients, for our rule and for
//! two baselines replayed by the same balancer binary:
//!
//! - `cached`: the original plugin's rule (the cached report only, no local
//!   adjustment, first listed wins ties);
//! - `local`: classic per-replica `leastconn` (HAProxy, NGINX, Envoy,
//!   Traefik): each replica counts only its own connections.
//!
//! Spread is `(max - min) / mean` of the pods' live connection counts, read
//! from the pods' own `/metric` once every expected connection is open.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::process::Command;

use crate::harness::{self, Balancer, Procs, bin, with_procs};

/// How long connections are held open by the load clients: longer than any
/// scenario, which ends by stopping them.
const HOLD: &str = "300s";

/// How long a scenario may wait for its connections to be counted.
const SETTLE: Duration = Duration::from_secs(30);

/// How often the pods are asked while a scenario settles.
const SETTLE_POLL: Duration = Duration::from_millis(100);

/// Time between the waves of the scale-up scenario.
const WAVE_EVERY: Duration = Duration::from_secs(1);

/// One rule under test.
#[derive(Debug, Clone, Copy)]
struct Rule {
    name: &'static str,
    selection: &'static str,
    /// Whether to tell the balancer how many replicas there are.
    knows_replicas: bool,
    slow_start: Option<&'static str>,
}

const OURS: Rule = Rule {
    name: "wsbalancer",
    selection: "least-connections",
    knows_replicas: true,
    slow_start: None,
};
/// Ours, not told how many replicas there are: they learn it from the
/// pods' reports.
const UNTOLD: Rule = Rule {
    name: "wsbalancer, replicas not told",
    knows_replicas: false,
    ..OURS
};
const P2C: Rule = Rule {
    name: "wsbalancer power-of-two",
    selection: "power-of-two",
    knows_replicas: true,
    slow_start: None,
};
const ORIGINAL: Rule = Rule {
    name: "original rule (cached)",
    selection: "cached",
    knows_replicas: false,
    slow_start: None,
};
const LOCAL: Rule = Rule {
    name: "per-replica leastconn",
    selection: "local",
    knows_replicas: false,
    slow_start: None,
};

/// One measured outcome.
struct Outcome {
    scenario: &'static str,
    rule: &'static str,
    counts: Vec<u64>,
    note: String,
}

impl Outcome {
    fn spread(&self) -> f64 {
        harness::spread(&self.counts)
    }
}

/// Runs every scenario with every rule and returns the markdown report.
pub async fn run(only: Option<&str>) -> anyhow::Result<String> {
    let wanted = |name: &str| only.is_none_or(|o| name.contains(o));
    let mut outcomes = Vec::new();
    for rule in [OURS, P2C, ORIGINAL, LOCAL]
        .into_iter()
        .filter(|_| wanted("burst"))
    {
        println!("==> burst of 600 in one TTL, 1 replica: {}", rule.name);
        outcomes.push(announce(burst(rule).await?));
    }
    for rule in [OURS, UNTOLD, P2C, ORIGINAL, LOCAL]
        .into_iter()
        .filter(|_| wanted("replicas"))
    {
        println!("==> 300/0/0 then 3 replicas x 400: {}", rule.name);
        outcomes.push(announce(replicas(rule).await?));
    }
    for rule in [UNTOLD, OURS, LOCAL]
        .into_iter()
        .filter(|_| wanted("replicas"))
    {
        println!(
            "==> 3 replicas x 200, then a 4th joins and 4 x 150: {}",
            rule.name
        );
        outcomes.push(announce(replica_joins(rule).await?));
    }
    let slow = Rule {
        name: "wsbalancer + slowStart 4s",
        slow_start: Some("4s"),
        ..OURS
    };
    for rule in [OURS, slow, ORIGINAL, LOCAL]
        .into_iter()
        .filter(|_| wanted("scale-up"))
    {
        println!("==> scale-up, a 4th pod comes up: {}", rule.name);
        outcomes.push(announce(scale_up(rule).await?));
    }
    for mode in [Rebalance::Off, Rebalance::On, Rebalance::MaxAge]
        .into_iter()
        .filter(|_| wanted("long-lived"))
        .chain(Some(Rebalance::Steady).filter(|_| wanted("steady")))
    {
        let (scenario, rule) = mode.names();
        println!("==> {scenario}: {rule}");
        outcomes.push(announce(long_lived_scale_up(mode).await?));
    }
    for rule in [OURS, ORIGINAL, LOCAL]
        .into_iter()
        .filter(|_| wanted("kill"))
    {
        println!("==> a pod killed mid-run: {}", rule.name);
        outcomes.push(announce(kill(rule).await?));
    }
    Ok(render(&outcomes))
}

/// Prints one outcome as it comes.
fn announce(outcome: Outcome) -> Outcome {
    println!(
        "    counts {:?}, spread {:.1}%, {}",
        outcome.counts,
        outcome.spread() * 100.0,
        outcome.note
    );
    outcome
}

fn render(outcomes: &[Outcome]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| scenario | rule | per-pod connections | spread (max-min)/mean | notes |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|");
    for o in outcomes {
        let counts: Vec<String> = o.counts.iter().map(u64::to_string).collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.1}% | {} |",
            o.scenario,
            o.rule,
            counts.join(" / "),
            o.spread() * 100.0,
            o.note
        );
    }
    out
}

/// Starts the three pods every scenario begins with, each in a process of
/// its own (`pod0`..`pod2`) so that one can be killed alone; returns their
/// addresses.
async fn three_pods(procs: &mut Procs) -> anyhow::Result<Vec<SocketAddr>> {
    let mut pods = Vec::new();
    for i in 0..3 {
        pods.push(harness::start_pod(procs, i, 0).await?.addr);
    }
    Ok(pods)
}

/// Starts one balancer replica of `rule` in front of `pods`, told there
/// are `replicas` of it when the rule uses that.
async fn balancer(
    procs: &mut Procs,
    pods: &[SocketAddr],
    rule: Rule,
    replicas: usize,
    cache_ttl: &str,
) -> anyhow::Result<Balancer> {
    let mut args = vec!["--log-level", "error", "--cache-ttl", cache_ttl];
    args.extend(["--selection", rule.selection]);
    let replicas = replicas.to_string();
    if rule.knows_replicas {
        args.extend(["--replicas", &replicas]);
    }
    if let Some(ramp) = rule.slow_start {
        args.extend(["--slow-start", ramp]);
    }
    harness::start_balancer(procs, "wsbalancer", pods, None, args).await
}

/// Starts a load client holding `n` connections to `url`, not waiting.
fn client(procs: &mut Procs, url: &str, n: usize, concurrency: usize) -> anyhow::Result<()> {
    procs.spawn(
        "test-client",
        Command::new(bin("test-client"))
            .args(["--url", url, "--connections", &n.to_string()])
            .args(["--concurrency", &concurrency.to_string()])
            .args(["--messages", "1", "--hold", HOLD, "--timeout", "20s"]),
    )?;
    Ok(())
}

/// Waits until the pods hold `total` connections together (or [`SETTLE`]
/// passes) and returns their counts.
async fn settle(pods: &[SocketAddr], total: u64) -> Vec<u64> {
    let mut last = Vec::new();
    let settled = harness::poll(SETTLE, SETTLE_POLL, async || {
        last = harness::pod_counts(pods).await;
        (last.iter().sum::<u64>() >= total).then(|| last.clone())
    })
    .await;
    match settled {
        Some(counts) => counts,
        // The counts as they last stood, or as they stand now when time ran
        // out during the first reading.
        None if last.len() == pods.len() => last,
        None => harness::pod_counts(pods).await,
    }
}

/// Waits until a replica's status shows `check` true for pod `index`;
/// returns how long that took.
async fn wait_status(
    balancer: &Balancer,
    index: usize,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> anyhow::Result<Duration> {
    let started = tokio::time::Instant::now();
    harness::poll(SETTLE, Duration::from_millis(20), async || {
        let body = harness::http_get(balancer.admin, "/balancer-metrics")
            .await
            .ok()?;
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        check(&json["services"][index]).then_some(())
    })
    .await
    .with_context(|| format!("balancer never saw {what}"))?;
    Ok(started.elapsed())
}

async fn burst(rule: Rule) -> anyhow::Result<Outcome> {
    with_procs(async move |procs: &mut Procs| {
        let pods = three_pods(procs).await?;
        let balancer = balancer(procs, &pods, rule, 1, "30s").await?;
        client(procs, &balancer.ws_url(), 600, 600)?;
        let counts = settle(&pods, 600).await;
        Ok(Outcome {
            scenario: "burst 600, 1 replica, 3 pods",
            rule: rule.name,
            note: format!("max-min {}", max_min(&counts)),
            counts,
        })
    })
    .await
}

/// Three pods with 300 connections on the first (opened directly), and
/// three replicas of `rule` (told 3 when the rule is told) that have seen
/// them.
async fn three_replicas_on_300_0_0(
    procs: &mut Procs,
    rule: Rule,
) -> anyhow::Result<(Vec<SocketAddr>, Vec<Balancer>)> {
    let pods = three_pods(procs).await?;
    client(procs, &format!("ws://{}/ws", pods[0]), 300, 300)?;
    settle(&pods, 300).await;
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let replica = balancer(procs, &pods, rule, 3, "30s").await?;
        wait_status(&replica, 0, "the 300 on pod0", |s| s["connections"] == 300).await?;
        replicas.push(replica);
    }
    Ok((pods, replicas))
}

async fn replicas(rule: Rule) -> anyhow::Result<Outcome> {
    with_procs(async move |procs: &mut Procs| {
        let (pods, replicas) = three_replicas_on_300_0_0(procs, rule).await?;
        for replica in &replicas {
            client(procs, &replica.ws_url(), 400, 400)?;
        }
        let counts = settle(&pods, 1500).await;
        Ok(Outcome {
            scenario: "300/0/0, then 3 replicas x 400 at once",
            rule: rule.name,
            note: "ideal 500/500/500".into(),
            counts,
        })
    })
    .await
}

/// The replica count changes while they run: three replicas place 200
/// each at once on 300/0/0, then a fourth starts and all four place 150
/// each at once. A rule told a fixed count is told 3, right for the first
/// half only.
async fn replica_joins(rule: Rule) -> anyhow::Result<Outcome> {
    with_procs(async move |procs: &mut Procs| {
        let (pods, mut replicas) = three_replicas_on_300_0_0(procs, rule).await?;
        for replica in &replicas {
            client(procs, &replica.ws_url(), 200, 200)?;
        }
        let first = settle(&pods, 900).await;
        let fourth = balancer(procs, &pods, rule, 3, "30s").await?;
        wait_status(&fourth, 0, "pod0's report", |s| s["reportAge"].is_number()).await?;
        replicas.push(fourth);
        for replica in &replicas {
            client(procs, &replica.ws_url(), 150, 150)?;
        }
        let counts = settle(&pods, 1500).await;
        Ok(Outcome {
            scenario: "300/0/0, 3 replicas x 200, then a 4th joins, 4 x 150",
            rule: rule.name,
            note: format!(
                "ideal 500/500/500; after the first 3: {}",
                first
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join("/")
            ),
            counts,
        })
    })
    .await
}

async fn scale_up(rule: Rule) -> anyhow::Result<Outcome> {
    with_procs(async move |procs: &mut Procs| {
        let mut pods = three_pods(procs).await?;
        let late_port = harness::free_port()?;
        pods.push(SocketAddr::from(([127, 0, 0, 1], late_port)));
        let balancer = balancer(procs, &pods, rule, 1, "2s").await?;
        let url = balancer.ws_url();
        client(procs, &url, 600, 600)?;
        settle(&pods[..3], 600).await;
        harness::start_pod(procs, 3, late_port).await?;
        let seen = wait_status(&balancer, 3, "the new pod healthy", |s| {
            s["healthy"] == true && s["reportAge"].is_number()
        })
        .await?;
        // Then 200 more in 4 waves a second apart, as a service scaling up
        // under steady arrivals would see them: the pace of the scenario,
        // each wave counted before the next.
        let mut pace = tokio::time::interval(WAVE_EVERY);
        let mut first_wave_on_new = 0;
        for wave in 1..=4u64 {
            pace.tick().await;
            client(procs, &url, 50, 50)?;
            let counts = settle(&pods, 600 + 50 * wave).await;
            if wave == 1 {
                first_wave_on_new = counts[3];
            }
        }
        pace.tick().await;
        let counts = settle(&pods, 800).await;
        Ok(Outcome {
            scenario: "scale-up: 600 on 3 pods, 4th comes up, +200",
            rule: rule.name,
            note: format!(
                "ideal 200 each; new pod seen after {:.1}s, took {first_wave_on_new} of the first 50",
                seen.as_secs_f64()
            ),
            counts,
        })
    })
    .await
}

/// Whether the long-lived scale-up runs with live rebalancing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rebalance {
    /// New connections only (every proxy's behaviour).
    Off,
    /// `rebalance: true` with its defaults, but for the minimum age (the
    /// connections are older than the default 30s in production; here
    /// they are only held that long if the scenario waits for it).
    On,
    /// Rebalancing off, and every connection recycled at a fixed age
    /// ([`MAX_AGE`]): what a proxy's maximum connection duration (Envoy's
    /// `max_connection_duration`) offers, played by the clients closing
    /// and reconnecting at that age.
    MaxAge,
    /// `rebalance: true` with every default, on pods already even: the
    /// no-oscillation check (nothing may be shed).
    Steady,
}

/// The maximum connection age of the [`Rebalance::MaxAge`] baseline:
/// short enough that every connection is recycled within the watch.
const MAX_AGE: &str = "30s";

/// How long the steady scenario watches pods that are already even.
const STEADY_WATCH: Duration = Duration::from_secs(300);

impl Rebalance {
    /// Pods that come up once the connections are held (none for the
    /// steady run).
    fn late_pods(self) -> usize {
        match self {
            Rebalance::Steady => 0,
            _ => 2,
        }
    }

    /// How long the pods are watched after that.
    fn watch(self) -> Duration {
        match self {
            Rebalance::Steady => STEADY_WATCH,
            _ => LONG_LIVED_WATCH,
        }
    }

    /// The replicas' rebalancing options.
    fn balancer_args(self) -> &'static [&'static str] {
        match self {
            Rebalance::Off | Rebalance::MaxAge => &[],
            Rebalance::On => &["--rebalance", "true", "--rebalance-min-age", "5s"],
            Rebalance::Steady => &["--rebalance", "true"],
        }
    }

    /// The clients' options beside the scenario's common ones.
    fn client_args(self) -> &'static [&'static str] {
        match self {
            Rebalance::MaxAge => &["--reconnect-max-age", MAX_AGE],
            _ => &[],
        }
    }

    /// The scenario's and the rule's names in the report.
    fn names(self) -> (&'static str, &'static str) {
        const SCALE_UP: &str = "long-lived: 1,500 held, 2 replicas, 3 -> 5 pods, no arrivals";
        match self {
            Rebalance::Off => (SCALE_UP, "wsbalancer, rebalance off"),
            Rebalance::On => (SCALE_UP, "wsbalancer, rebalance on"),
            Rebalance::MaxAge => (
                SCALE_UP,
                "wsbalancer, rebalance off, every connection recycled at 30s (max age)",
            ),
            Rebalance::Steady => (
                "steady: 1,500 held, 2 replicas, 3 pods already even, 5 min",
                "wsbalancer, rebalance on, all defaults",
            ),
        }
    }
}

/// Connections held by reconnecting clients in the long-lived scenario.
const LONG_LIVED: usize = 1500;

/// How long the long-lived scenario watches the pods after the scale-up.
const LONG_LIVED_WATCH: Duration = Duration::from_secs(60);

/// 1,500 connections held by reconnecting clients through two replicas on
/// 3 pods; then 2 more pods come up, and no client arrives. Reports the
/// per-pod counts over time, how long until the spread is within 10%, and
/// the moves and failed reconnects the clients counted (600 moves at the
/// least: 200 from each of the first three pods).
async fn long_lived_scale_up(mode: Rebalance) -> anyhow::Result<Outcome> {
    with_procs(async move |procs: &mut Procs| {
        let mut pods = three_pods(procs).await?;
        let late = (0..mode.late_pods())
            .map(|_| harness::free_port())
            .collect::<anyhow::Result<Vec<u16>>>()?;
        let watch = mode.watch();
        pods.extend(late.iter().map(|&p| SocketAddr::from(([127, 0, 0, 1], p))));
        // The clients send one message and then hold their connection idle
        // (real ones ping): no idle timeout may close them meanwhile.
        let mut args = vec!["--log-level", "error", "--cache-ttl", "2s", "--read-timeout", "600s"];
        args.extend(mode.balancer_args());
        let mut replicas = Vec::new();
        for _ in 0..2 {
            replicas.push(
                harness::start_balancer(procs, "wsbalancer", &pods, None, args.clone()).await?,
            );
        }
        let report = std::env::temp_dir().join(format!("wsb-long-lived-{}.json", std::process::id()));
        let duration = watch + Duration::from_secs(20);
        procs.spawn(
            "test-client",
            Command::new(bin("test-client"))
                .args(["--url", &replicas[0].ws_url(), "--url", &replicas[1].ws_url()])
                .args(["--connections", &LONG_LIVED.to_string(), "--concurrency", "200"])
                .args(["--messages", "1", "--reconnect", "--timeout", "20s", "--quiet"])
                .args(mode.client_args())
                .arg("--duration")
                .arg(format!("{}s", duration.as_secs()))
                .arg("--json")
                .arg(&report),
        )?;
        settle(&pods[..3], LONG_LIVED as u64).await;
        // Older than the minimum age before the pods come.
        tokio::time::sleep(Duration::from_secs(6)).await;
        for (i, &port) in late.iter().enumerate() {
            harness::start_pod(procs, 3 + i, port).await?;
        }
        let started = tokio::time::Instant::now();
        let mut timeline = Vec::new();
        let mut even_after = None;
        let mut tick = tokio::time::interval(watch / 12);
        while started.elapsed() < watch {
            tick.tick().await;
            let counts = harness::pod_counts(&pods).await;
            if even_after.is_none() && harness::spread(&counts) <= 0.10 {
                even_after = Some(started.elapsed());
            }
            timeline.push(format!(
                "{}s {}",
                started.elapsed().as_secs(),
                counts.iter().map(u64::to_string).collect::<Vec<_>>().join("/")
            ));
        }
        let counts = harness::pod_counts(&pods).await;
        let mut shed = 0u64;
        for replica in &replicas {
            shed += replica.shed_total().await?;
        }
        // The client's own figures, once its run is over.
        harness::poll(Duration::from_secs(60), Duration::from_millis(200), async || {
            report.exists().then_some(())
        })
        .await;
        let json: serde_json::Value = std::fs::read_to_string(&report)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        let _ = std::fs::remove_file(&report);
        let reconnect = &json["reconnect"];
        // The fewest moves that even the pods: the new pods' share.
        let needed = LONG_LIVED * late.len() / pods.len();
        let (scenario, rule) = mode.names();
        Ok(Outcome {
            scenario,
            rule,
            note: format!(
                "even (<=10%) after {}; shed by the replicas {shed}; moves {} ({} needed); failed reconnects {}; aged out {}; close codes {}; over time: {}",
                even_after.map_or("never".to_owned(), |d| format!("{}s", d.as_secs())),
                reconnect["moves"],
                needed,
                reconnect["failed_attempts"],
                reconnect["aged_out"],
                reconnect["close_codes"],
                timeline.join(", ")
            ),
            counts,
        })
    })
    .await
}

async fn kill(rule: Rule) -> anyhow::Result<Outcome> {
    with_procs(async move |procs: &mut Procs| {
        let pods = three_pods(procs).await?;
        let balancer = balancer(procs, &pods, rule, 1, "2s").await?;
        let url = balancer.ws_url();
        client(procs, &url, 300, 300)?;
        settle(&pods, 300).await;
        procs.kill("pod2").await?;
        // What the survivors still hold of the first 300, then 300 more.
        let survivors = pods[..2].to_vec();
        let before: u64 = settle(&survivors, 0).await.iter().sum();
        client(procs, &url, 300, 300)?;
        let ejected = wait_status(&balancer, 2, "the killed pod ejected", |s| {
            s["healthy"] == false
        })
        .await;
        let totals = settle(&survivors, before + 300).await;
        let failed = (before + 300).saturating_sub(totals.iter().sum());
        Ok(Outcome {
            scenario: "300 on 3 pods, one killed, +300",
            rule: rule.name,
            note: format!(
                "new connections failed: {failed}; killed pod ejected after {}",
                match ejected {
                    Ok(after) => format!("{:.2}s", after.as_secs_f64()),
                    Err(_) => "never".to_owned(),
                }
            ),
            counts: totals,
        })
    })
    .await
}

fn max_min(counts: &[u64]) -> u64 {
    counts.iter().max().unwrap_or(&0) - counts.iter().min().unwrap_or(&0)
}
