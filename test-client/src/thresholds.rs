//! `--fail-on` thresholds: conditions on a finished report that make the
//! run fail, so a CI job can gate on latency or errors.
//!
//! A threshold is `NAME OP VALUE`, for example `p99>50ms`, `failed>0` or
//! `failed_pct>=1`. Latencies are in milliseconds unless a unit (`us`, `ms`,
//! `s`) says otherwise. The `--reconnect` figures (`reconnects`, `moves`,
//! `failed_attempts`, `not_connected`, `final_spread`) are 0 in a run
//! without it.

use std::fmt;
use std::str::FromStr;

use crate::report::{Reconnects, Report};

/// Why a threshold could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ThresholdError {
    /// No comparison operator.
    #[error("{0:?}: expected NAME OP VALUE, e.g. p99>50ms or failed>0")]
    Shape(String),
    /// The name is not a measured figure.
    #[error("{0:?}: unknown figure (known: {known})", known = FIGURES.join(", "))]
    Name(String),
    /// The value is not a number (with an allowed unit).
    #[error("{0:?}: the value is not a number with an optional us/ms/s unit")]
    Value(String),
}

/// Figures a threshold can name.
const FIGURES: &[&str] = &[
    "failed",
    "failed_pct",
    "ok",
    "lost",
    "spread",
    "p50",
    "p90",
    "p99",
    "p999",
    "max",
    "handshake_p50",
    "handshake_p90",
    "handshake_p99",
    "handshake_p999",
    "handshake_max",
    "reconnects",
    "moves",
    "failed_attempts",
    "not_connected",
    "final_spread",
];

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Greater,
    GreaterOrEqual,
    Less,
    LessOrEqual,
    Equal,
}

impl Op {
    fn holds(self, left: f64, right: f64) -> bool {
        match self {
            Op::Greater => left > right,
            Op::GreaterOrEqual => left >= right,
            Op::Less => left < right,
            Op::LessOrEqual => left <= right,
            Op::Equal => left == right,
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            Op::Greater => ">",
            Op::GreaterOrEqual => ">=",
            Op::Less => "<",
            Op::LessOrEqual => "<=",
            Op::Equal => "==",
        }
    }
}

/// One `--fail-on` condition: the run fails when it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    figure: String,
    op: Op,
    /// In the figure's own unit (milliseconds for latencies).
    value: f64,
}

impl FromStr for Threshold {
    type Err = ThresholdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        let at = compact
            .find(['>', '<', '='])
            .ok_or_else(|| ThresholdError::Shape(text.to_owned()))?;
        let (figure, rest) = compact.split_at(at);
        let (op, value) = [
            (">=", Op::GreaterOrEqual),
            ("<=", Op::LessOrEqual),
            ("==", Op::Equal),
            (">", Op::Greater),
            ("<", Op::Less),
        ]
        .into_iter()
        .find_map(|(symbol, op)| rest.strip_prefix(symbol).map(|v| (op, v)))
        .ok_or_else(|| ThresholdError::Shape(text.to_owned()))?;
        let figure = figure.to_ascii_lowercase().replace("p99.9", "p999");
        if !FIGURES.contains(&figure.as_str()) {
            return Err(ThresholdError::Name(figure));
        }
        let (number, scale) = [("us", 0.001), ("ms", 1.0), ("s", 1000.0), ("%", 1.0)]
            .into_iter()
            .find_map(|(unit, scale)| value.strip_suffix(unit).map(|n| (n, scale)))
            .unwrap_or((value, 1.0));
        let value = number
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| ThresholdError::Value(text.to_owned()))?;
        Ok(Threshold {
            figure,
            op,
            value: value * scale,
        })
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{}", self.figure, self.op.symbol(), self.value)
    }
}

impl Threshold {
    /// The figure's value in `report`.
    fn measure(&self, report: &Report) -> f64 {
        let rt = &report.round_trip_ms;
        let hs = &report.handshake_ms;
        let reconnect =
            |figure: fn(&Reconnects) -> u64| report.reconnect.as_ref().map_or(0, figure) as f64;
        match self.figure.as_str() {
            "failed" => report.failed as f64,
            "failed_pct" if report.attempted > 0 => {
                100.0 * report.failed as f64 / report.attempted as f64
            }
            "failed_pct" => 0.0,
            "ok" => report.ok as f64,
            "lost" => report.lost() as f64,
            "spread" => report.spread as f64,
            "p50" => rt.p50,
            "p90" => rt.p90,
            "p99" => rt.p99,
            "p999" => rt.p999,
            "max" => rt.max,
            "handshake_p50" => hs.p50,
            "handshake_p90" => hs.p90,
            "handshake_p99" => hs.p99,
            "handshake_p999" => hs.p999,
            "reconnects" => reconnect(|r| r.reconnects),
            "moves" => reconnect(|r| r.moves),
            "failed_attempts" => reconnect(|r| r.failed_attempts),
            "not_connected" => reconnect(|r| r.not_connected),
            "final_spread" => reconnect(|r| r.final_spread),
            _ => hs.max,
        }
    }

    /// A line saying how the threshold was crossed, or `None` when it was
    /// not.
    pub fn crossed(&self, report: &Report) -> Option<String> {
        let measured = self.measure(report);
        self.op
            .holds(measured, self.value)
            .then(|| format!("{self} (measured {measured})"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_parse_with_units() {
        let t: Threshold = "p99 > 50ms".parse().unwrap();
        assert_eq!(t.to_string(), "p99>50");
        let t: Threshold = "handshake_p999>=0.5s".parse().unwrap();
        assert_eq!(t.to_string(), "handshake_p999>=500");
        let t: Threshold = "P99.9<250us".parse().unwrap();
        assert_eq!(t.to_string(), "p999<0.25");
        assert_eq!(
            "failed_pct>1%".parse::<Threshold>().unwrap().to_string(),
            "failed_pct>1"
        );
        for figure in ["reconnects", "moves", "failed_attempts", "not_connected"] {
            assert!(format!("{figure}>0").parse::<Threshold>().is_ok());
        }
        assert_eq!(
            "final_spread>=2".parse::<Threshold>().unwrap().to_string(),
            "final_spread>=2"
        );
    }

    #[test]
    fn bad_thresholds_say_what_is_wrong() {
        assert!(matches!(
            "p99".parse::<Threshold>(),
            Err(ThresholdError::Shape(_))
        ));
        assert!(matches!(
            "latency>5".parse::<Threshold>(),
            Err(ThresholdError::Name(_))
        ));
        assert!(matches!(
            "p99>fast".parse::<Threshold>(),
            Err(ThresholdError::Value(_))
        ));
        assert!(matches!(
            "p99>NaN".parse::<Threshold>(),
            Err(ThresholdError::Value(_))
        ));
    }
}
