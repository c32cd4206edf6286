//! The release binaries the tasks start, built by the same command a person
//! types, `cargo build --release --workspace`, so that the artifacts of one
//! serve the other and nothing is built twice.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use tokio::process::Command;

use crate::harness;

/// How long the build may take: a first build from nothing on a small,
/// shared machine takes tens of minutes; one that is fresh, a second.
const BUILD_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// The binaries a task starts: those in `bin_dir` when one is given (the
/// tests pass their debug ones), else the release ones, built first.
pub async fn binaries(bin_dir: Option<PathBuf>) -> anyhow::Result<()> {
    match bin_dir {
        Some(dir) => {
            harness::use_bin_dir(dir);
            Ok(())
        }
        None => build().await,
    }
}

/// `cargo build --release --workspace` in the workspace, with the
/// variables `cargo run` set for xtask removed (see [`set_by_cargo_run`]).
pub async fn build() -> anyhow::Result<()> {
    println!("==> building release binaries");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(harness::workspace_root())
        .args(["build", "--release", "--workspace"]);
    for (name, _) in std::env::vars_os() {
        if set_by_cargo_run(&name) {
            cmd.env_remove(&name);
        }
    }
    let status = harness::status("cargo build", &mut cmd, BUILD_TIMEOUT).await?;
    if !status.success() {
        bail!("cargo build --release --workspace failed ({status})");
    }
    Ok(())
}

/// Whether `cargo run` sets the variable `name` for the program it runs.
/// A cargo started by xtask must not inherit them: ring's build script
/// declares `rerun-if-env-changed` on `CARGO_MANIFEST_DIR`, `CARGO_PKG_NAME`
/// and the `CARGO_PKG_VERSION_*`, so a build that sees xtask's values
/// reruns it and rebuilds ring, rustls and everything above them (minutes
/// on two cores), and the next build from a shell does it all again.
fn set_by_cargo_run(name: &OsStr) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    name.starts_with("CARGO_PKG_")
        || name.starts_with("CARGO_MANIFEST_")
        || matches!(
            name,
            "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE" | "OUT_DIR"
        )
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    #[test]
    fn what_cargo_run_sets_is_dropped_and_the_rest_kept() {
        for set in [
            "CARGO_PKG_NAME",
            "CARGO_MANIFEST_DIR",
            "CARGO_MANIFEST_PATH",
        ] {
            assert!(super::set_by_cargo_run(OsStr::new(set)), "{set}");
        }
        for kept in [
            "CARGO_TARGET_DIR",
            "CARGO_HOME",
            "CARGO",
            "RUSTFLAGS",
            "PATH",
        ] {
            assert!(!super::set_by_cargo_run(OsStr::new(kept)), "{kept}");
        }
    }
}
