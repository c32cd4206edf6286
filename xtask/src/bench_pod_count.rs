//! `cargo xtask bench pod-count`: what the number of pods costs (issue 18,
//! part 4). For each pod count, N echo pods in one test-server process,
//! and in front of the same N pods wsbalancer (default `cacheTTL`, 30s) and
//! HAProxy (`balance leastconn`, when installed): the proxy's CPU per
//! handshake and its connections per second while test-client opens and
//! closes connections through it, and what polling the pods costs while
//! no client is connected, at the default `cacheTTL` and at 2s (HAProxy
//! has no health checks, so its idle CPU is the floor). As in the relay
//! comparison, the proxies are pinned to core 0 and the pods and clients
//! to core 1, every figure is the median of the runs, and the subjects
//! alternate within each run so that a noisy moment hits them all.
//!
//! Ratios are paired: each is the median over the runs of that run's
//! ratio, so that a slow moment of the machine, which hits every subject
//! of a run, cancels out. For the growth with the pod count, each pod
//! count after the first also runs a reference wsbalancer of this build in
//! front of the first count's number of those same pods, measured in the
//! same runs: the growth ratio compares two balancers measured a second
//! apart, not two steps measured minutes apart.
//!
//! Descriptors: each pod listens on its own port and keeps a pooled poll
//! connection from each balancer, about 3 per pod in the test-server
//! process, under the 20,000 hard limit up to [`MAX_PODS`]. HAProxy's
//! `maxconn 9900` has it raise its own limit to the 20,000 hard limit; it
//! holds no descriptor per server without health checks.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::bench_relay::peers::{self, Peer};
use crate::bench_relay::{self, LOAD_CORE, PROXY_CORE, median, thousands};
use crate::harness::{self, Procs};

/// Most pods one sweep step may start: about 3 descriptors each in the
/// test-server process, under the 20,000 limit with room for the clients.
const MAX_PODS: usize = 6000;

/// Connections each handshake measure opens and closes (no messages).
const HANDSHAKES: usize = 20_000;

/// The same, with `--quick`.
const QUICK_HANDSHAKES: usize = 1000;

/// Handshakes in progress at once.
const CONCURRENCY: usize = 64;

/// The idle window with `--quick`.
const QUICK_IDLE: Duration = Duration::from_secs(5);

/// The short `cacheTTL` whose idle cost the issue measured (300 pods: 4%
/// of a core).
const SHORT_TTL: &str = "2s";

/// Wait before an idle window: the balancer started for the short
/// `cacheTTL` has made its first round of polls (every pod at once) and
/// two more (one every second at 2s), and the last handshakes of the
/// others have closed.
const SETTLE: Duration = Duration::from_secs(3);

/// Process names.
const PODS: &str = "pods";
const OURS: &str = "wsbalancer";
const OURS_SHORT_TTL: &str = "wsbalancer-short-ttl";
const BASELINE: &str = "wsbalancer-baseline";
const REFERENCE: &str = "wsbalancer-reference";

/// Targets from the issue, stated under the table.
const MAX_GROWTH_AT_1000: f64 = 1.1;
const MAX_CPU_VS_HAPROXY: f64 = 0.9;
const MAX_IDLE_PERCENT_AT_1000: f64 = 1.0;

/// Options of the sweep.
#[derive(Debug, clap::Args)]
pub struct PodCountArgs {
    /// Pod counts to sweep (comma-separated); the first is the one the
    /// others are compared with.
    #[arg(long, value_delimiter = ',', default_values_t = [3, 100, 300, 1000])]
    pods: Vec<usize>,
    /// Runs per figure (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// How long each idle window lasts (30s: two polls of every pod at
    /// the default cacheTTL).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    idle: Duration,
    /// Leave HAProxy out (it is measured when installed).
    #[arg(long)]
    no_peers: bool,
    /// Install HAProxy first (scripts/install-bench-peers).
    #[arg(long)]
    install_peers: bool,
    /// One run, 1,000 handshakes and 5 s idle windows: a check, not a
    /// measurement.
    #[arg(long)]
    quick: bool,
    /// A directory holding another build's `wsbalancer` (an earlier
    /// commit's `target/release`, say): its handshakes are measured beside
    /// this build's in the same runs, so that a change is judged against
    /// its baseline on the same machine at the same moment.
    #[arg(long, value_name = "DIR")]
    baseline: Option<PathBuf>,
}

