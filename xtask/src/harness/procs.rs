//! The child processes of a task. A long-lived child (a pod, a balancer, a
//! peer proxy, a load client holding connections) is kept in [`Procs`]: it
//! announces itself with `ready` lines on stdout when it has any, and is
//! stopped (SIGTERM, then SIGKILL) when the task ends, whatever way it
//! ends. A one-shot child (a load run, the build) runs to its end within a
//! deadline ([`output`], [`status`]).

use std::process::{ExitStatus, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinSet;

/// How long a process may take to print its ready lines.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a process may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long `kill` itself may take to send a signal.
const SIGNAL_TIMEOUT: Duration = Duration::from_secs(5);

/// The processes a task started. Dropping it kills them (`kill_on_drop`);
/// [`Procs::stop_all`] stops them gracefully first.
#[derive(Default)]
pub struct Procs {
    /// The children by the name the task gave them, oldest first (they
    /// are stopped newest first: the balancer before its pods).
    children: Vec<(String, Child)>,
    /// Tasks reading each child's stdout past its ready lines, so that a
    /// child never blocks on a full pipe; aborted when `Procs` is dropped.
    drains: JoinSet<()>,
}

/// A child that printed its ready lines.
pub struct Ready {
    /// Its process id (for the `/proc` probes).
    pub pid: u32,
    /// The `ready ...` lines, in the order printed.
    pub lines: Vec<String>,
}

impl Procs {
    /// Spawns `cmd` as `name` and waits for `ready` lines (`ready ...` on
    /// stdout), for at most [`READY_TIMEOUT`].
    pub async fn start(
        &mut self,
        name: &str,
        cmd: &mut Command,
        ready: usize,
    ) -> anyhow::Result<Ready> {
        let (mut child, pid) = launch(name, cmd, Stdio::piped())?;
        let stdout = child.stdout.take().context("child stdout")?;
        self.children.push((name.to_owned(), child));
        let mut lines = BufReader::new(stdout).lines();
        let mut found = Vec::new();
        let wait = async {
            while found.len() < ready {
                match lines.next_line().await? {
                    Some(line) if line.starts_with("ready ") => found.push(line),
                    Some(_) => {}
                    None => bail!("{name} exited before it was ready"),
                }
            }
            anyhow::Ok(())
        };
        tokio::time::timeout(READY_TIMEOUT, wait)
            .await
            .with_context(|| format!("{name} not ready within {READY_TIMEOUT:?}"))??;
        // Ends at EOF, when the child does, or when `self` is dropped.
        self.drains
            .spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Ready { pid, lines: found })
    }

    /// Spawns `cmd` as `name` without waiting for anything (its stdout is
    /// discarded); returns its process id.
    pub fn spawn(&mut self, name: &str, cmd: &mut Command) -> anyhow::Result<u32> {
        let (child, pid) = launch(name, cmd, Stdio::null())?;
        self.children.push((name.to_owned(), child));
        Ok(pid)
    }

    /// How the child started as `name` exited, or `None` while it runs
    /// (or when there is no such child).
    pub fn exit_status(&mut self, name: &str) -> Option<ExitStatus> {
        let (_, child) = self.children.iter_mut().find(|(n, _)| n == name)?;
        child.try_wait().ok().flatten()
    }

    /// SIGKILL to the child started as `name`, as a crash would.
    pub async fn kill(&mut self, name: &str) -> anyhow::Result<()> {
        let index = self
            .children
            .iter()
            .position(|(n, _)| n == name)
            .with_context(|| format!("no process named {name}"))?;
        let (_, mut child) = self.children.remove(index);
        child
            .kill()
            .await
            .with_context(|| format!("killing {name}"))?;
        Ok(())
    }

    /// SIGKILL to every child started as `name`, and waits for them.
    pub async fn kill_all(&mut self, name: &str) {
        let (matching, rest) = std::mem::take(&mut self.children)
            .into_iter()
            .partition(|(n, _)| n == name);
        self.children = rest;
        for (_, mut child) in matching {
            let _ = child.kill().await;
        }
    }

    /// Stops the child started as `name` (see [`terminate`]).
    pub async fn stop(&mut self, name: &str) {
        if let Some(index) = self.children.iter().position(|(n, _)| n == name) {
            let (name, child) = self.children.remove(index);
            terminate(&name, child).await;
        }
    }

    /// Stops every child, newest first (see [`terminate`]).
    pub async fn stop_all(&mut self) {
        while let Some((name, child)) = self.children.pop() {
            terminate(&name, child).await;
        }
    }
}

/// SIGTERM to `child`, so that it drains as in production, then SIGKILL
/// when it is still running after [`STOP_TIMEOUT`].
async fn terminate(name: &str, mut child: Child) {
    if let Some(pid) = child.id() {
        let mut kill = Command::new("kill");
        kill.args(["-TERM", &pid.to_string()]);
        let _ = status("kill", &mut kill, SIGNAL_TIMEOUT).await;
    }
    if tokio::time::timeout(STOP_TIMEOUT, child.wait())
        .await
        .is_err()
    {
        eprintln!("{name} did not stop within {STOP_TIMEOUT:?} of SIGTERM; killing it");
        let _ = child.kill().await;
    }
}

/// Runs `body` with processes of its own and stops them all afterwards,
/// whether it succeeded, failed or was interrupted with Ctrl-C: a task
/// never leaves a child behind.
pub async fn with_procs<T>(
    body: impl AsyncFnOnce(&mut Procs) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let mut procs = Procs::default();
    let interrupted = async {
        // Without a handler (it could not be installed) only the body ends
        // the task.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let result = tokio::select! {
        result = body(&mut procs) => result,
        () = interrupted => Err(anyhow!("interrupted")),
    };
    procs.stop_all().await;
    result
}

/// Runs `cmd` (called `name` in errors) to its end with its output shown,
/// and returns how it exited; it is killed, and an error returned, when it
/// runs longer than `within`.
pub async fn status(name: &str, cmd: &mut Command, within: Duration) -> anyhow::Result<ExitStatus> {
    let (mut child, _) = launch(name, cmd, Stdio::inherit())?;
    match tokio::time::timeout(within, child.wait()).await {
        Ok(exited) => exited.with_context(|| format!("waiting for {name}")),
        Err(_) => {
            let _ = child.kill().await;
            bail!("{name} still running after {within:?}: killed")
        }
    }
}

/// Runs `cmd` (called `name` in errors) to its end and returns what it
/// printed; it is killed, and an error returned, when it runs longer than
/// `within`.
pub async fn output(name: &str, cmd: &mut Command, within: Duration) -> anyhow::Result<Output> {
    let (child, _) = launch(name, cmd.stderr(Stdio::piped()), Stdio::piped())?;
    // Dropped at the deadline, the child is killed (`kill_on_drop`).
    tokio::time::timeout(within, child.wait_with_output())
        .await
        .map_err(|_| anyhow!("{name} still running after {within:?}: killed"))?
        .with_context(|| format!("waiting for {name}"))
}

/// Spawns `cmd` as `name` with no stdin and `stdout` as given; the child
/// is killed when its handle is dropped, so that no path out of a task
/// leaves it running. Returns it with its process id.
fn launch(name: &str, cmd: &mut Command, stdout: Stdio) -> anyhow::Result<(Child, u32)> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(stdout)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    let pid = child.id().with_context(|| format!("{name} has no pid"))?;
    Ok((child, pid))
}

/// `key=value` out of a ready line.
pub fn field(line: &str, key: &str) -> Option<String> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=').map(str::to_owned))
}
