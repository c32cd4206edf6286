//! `cargo xtask`: orchestration written in Rust instead of shell scripts.
//! This file is only the command line and its dispatch; each task is a
//! module of its own ([`demo`], [`bench_relay`], [`bench_balance`],
//! [`bench_silent`], [`bench_pod_count`], [`soak`]) written on [`harness`],
//! and [`release`] builds the binaries they start.

mod bench_balance;
mod bench_http2;
mod bench_pod_count;
mod bench_relay;
mod bench_silent;
mod demo;
mod harness;
mod release;
mod soak;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Benchmarks. Without a subcommand: wsbalancer beside a direct
    /// connection, a bare TCP relay, HAProxy and NGINX (connections/s,
    /// echo, CPU, idle memory); the full run also updates
    /// docs/benchmarks.md.
    Bench {
        #[command(subcommand)]
        bench: Option<Bench>,
        #[command(flatten)]
        compare: bench_relay::CompareArgs,
        /// Also write the table to this file.
        #[arg(long, global = true)]
        out: Option<PathBuf>,
        /// Use the binaries in this directory (wsbalancer, test-server,
        /// test-client and xtask itself) instead of building release ones
        /// (for a quick check with debug binaries).
        #[arg(long, global = true, value_name = "DIR")]
        bin_dir: Option<PathBuf>,
    },
    /// Connections churn through a balancer while pods are killed and
    /// restarted; fails when descriptors or memory leak or a connection is
    /// lost without a Close.
    Soak {
        /// How long to churn, in minutes.
        #[arg(long, default_value_t = 2.0)]
        minutes: f64,
        /// Use the binaries in this directory instead of building release
        /// ones.
        #[arg(long, value_name = "DIR")]
        bin_dir: Option<PathBuf>,
    },
    /// Pods + balancer + load, a report, everything stopped afterwards.
    Demo(demo::DemoArgs),
    /// The benchmark's "TCP relay" column: copies bytes to one pod and
    /// back, nothing else (started by `cargo xtask bench`).
    #[command(hide = true)]
    TcpRelay {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        /// The pod, host:port.
        #[arg(long)]
        to: String,
    },
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Spread of connections over pods: bursts, replicas, scale-up,
    /// long-lived connections rebalanced, a steady 5 minutes, a kill.
    Balance {
        /// Run only the scenarios whose name contains this (burst,
        /// replicas, scale-up, long-lived, steady, kill).
        #[arg(long)]
        only: Option<String>,
    },
    /// A pod host that goes silent (network namespaces; needs root):
    /// when its clients are told, how long new connections wait, for
    /// wsbalancer with and without hedged dials, HAProxy and NGINX.
    SilentPod,
    /// What the number of pods costs, for 3 to 1,000 pods: CPU per
    /// handshake and connections/s through wsbalancer and HAProxy, and
    /// idle CPU of polling at cacheTTL 30s and 2s.
    PodCount(bench_pod_count::PodCountArgs),
    /// WebSockets over HTTP/2 against HTTP/1.1, both over TLS: memory per
    /// idle WebSocket (100 per HTTP/2 connection) and 128 B echo rate.
    Http2,
    /// The comparison (the default): same as `cargo xtask bench`.
    Relay {
        #[command(flatten)]
        compare: bench_relay::CompareArgs,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Bench {
            bench,
            compare,
            out,
            bin_dir,
        } => {
            release::binaries(bin_dir).await?;
            let table = match bench {
                Some(Bench::Balance { only }) => bench_balance::run(only.as_deref()).await?,
                Some(Bench::Relay { compare }) => bench_relay::run(compare).await?,
                Some(Bench::SilentPod) => bench_silent::run().await?,
                Some(Bench::PodCount(args)) => bench_pod_count::run(args).await?,
                Some(Bench::Http2) => bench_http2::run().await?,
                None => bench_relay::run(compare).await?,
            };
            print_table(&table, out.as_deref())
        }
        Task::Soak { minutes, bin_dir } => {
            release::binaries(bin_dir).await?;
            let duration = Duration::try_from_secs_f64(minutes * 60.0)
                .context("--minutes must be a positive number")?;
            println!("\n{}", soak::run(duration).await?);
            Ok(())
        }
        Task::Demo(args) => demo::run(&args).await,
        Task::TcpRelay { listen, to } => bench_relay::floor::run(&listen, &to).await,
    }
}

/// Prints a benchmark's table, and writes it to `out` when asked.
fn print_table(table: &str, out: Option<&Path>) -> anyhow::Result<()> {
    println!("\n{table}");
    if let Some(path) = out {
        std::fs::write(path, table).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
