//! `wsbalancer` binary: parse flags, load config (exit 2 when invalid), run
//! until SIGTERM or Ctrl-C; or, with `--check-config`, print the effective
//! config and exit.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

/// mimalloc returns freed memory to the system far more readily than the
/// system allocator after a burst of handshakes, which keeps the resident
/// cost of tens of thousands of idle connections low.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use wsbalancer::cli::Cli;
use wsbalancer::{Balancer, StartError};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.check_config.is_some() {
        return check_config(&cli);
    }
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
                Some(StartError::Config(_) | StartError::Tls(_) | StartError::ServerTls(_))
            );
            ExitCode::from(if config_error { 2 } else { 1 })
        }
    }
}

/// `--check-config`: the effective config on stdout and exit 0, or one
/// line on stderr and exit 2.
fn check_config(cli: &Cli) -> ExitCode {
    match wsbalancer::cli::check_config(&cli.sources()) {
        Ok(yaml) => match std::io::stdout().lock().write_all(yaml.as_bytes()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("wsbalancer: writing the effective config: {error}");
                ExitCode::FAILURE
            }
        },
        Err(error) => {
            eprintln!("wsbalancer: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

#[tokio::main]
async fn run(config: common::Config) -> anyhow::Result<()> {
    let stop = shutdown_signal();
    let balancer = Balancer::start(config).await?;
    // Scripts and tests read this line to learn the bound ports.
    println!(
        "ready listen={} admin={}",
        balancer.listen_addr(),
        balancer.admin_addr()
    );
    stop.await;
    // A second signal during the drain stops at once.
    let stop_now = balancer.stop_handle();
    let second = shutdown_signal();
    tokio::spawn(async move {
        second.await;
        tracing::warn!("second signal: stopping at once");
        stop_now.cancel();
    });
    let report = balancer.drain().await;
    if report.left_open > 0 {
        tracing::warn!(
            left_open = report.left_open,
            "connections still open when the drain ended"
        );
    }
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C. The handlers are installed when this is
/// called, not when it is first polled, so call it before announcing
/// readiness: a signal sent right after the ready line is never missed.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            match (term, int) {
                (Some(mut term), Some(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async move {
        let _ = tokio::signal::ctrl_c().await;
    }
}