/// What one sweep measures, from the options.
#[derive(Debug, Clone)]
struct Plan {
    pods: Vec<usize>,
    runs: usize,
    handshakes: usize,
    idle: Duration,
    haproxy: bool,
    /// The baseline build's `wsbalancer`, when one is compared.
    baseline: Option<PathBuf>,
}

impl PodCountArgs {
    fn plan(&self) -> anyhow::Result<Plan> {
        // A baseline balancer keeps a fourth poll connection per pod.
        let max = if self.baseline.is_some() {
            MAX_PODS / 4 * 3
        } else {
            MAX_PODS
        };
        if self.pods.is_empty() || self.pods.iter().any(|&n| n == 0 || n > max) {
            bail!("--pods: each count must be 1 to {max}");
        }
        let haproxy = !self.no_peers && Peer::Haproxy.binary().is_some();
        let baseline = match &self.baseline {
            Some(dir) => {
                let program = dir.join("wsbalancer");
                if !program.is_file() {
                    bail!("--baseline: no wsbalancer binary in {}", dir.display());
                }
                Some(program)
            }
            None => None,
        };
        Ok(if self.quick {
            Plan {
                pods: self.pods.clone(),
                runs: 1,
                handshakes: QUICK_HANDSHAKES,
                idle: QUICK_IDLE,
                haproxy,
                baseline,
            }
        } else {
            Plan {
                pods: self.pods.clone(),
                runs: self.runs.max(1),
                handshakes: HANDSHAKES,
                idle: self.idle,
                haproxy,
                baseline,
            }
        })
    }
}

/// What one proxy's handshake measures gave, one value per run (empty
/// when the proxy was not measured).
#[derive(Debug, Default)]
struct Handshakes {
    /// CPU per handshake (open + close), µs.
    cpu: Vec<f64>,
    /// Connections per second.
    rate: Vec<f64>,
}

impl Handshakes {
    /// This proxy's CPU and connections/s against `other`'s, each paired
    /// run by run; `None` when `other` was not measured.
    fn against(&self, other: &Handshakes) -> Option<(f64, f64)> {
        Some((
            paired(&self.cpu, &other.cpu)?,
            paired(&self.rate, &other.rate)?,
        ))
    }
}

/// What one pod count measured, one value per run.
#[derive(Debug, Default)]
struct Step {
    pods: usize,
    /// wsbalancer's.
    ours: Handshakes,
    /// HAProxy's (empty without it).
    haproxy: Handshakes,
    /// The baseline build's (empty without one).
    baseline: Handshakes,
    /// How many pods the reference balancer is in front of: the first pod
    /// count of the sweep (0, and no reference, at that count itself).
    reference_pods: usize,
    /// The reference balancer's (empty without one).
    reference: Handshakes,
    /// Idle CPU, % of one core: wsbalancer at the default and the short
    /// `cacheTTL`, HAProxy.
    idle_default: Vec<f64>,
    idle_short: Vec<f64>,
    idle_haproxy: Vec<f64>,
}

/// A proxy handshakes are measured through.
struct Subject {
    name: &'static str,
    url: String,
    pid: u32,
}

