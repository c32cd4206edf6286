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
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::Command;

use crate::procs::{Procs, http_get};
use crate::{field, release_bin};

/// How long connections are held open by the load clients: longer than any
/// scenario, which ends by stopping them.
const HOLD: &str = "300s";

/// How long a scenario may wait for its connections to be counted.
const SETTLE: Duration = Duration::from_secs(30);

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
        spread(&self.counts)
    }
}

/// `(max - min) / mean`.
pub fn spread(counts: &[u64]) -> f64 {
    let (Some(max), Some(min)) = (counts.iter().max(), counts.iter().min()) else {
        return 0.0;
    };
    let mean = counts.iter().sum::<u64>() as f64 / counts.len() as f64;
    if mean == 0.0 {
        0.0
    } else {
        (max - min) as f64 / mean
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
    for rule in [OURS, P2C, ORIGINAL, LOCAL]
        .into_iter()
        .filter(|_| wanted("replicas"))
    {
        println!("==> 300/0/0 then 3 replicas x 400: {}", rule.name);
        outcomes.push(announce(replicas(rule).await?));
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

/// A free loopback port (released at once; the pod binds it later).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts one pod process on `port` (0 = any); returns its URL.
pub(crate) async fn pod(procs: &mut Procs, index: usize, port: u16) -> anyhow::Result<String> {
    let lines = procs
        .start(
            &format!("pod{index}"),
            Command::new(release_bin("test-server"))
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .args(["--name-prefix", &format!("pod{index}")]),
            1,
        )
        .await?;
    lines
        .first()
        .and_then(|l| field(l, "url"))
        .context("pod ready line has no url")
}

/// Starts one balancer replica; returns (listen, admin).
async fn balancer(
    procs: &mut Procs,
    pods: &[String],
    rule: Rule,
    replicas: usize,
    cache_ttl: &str,
) -> anyhow::Result<(String, String)> {
    let mut cmd = Command::new(release_bin("wsbalancer"));
    cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--log-level", "error", "--cache-ttl", cache_ttl])
        .args(["--selection", rule.selection])
        .args(["--pods", &pods.join(",")]);
    if rule.knows_replicas {
        cmd.args(["--replicas", &replicas.to_string()]);
    }
    if let Some(ramp) = rule.slow_start {
        cmd.args(["--slow-start", ramp]);
    }
    let lines = procs.start("wsbalancer", &mut cmd, 1).await?;
    let line = lines.first().context("no ready line")?;
    Ok((
        field(line, "listen").context("no listen")?,
        field(line, "admin").context("no admin")?,
    ))
}

/// Starts a load client holding `n` connections to `url`, not waiting.
fn client(procs: &mut Procs, url: &str, n: usize, concurrency: usize) -> anyhow::Result<()> {
    procs.spawn(
        "test-client",
        Command::new(release_bin("test-client"))
            .args(["--url", url, "--connections", &n.to_string()])
            .args(["--concurrency", &concurrency.to_string()])
            .args(["--messages", "1", "--hold", HOLD, "--timeout", "20s"]),
    )
}

/// A pod's `agentsConnections`, or `None` when it does not answer.
async fn reported(pod_url: &str) -> Option<u64> {
    let addr = pod_url.strip_prefix("http://")?;
    let body = http_get(addr, "/metric").await.ok()?;
    let json: serde_json::Value = serde_json::from_str(&body).ok()?;
    json["agentsConnections"].as_u64()
}

/// Waits until the pods hold `total` connections together (or [`SETTLE`]
/// passes) and returns their counts.
async fn settle(pods: &[String], total: u64) -> Vec<u64> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let mut counts = Vec::new();
        for pod in pods {
            counts.push(reported(pod).await.unwrap_or(0));
        }
        if counts.iter().sum::<u64>() >= total || Instant::now() > deadline {
            return counts;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until a replica's status shows `check` true for pod `index`.
async fn wait_status(
    admin: &str,
    index: usize,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    while started.elapsed() < SETTLE {
        if let Ok(body) = http_get(admin, "/balancer-metrics").await
            && let Ok(json) = serde_json::from_str::<serde_json::Value>(&body)
            && check(&json["services"][index])
        {
            return Ok(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("balancer never saw {what}")
}

async fn burst(rule: Rule) -> anyhow::Result<Outcome> {
    with_procs(async move |procs: &mut Procs| {
        let mut pods = Vec::new();
        for i in 0..3 {
            pods.push(pod(procs, i, 0).await?);
        }
        let (listen, _) = balancer(procs, &pods, rule, 1, "30s").await?;
        client(procs, &format!("ws://{listen}/ws"), 600, 600)?;
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

async fn replicas(rule: Rule) -> anyhow::Result<Outcome> {
    with_procs(async move |procs: &mut Procs| {
        let mut pods = Vec::new();
        for i in 0..3 {
            pods.push(pod(procs, i, 0).await?);
        }
        let direct = pods[0].replacen("http://", "ws://", 1) + "/ws";
        client(procs, &direct, 300, 300)?;
        settle(&pods, 300).await;
        let mut listens = Vec::new();
        for _ in 0..3 {
            let (listen, admin) = balancer(procs, &pods, rule, 3, "30s").await?;
            wait_status(&admin, 0, "the 300 on pod0", |s| s["connections"] == 300).await?;
            listens.push(listen);
        }
        for listen in &listens {
            client(procs, &format!("ws://{listen}/ws"), 400, 400)?;
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

async fn scale_up(rule: Rule) -> anyhow::Result<Outcome> {
    with_procs(async move |procs: &mut Procs| {
        let mut pods = Vec::new();
        for i in 0..3 {
            pods.push(pod(procs, i, 0).await?);
        }
        let late_port = free_port()?;
        pods.push(format!("http://127.0.0.1:{late_port}"));
        let (listen, admin) = balancer(procs, &pods, rule, 1, "2s").await?;
        let url = format!("ws://{listen}/ws");
        client(procs, &url, 600, 600)?;
        settle(&pods[..3], 600).await;
        pod(procs, 3, late_port).await?;
        let seen = wait_status(&admin, 3, "the new pod healthy", |s| {
            s["healthy"] == true && s["reportAge"].is_number()
        })
        .await?;
        // Then 200 more in 4 waves a second apart, as a service scaling up
        // under steady arrivals would see them.
        let mut first_wave_on_new = 0;
        for wave in 1..=4u64 {
            client(procs, &url, 50, 50)?;
            let counts = settle(&pods, 600 + 50 * wave).await;
            if wave == 1 {
                first_wave_on_new = counts[3];
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
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

async fn kill(rule: Rule) -> anyhow::Result<Outcome> {
    with_procs(async move |procs: &mut Procs| {
        let mut pods = Vec::new();
        for i in 0..3 {
            pods.push(pod(procs, i, 0).await?);
        }
        let (listen, admin) = balancer(procs, &pods, rule, 1, "2s").await?;
        let url = format!("ws://{listen}/ws");
        client(procs, &url, 300, 300)?;
        settle(&pods, 300).await;
        procs.kill("pod2").await?;
        // What the survivors still hold of the first 300, then 300 more.
        let survivors = pods[..2].to_vec();
        let before: u64 = settle(&survivors, 0).await.iter().sum();
        client(procs, &url, 300, 300)?;
        let ejected = wait_status(&admin, 2, "the killed pod ejected", |s| {
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

/// Runs a scenario body with its own processes, all stopped afterwards.
async fn with_procs<F>(body: F) -> anyhow::Result<Outcome>
where
    F: AsyncFnOnce(&mut Procs) -> anyhow::Result<Outcome>,
{
    let mut procs = Procs::default();
    let result = body(&mut procs).await;
    procs.stop_all().await;
    result
}

fn max_min(counts: &[u64]) -> u64 {
    counts.iter().max().unwrap_or(&0) - counts.iter().min().unwrap_or(&0)
}
