//! Network namespaces for tests and benchmarks about network faults.
//!
//! A [`Lab`] is an `edge` namespace (where the balancer and its clients
//! run) and one namespace per pod host, each joined to the edge by its own
//! veth pair (`10.99.N.1` on the edge, `10.99.N.2` on host `N`). Traffic
//! stays inside namespaces the lab made, and dropping the lab deletes them.
//!
//! [`Lab::silence`] makes a host vanish the way a node failure or a
//! partition does, with no reset ever sent: its end of the veth goes down,
//! and a permanent neighbour entry on the edge keeps the edge sending to
//! it, so packets are dropped rather than refused (this kernel's `tc` has
//! no netem or drop action to do it another way).
//!
//! Code runs inside a namespace on a thread of its own
//! ([`run_in`]): `setns` moves only the calling thread, and every thread
//! and socket that thread then creates (a tokio runtime's workers, its
//! listeners and connections, a child process) lives in the namespace too.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::{Pod, PodOptions};

/// Why a lab could not be set up or entered.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// An `ip` command failed (not root, no iproute2, a name in use).
    #[error("`ip {args}` failed: {detail}")]
    Ip {
        /// The arguments given to `ip`.
        args: String,
        /// Its exit status and standard error.
        detail: String,
    },
    /// A thread could not move into a namespace.
    #[error("entering network namespace {ns}: {source}")]
    Enter {
        /// The namespace.
        ns: String,
        /// Why `setns` failed.
        source: std::io::Error,
    },
    /// A pod inside a host namespace did not start.
    #[error("pod in {ns}: {detail}")]
    Pod {
        /// The host's namespace.
        ns: String,
        /// What went wrong.
        detail: String,
    },
}

/// How long one `ip` command may take.
const IP_TIMEOUT: Duration = Duration::from_secs(10);

/// Labs made by this process so far: part of every name, so labs of
/// concurrent tests (and of other processes) never collide.
static LABS: AtomicU32 = AtomicU32::new(0);

/// One pod host joined to the edge.
#[derive(Debug)]
pub struct Host {
    /// The host's namespace.
    pub ns: String,
    /// The host's address, as the edge reaches it.
    pub addr: Ipv4Addr,
    /// The edge's end of the veth pair.
    edge_veth: String,
    /// The host's end of the veth pair.
    host_veth: String,
    /// The host end's MAC address (set at creation, so it is known).
    host_mac: String,
}

/// An edge namespace and its pod hosts, deleted on drop.
#[derive(Debug)]
pub struct Lab {
    /// Where the balancer and its clients run.
    pub edge: String,
    /// The pod hosts, in order.
    pub hosts: Vec<Host>,
}

impl Lab {
    /// Whether labs can be made here: root (CI runs as root) with `ip`.
    pub fn available() -> bool {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        root && ip(&["netns", "list"]).is_ok()
    }

