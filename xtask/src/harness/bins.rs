//! Where the binaries a task starts are: the release ones in the target
//! directory (built by [`crate::release`]), or those of the directory a
//! task was given with `--bin-dir` (the tests pass their debug ones). And
//! how a child is pinned to one core, for the relay benchmark.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use tokio::process::Command;

/// The `--bin-dir` of this run, when one was given: set once, before the
/// first child starts, so every child of a run comes from the same set.
static BIN_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Where `taskset` (util-linux) is installed on Debian.
const TASKSET: &str = "/usr/bin/taskset";

/// The workspace checkout (xtask is one of its members): scripts, docs and
/// the default target directory are found from it.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Takes the binaries from `dir` for the rest of the run instead of the
/// release ones; a second call is ignored (one run, one set of binaries).
pub fn use_bin_dir(dir: PathBuf) {
    let _ = BIN_DIR.set(dir);
}

/// The binary `name` this run starts: from `--bin-dir` when given, else the
/// release one under `CARGO_TARGET_DIR` (or the workspace's `target`).
pub fn bin(name: &str) -> PathBuf {
    if let Some(dir) = BIN_DIR.get() {
        return dir.join(name);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from);
    target.join("release").join(name)
}

/// A command for `program`, pinned to `core` with `taskset` when a core is
/// given and `taskset` is installed (otherwise it runs unpinned). The
/// relay benchmark pins the proxies to one core and the pod and clients to
/// the other, so that a proxy never competes with its own load.
pub fn pinned(core: Option<u32>, program: impl AsRef<OsStr>) -> Command {
    match core {
        Some(core) if Path::new(TASKSET).exists() => {
            let mut cmd = Command::new(TASKSET);
            cmd.arg("-c").arg(core.to_string()).arg(program);
            cmd
        }
        _ => Command::new(program),
    }
}
