//! `wsbalancer` binary: parse flags, load config (exit 2 when invalid), run
//! until SIGTERM or Ctrl-C, reloading the config on SIGHUP (and when the
//! file changes, with `watchConfig`); or, with `--check-config`, print the effective
//! config and exit.

use std::io::Write;
use std::process::ExitCode;

use std::time::Duration;

use clap::Parser;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// mimalloc returns freed memory to the system far more readily than the
/// system allocator after a burst of handshakes, which keeps the resident
/// cost of tens of thousands of idle connections low.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use wsbalancer::Cli;
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
    if let Err(error) = wsbalancer::init_logging(cli.log_format, &cli.log_level) {
        eprintln!("wsbalancer: invalid --log-level or RUST_LOG: {error}");
        return ExitCode::from(2);
    }
    match wsbalancer::raise_descriptor_limit() {
        Ok(limit) => tracing::info!(
            soft = limit.soft,
            hard = limit.hard,
            was = limit.was,
            "file descriptor limit"
        ),
        Err(error) => tracing::warn!(%error, "file descriptor limit not raised"),
    }
    match run(config, cli.sources()) {
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
    match wsbalancer::check_config(&cli.sources()) {
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
async fn run(config: common::Config, sources: common::ConfigSources) -> anyhow::Result<()> {
    let stop = shutdown_signal();
    let mut hangups = hangup_signal();
    let watch = config.watch_config;
    let balancer = Balancer::start(config).await?;
    let watching = CancellationToken::new();
    let mut file_changes = match (&sources.file, watch) {
        (Some(path), true) => Some(wsbalancer::file_changes(
            path.clone(),
            WATCH_EVERY,
            watching.clone(),
        )),
        (None, true) => {
            tracing::warn!("watchConfig is set but no --config file is given: nothing to watch");
            None
        }
        (_, false) => None,
    };
    // Scripts and tests read this line to learn the bound ports.
    println!(
        "ready listen={} admin={}",
        balancer.listen_addr(),
        balancer.admin_addr()
    );
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            Some(()) = recv_some(&mut hangups) => {
                tracing::info!(signal = "SIGHUP", "reloading config");
                // Rejections are logged by the reload itself.
                let _ = balancer.reload_from(&sources);
            }
            Some(()) = recv_some(&mut file_changes) => {
                tracing::info!("config file changed: reloading config");
                let _ = balancer.reload_from(&sources);
            }
        }
    }
    watching.cancel();
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

/// How often a watched config file is checked.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// The next message of `rx`, or never when there is none to wait for.
async fn recv_some(rx: &mut Option<mpsc::Receiver<()>>) -> Option<()> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// A message per SIGHUP, installed now (so a signal right after the ready
/// line is not missed). `None` where there is no SIGHUP.
fn hangup_signal() -> Option<mpsc::Receiver<()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangup = signal(SignalKind::hangup()).ok()?;
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                // Full: a reload is pending and will read the latest file.
                if tx.try_send(()).is_err() && tx.is_closed() {
                    return;
                }
            }
        });
        Some(rx)
    }
    #[cfg(not(unix))]
    None
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
