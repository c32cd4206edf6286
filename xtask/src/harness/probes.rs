//! What `/proc` says about a child: resident memory, CPU time and open
//! descriptors. The relay benchmark divides them by the work done (memory
//! per idle connection, CPU per operation); the soak compares them before
//! and after the churn to find leaks.

use anyhow::Context;

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// Resident memory of process `pid`, in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS in {path}"))
}

/// CPU seconds (user + system) process `pid` has used so far.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The fields after the command name, which is in parentheses and may
    // itself hold spaces.
    let (_, rest) = stat
        .rsplit_once(") ")
        .with_context(|| format!("no command name in {path}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line (11, 12 here).
    let ticks = |i: usize| -> anyhow::Result<f64> {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .with_context(|| format!("no CPU time in {path}"))
    };
    Ok((ticks(11)? + ticks(12)?) / TICKS_PER_SECOND)
}

/// Descriptors process `pid` has open.
pub fn fd_count(pid: u32) -> anyhow::Result<usize> {
    let path = format!("/proc/{pid}/fd");
    Ok(std::fs::read_dir(&path)
        .with_context(|| format!("reading {path}"))?
        .count())
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_can_be_probed() -> anyhow::Result<()> {
        let pid = std::process::id();
        assert!(super::rss_kib(pid)? > 0);
        assert!(super::cpu_seconds(pid)? >= 0.0);
        assert!(super::fd_count(pid)? >= 3);
        Ok(())
    }
}
