//! The xtask tasks CI can afford, run as a user would: `cargo xtask bench
//! --quick` on a machine without HAProxy and NGINX (it measures the direct
//! connection, wsbalancer and the bare TCP relay, says the peers were
//! skipped, and prints the table), and a two-minute `cargo xtask soak`.
//! Debug binaries stand in for release ones, so the suite does not build a
//! second profile.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Bound on the two-minute soak, build-free (debug binaries).
const SOAK_WITHIN: Duration = Duration::from_secs(360);

/// Bound on the quick bench; it is asserted to take under 240 s.
const BENCH_WITHIN: Duration = Duration::from_secs(480);

/// Bound on the 10,000-connection run (test-client's `--duration 30s`).
const CROWD_WITHIN: Duration = Duration::from_secs(180);

/// How long a started pod or balancer may take to print its ready line.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// How long xtask may take to stop its children after SIGINT.
const INTERRUPT_GRACE: Duration = Duration::from_secs(30);

/// The directory of this test's own binaries (target/debug).
fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_xtask"))
        .parent()
        .expect("the xtask binary is in a directory")
        .to_path_buf()
}

/// The binaries the tasks start are the ones `cargo test --workspace`
/// builds for the other packages' tests (building them here would build a
/// second set: tests unify dev-dependency features).
fn assert_binaries_built() {
    for name in ["wsbalancer", "test-server", "test-client"] {
        assert!(
            bin_dir().join(name).exists(),
            "{name} is not built in {}: run `cargo test --workspace`",
            bin_dir().display()
        );
    }
}

#[test]
fn a_two_minute_soak_leaves_nothing_behind_and_loses_nothing() {
    assert_binaries_built();
    let out = output_within(
        Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(["soak", "--minutes", "2", "--bin-dir"])
            .arg(bin_dir()),
        SOAK_WITHIN,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "soak failed: {stdout}\n{stderr}");
    let row = |name: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {name} |")))
            .unwrap_or_else(|| panic!("no {name} row: {stdout}"))
            .to_owned()
    };
    assert_eq!(row("other failures"), "| other failures | {} |");
    assert!(
        !row("pods killed and restarted").contains("| 0 |"),
        "no pod was killed: {stdout}"
    );
    // At most 2 extra descriptors: pooled poll connections to restarted
    // pods may come and go.
    let fds = row("balancer descriptors");
    let counts: Vec<u64> = fds
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    assert!(
        matches!(counts[..], [before, after] if after <= before + 2),
        "descriptors leaked: {fds}"
    );
}

#[test]
fn quick_bench_runs_and_says_when_peers_are_missing() {
    assert_binaries_built();
    let no_peers = tempfile_dir();
    let started = Instant::now();
    let out = output_within(
        Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(["bench", "--quick", "--bin-dir"])
            .arg(bin_dir())
            .env("XTASK_PEER_DIRS", &no_peers),
        BENCH_WITHIN,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(240),
        "the quick bench is meant to be quick"
    );
    let header = stdout
        .lines()
        .find(|l| l.starts_with("| measure"))
        .expect("a table");
    assert_eq!(
        header,
        "| measure (median of 1) | direct | wsbalancer | TCP relay |"
    );
    for peer in ["HAProxy", "NGINX"] {
        assert!(
            stdout.contains(&format!("{peer} is not installed")),
            "{peer} skipped silently: {stdout}"
        );
    }
    let row = stdout
        .lines()
        .find(|l| l.starts_with("| new connections/s"))
        .expect("a connections row");
    assert!(row.contains("x direct"), "{row}");
    // wsbalancer's cell is also set against the bare relay's.
    assert!(row.contains("x TCP relay"), "{row}");
    let _ = std::fs::remove_dir_all(&no_peers);
}

/// An empty directory: where the bench looks for the peers.
fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xtask-no-peers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A started child, killed when dropped (a failed assertion must not leave
/// processes behind).
struct Started(std::process::Child);

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `cmd` to its end and returns what it printed. Past `limit` the
/// test fails: the child gets SIGINT (xtask then stops its own children)
/// and, [`INTERRUPT_GRACE`] later, SIGKILL.
fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let pid = child.id().to_string();
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    if let Ok(out) = finished.recv_timeout(limit) {
        return out.expect("its output");
    }
    let signal = |name: &str| {
        let _ = Command::new("kill").args([name, &pid]).status();
    };
    signal("-INT");
    let late = finished.recv_timeout(INTERRUPT_GRACE);
    if late.is_err() {
        signal("-KILL");
    }
    let printed = late
        .ok()
        .and_then(Result::ok)
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    panic!("{cmd:?} still running after {limit:?}: interrupted. It printed:\n{printed}");
}

/// Starts `program` with `args` and returns it with its first stdout line
/// (the `ready ...` line), which must come within [`READY_WITHIN`].
fn start(program: &str, args: &[&str]) -> (Started, String) {
    use std::io::BufRead;
    let mut child = Command::new(bin_dir().join(program))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starts");
    let stdout = child.stdout.take().expect("stdout");
    let started = Started(child);
    let (ready, first_line) = mpsc::channel();
    // Reads on past the first line until the child exits, so that it never
    // blocks on a full pipe.
    std::thread::spawn(move || {
        let mut lines = std::io::BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = ready.send(line);
        }
        lines.for_each(drop);
    });
    let line = first_line
        .recv_timeout(READY_WITHIN)
        .unwrap_or_else(|_| panic!("no ready line from {program} within {READY_WITHIN:?}"));
    (started, line)
}

fn field(line: &str, key: &str) -> String {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
        .to_owned()
}

#[test]
fn ten_thousand_at_once_through_max_connections_5000() {
    assert_binaries_built();
    let (_pod, pod_line) = start("test-server", &["--pods", "1", "--base-port", "0"]);
    let (_balancer, ready) = start(
        "wsbalancer",
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--log-level",
            "error",
            "--max-connections",
            "5000",
            "--read-timeout",
            "5m",
            "--pods",
            &field(&pod_line, "url"),
        ],
    );
    let url = format!("ws://{}/ws", field(&ready, "listen"));
    // Every client connects at once and holds; the run ends (holds cut
    // short) after 30 s, by which time every attempt has its answer.
    let out = output_within(
        Command::new(bin_dir().join("test-client"))
            .args(["--url", &url, "--workers", "2", "--connections", "10000"])
            .args(["--concurrency", "10000", "--messages", "1", "--size", "16"])
            .args(["--hold", "10m", "--duration", "30s", "--timeout", "30s"])
            .args(["--bind", "127.0.0.2,127.0.0.3", "--json", "-"]),
        CROWD_WITHIN,
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("no report: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(report["attempted"], 10_000, "{report}");
    assert_eq!(
        report["ok"], 5000,
        "exactly maxConnections relayed: {}",
        report["failures"]
    );
    assert_eq!(
        report["failures"],
        serde_json::json!({"http 503": 5000}),
        "the rest refused at once, none stuck"
    );
    assert_eq!(report["messages_received"], 5000);
}
