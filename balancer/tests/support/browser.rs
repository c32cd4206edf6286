//! A real browser for the tests that need one (the dashboard, WebSockets
//! over HTTP/2): `WSB_TEST_CHROMIUM`, else a Chromium or Chrome on PATH,
//! else the one `scripts/install-chromium` installs; and runs of it with a
//! deadline, its whole process group killed at the end.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

/// Longest installing Chromium may take (a download of about 120 MB).
const INSTALL_DEADLINE: Duration = Duration::from_secs(600);

/// The flags every headless run takes: no sandbox (tests run as root), no
/// GPU, no first-run or background work of its own.
pub const HEADLESS: &[&str] = &[
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-extensions",
    "--disable-sync",
    "--mute-audio",
];

/// A browser left running on a page; its whole process group is killed
/// when this is dropped.
pub struct Running {
    child: tokio::process::Child,
    group: Option<libc::pid_t>,
}

impl Running {
    /// Starts `command` (stdout and stderr discarded) in a process group
    /// of its own.
    pub fn start(mut command: Command) -> Running {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        let child = command.spawn().expect("the browser starts");
        let group = child.id().and_then(|pid| libc::pid_t::try_from(pid).ok());
        Running { child, group }
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(group) = self.group {
            // SAFETY: kill(2) takes plain integers; a negative pid names
            // the process group the child leads (a browser forks helpers).
            unsafe { libc::kill(-group, libc::SIGKILL) };
        }
    }
}

/// The browser to drive: `WSB_TEST_CHROMIUM`, else the first of the usual
/// names on PATH, else what `scripts/install-chromium` installs (once per
/// test process, whichever test asks first).
pub async fn browser() -> PathBuf {
    static BROWSER: tokio::sync::OnceCell<PathBuf> = tokio::sync::OnceCell::const_new();
    BROWSER
        .get_or_init(|| async {
            if let Some(path) = std::env::var_os("WSB_TEST_CHROMIUM") {
                return PathBuf::from(path);
            }
            if let Some(path) = browser_on_path() {
                return path;
            }
            install_chromium().await
        })
        .await
        .clone()
}

fn browser_on_path() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ]
    .iter()
    .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
    .find(|candidate| candidate.is_file())
}

async fn install_chromium() -> PathBuf {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/install-chromium");
    eprintln!("no Chromium on PATH: running {}", script.display());
    let output =
        run_with_deadline(Command::new(&script), INSTALL_DEADLINE, "install-chromium").await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{} failed ({}): {}{}",
        script.display(),
        output.status,
        stdout,
        String::from_utf8_lossy(&output.stderr)
    );
    let path = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| PathBuf::from(l.trim()))
        .expect("install-chromium prints the browser's path");
    assert!(path.is_file(), "{} is not a file", path.display());
    path
}

/// Runs `command` to completion with its output captured; past `deadline`
/// its whole process group (a browser forks helpers) is killed and the test
/// fails.
pub async fn run_with_deadline(
    mut command: Command,
    deadline: Duration,
    what: &str,
) -> std::process::Output {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("{what} does not start: {e}"));
    let group = child.id().expect("a running child has a pid");
    match tokio::time::timeout(deadline, child.wait_with_output()).await {
        Ok(output) => output.unwrap_or_else(|e| panic!("waiting for {what}: {e}")),
        Err(_) => {
            // The timed-out future dropped the child, which killed it; its
            // helpers share its process group.
            if let Ok(group) = libc::pid_t::try_from(group) {
                // SAFETY: kill(2) takes plain integers; a negative pid
                // names the process group the child led.
                unsafe { libc::kill(-group, libc::SIGKILL) };
            }
            panic!("{what} ran over {deadline:?} and was killed");
        }
    }
}
