//! The comparison's markdown table: one column per target, each figure the
//! median of the runs, and throughput set against the direct connection,
//! the bare TCP relay and HAProxy.

use std::fmt::Write as _;

use super::floor;
use super::peers::Peer;
use super::plan::{Echo, Plan};

/// What one target measured over the runs (one value per run).
#[derive(Default)]
pub struct Figures {
    /// New connections per second.
    pub conn_rate: Vec<f64>,
    /// Proxy CPU per connection (handshake + close), µs.
    pub cpu_conn: Vec<f64>,
    /// Per echo scenario: (msg/s, p99 ms, CPU µs per message).
    pub echo: [(Vec<f64>, Vec<f64>, Vec<f64>); 2],
    /// Per idle level: KiB per connection, one value per run.
    pub idle_kib: Vec<Vec<f64>>,
}

/// The middle value (the mean of the two middle ones of an even count, so
/// that two runs do not report the worse one; NaN when empty).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let half = values.len() / 2;
    match (values.len() % 2, values.get(half)) {
        (1, Some(&middle)) => middle,
        (_, Some(&upper)) => values
            .get(half.wrapping_sub(1))
            .map_or(upper, |&lower| (lower + upper) / 2.0),
        (_, None) => f64::NAN,
    }
}

/// "value (ratio to each reference)" for a throughput cell of column `i`:
/// `figure` gives a column's value, and the references are direct (column
/// 0), the TCP relay and HAProxy, each left out of its own column.
fn with_ratios(i: usize, figure: &dyn Fn(usize) -> f64, references: &[(usize, &str)]) -> String {
    let value = figure(i);
    if i == 0 {
        return format!("{value:.0}");
    }
    let ratios: Vec<String> = references
        .iter()
        .filter(|(r, _)| *r != i)
        .map(|&(r, name)| format!("{:.2}x {name}", value / figure(r)))
        .collect();
    format!("{value:.0} ({})", ratios.join(", "))
}

/// The table for the targets called `names` (the direct connection
/// first), with what each measured in `figures`.
pub fn render(names: &[&str], figures: &[Figures], plan: &Plan, echoes: &[Echo; 2]) -> String {
    let mut out = String::new();
    let references: Vec<(usize, &str)> = names
        .iter()
        .enumerate()
        .filter(|&(i, &name)| i == 0 || name == floor::NAME || name == Peer::Haproxy.name())
        .map(|(i, &name)| (i, name))
        .collect();
    let _ = writeln!(
        out,
        "| measure (median of {}) | {} |",
        plan.runs,
        names.join(" | ")
    );
    let _ = writeln!(out, "|---|{}", "---|".repeat(names.len()));
    let row = |out: &mut String, label: &str, cell: &dyn Fn(usize, &Figures) -> String| {
        let cells: Vec<String> = figures
            .iter()
            .enumerate()
            .map(|(i, f)| cell(i, f))
            .collect();
        let _ = writeln!(out, "| {label} | {} |", cells.join(" | "));
    };
    let rate = |f: &Figures| median(f.conn_rate.clone());
    row(
        &mut out,
        &format!(
            "new connections/s ({} open+close, concurrency 64)",
            thousands(plan.conn_count())
        ),
        &|i, _| with_ratios(i, &|c| rate(&figures[c]), &references),
    );
    for (e, (name, _)) in echoes.iter().enumerate() {
        let msgs = |f: &Figures| median(f.echo[e].0.clone());
        row(&mut out, &format!("{name}: messages/s"), &|i, _| {
            with_ratios(i, &|c| msgs(&figures[c]), &references)
        });
        row(&mut out, &format!("{name}: p99 round trip"), &|_, f| {
            format!("{:.2} ms", median(f.echo[e].1.clone()))
        });
    }
    row(
        &mut out,
        "proxy CPU per op: connection (handshake + close) / 128 B echo / 64 KiB echo",
        &|i, f| {
            if i == 0 {
                "–".into()
            } else {
                format!(
                    "{:.0} / {:.1} / {:.0} µs",
                    median(f.cpu_conn.clone()),
                    median(f.echo[0].2.clone()),
                    median(f.echo[1].2.clone())
                )
            }
        },
    );
    for (level, idle) in plan.idle.iter().enumerate() {
        row(
            &mut out,
            &format!("idle memory: RSS growth per relayed connection at {idle}"),
            &|_, f| {
                if f.idle_kib[level].is_empty() {
                    "–".into()
                } else {
                    format!("{:.2} KiB", median(f.idle_kib[level].clone()))
                }
            },
        );
    }
    out
}

/// `n` with a comma between thousands (20,000).
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_median_of_an_even_count_is_between_the_middle_two() {
        assert_eq!(super::median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(super::median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(super::median(vec![5.0]), 5.0);
        assert!(super::median(Vec::new()).is_nan());
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(super::thousands(1000), "1,000");
        assert_eq!(super::thousands(20_000), "20,000");
        assert_eq!(super::thousands(999), "999");
    }

    #[test]
    fn the_median_is_the_middle_value() {
        assert_eq!(super::median(vec![3.0, 1.0, 2.0]), 2.0);
        assert!(super::median(Vec::new()).is_nan());
    }
}
