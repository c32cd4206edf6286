//! The proxies wsbalancer is compared with in `cargo xtask bench relay`:
//! HAProxy (`balance leastconn`) and NGINX (`least_conn`), from Debian's
//! packages, each configured for WebSockets the way their documentation
//! shows, one thread/worker, and started in the foreground on a free port.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::Command;

use crate::procs::Procs;

/// A comparison proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// HAProxy, `balance leastconn`.
    Haproxy,
    /// NGINX, `least_conn`.
    Nginx,
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
        let out = Command::new(binary).arg("-v").output().await;
        out.map(|o| {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            text.lines().next().unwrap_or_default().trim().to_owned()
        })
        .unwrap_or_default()
    }

    /// Writes the config for relaying to `pod` (host:port) on `port`.
    fn config(self, dir: &Path, port: u16, pod: &str) -> anyhow::Result<PathBuf> {
        let (file, text) = match self {
            Peer::Haproxy => (
                "haproxy.cfg",
                format!(
                    "global\n  maxconn 9900\n  nbthread 1\n\n\
                     defaults\n  mode http\n  timeout connect 10s\n  timeout client 10m\n  \
                     timeout server 10m\n  timeout tunnel 10m\n\n\
                     frontend ws\n  bind 127.0.0.1:{port}\n  default_backend pods\n\n\
                     backend pods\n  balance leastconn\n  server pod0 {pod}\n"
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
                     upstream pods {{ least_conn; server {pod}; }}\n  \
                     server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      \
                     proxy_pass http://pods;\n      proxy_http_version 1.1;\n      \
                     proxy_set_header Upgrade $http_upgrade;\n      \
                     proxy_set_header Connection $connection_upgrade;\n      \
                     proxy_read_timeout 10m;\n      proxy_send_timeout 10m;\n    }}\n  }}\n}}\n",
                    dir = dir.display()
                ),
            ),
        };
        let path = dir.join(file);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Starts the peer in front of `pod` (host:port) as process `name`
    /// (its files under `dir/name`), through `pinned` (`taskset`), and waits
    /// until it accepts connections. Returns its listen address and pid.
    pub async fn start(
        self,
        procs: &mut Procs,
        name: &str,
        dir: &Path,
        pod: &str,
        pinned: impl Fn(PathBuf) -> Command,
    ) -> anyhow::Result<(String, u32)> {
        let binary = self
            .binary()
            .with_context(|| format!("{} is not installed", self.program()))?;
        let dir = &dir.join(name);
        std::fs::create_dir_all(dir)?;
        let port = free_port()?;
        let config = self.config(dir, port, pod)?;
        let mut cmd = pinned(binary);
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
        procs.spawn(name, &mut cmd)?;
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(&addr).await.is_err() {
            if Instant::now() > deadline {
                bail!("{} did not listen on {addr} in time", self.program());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let pid = procs.pid(name).context("peer pid")?;
        Ok((addr, pid))
    }
}

/// A port free on loopback now (the peer binds it right after).
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
