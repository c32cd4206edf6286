//! A `wsbalancer` started for a task, on free loopback ports in front of
//! the task's pods, and known by what it announced: its listen and admin
//! addresses (its ready line) and its process (for the `/proc` probes).

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use super::bins::{bin, pinned};
use super::net::http_get;
use super::procs::{Procs, field};
use super::wait::poll;

/// How long a started balancer may take to answer `ready` on `/readyz`.
const SERVING_TIMEOUT: Duration = Duration::from_secs(30);

/// How often `/readyz` is asked meanwhile.
const SERVING_POLL: Duration = Duration::from_millis(20);

/// A balancer a task started and that serves.
#[derive(Debug, Clone, Copy)]
pub struct Balancer {
    /// Where it takes WebSocket connections.
    pub listen: SocketAddr,
    /// Its admin endpoints (`/readyz`, `/metrics`, `/balancer-metrics`).
    pub admin: SocketAddr,
    /// Its process id.
    pub pid: u32,
}

impl Balancer {
    /// The URL a client connects to (any path is relayed; the pods echo on
    /// `/ws`).
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.listen)
    }

    /// Connections it has shed, by any reason and from any pod, read from
    /// its `/metrics`: an error when it cannot be read, so that an
    /// unreadable balancer never passes for one that shed nothing.
    pub async fn shed_total(&self) -> anyhow::Result<u64> {
        let text = http_get(self.admin, "/metrics").await?;
        let mut total = 0u64;
        for line in text
            .lines()
            .filter(|l| l.starts_with("wsbalancer_pod_connections_shed_total{"))
        {
            let value = line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .with_context(|| format!("unreadable shed counter: {line:?}"))?;
            total += value as u64;
        }
        Ok(total)
    }
}

/// Starts a `wsbalancer` named `name` in front of the pods at `pods`,
/// pinned to `core` when given, with `args` after the addresses (log
/// level, selection, timeouts). Returns once it serves: its ready line
/// printed and `/readyz` answering `ready`, as a balancer is before any
/// client arrives.
pub async fn start_balancer<S: AsRef<OsStr>>(
    procs: &mut Procs,
    name: &str,
    pods: &[SocketAddr],
    core: Option<u32>,
    args: impl IntoIterator<Item = S>,
) -> anyhow::Result<Balancer> {
    start_balancer_from(procs, name, &bin("wsbalancer"), pods, core, args).await
}

/// [`start_balancer`] with the binary at `program`: another build (an
/// earlier commit's, say) measured beside this one in the same run.
pub async fn start_balancer_from<S: AsRef<OsStr>>(
    procs: &mut Procs,
    name: &str,
    program: &Path,
    pods: &[SocketAddr],
    core: Option<u32>,
    args: impl IntoIterator<Item = S>,
) -> anyhow::Result<Balancer> {
    let pods: Vec<String> = pods.iter().map(|a| format!("http://{a}")).collect();
    let mut cmd = pinned(core, program);
    cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--pods", &pods.join(",")])
        .args(args);
    let ready = procs.start(name, &mut cmd, 1).await?;
    let line = ready
        .lines
        .first()
        .context("no ready line from wsbalancer")?;
    let addr = |key: &str| -> anyhow::Result<SocketAddr> {
        field(line, key)
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("no {key} address in {line:?}"))
    };
    let balancer = Balancer {
        listen: addr("listen")?,
        admin: addr("admin")?,
        pid: ready.pid,
    };
    poll(SERVING_TIMEOUT, SERVING_POLL, async || {
        let answer = http_get(balancer.admin, "/readyz").await.ok()?;
        (answer == "ready\n").then_some(())
    })
    .await
    .with_context(|| format!("{name} not ready on /readyz within {SERVING_TIMEOUT:?}"))?;
    Ok(balancer)
}
