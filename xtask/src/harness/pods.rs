//! Echo pods (`test-server`) for a task to send its load to: each serves
//! `/ws` (echo), `/metric` (the connection report the balancer reads) and
//! prints `ready pod=NAME url=URL` once it listens. Several pods share one
//! process ([`start_pods`]) unless one must be killed alone
//! ([`start_pod`]).

use std::net::SocketAddr;

use anyhow::{Context, bail};

use super::bins::{bin, pinned};
use super::net::http_get;
use super::procs::{Procs, field};

/// One echo pod a task started.
#[derive(Debug, Clone)]
pub struct Pod {
    /// Its name, as it reports it (`x-pod-name`, `podName`).
    pub name: String,
    /// Where it listens, on loopback.
    pub addr: SocketAddr,
}

impl Pod {
    /// Its WebSocket echo, for a client that bypasses the balancer.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
}

/// Starts one `test-server` process named `name` that serves one pod per
/// entry of `ports` (0: any free port), pinned to `core` when given; the
/// pods are named `NAME-0`, `NAME-1`, ... Returns once every pod listens.
pub async fn start_pods(
    procs: &mut Procs,
    name: &str,
    ports: &[u16],
    core: Option<u32>,
) -> anyhow::Result<Vec<Pod>> {
    if ports.is_empty() {
        bail!("{name}: no pod to start");
    }
    let mut cmd = pinned(core, bin("test-server"));
    cmd.args(["--name-prefix", name]);
    for port in ports {
        cmd.arg("--listen").arg(format!("127.0.0.1:{port}"));
    }
    let ready = procs.start(name, &mut cmd, ports.len()).await?;
    ready.lines.iter().map(|line| pod(line)).collect()
}

/// Starts one pod in a process of its own named `pod<index>` on `port`
/// (0: any), so that it can be killed alone and restarted on its port.
pub async fn start_pod(procs: &mut Procs, index: usize, port: u16) -> anyhow::Result<Pod> {
    let mut pods = start_pods(procs, &format!("pod{index}"), &[port], None).await?;
    pods.pop().context("test-server started no pod")
}

/// The pod a ready line announces.
fn pod(line: &str) -> anyhow::Result<Pod> {
    let name = field(line, "pod").with_context(|| format!("no pod name in {line:?}"))?;
    let url = field(line, "url").with_context(|| format!("no pod url in {line:?}"))?;
    let addr = url
        .strip_prefix("http://")
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("pod url {url:?} is not http://ADDR"))?;
    Ok(Pod { name, addr })
}

/// The connections the pod at `addr` holds now, as its own `/metric`
/// reports them (`agentsConnections`): the count the balancer reads too.
pub async fn pod_connections(addr: SocketAddr) -> anyhow::Result<u64> {
    let body = http_get(addr, "/metric").await?;
    serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|j| j["agentsConnections"].as_u64())
        .with_context(|| format!("no agentsConnections in {body:?}"))
}

/// Each pod's connection count, in order (0 for one that does not answer:
/// a pod not up yet holds nothing).
pub async fn pod_counts(pods: &[SocketAddr]) -> Vec<u64> {
    let mut counts = Vec::with_capacity(pods.len());
    for &pod in pods {
        counts.push(pod_connections(pod).await.unwrap_or(0));
    }
    counts
}

/// How uneven pod counts are: `(max - min) / mean` (0 when they hold
/// nothing), so that runs of different sizes compare; the figure the
/// balance benchmark ranks rules by and the scale-up demo waits on.
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
