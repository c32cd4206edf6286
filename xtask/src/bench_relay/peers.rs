//! The proxies wsbalancer is compared with in `cargo xtask bench relay`:
//! HAProxy (`balance leastconn`) and NGINX (`least_conn`), from Debian's
//! packages, each configured for WebSockets the way their documentation
//! shows, one thread/worker, and started in the foreground on a free port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::Command;

use crate::harness::{self, Procs, pinned};

/// How long a peer may take to accept connections once started.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(20);

/// How long `-v` may take to print a version.
const VERSION_TIMEOUT: Duration = Duration::from_secs(10);

/// How long scripts/install-bench-peers may take (apt and pip downloads).
const INSTALL_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// A comparison proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// HAProxy, `balance leastconn`.
    Haproxy,
    /// NGINX, `least_conn`.
    Nginx,
}

/// Installs HAProxy, NGINX and Python's websockets
/// (scripts/install-bench-peers), for `--install-peers`.
pub async fn install() -> anyhow::Result<()> {
    let script = harness::workspace_root().join("scripts/install-bench-peers");
    let name = script.display().to_string();
    let status = harness::status(&name, &mut Command::new(&script), INSTALL_TIMEOUT).await?;
    if !status.success() {
        bail!("{name} failed ({status})");
    }
    Ok(())
}

impl Peer {
    /// Column name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Peer::Haproxy => "HAProxy",
            Peer::Nginx => "NGINX",
        }
    }

    /// The peer whose column is called `name`.
    pub fn named(name: &str) -> Option<Peer> {
        [Peer::Haproxy, Peer::Nginx]
            .into_iter()
            .find(|p| p.name() == name)
    }

    /// Executable name.
    pub fn program(self) -> &'static str {
        match self {
            Peer::Haproxy => "haproxy",
            Peer::Nginx => "nginx",
        }
    }

    /// The installed binary, if any (Debian puts both under /usr/sbin).
    /// `XTASK_PEER_DIRS` (a PATH-like list) replaces the directories
    /// searched, which is how a test sees a machine without them.
    pub fn binary(self) -> Option<PathBuf> {
        let dirs: Vec<PathBuf> = match std::env::var_os("XTASK_PEER_DIRS") {
            Some(dirs) => std::env::split_paths(&dirs).collect(),
            None => ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
                .iter()
                .map(PathBuf::from)
                .collect(),
        };
        dirs.iter()
            .map(|dir| dir.join(self.program()))
            .find(|p| p.exists())
    }

    /// Version line, for the report.
    pub async fn version(self) -> String {
        let Some(binary) = self.binary() else {
            return "not installed".into();
        };
        let mut cmd = Command::new(binary);
        cmd.arg("-v");
        match harness::output(self.program(), &mut cmd, VERSION_TIMEOUT).await {
            Ok(out) => {
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                text.lines().next().unwrap_or_default().trim().to_owned()
            }
            Err(error) => format!("version unknown ({error:#})"),
        }
    }

    /// Writes the config for relaying to `pods` on `port`.
    fn config(self, dir: &Path, port: u16, pods: &[SocketAddr]) -> anyhow::Result<PathBuf> {
        let haproxy_servers: String = pods
            .iter()
            .enumerate()
            .map(|(i, pod)| format!("  server pod{i} {pod}\n"))
            .collect();
        let nginx_servers: String = pods.iter().map(|pod| format!(" server {pod};")).collect();
        let (file, text) = match self {
            Peer::Haproxy => (
                "haproxy.cfg",
                format!(
                    "global\n  maxconn 9900\n  nbthread 1\n\n\
                     defaults\n  mode http\n  timeout connect 10s\n  timeout client 10m\n  \
                     timeout server 10m\n  timeout tunnel 10m\n\n\
                     frontend ws\n  bind 127.0.0.1:{port}\n  default_backend pods\n\n\
                     backend pods\n  balance leastconn\n{haproxy_servers}"
                ),
            ),
            Peer::Nginx => (
                "nginx.conf",
                format!(
                    "daemon off;\nmaster_process off;\nworker_processes 1;\n\
                     worker_rlimit_nofile 20000;\nerror_log stderr error;\npid {dir}/nginx.pid;\n\
                     events {{ worker_connections 19800; }}\n\
                     http {{\n  access_log off;\n  client_body_temp_path {dir}/body;\n  \
                     proxy_temp_path {dir}/proxy;\n  \
                     map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}\n  \
                     upstream pods {{ least_conn;{nginx_servers} }}\n  \
                     server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      \
                     proxy_pass http://pods;\n      proxy_http_version 1.1;\n      \
                     proxy_set_header Upgrade $http_upgrade;\n      \
                     proxy_set_header Connection $connection_upgrade;\n      \
                     proxy_connect_timeout 10s;\n      proxy_read_timeout 10m;\n      proxy_send_timeout 10m;\n    }}\n  }}\n}}\n",
                    dir = dir.display()
                ),
            ),
        };
        let path = dir.join(file);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Starts the peer in front of `pods` as process `name` (its files
    /// under `dir/name`), pinned to `core`, and waits until it accepts
    /// connections. Returns its listen address and pid.
    pub async fn start(
        self,
        procs: &mut Procs,
        name: &str,
        dir: &Path,
        pods: &[SocketAddr],
        core: Option<u32>,
    ) -> anyhow::Result<(SocketAddr, u32)> {
        let binary = self
            .binary()
            .with_context(|| format!("{} is not installed", self.program()))?;
        let dir = &dir.join(name);
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let port = harness::free_port()?;
        let config = self.config(dir, port, pods)?;
        let mut cmd = pinned(core, binary);
        match self {
            Peer::Haproxy => cmd.arg("-db").arg("-f").arg(&config),
            Peer::Nginx => cmd
                .arg("-p")
                .arg(dir)
                .arg("-e")
                .arg("stderr")
                .arg("-c")
                .arg(&config),
        };
        let pid = procs.spawn(name, &mut cmd)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        harness::poll(LISTEN_TIMEOUT, Duration::from_millis(50), async || {
            tokio::net::TcpStream::connect(addr).await.ok().map(drop)
        })
        .await
        .with_context(|| {
            format!(
                "{} did not listen on {addr} within {LISTEN_TIMEOUT:?}",
                self.program()
            )
        })?;
        Ok((addr, pid))
    }
}
