//! The xtask tasks CI can afford, run as a user would: `cargo xtask bench
//! --quick` on a machine without HAProxy and NGINX (it measures the direct
//! connection, wsbalancer and the bare TCP relay, says the peers were
//! skipped, and prints the table), `cargo xtask bench pod-count --quick`
//! over two pod counts, and a two-minute `cargo xtask soak`.
//! Debug binaries stand in for release ones, so the suite does not build a
//! second profile.
//!
//! Every test here is heavy (minutes of load on every core): each holds
//! [`HeavyLock`] while it runs, so they run one after another, also under
//! a runner that starts test binaries in parallel processes. Every child
//! runs within a deadline and is killed with what it started when the test
//! ends, however it ends.

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Bound on the two-minute soak, build-free (debug binaries).
const SOAK_WITHIN: Duration = Duration::from_secs(360);

/// Bound on the quick bench; it is asserted to take under 240 s.
const BENCH_WITHIN: Duration = Duration::from_secs(480);

/// Bound on the quick pod-count sweep; it is asserted to take under 60 s.
const POD_COUNT_WITHIN: Duration = Duration::from_secs(180);

/// Bound on the 10,000-connection run (test-client's `--duration 30s`).
const CROWD_WITHIN: Duration = Duration::from_secs(180);

/// How long a started pod or balancer may take to print its ready line.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// How long xtask may take to stop its children after SIGINT.
const INTERRUPT_GRACE: Duration = Duration::from_secs(30);

/// How long a heavy test may wait for the others: each of them holds the
/// lock for at most its own bound and grace.
const HEAVY_QUEUE: Duration = Duration::from_secs(
    SOAK_WITHIN.as_secs()
        + BENCH_WITHIN.as_secs()
        + POD_COUNT_WITHIN.as_secs()
        + CROWD_WITHIN.as_secs()
        + 4 * INTERRUPT_GRACE.as_secs(),
);

/// Held by a heavy test for as long as it runs, so that no two heavy tests
/// run at once: an exclusive `flock` on a file in the target directory
/// (shared by every test binary of this workspace), released when the
/// file is closed, also when the process dies.
struct HeavyLock {
    /// The open lock file: closing it releases the lock.
    _file: std::fs::File,
}

