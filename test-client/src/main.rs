//! `test-client`: WebSocket load with echo checks and a report. Exits 1 when
//! any connection or echo failed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use test_client::{LoadOptions, run};

/// Opens WebSocket connections, checks echoes, reports spread and latency.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Target URL (the balancer or a pod).
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// Connections to open in total.
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// Connections in progress at once.
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
    /// Messages per connection (each echo is checked).
    #[arg(long, default_value_t = 10)]
    messages: usize,
    /// Bytes per message.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// How long each connection stays open after its messages.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    hold: Duration,
    /// Send binary messages instead of text.
    #[arg(long)]
    binary: bool,
    /// Subprotocol to offer.
    #[arg(long)]
    subprotocol: Option<String>,
    /// Bound on each handshake, echo and close.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Also write the report as JSON to FILE (`-` for stdout, which then
    /// gets only the JSON).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
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
    anyhow::ensure!(args.connections > 0, "--connections must be at least 1");
    let report = run(LoadOptions {
        url: args.url,
        connections: args.connections,
        concurrency: args.concurrency,
        messages: args.messages,
        size: args.size,
        hold: args.hold,
        binary: args.binary,
        subprotocol: args.subprotocol,
        timeout: args.timeout,
    })
    .await;
    let json = serde_json::to_string_pretty(&report)?;
    match args.json.as_deref() {
        Some(path) if path.as_os_str() == "-" => println!("{json}"),
        Some(path) => {
            std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
            print!("{}", report.render());
        }
        None => print!("{}", report.render()),
    }
    Ok(if report.all_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
