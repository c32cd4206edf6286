//! The result of a load run: counts, failures by reason, the spread over
//! pods and latency percentiles from HDR histograms. Rendered as a text
//! table for people and serialized as one JSON object for scripts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::load::ConnOutcome;

/// Latency summary in milliseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest sample.
    pub max: f64,
}

impl Percentiles {
    fn from_micros(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
        }
    }
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Target URL.
    pub url: String,
    /// Connections attempted.
    pub attempted: u64,
    /// Connections that completed every step.
    pub ok: u64,
    /// Connections that failed at some step.
    pub failed: u64,
    /// Failures by reason.
    pub failures: BTreeMap<String, u64>,
    /// Successful handshakes per pod (`x-pod-name`).
    pub per_pod: BTreeMap<String, u64>,
    /// Largest minus smallest per-pod count.
    pub spread: u64,
    /// Messages sent.
    pub messages_sent: u64,
    /// Echoes received and verified.
    pub messages_received: u64,
    /// Close codes the server answered with.
    pub close_codes: BTreeMap<u16, u64>,
    /// Handshake latency.
    pub handshake_ms: Percentiles,
    /// Message round-trip latency.
    pub round_trip_ms: Percentiles,
    /// Whole run, seconds.
    pub duration_secs: f64,
}

impl Report {
    /// Whether every connection and every echo succeeded.
    pub fn all_ok(&self) -> bool {
        self.failed == 0 && self.messages_sent == self.messages_received
    }

    /// The report as a table for a terminal.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "target        {}", self.url);
        let _ = writeln!(out, "duration      {:.2}s", self.duration_secs);
        let _ = writeln!(
            out,
            "connections   {} attempted, {} ok, {} failed",
            self.attempted, self.ok, self.failed
        );
        for (reason, n) in &self.failures {
            let _ = writeln!(out, "  failed      {n:>6}  {reason}");
        }
        let _ = writeln!(
            out,
            "messages      {} sent, {} echoed",
            self.messages_sent, self.messages_received
        );
        let _ = writeln!(out, "per pod       (spread {})", self.spread);
        let widest = self.per_pod.values().copied().max().unwrap_or(1).max(1);
        for (pod, n) in &self.per_pod {
            let bar = "#".repeat(((n * 40) / widest) as usize);
            let _ = writeln!(out, "  {pod:<20} {n:>6}  {bar}");
        }
        let _ = writeln!(
            out,
            "latency (ms)  {:>10} {:>8} {:>8} {:>8} {:>8}",
            "count", "p50", "p90", "p99", "max"
        );
        for (name, p) in [
            ("handshake", &self.handshake_ms),
            ("round trip", &self.round_trip_ms),
        ] {
            let _ = writeln!(
                out,
                "  {name:<11} {:>10} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
                p.count, p.p50, p.p90, p.p99, p.max
            );
        }
        if !self.close_codes.is_empty() {
            let codes: Vec<String> = self
                .close_codes
                .iter()
                .map(|(c, n)| format!("{c} x{n}"))
                .collect();
            let _ = writeln!(out, "close codes   {}", codes.join(", "));
        }
        out
    }
}

/// Accumulates connection outcomes into a [`Report`].
pub struct Collector {
    url: String,
    attempted: u64,
    ok: u64,
    failures: BTreeMap<String, u64>,
    per_pod: BTreeMap<String, u64>,
    sent: u64,
    received: u64,
    close_codes: BTreeMap<u16, u64>,
    handshake: Histogram<u64>,
    round_trip: Histogram<u64>,
}

/// Histograms in microseconds, 3 significant digits, auto-resizing.
fn histogram() -> Histogram<u64> {
    let mut h =
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant figures is valid"));
    h.auto(true);
    h
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

impl Collector {
    /// An empty collector for a run against `url`.
    pub fn new(url: &str, attempted: usize) -> Self {
        Collector {
            url: url.to_owned(),
            attempted: attempted as u64,
            ok: 0,
            failures: BTreeMap::new(),
            per_pod: BTreeMap::new(),
            sent: 0,
            received: 0,
            close_codes: BTreeMap::new(),
            handshake: histogram(),
            round_trip: histogram(),
        }
    }

    /// Adds one connection's outcome.
    pub fn add(&mut self, outcome: ConnOutcome) {
        if let Some(pod) = outcome.pod {
            *self.per_pod.entry(pod).or_default() += 1;
        }
        if let Some(d) = outcome.handshake {
            let _ = self.handshake.record(micros(d));
        }
        for d in outcome.round_trips {
            let _ = self.round_trip.record(micros(d));
        }
        self.sent += outcome.sent;
        self.received += outcome.received;
        if let Some(code) = outcome.close_code {
            *self.close_codes.entry(code).or_default() += 1;
        }
        match outcome.failure {
            Some(reason) => *self.failures.entry(reason).or_default() += 1,
            None => self.ok += 1,
        }
    }

    /// The finished report.
    pub fn finish(self, elapsed: Duration) -> Report {
        let counts: Vec<u64> = self.per_pod.values().copied().collect();
        let spread = counts.iter().max().unwrap_or(&0) - counts.iter().min().unwrap_or(&0);
        Report {
            url: self.url,
            attempted: self.attempted,
            ok: self.ok,
            failed: self.failures.values().sum(),
            failures: self.failures,
            per_pod: self.per_pod,
            spread,
            messages_sent: self.sent,
            messages_received: self.received,
            close_codes: self.close_codes,
            handshake_ms: Percentiles::from_micros(&self.handshake),
            round_trip_ms: Percentiles::from_micros(&self.round_trip),
            duration_secs: elapsed.as_secs_f64(),
        }
    }
}
