//! `test-client`: WebSocket load with echo checks, a live progress line and
//! a report. Exit code: 1 when a `--fail-on` threshold is crossed (or,
//! without `--fail-on`, when any connection or echo failed; with
//! `--reconnect`, any client), 2 for bad arguments.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use test_client::backoff::{BackoffPolicy, Window};
use test_client::options::Reconnect;
use test_client::progress::Progress;
use test_client::report::Live;
use test_client::thresholds::Threshold;
use test_client::{LoadOptions, run};

/// Opens WebSocket connections, checks echoes, reports spread and latency.
#[derive(Debug, Parser)]
#[command(version, args_override_self = true)]
struct Args {
    /// Target URL, ws:// or wss:// (the balancer or a pod); repeat for
    /// several, used in turn.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: Vec<String>,
    /// Connections to open in total (with --reconnect: clients).
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// Connections in progress at once (with --reconnect: first opens in
    /// progress at once; reconnects are paced by their backoff alone).
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
    /// New connections per second (a steady ramp; --concurrency still caps
    /// how many are in progress).
    #[arg(long)]
    rate: Option<f64>,
    /// Bound on the whole run: no connection starts after it and holds are
    /// cut short, e.g. "60s" (with --reconnect, required: clients reconnect
    /// until it ends, then close with 1000).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Messages per connection (each echo is checked; with --reconnect, on
    /// every connection a client opens).
    #[arg(long, default_value_t = 10)]
    messages: usize,
    /// Messages per second per connection, sent on a schedule whatever the
    /// echoes do (open loop); latency counts from each message's due time.
    #[arg(long)]
    msg_rate: Option<f64>,
    /// Bytes per message.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// How long each connection stays open after its messages (not with
    /// --reconnect: connections are then held until the far side closes
    /// them or --duration ends).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration, conflicts_with = "reconnect")]
    hold: Duration,
    /// Clients that reconnect: a connection that is closed (by the far
    /// side's Close, any code, e.g. 1012 from a rebalance, or a drop) or
    /// fails to open is followed by the next one after a jittered backoff,
    /// at the next --url, until --duration ends. Needs --duration.
    #[arg(long, requires = "duration")]
    reconnect: bool,
    /// With --reconnect: where the first retry after a close or a failed
    /// open falls, LOW..HIGH (random in between); each further failed open
    /// in a row doubles it, and a successful one starts it over.
    #[arg(
        long,
        default_value = "50ms..250ms",
        value_name = "LOW..HIGH",
        requires = "reconnect"
    )]
    reconnect_backoff: Window,
    /// With --reconnect: the longest backoff.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration, requires = "reconnect")]
    reconnect_backoff_max: Duration,
    /// With --reconnect: failed opens in a row after which a client gives
    /// up (and fails) [default: none, it tries until --duration ends].
    #[arg(long, value_name = "N", requires = "reconnect")]
    reconnect_attempts: Option<u32>,
    /// With --reconnect: close each connection (1000) once it is this old
    /// and reconnect, as a proxy's maximum connection duration would make
    /// a client do [default: none, held until the far side closes].
    #[arg(long, value_parser = humantime::parse_duration, requires = "reconnect")]
    reconnect_max_age: Option<Duration>,
    /// Send binary messages instead of text.
    #[arg(long)]
    binary: bool,
    /// Subprotocol to offer.
    #[arg(long)]
    subprotocol: Option<String>,
    /// Extra request header, NAME:VALUE (repeatable).
    #[arg(long = "header", value_name = "NAME:VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// `Origin` header to send.
    #[arg(long)]
    origin: Option<String>,
    /// Local addresses to connect from, in turn (comma-separated, e.g.
    /// 127.0.0.2,127.0.0.3): each adds a range of ephemeral ports.
    #[arg(long, value_delimiter = ',')]
    bind: Vec<IpAddr>,
    /// Send a ping this often while a connection is held.
    #[arg(long, value_parser = humantime::parse_duration)]
    ping_interval: Option<Duration>,
    /// Bound on each handshake, echo and close.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// For wss:// URLs: PEM certificates to trust besides the system roots
    /// (a test CA, or the server's own self-signed certificate).
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// For wss:// URLs: accept any server certificate, unverified.
    #[arg(long)]
    insecure: bool,
    /// Also write the report (with raw histograms) as JSON to FILE (`-` for
    /// stdout, which then gets only the JSON).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Fail (exit 1) when this holds, e.g. "p99>50ms", "failed>0",
    /// "failed_pct>=1", "handshake_p99>100ms" (repeatable).
    #[arg(long = "fail-on", value_name = "CONDITION")]
    fail_on: Vec<Threshold>,
    /// No live progress line.
    #[arg(long, short)]
    quiet: bool,
    /// Split the run over this many processes (each may hold at most
    /// 20,000 file descriptors here); their reports are merged into one.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Number of this process's first connection (set for workers).
    #[arg(long, default_value_t = 0, hide = true)]
    first_id: usize,
}

