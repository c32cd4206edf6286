//! `test-server`: runs N echo pods in one process.
//!
//! Prints one `ready pod=<name> url=<url>` line per pod on stdout once every
//! pod is listening, so scripts can start it on port 0 and read the ports.
//! Every pod is its own scrape target: `<url>/metrics`.

use std::net::{IpAddr, SocketAddr};

use anyhow::Context;
use clap::Parser;
use test_server::{Pod, PodOptions};

/// Echo pods for trying and testing wsbalancer.
///
/// Each pod serves `/ws` (WebSocket echo), `/metric` (the JSON connection
/// report the balancer reads) and `/metrics` (its own Prometheus metrics,
/// named `test_server_*`), on its own port.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Number of pods, on consecutive ports from --base-port.
    #[arg(long, default_value_t = 1)]
    pods: u16,
    /// Port of the first pod; 0 gives every pod a free port.
    #[arg(long, default_value_t = 9001)]
    base_port: u16,
    /// Address the pods bind with --pods/--base-port.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Explicit pod addresses (repeatable); replaces --pods/--base-port.
    #[arg(long = "listen")]
    listen: Vec<SocketAddr>,
    /// Subprotocols the pods support (comma-separated); each pod selects the
    /// first one the client offers.
    #[arg(long, value_delimiter = ',')]
    subprotocols: Vec<String>,
    /// `capacity` every pod reports.
    #[arg(long)]
    capacity: Option<u64>,
    /// Pod names are <prefix>-0, <prefix>-1, ...
    #[arg(long, default_value = "pod")]
    name_prefix: String,
    /// Wait this long before each echo (a slow pod), e.g. "20ms".
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    delay: std::time::Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let addrs: Vec<SocketAddr> = if args.listen.is_empty() {
        (0..args.pods)
            .map(|i| {
                let port = if args.base_port == 0 {
                    Ok(0)
                } else {
                    args.base_port
                        .checked_add(i)
                        .context("--base-port + --pods exceeds 65535")
                };
                port.map(|p| SocketAddr::new(args.host, p))
            })
            .collect::<anyhow::Result<_>>()?
    } else {
        args.listen.clone()
    };

    // Handlers first: a signal sent right after the ready lines must count.
    let stop = shutdown_signal();
    let mut pods = Vec::with_capacity(addrs.len());
    for (i, addr) in addrs.into_iter().enumerate() {
        let options = PodOptions {
            listen: addr,
            subprotocols: args.subprotocols.clone(),
            capacity: args.capacity,
            delay: args.delay,
            ..PodOptions::new(format!("{}-{i}", args.name_prefix))
        };
        let pod = Pod::start(options)
            .await
            .with_context(|| format!("binding pod {i} on {addr}"))?;
        pods.push(pod);
    }
    for pod in &pods {
        println!("ready pod={} url={}", pod.name(), pod.url());
    }

    stop.await;
    for pod in pods {
        pod.stop().await;
    }
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C; the handlers are installed by the call.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let ctrl_c = tokio::signal::ctrl_c();
    async move {
        #[cfg(unix)]
        if let Some(mut term) = term {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
            return;
        }
        let _ = ctrl_c.await;
    }
}