impl HeavyLock {
    /// Waits, for at most [`HEAVY_QUEUE`], until no other heavy test runs.
    fn take(what: &str) -> HeavyLock {
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("heavy-tests.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let deadline = Instant::now() + HEAVY_QUEUE;
        loop {
            // SAFETY: flock(2) on a descriptor `file` owns and keeps open.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return HeavyLock { _file: file };
            }
            let error = std::io::Error::last_os_error();
            assert_eq!(
                error.raw_os_error(),
                Some(libc::EWOULDBLOCK),
                "flock {}: {error}",
                path.display()
            );
            assert!(
                Instant::now() < deadline,
                "{what}: another heavy test still holds {} after {HEAVY_QUEUE:?}",
                path.display()
            );
            // Polling the lock, with the deadline above.
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Sends `signal` to `pid`, or to the process group `pid` leads when
/// `group` is set.
fn signal(pid: u32, group: bool, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("a pid fits pid_t");
    // SAFETY: kill(2) takes plain integers.
    unsafe { libc::kill(if group { -pid } else { pid }, signal) };
}

/// A started child, in a process group of its own (where whatever it
/// starts stays), which is killed whole when this is dropped: a failed
/// assertion or a deadline leaves no process behind. Should the test
/// process itself die (Ctrl-C), the child gets SIGINT, which makes xtask
/// stop its own children.
struct Started {
    /// The child (the group's leader).
    child: Child,
    /// Its pid, which names the group.
    pid: u32,
}

impl Started {
    /// Spawns `cmd` with stdin closed, as the leader of a new group.
    fn spawn(cmd: &mut Command, what: &str) -> Started {
        cmd.stdin(Stdio::null()).process_group(0);
        // SAFETY: prctl(2) is async-signal-safe, as a pre_exec hook must
        // be; it only marks the child.
        #[cfg(target_os = "linux")]
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{what} does not start: {e}"));
        let pid = child.id();
        Started { child, pid }
    }

    /// Waits for the child to exit, for at most `limit`; `None` past it.
    fn wait_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for a child") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            // Polling the child's exit, with the deadline above.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        // The group outlives its leader while anything it started runs;
        // once empty, its id names nothing (kill fails, harmlessly).
        signal(self.pid, true, libc::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads `pipe` to its end on a thread of its own, so that the child never
/// blocks on a full pipe; the bytes come on the returned channel.
fn read_on_thread(pipe: Option<impl std::io::Read + Send + 'static>) -> mpsc::Receiver<Vec<u8>> {
    let (sender, received) = mpsc::channel();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut out);
        }
        let _ = sender.send(out);
    });
    received
}

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
    let _heavy = HeavyLock::take("the soak");
    let out = output_within(
        Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(["soak", "--minutes", "2", "--bin-dir"])
            .arg(bin_dir()),
        SOAK_WITHIN,
        "xtask soak",
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
    let _heavy = HeavyLock::take("the quick bench");
    let no_peers = tempfile_dir();
    let started = Instant::now();
    let out = output_within(
        Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(["bench", "--quick", "--bin-dir"])
            .arg(bin_dir())
            .env("XTASK_PEER_DIRS", &no_peers),
        BENCH_WITHIN,
        "xtask bench --quick",
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

#[test]
fn quick_pod_count_sweep_prints_and_writes_its_table() {
    assert_binaries_built();
    let _heavy = HeavyLock::take("the quick pod-count sweep");
    let no_peers = tempfile_dir();
    let out_file = no_peers.join("pod-count.md");
    let started = Instant::now();
    let out = output_within(
        Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(["bench", "pod-count", "--quick", "--pods", "3,50", "--out"])
            .arg(&out_file)
            .arg("--bin-dir")
            .arg(bin_dir())
            .env("XTASK_PEER_DIRS", &no_peers),
        POD_COUNT_WITHIN,
        "xtask bench pod-count --quick",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "sweep failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the quick sweep is meant to be quick"
    );
    let table = std::fs::read_to_string(&out_file).expect("--out writes the table");
    assert!(
        stdout.contains(&table),
        "--out differs from what was printed"
    );
    let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("| ")).collect();
    assert!(rows[0].starts_with("| pods | wsbalancer µs/handshake | vs 3 pods |"));
    assert_eq!(rows.len(), 3, "a header and one row per pod count: {table}");
    assert!(rows[1].starts_with("| 3 | "), "{}", rows[1]);
    assert!(rows[1].contains(" | 1.00x | "), "{}", rows[1]);
    assert!(rows[2].starts_with("| 50 | "), "{}", rows[2]);
    // Without HAProxy its cells are empty and the report says why.
    assert!(rows[2].contains(" | – | – | – | "), "{}", rows[2]);
    assert!(table.contains("HAProxy is not measured"), "{table}");
    // 1,000 pods were not swept: that target is not judged.
    assert!(
        table.contains("at 1,000 pods ≤ 1.1 × the 3-pod figure: not measured."),
        "{table}"
    );
    let _ = std::fs::remove_dir_all(&no_peers);
}

/// An empty directory: where the bench looks for the peers.
fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xtask-no-peers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Runs `cmd` to its end and returns what it printed. Past `limit` the
/// test fails, naming `what`: the child gets SIGINT (xtask then stops its
/// own children) and, [`INTERRUPT_GRACE`] later, its whole group SIGKILL.
fn output_within(cmd: &mut Command, limit: Duration, what: &str) -> Output {
    let mut started = Started::spawn(cmd.stdout(Stdio::piped()).stderr(Stdio::piped()), what);
    let stdout = read_on_thread(started.child.stdout.take());
    let stderr = read_on_thread(started.child.stderr.take());
    let Some(status) = started.wait_within(limit) else {
        signal(started.pid, false, libc::SIGINT);
        let stopped = started.wait_within(INTERRUPT_GRACE).is_some();
        drop(started);
        let printed = stdout
            .recv_timeout(Duration::from_secs(5))
            .map(|o| String::from_utf8_lossy(&o).into_owned())
            .unwrap_or_default();
        panic!(
            "{what} still running after {limit:?}: interrupted{}. It printed:\n{printed}",
            if stopped { "" } else { ", then killed" }
        );
    };
    // Its pipes close when it and everything it started are gone.
    let collect = |pipe: mpsc::Receiver<Vec<u8>>, name: &str| {
        pipe.recv_timeout(INTERRUPT_GRACE).unwrap_or_else(|_| {
            panic!("{what} exited, but its {name} is still open {INTERRUPT_GRACE:?} later: a process it started is still running")
        })
    };
    Output {
        status,
        stdout: collect(stdout, "stdout"),
        stderr: collect(stderr, "stderr"),
    }
}

/// Starts `program` with `args` and returns it with its first stdout line
/// (the `ready ...` line), which must come within [`READY_WITHIN`].
fn start(program: &str, args: &[&str]) -> (Started, String) {
    use std::io::BufRead;
    let mut started = Started::spawn(
        Command::new(bin_dir().join(program))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
        program,
    );
    let stdout = started.child.stdout.take().expect("stdout");
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
    let _heavy = HeavyLock::take("the 10,000-client flood");
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
        "test-client with 10,000 connections",
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