/// Runs the sweep (installing HAProxy first when asked) and returns the
/// markdown report.
pub async fn run(args: PodCountArgs) -> anyhow::Result<String> {
    if args.install_peers {
        peers::install().await?;
    }
    let plan = args.plan()?;
    let haproxy = if plan.haproxy {
        // "HAProxy version 2.6.12-1+deb12u4 2026/10/17 - https://haproxy.org/"
        let version = Peer::Haproxy.version().await;
        version
            .split_once(" - ")
            .map_or(version.clone(), |(v, _)| v.to_owned())
    } else {
        String::new()
    };
    let steps = harness::with_procs(async |procs: &mut Procs| {
        let dir = std::env::temp_dir().join(format!("wsb-pod-count-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut steps = Vec::new();
        for &pods in &plan.pods {
            steps.push(step(procs, &plan, pods, &dir).await?);
        }
        let _ = std::fs::remove_dir_all(&dir);
        anyhow::Ok(steps)
    })
    .await?;
    Ok(report(&plan, &steps, &haproxy))
}

/// Every measure at `pods` pods, `plan.runs` times; everything it started
/// is stopped before it returns.
async fn step(
    procs: &mut Procs,
    plan: &Plan,
    pods: usize,
    dir: &std::path::Path,
) -> anyhow::Result<Step> {
    println!("==> {pods} pods");
    let addrs: Vec<_> = harness::start_pods(procs, PODS, &vec![0; pods], LOAD_CORE)
        .await?
        .iter()
        .map(|pod| pod.addr)
        .collect();
    let ours = start_ours(procs, OURS, &addrs, &[]).await?;
    let mut subjects = vec![Subject {
        name: OURS,
        url: ours.ws_url(),
        pid: ours.pid,
    }];
    let first = plan.pods.first().copied().unwrap_or(pods);
    let reference_pods = if first < pods { first } else { 0 };
    if reference_pods > 0 {
        let reference = start_ours(procs, REFERENCE, &addrs[..reference_pods], &[]).await?;
        subjects.push(Subject {
            name: REFERENCE,
            url: reference.ws_url(),
            pid: reference.pid,
        });
    }
    if let Some(program) = &plan.baseline {
        let args = ["--log-level", "warn"];
        let baseline =
            harness::start_balancer_from(procs, BASELINE, program, &addrs, PROXY_CORE, args)
                .await?;
        subjects.push(Subject {
            name: BASELINE,
            url: baseline.ws_url(),
            pid: baseline.pid,
        });
    }
    if plan.haproxy {
        let (addr, pid) = Peer::Haproxy
            .start(procs, Peer::Haproxy.program(), dir, &addrs, PROXY_CORE)
            .await?;
        subjects.push(Subject {
            name: Peer::Haproxy.name(),
            url: format!("ws://{addr}/ws"),
            pid,
        });
    }
    let mut figures = Step {
        pods,
        reference_pods,
        ..Step::default()
    };
    let conns = bench_relay::args(plan.handshakes, CONCURRENCY, 0, 16);
    for run in 0..plan.runs {
        println!("  run {} of {}", run + 1, plan.runs);
        // Alternate which proxy goes first.
        let mut order: Vec<&Subject> = subjects.iter().collect();
        if run % 2 == 1 {
            order.reverse();
        }
        for subject in order {
            let before = harness::cpu_seconds(subject.pid)?;
            let load = bench_relay::load(&subject.url, &conns).await?;
            let cpu = harness::cpu_seconds(subject.pid)? - before;
            let per = cpu / load.ok as f64 * 1e6;
            let rate = load.ok as f64 / load.seconds;
            println!(
                "    handshakes {}: {per:.1} µs each, {rate:.0} connections/s",
                subject.name
            );
            let measured = match subject.name {
                OURS => &mut figures.ours,
                BASELINE => &mut figures.baseline,
                REFERENCE => &mut figures.reference,
                _ => &mut figures.haproxy,
            };
            measured.cpu.push(per);
            measured.rate.push(rate);
        }
        // The short-TTL balancer lives for its window only, so that its
        // polls never run beside a handshake measure.
        let short = start_ours(procs, OURS_SHORT_TTL, &addrs, &["--cache-ttl", SHORT_TTL]).await?;
        tokio::time::sleep(SETTLE).await;
        let mut pids = vec![ours.pid, short.pid];
        pids.extend(
            subjects
                .iter()
                .find(|s| s.name == Peer::Haproxy.name())
                .map(|s| s.pid),
        );
        let idle = idle_percent(&pids, plan.idle).await?;
        println!(
            "    idle over {:?}: wsbalancer {:.2}% (cacheTTL 30s), {:.2}% (cacheTTL {SHORT_TTL}){}",
            plan.idle,
            idle[0],
            idle[1],
            idle.get(2)
                .map(|h| format!(", HAProxy {h:.2}%"))
                .unwrap_or_default()
        );
        figures.idle_default.push(idle[0]);
        figures.idle_short.push(idle[1]);
        figures.idle_haproxy.extend(idle.get(2));
        procs.stop(OURS_SHORT_TTL).await;
    }
    procs.stop(Peer::Haproxy.program()).await;
    procs.stop(BASELINE).await;
    procs.stop(REFERENCE).await;
    procs.stop(OURS).await;
    procs.stop(PODS).await;
    Ok(figures)
}

/// A wsbalancer in front of `pods`, on the proxy core, logging warnings
/// only, with `extra` arguments.
async fn start_ours(
    procs: &mut Procs,
    name: &str,
    pods: &[std::net::SocketAddr],
    extra: &[&str],
) -> anyhow::Result<harness::Balancer> {
    let args = [&["--log-level", "warn"][..], extra].concat();
    harness::start_balancer(procs, name, pods, PROXY_CORE, args).await
}

/// The CPU each of `pids` used over the same `window` with no client
/// connected, in % of one core. The idle processes share the window: a
/// few % of a core each, they do not crowd each other, and a noisy moment
/// hits them all.
async fn idle_percent(pids: &[u32], window: Duration) -> anyhow::Result<Vec<f64>> {
    let before = pids
        .iter()
        .map(|&pid| harness::cpu_seconds(pid))
        .collect::<anyhow::Result<Vec<f64>>>()?;
    let started = Instant::now();
    // The window is the measure itself: nothing to wait for but time.
    tokio::time::sleep(window).await;
    let elapsed = started.elapsed().as_secs_f64();
    pids.iter()
        .zip(before)
        .map(|(&pid, before)| Ok((harness::cpu_seconds(pid)? - before) / elapsed * 100.0))
        .collect()
}

/// The table, and the targets with what this run measured.
fn report(plan: &Plan, steps: &[Step], haproxy: &str) -> String {
    let mut out = String::new();
    let first = steps.first().map_or(0, |s| s.pods);
    let _ = writeln!(
        out,
        "Per pod count: {} handshakes (open + close, no messages) at concurrency {CONCURRENCY} through each proxy, proxy CPU per handshake from /proc; idle CPU over {:?} with no client. Median of {} run{}; each ratio is the median of the runs' own ratios, and \"vs {first} pods\" compares with a wsbalancer in front of {first} of the same pods measured in the same runs.\n",
        thousands(plan.handshakes),
        plan.idle,
        plan.runs,
        if plan.runs == 1 { "" } else { "s" }
    );
    let growth_column = format!("vs {first} pods");
    let short_idle_column = format!("idle CPU, cacheTTL {SHORT_TTL}");
    table_head(
        &mut out,
        &[
            "pods",
            "wsbalancer µs/handshake",
            &growth_column,
            "wsbalancer conns/s",
            "HAProxy µs/handshake",
            "wsbalancer / HAProxy CPU",
            "conns/s wsbalancer / HAProxy",
            "idle CPU, cacheTTL 30s",
            &short_idle_column,
            "HAProxy idle CPU",
        ],
    );
    for s in steps {
        let cpu = median(s.ours.cpu.clone());
        let rate = median(s.ours.rate.clone());
        let growth = match s.growth() {
            Some(growth) => format!("{growth:.2}x"),
            None if s.pods == first => "1.00x".to_owned(),
            None => "–".to_owned(),
        };
        let (haproxy_cpu, cpu_ratio, rate_ratio) = match s.ours.against(&s.haproxy) {
            Some((cpu_ratio, rate_ratio)) => (
                format!("{:.1}", median(s.haproxy.cpu.clone())),
                format!("{cpu_ratio:.2}x"),
                format!("{rate_ratio:.2}x"),
            ),
            None => ("–".to_owned(), "–".to_owned(), "–".to_owned()),
        };
        let haproxy_idle = if s.idle_haproxy.is_empty() {
            "–".to_owned()
        } else {
            format!("{:.2}%", median(s.idle_haproxy.clone()))
        };
        let _ = writeln!(
            out,
            "| {} | {cpu:.1} | {growth} | {rate:.0} | {haproxy_cpu} | {cpu_ratio} | {rate_ratio} | {:.2}% | {:.2}% | {haproxy_idle} |",
            thousands(s.pods),
            median(s.idle_default.clone()),
            median(s.idle_short.clone()),
        );
    }
    if let Some(program) = &plan.baseline {
        let _ = write!(out, "{}", baseline_table(steps, program));
    }
    let _ = writeln!(out, "\nTargets (issue 18):");
    for line in targets(steps) {
        let _ = writeln!(out, "- {line}");
    }
    let _ = writeln!(out);
    if plan.haproxy {
        let _ = writeln!(
            out,
            "- {haproxy}: `balance leastconn` over the same pods, one thread, no health checks."
        );
    } else {
        let _ = writeln!(
            out,
            "- HAProxy is not measured (not installed, or --no-peers; `cargo xtask bench pod-count --install-peers` installs it)."
        );
    }
    let _ = writeln!(
        out,
        "- wsbalancer: `--log-level warn`, default `cacheTTL` (30s: each pod polled every 15s ±10%); the {SHORT_TTL} column is a second balancer started for the idle window only. Idle windows of the three proxies run side by side (a reference or baseline balancer, when there is one, polls meanwhile; its CPU is not counted)."
    );
    let _ = writeln!(
        out,
        "- Cores: each proxy pinned to core 0; the pods (one test-server process) and test-client to core 1 (`taskset`)."
    );
    out
}

/// A markdown table's header row and the separator under it.
fn table_head(out: &mut String, columns: &[&str]) {
    let _ = writeln!(out, "| {} |", columns.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(columns.len()));
}

/// This build against the baseline build, measured in the same runs.
fn baseline_table(steps: &[Step], program: &Path) -> String {
    let mut out = format!(
        "\nAgainst the baseline build `{}`, in the same runs:\n\n",
        program.display()
    );
    table_head(
        &mut out,
        &[
            "pods",
            "wsbalancer µs/handshake",
            "baseline µs/handshake",
            "wsbalancer / baseline CPU",
            "conns/s wsbalancer / baseline",
        ],
    );
    for s in steps {
        let cpu = median(s.ours.cpu.clone());
        let baseline = median(s.baseline.cpu.clone());
        let (cpu_ratio, rate_ratio) = match s.ours.against(&s.baseline) {
            Some((cpu, rate)) => (format!("{cpu:.2}x"), format!("{rate:.2}x")),
            None => ("–".to_owned(), "–".to_owned()),
        };
        let _ = writeln!(
            out,
            "| {} | {cpu:.1} | {baseline:.1} | {cpu_ratio} | {rate_ratio} |",
            thousands(s.pods),
        );
    }
    out
}

impl Step {
    /// CPU per handshake against the reference balancer's (in front of
    /// `reference_pods` of the same pods), paired run by run; `None`
    /// without a reference.
    fn growth(&self) -> Option<f64> {
        paired(&self.ours.cpu, &self.reference.cpu)
    }
}

/// The median over the runs of each run's `ours / theirs`; `None` when
/// `theirs` was not measured.
fn paired(ours: &[f64], theirs: &[f64]) -> Option<f64> {
    if theirs.is_empty() || ours.len() != theirs.len() {
        return None;
    }
    Some(median(
        ours.iter().zip(theirs).map(|(a, b)| a / b).collect(),
    ))
}

/// Each target of the issue with this run's figure and whether it is met;
/// "not measured" when the sweep left out what it needs.
fn targets(steps: &[Step]) -> Vec<String> {
    let at = |n: usize| steps.iter().find(|s| s.pods == n);
    let verdict = |met: bool| if met { "met" } else { "NOT met" };
    let mut lines = Vec::new();
    let growth = at(1000)
        .filter(|s| s.reference_pods == 3)
        .and_then(Step::growth);
    lines.push(match growth {
        Some(ratio) => {
            format!(
                "CPU per handshake at 1,000 pods ≤ {MAX_GROWTH_AT_1000} × the 3-pod figure: {ratio:.2}x, {}.",
                verdict(ratio <= MAX_GROWTH_AT_1000)
            )
        }
        _ => format!(
            "CPU per handshake at 1,000 pods ≤ {MAX_GROWTH_AT_1000} × the 3-pod figure: not measured."
        ),
    });
    let against_haproxy = at(3).and_then(|three| three.ours.against(&three.haproxy));
    lines.push(match against_haproxy {
        Some((cpu, rate)) => {
            format!(
                "At 3 pods, CPU per handshake ≤ {MAX_CPU_VS_HAPROXY} × HAProxy's: {cpu:.2}x, {}; connections/s ≥ HAProxy's: {rate:.2}x, {}.",
                verdict(cpu <= MAX_CPU_VS_HAPROXY),
                verdict(rate >= 1.0)
            )
        }
        None => format!(
            "At 3 pods, CPU per handshake ≤ {MAX_CPU_VS_HAPROXY} × HAProxy's and connections/s ≥ HAProxy's: not measured."
        ),
    });
    lines.push(match at(1000) {
        Some(thousand) => {
            let idle = median(thousand.idle_default.clone());
            format!(
                "Idle polling of 1,000 pods at the default cacheTTL ≤ {MAX_IDLE_PERCENT_AT_1000}% of a core: {idle:.2}%, {}.",
                verdict(idle <= MAX_IDLE_PERCENT_AT_1000)
            )
        }
        None => format!(
            "Idle polling of 1,000 pods at the default cacheTTL ≤ {MAX_IDLE_PERCENT_AT_1000}% of a core: not measured."
        ),
    });
    lines
}

#[cfg(test)]
mod tests {
    use super::{Handshakes, Step};

    /// One run at `cpu` µs and 1,000 connections/s; not measured for
    /// `None`.
    fn measured(cpu: Option<f64>) -> Handshakes {
        Handshakes {
            cpu: cpu.into_iter().collect(),
            rate: cpu.map(|_| 1000.0).into_iter().collect(),
        }
    }

    fn step(pods: usize, cpu: f64, haproxy: Option<f64>, idle: f64) -> Step {
        Step {
            pods,
            reference_pods: if pods > 3 { 3 } else { 0 },
            reference: measured(if pods > 3 { Some(40.0) } else { None }),
            ours: measured(Some(cpu)),
            haproxy: measured(haproxy),
            idle_default: vec![idle],
            idle_short: vec![idle * 15.0],
            idle_haproxy: haproxy.map(|_| 0.0).into_iter().collect(),
            ..Step::default()
        }
    }

    #[test]
    fn the_baseline_table_divides_this_build_by_the_baseline() {
        let mut three = step(3, 90.0, None, 0.1);
        three.baseline = Handshakes {
            cpu: vec![100.0],
            rate: vec![800.0],
        };
        let table = super::baseline_table(&[three], std::path::Path::new("/b/wsbalancer"));
        assert!(table.contains("`/b/wsbalancer`"), "{table}");
        assert!(
            table.contains("| 3 | 90.0 | 100.0 | 0.90x | 1.25x |"),
            "{table}"
        );
    }

    #[test]
    fn ratios_pair_each_run_with_its_own_run() {
        // A slow second run slows both subjects: paired, the ratio stays.
        let ours = [100.0, 200.0, 110.0];
        let theirs = [100.0, 200.0, 100.0];
        assert_eq!(super::paired(&ours, &theirs), Some(1.0));
        assert_eq!(super::paired(&ours, &[]), None, "not measured");
        let mut thousand = step(1000, 0.0, None, 0.1);
        thousand.ours.cpu = vec![50.0, 100.0, 90.0];
        thousand.reference.cpu = vec![40.0, 100.0, 60.0];
        assert_eq!(thousand.growth(), Some(1.25));
        let lines = super::targets(&[thousand]);
        assert!(lines[0].contains("1.25x, NOT met"), "{}", lines[0]);
    }

    #[test]
    fn targets_say_met_missed_or_not_measured() {
        let lines = super::targets(&[
            step(3, 40.0, Some(50.0), 0.1),
            step(1000, 48.0, Some(50.0), 0.5),
        ]);
        assert!(lines[0].contains("1.20x, NOT met"), "{}", lines[0]);
        assert!(lines[1].contains("0.80x, met"), "{}", lines[1]);
        assert!(lines[1].contains("1.00x, met"), "{}", lines[1]);
        assert!(lines[2].contains("0.50%, met"), "{}", lines[2]);
        let lines = super::targets(&[step(3, 40.0, None, 0.1)]);
        assert!(
            lines.iter().all(|l| l.ends_with("not measured.")),
            "{lines:?}"
        );
    }
}
