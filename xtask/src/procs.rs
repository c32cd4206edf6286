//! Child processes started by a task: each announces itself with `ready`
//! lines on stdout, and all are stopped (SIGTERM, then SIGKILL) when the
//! task ends, whatever way it ends.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// How long a process may take to print its ready lines.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a process may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The processes a task started. Dropping it kills them (`kill_on_drop`);
/// [`Procs::stop_all`] stops them gracefully first.
#[derive(Default)]
pub struct Procs {
    children: Vec<(String, Child)>,
}

impl Procs {
    /// Spawns `cmd` and waits for `ready` lines (`ready ...` on stdout).
    pub async fn start(
        &mut self,
        name: &str,
        cmd: &mut Command,
        ready: usize,
    ) -> anyhow::Result<Vec<String>> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
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
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(found)
    }

    /// Spawns `cmd` without waiting for anything; its output is discarded.
    pub fn spawn(&mut self, name: &str, cmd: &mut Command) -> anyhow::Result<()> {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        self.children.push((name.to_owned(), child));
        Ok(())
    }

    /// Process id of the child started as `name`.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.children.iter().find(|(n, _)| n == name)?.1.id()
    }

    /// How the child started as `name` exited, or `None` while it runs
    /// (or when there is no such child).
    pub fn exit_status(&mut self, name: &str) -> Option<std::process::ExitStatus> {
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

    /// SIGTERM to the child started as `name`, and waits (then SIGKILL
    /// after [`STOP_TIMEOUT`]).
    pub async fn stop(&mut self, name: &str) {
        let Some(index) = self.children.iter().position(|(n, _)| n == name) else {
            return;
        };
        let (_, mut child) = self.children.remove(index);
        if let Some(pid) = child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        if tokio::time::timeout(STOP_TIMEOUT, child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }

    /// SIGTERM to every child, newest first, then SIGKILL to any still
    /// running after [`STOP_TIMEOUT`].
    pub async fn stop_all(&mut self) {
        while let Some((name, mut child)) = self.children.pop() {
            if let Some(pid) = child.id() {
                let _ = Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .await;
            }
            match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
                Ok(_) => {}
                Err(_) => {
                    eprintln!("{name} did not stop after SIGTERM; killing it");
                    let _ = child.kill().await;
                }
            }
        }
    }
}

/// A minimal HTTP/1.1 GET returning the body (for the admin endpoints).
pub async fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    // Bounded like the read: a listener whose queue is full would
    // otherwise hold a caller's deadline loop for minutes of SYN retries.
    let mut tcp =
        tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
            .await??;
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut response)).await??;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok(body)
}