    /// Makes the edge namespace and `hosts` pod hosts (at most 200).
    pub fn create(hosts: usize) -> Result<Lab, LabError> {
        let hosts = hosts.min(200);
        let tag = format!(
            "{}x{}",
            std::process::id() % 100_000,
            LABS.fetch_add(1, Ordering::Relaxed)
        );
        let edge = format!("wsb{tag}e");
        let mut lab = Lab {
            edge: edge.clone(),
            hosts: Vec::new(),
        };
        ip(&["netns", "add", &edge])?;
        ip(&["-n", &edge, "link", "set", "lo", "up"])?;
        for n in 0..hosts {
            let ns = format!("wsb{tag}h{n}");
            ip(&["netns", "add", &ns])?;
            // Pushed before the veth exists: a failure below still deletes
            // the namespace.
            let host = Host {
                ns: ns.clone(),
                addr: Ipv4Addr::new(10, 99, n as u8, 2),
                edge_veth: format!("e{tag}v{n}"),
                host_veth: format!("h{tag}v{n}"),
                host_mac: format!("02:99:00:00:{n:02x}:02"),
            };
            lab.hosts.push(host);
            let host = &lab.hosts[n];
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "link",
                "add",
                &host.edge_veth,
                "netns",
                &edge,
                "type",
                "veth",
                "peer",
                "name",
                &host.host_veth,
                "netns",
                &ns,
                "address",
                &host.host_mac,
            ])?;
            let edge_addr = format!("10.99.{n}.1/24");
            let host_addr = format!("{}/24", host.addr);
            ip(&[
                "-n",
                &edge,
                "addr",
                "add",
                &edge_addr,
                "dev",
                &host.edge_veth,
            ])?;
            ip(&["-n", &ns, "addr", "add", &host_addr, "dev", &host.host_veth])?;
            ip(&["-n", &edge, "link", "set", &host.edge_veth, "up"])?;
            ip(&["-n", &ns, "link", "set", &host.host_veth, "up"])?;
        }
        Ok(lab)
    }

    /// Makes host `n` vanish: from now on, packets the edge sends it are
    /// dropped without an answer, as with a failed node.
    pub fn silence(&self, n: usize) -> Result<(), LabError> {
        let host = &self.hosts[n];
        let addr = host.addr.to_string();
        ip(&[
            "-n",
            &self.edge,
            "neigh",
            "replace",
            &addr,
            "lladdr",
            &host.host_mac,
            "dev",
            &host.edge_veth,
            "nud",
            "permanent",
        ])?;
        ip(&["-n", &host.ns, "link", "set", &host.host_veth, "down"])
    }

    /// Starts a pod on host `n`, listening on the host's address; it runs
    /// on a thread of its own until the returned [`LabPod`] is dropped.
    pub fn start_pod(&self, n: usize, mut options: PodOptions) -> Result<LabPod, LabError> {
        let host = &self.hosts[n];
        options.listen = SocketAddr::from((host.addr, 0));
        let ns = host.ns.clone();
        let (started_tx, started_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = run_in(&ns, move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = started_tx.send(Err(error.to_string()));
                    return;
                }
            };
            runtime.block_on(async move {
                match Pod::start(options).await {
                    Ok(pod) => {
                        let _ = started_tx.send(Ok(pod));
                        // Until the LabPod is dropped; the runtime's end
                        // then ends the pod's tasks and sockets.
                        let _ = stop_rx.await;
                    }
                    Err(error) => {
                        let _ = started_tx.send(Err(error.to_string()));
                    }
                }
            });
        });
        let pod_error = |detail: String| LabError::Pod {
            ns: ns.clone(),
            detail,
        };
        match started_rx.recv_timeout(IP_TIMEOUT) {
            Ok(Ok(pod)) => Ok(LabPod {
                pod,
                stop: Some(stop_tx),
                thread: Some(thread),
            }),
            Ok(Err(detail)) => Err(pod_error(detail)),
            // The thread ended without a word: it could not enter the
            // namespace, and its result says why.
            Err(mpsc::RecvTimeoutError::Disconnected) => match thread.join() {
                Ok(Err(entering)) => Err(entering),
                _ => Err(pod_error("its thread ended before it started".to_owned())),
            },
            Err(mpsc::RecvTimeoutError::Timeout) => {
                Err(pod_error("did not start in time".to_owned()))
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth ends too.
        for ns in self
            .hosts
            .iter()
            .map(|h| h.ns.as_str())
            .chain([self.edge.as_str()])
        {
            if let Err(error) = ip(&["netns", "del", ns]) {
                tracing::warn!(%ns, %error, "network namespace left behind");
            }
        }
    }
}

/// A pod running inside a host namespace; dropping it stops it.
pub struct LabPod {
    /// The pod (its counters and address).
    pub pod: Pod,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<(), LabError>>>,
}

impl Drop for LabPod {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Not joined: a pod whose host was silenced may take a while to
        // give up its connections, and nothing here waits for it.
        drop(self.thread.take());
    }
}

/// Runs `f` on a new thread inside the network namespace `ns` (a name
/// under /run/netns); the thread's result is `f`'s, or why it could not
/// enter.
pub fn run_in<T, F>(ns: &str, f: F) -> JoinHandle<Result<T, LabError>>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        enter(&ns)?;
        Ok(f())
    })
}

/// Moves the calling thread into the network namespace `ns`.
fn enter(ns: &str) -> Result<(), LabError> {
    let error = |source| LabError::Enter {
        ns: ns.to_owned(),
        source,
    };
    let file = std::fs::File::open(format!("/run/netns/{ns}")).map_err(error)?;
    // SAFETY: a valid descriptor of a network namespace file, and a flag
    // that only moves this thread's network namespace.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(error(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Runs `ip args`, within [`IP_TIMEOUT`].
fn ip(args: &[&str]) -> Result<(), LabError> {
    let failed = |detail: String| LabError::Ip {
        args: args.join(" "),
        detail,
    };
    let mut child = Command::new("ip")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| failed(e.to_string()))?;
    let deadline = std::time::Instant::now() + IP_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => {
                let mut stderr = String::new();
                if let Some(mut pipe) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
                }
                return Err(failed(format!("{status}: {}", stderr.trim())));
            }
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(failed(format!("no answer within {IP_TIMEOUT:?}")));
            }
            Err(error) => return Err(failed(error.to_string())),
        }
    }
}
