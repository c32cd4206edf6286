//! `wsbalancer` binary: parse flags, load config (exit 2 when invalid), run
//! until SIGTERM or Ctrl-C.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use wsbalancer::cli::Cli;
use wsbalancer::{Balancer, StartError};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match cli.sources().load() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("wsbalancer: {error}");
            return ExitCode::from(2);
        }
    };
    if let Err(error) = wsbalancer::logging::init(cli.log_format, &cli.log_level) {
        eprintln!("wsbalancer: invalid --log-level or RUST_LOG: {error}");
        return ExitCode::from(2);
    }
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("wsbalancer: {error:#}");
            // A config that only fails once used (an unparsable caFile) is
            // still a config error.
            let config_error = matches!(
                error.downcast_ref::<StartError>(),
                Some(StartError::Config(_) | StartError::Tls(_))
            );
            ExitCode::from(if config_error { 2 } else { 1 })
        }
    }
}

#[tokio::main]
async fn run(config: common::Config) -> anyhow::Result<()> {
    let write_timeout = config.write_timeout;
    let balancer = Balancer::start(config).await?;
    // Scripts and tests read this line to learn the bound ports.
    println!(
        "ready listen={} admin={}",
        balancer.listen_addr(),
        balancer.admin_addr()
    );
    shutdown_signal().await;
    tracing::info!("stopping");
    balancer
        .shutdown(write_timeout.max(Duration::from_secs(1)))
        .await;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
