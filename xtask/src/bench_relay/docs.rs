//! The generated part of docs/benchmarks.md: the latest full run's table
//! with a line about the machine it ran on, between two markers so that
//! the prose around it is kept.

use std::path::Path;

use anyhow::Context;

/// Start and end of the generated part of the benchmark docs.
const DOCS_START: &str = "<!-- cargo xtask bench: start -->";
const DOCS_END: &str = "<!-- cargo xtask bench: end -->";

/// Replaces the generated part of `path` (between the markers, or appended
/// when there are none) with `report` and a description of this machine.
pub fn write(path: &Path, report: &str) -> anyhow::Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
    };
    let block = format!(
        "{DOCS_START}\n### Latest `cargo xtask bench` ({})\n\n{}\n\n{report}{DOCS_END}",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        machine()
    );
    let updated = match (text.find(DOCS_START), text.find(DOCS_END)) {
        (Some(start), Some(end)) if start < end => {
            format!("{}{block}{}", &text[..start], &text[end + DOCS_END.len()..])
        }
        _ => format!("{text}\n{block}\n"),
    };
    std::fs::write(path, updated).with_context(|| format!("writing {}", path.display()))
}

/// One line about the machine: CPU model, cores, memory, kernel.
fn machine() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim())
        .to_owned();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let kernel = read("/proc/sys/kernel/osrelease");
    format!(
        "Machine: {model}, {cores} cores, {mem_gib:.0} GiB, Linux {}.",
        kernel.trim()
    )
}