fn parse_header(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?}: expected NAME:VALUE"))?;
    Ok((name.trim().to_owned(), value.trim().to_owned()))
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let options = LoadOptions {
        urls: args.url,
        connections: args.connections,
        concurrency: args.concurrency,
        rate: args.rate,
        duration: args.duration,
        messages: args.messages,
        msg_rate: args.msg_rate,
        size: args.size,
        hold: args.hold,
        binary: args.binary,
        subprotocol: args.subprotocol,
        headers: args.headers,
        origin: args.origin,
        bind: args.bind,
        ping_interval: args.ping_interval,
        timeout: args.timeout,
        first_id: args.first_id,
        ca_file: args.ca_file,
        insecure: args.insecure,
        reconnect: args.reconnect.then_some(Reconnect {
            backoff: BackoffPolicy {
                first: args.reconnect_backoff,
                max: args.reconnect_backoff_max,
            },
            attempts: args.reconnect_attempts,
            max_age: args.reconnect_max_age,
        }),
    };
    if args.connections == 0 {
        eprintln!("test-client: --connections must be at least 1");
        return Ok(ExitCode::from(2));
    }
    if let Err(error) = options.validate() {
        eprintln!("test-client: {error}");
        return Ok(ExitCode::from(2));
    }
    let stdout_json = args.json.as_deref().is_some_and(|p| p.as_os_str() == "-");
    let report = if args.workers > 1 {
        if !args.quiet && !stdout_json {
            eprintln!("test-client: {} worker processes", args.workers);
        }
        in_workers(&options, args.workers).await?
    } else {
        let live = Arc::new(Live::default());
        let progress = Progress::start(live.clone(), args.connections as u64, args.quiet);
        let report = run(options, live).await;
        progress.finish().await;
        report
    };
    let json = serde_json::to_string_pretty(&report)?;
    match args.json.as_deref() {
        Some(_) if stdout_json => to_stdout(&format!("{json}\n"))?,
        Some(path) => {
            std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
            to_stdout(&report.render())?;
        }
        None => to_stdout(&report.render())?,
    }
    let failed = if args.fail_on.is_empty() {
        !report.all_ok()
    } else {
        let crossed: Vec<String> = args
            .fail_on
            .iter()
            .filter_map(|t| t.crossed(&report))
            .collect();
        for line in &crossed {
            eprintln!("test-client: --fail-on {line}");
        }
        !crossed.is_empty()
    };
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Runs the load in `workers` child processes (this binary again, with the
/// same arguments and a share of the connections, the rate and the
/// concurrency each) and merges their reports.
async fn in_workers(options: &LoadOptions, workers: usize) -> anyhow::Result<test_client::Report> {
    let program = std::env::current_exe().context("finding this program")?;
    let given: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let mut children = Vec::with_capacity(workers);
    let mut first_id = options.first_id;
    for worker in 0..workers {
        let share =
            options.connections / workers + usize::from(worker < options.connections % workers);
        if share == 0 {
            continue;
        }
        let mut command = tokio::process::Command::new(&program);
        command
            .args(&given)
            .args(["--workers", "1", "--quiet", "--json", "-"])
            .args(["--connections", &share.to_string()])
            .args(["--first-id", &first_id.to_string()])
            .args([
                "--concurrency",
                &options.concurrency.div_ceil(workers).to_string(),
            ])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        if let Some(rate) = options.rate {
            command.args(["--rate", &(rate / workers as f64).to_string()]);
        }
        children.push(command.output());
        first_id += share;
    }
    let mut reports = Vec::with_capacity(children.len());
    for output in futures_util::future::join_all(children).await {
        let output = output.context("running a worker")?;
        let report: test_client::Report =
            serde_json::from_slice(&output.stdout).with_context(|| {
                format!(
                    "a worker's report ({}): {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                )
            })?;
        reports.push(report);
    }
    test_client::report::merge(&reports).context("no worker ran")
}

/// Writes `text` to stdout. A reader that went away (`| head`) is not an
/// error: the exit code still says how the run went.
fn to_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        result => result.context("writing to stdout"),
    }
}
