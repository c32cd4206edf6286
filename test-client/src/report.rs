//! The result of a load run: counts, failures by reason, the spread over
//! pods and latency percentiles from HDR histograms, and with `--reconnect`
//! what the reconnecting clients did (reconnects, moves between pods, the
//! closes that caused them, failed attempts, the spread at the end).
//! Rendered as a text table for people and serialized as one JSON object
//! for scripts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::outcome::{ConnOutcome, History};

/// Latency summary in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest sample.
    pub max: f64,
}

impl Percentiles {
    /// The summary of a histogram of microseconds.
    pub fn from_micros(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// A histogram as `[microseconds, count]` pairs (one per recorded bucket),
/// for scripts that want more than the percentiles.
pub type RawHistogram = Vec<[u64; 2]>;

fn raw(h: &Histogram<u64>) -> RawHistogram {
    h.iter_recorded()
        .map(|v| [v.value_iterated_to(), v.count_at_value()])
        .collect()
}

/// The raw histograms of a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RawHistograms {
    /// Handshake times.
    pub handshake_us: RawHistogram,
    /// Message round trips (from the intended send time under `--msg-rate`).
    pub round_trip_us: RawHistogram,
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Target URL(s), comma-separated.
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
    /// Payload bytes sent.
    pub bytes_sent: u64,
    /// Payload bytes received in verified echoes.
    pub bytes_received: u64,
    /// Close codes the server answered with.
    pub close_codes: BTreeMap<u16, u64>,
    /// Handshake latency.
    pub handshake_ms: Percentiles,
    /// Message round-trip latency.
    pub round_trip_ms: Percentiles,
    /// Whole run, seconds.
    pub duration_secs: f64,
    /// Connections attempted per second of the run.
    pub connections_per_sec: f64,
    /// Echoes received per second of the run.
    pub messages_per_sec: f64,
    /// The histograms behind the percentiles.
    pub histograms: RawHistograms,
    /// With `--reconnect`: what the reconnecting clients did (absent
    /// otherwise). `attempted`, `ok` and `failed` then count clients, and
    /// `per_pod` every handshake of theirs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconnect: Option<Reconnects>,
}

/// What reconnecting clients did over a run (`--reconnect`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Reconnects {
    /// Successful opens after one of the client's connections had ended.
    pub reconnects: u64,
    /// Reconnects that landed on another pod than the client's connection
    /// before them.
    pub moves: u64,
    /// Closes the far side started, by code: what sent clients
    /// reconnecting (answers to the clients' own closes at the end are in
    /// the report's `close_codes`).
    pub close_codes: BTreeMap<u16, u64>,
    /// Connections that ended without a Close (reset, end of stream).
    pub drops: u64,
    /// Connections the clients closed themselves at
    /// `--reconnect-max-age`.
    pub aged_out: u64,
    /// Open attempts that failed, a client's first included.
    pub failed_attempts: u64,
    /// The failed attempts by reason.
    pub failed_attempt_reasons: BTreeMap<String, u64>,
    /// Clients that gave up after `--reconnect-attempts` failures in a row.
    pub gave_up: u64,
    /// Clients not connected when the run ended (between connections, or
    /// given up).
    pub not_connected: u64,
    /// Connections per pod just before the final close: every pod a
    /// client landed on during the run, 0 for one that held none by then.
    pub final_per_pod: BTreeMap<String, u64>,
    /// Largest minus smallest of `final_per_pod`.
    pub final_spread: u64,
    /// Messages whose echo a close or a drop cut off (or the end of the
    /// run): sent, not answered, and not counted as lost.
    pub messages_cut_off: u64,
}

impl Reconnects {
    /// Adds one client's history.
    fn add_client(&mut self, history: History) {
        self.reconnects += history.reconnects;
        self.moves += history.moves;
        add_all(&mut self.close_codes, history.closes);
        self.drops += history.drops;
        self.aged_out += history.aged_out;
        self.failed_attempts += history.failed_attempts.values().sum::<u64>();
        add_all(&mut self.failed_attempt_reasons, history.failed_attempts);
        self.gave_up += u64::from(history.gave_up);
        match history.final_pod {
            Some(pod) => *self.final_per_pod.entry(pod).or_default() += 1,
            None => self.not_connected += 1,
        }
        self.messages_cut_off += history.cut_off;
    }

    /// Adds another run's figures (a worker's).
    fn add(&mut self, other: &Reconnects) {
        self.reconnects += other.reconnects;
        self.moves += other.moves;
        add_all(&mut self.close_codes, other.close_codes.clone());
        self.drops += other.drops;
        self.aged_out += other.aged_out;
        self.failed_attempts += other.failed_attempts;
        add_all(
            &mut self.failed_attempt_reasons,
            other.failed_attempt_reasons.clone(),
        );
        self.gave_up += other.gave_up;
        self.not_connected += other.not_connected;
        add_all(&mut self.final_per_pod, other.final_per_pod.clone());
        self.messages_cut_off += other.messages_cut_off;
    }

    /// Lists every pod of `per_pod` at the end (a pod the clients all left
    /// counts as 0) and works out the final spread.
    fn settle(&mut self, per_pod: &BTreeMap<String, u64>) {
        for pod in per_pod.keys() {
            self.final_per_pod.entry(pod.clone()).or_default();
        }
        self.final_spread = spread(&self.final_per_pod);
    }
}

fn add_all<K: Ord>(into: &mut BTreeMap<K, u64>, from: BTreeMap<K, u64>) {
    for (k, v) in from {
        *into.entry(k).or_default() += v;
    }
}

/// Largest minus smallest count.
fn spread(per_pod: &BTreeMap<String, u64>) -> u64 {
    let counts = per_pod.values().copied();
    counts.clone().max().unwrap_or(0) - counts.min().unwrap_or(0)
}

/// Draws per-pod counts as bars.
fn bars(out: &mut String, per_pod: &BTreeMap<String, u64>) {
    let widest = per_pod.values().copied().max().unwrap_or(1).max(1);
    for (pod, n) in per_pod {
        let bar = "#".repeat(((n * 40) / widest) as usize);
        let _ = writeln!(out, "  {pod:<20} {n:>6}  {bar}");
    }
}

impl Report {
    /// Whether every connection and every echo succeeded (with
    /// `--reconnect`: every client ended connected or between connections
    /// after a close, with every echo back that no close cut off).
    pub fn all_ok(&self) -> bool {
        self.failed == 0 && self.messages_sent == self.messages_received + self.cut_off()
    }

    /// Echoes that never came back on a connection that stayed up: sent,
    /// minus echoed, minus cut off by a close (`--reconnect`).
    pub fn lost(&self) -> u64 {
        self.messages_sent
            .saturating_sub(self.messages_received)
            .saturating_sub(self.cut_off())
    }

    fn cut_off(&self) -> u64 {
        self.reconnect.as_ref().map_or(0, |r| r.messages_cut_off)
    }

    /// The report as a table for a terminal.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "target        {}", self.url);
        let _ = writeln!(
            out,
            "duration      {:.2}s  ({:.0} connections/s, {:.0} messages/s)",
            self.duration_secs, self.connections_per_sec, self.messages_per_sec
        );
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
            "messages      {} sent, {} echoed ({} / {} bytes)",
            self.messages_sent, self.messages_received, self.bytes_sent, self.bytes_received
        );
        let _ = writeln!(out, "per pod       (spread {})", self.spread);
        bars(&mut out, &self.per_pod);
        let _ = writeln!(
            out,
            "latency (ms)  {:>10} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "count", "p50", "p90", "p99", "p99.9", "max"
        );
        for (name, p) in [
            ("handshake", &self.handshake_ms),
            ("round trip", &self.round_trip_ms),
        ] {
            let _ = writeln!(
                out,
                "  {name:<11} {:>10} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
                p.count, p.p50, p.p90, p.p99, p.p999, p.max
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
        if let Some(r) = &self.reconnect {
            r.render(&mut out);
        }
        out
    }
}

impl Reconnects {
    fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "reconnects    {} ({} moved pods), {} drops, {} aged out, {} echoes cut off",
            self.reconnects, self.moves, self.drops, self.aged_out, self.messages_cut_off
        );
        if !self.close_codes.is_empty() {
            let codes: Vec<String> = self
                .close_codes
                .iter()
                .map(|(c, n)| format!("{c} x{n}"))
                .collect();
            let _ = writeln!(out, "  closed by far side  {}", codes.join(", "));
        }
        let _ = writeln!(
            out,
            "failed opens  {} attempts, {} clients gave up",
            self.failed_attempts, self.gave_up
        );
        for (reason, n) in &self.failed_attempt_reasons {
            let _ = writeln!(out, "  failed      {n:>6}  {reason}");
        }
        let _ = writeln!(
            out,
            "at the end    per pod (spread {}), {} clients not connected",
            self.final_spread, self.not_connected
        );
        bars(out, &self.final_per_pod);
    }
}

/// A histogram rebuilt from its raw pairs.
fn from_raw(raw: &RawHistogram) -> Histogram<u64> {
    let mut h = histogram();
    for [value, count] in raw {
        let _ = h.record_n(*value, *count);
    }
    h
}

/// One report for a run that several worker processes shared: counts and
/// maps added up, histograms merged (so percentiles are of the whole run),
/// the run as long as its longest worker.
pub fn merge(reports: &[Report]) -> Option<Report> {
    let first = reports.first()?;
    let mut total = first.clone();
    let mut handshake = from_raw(&first.histograms.handshake_us);
    let mut round_trip = from_raw(&first.histograms.round_trip_us);
    for r in &reports[1..] {
        total.attempted += r.attempted;
        total.ok += r.ok;
        total.failed += r.failed;
        for (k, v) in &r.failures {
            *total.failures.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &r.per_pod {
            *total.per_pod.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &r.close_codes {
            *total.close_codes.entry(*k).or_default() += v;
        }
        total.messages_sent += r.messages_sent;
        total.messages_received += r.messages_received;
        total.bytes_sent += r.bytes_sent;
        total.bytes_received += r.bytes_received;
        total.duration_secs = total.duration_secs.max(r.duration_secs);
        if let Some(theirs) = &r.reconnect {
            total.reconnect.get_or_insert_default().add(theirs);
        }
        let _ = handshake.add(from_raw(&r.histograms.handshake_us));
        let _ = round_trip.add(from_raw(&r.histograms.round_trip_us));
    }
    total.spread = spread(&total.per_pod);
    if let Some(reconnect) = &mut total.reconnect {
        reconnect.settle(&total.per_pod);
    }
    let secs = total.duration_secs.max(1e-9);
    total.connections_per_sec = total.attempted as f64 / secs;
    total.messages_per_sec = total.messages_received as f64 / secs;
    total.handshake_ms = Percentiles::from_micros(&handshake);
    total.round_trip_ms = Percentiles::from_micros(&round_trip);
    total.histograms = RawHistograms {
        handshake_us: raw(&handshake),
        round_trip_us: raw(&round_trip),
    };
    Some(total)
}

/// Histograms in microseconds, 3 significant digits, auto-resizing.
pub fn histogram() -> Histogram<u64> {
    let mut h =
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant figures is valid"));
    h.auto(true);
    h
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

fn lock(h: &Mutex<Histogram<u64>>) -> std::sync::MutexGuard<'_, Histogram<u64>> {
    h.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Figures every connection updates as it goes: read by the progress
/// display while the run lasts, and by the report at the end.
#[derive(Debug)]
pub struct Live {
    /// Connections open now (handshake done, not closed yet).
    pub open: AtomicU64,
    /// Connections finished well.
    pub ok: AtomicU64,
    /// Connections failed.
    pub failed: AtomicU64,
    /// Messages sent.
    pub sent: AtomicU64,
    /// Echoes received and verified.
    pub received: AtomicU64,
    /// Payload bytes sent.
    pub bytes_sent: AtomicU64,
    /// Payload bytes of verified echoes.
    pub bytes_received: AtomicU64,
    /// Reconnects so far (`--reconnect`).
    pub reconnects: AtomicU64,
    /// Failed open attempts of reconnecting clients so far.
    pub failed_attempts: AtomicU64,
    handshake: Mutex<Histogram<u64>>,
    round_trip: Mutex<Histogram<u64>>,
    /// Round trips since the progress display last looked.
    recent: Mutex<Histogram<u64>>,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            open: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            failed_attempts: AtomicU64::new(0),
            handshake: Mutex::new(histogram()),
            round_trip: Mutex::new(histogram()),
            recent: Mutex::new(histogram()),
        }
    }
}

impl Live {
    /// A handshake took `d`.
    pub fn handshake(&self, d: Duration) {
        let _ = lock(&self.handshake).record(micros(d));
    }

    /// A message went out with `bytes` of payload.
    pub fn sent(&self, bytes: usize) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        self.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// An echo of `bytes` came back, `d` after it was (meant to be) sent.
    pub fn echoed(&self, bytes: usize, d: Duration) {
        self.received.fetch_add(1, Ordering::Relaxed);
        self.bytes_received
            .fetch_add(bytes as u64, Ordering::Relaxed);
        let us = micros(d);
        let _ = lock(&self.round_trip).record(us);
        let _ = lock(&self.recent).record(us);
    }

    /// The 99th percentile round trip (ms) since the last call, and resets
    /// it: what "current p99" shows.
    pub fn take_recent_p99(&self) -> Option<f64> {
        let mut recent = lock(&self.recent);
        let p99 = (!recent.is_empty()).then(|| recent.value_at_quantile(0.99) as f64 / 1000.0);
        recent.reset();
        p99
    }
}

/// Accumulates connection outcomes into a [`Report`].
pub struct Collector {
    url: String,
    attempted: u64,
    ok: u64,
    failures: BTreeMap<String, u64>,
    per_pod: BTreeMap<String, u64>,
    close_codes: BTreeMap<u16, u64>,
    /// Reconnecting clients' figures, in a `--reconnect` run.
    reconnect: Option<Reconnects>,
}

impl Collector {
    /// An empty collector for a run against `url`, of reconnecting clients
    /// when `reconnect`.
    pub fn new(url: &str, reconnect: bool) -> Self {
        Collector {
            url: url.to_owned(),
            attempted: 0,
            ok: 0,
            failures: BTreeMap::new(),
            per_pod: BTreeMap::new(),
            close_codes: BTreeMap::new(),
            reconnect: reconnect.then(Reconnects::default),
        }
    }

    /// Adds one client's outcome.
    pub fn add(&mut self, mut outcome: ConnOutcome) {
        self.attempted += 1;
        if let Some(pod) = outcome.pod {
            *self.per_pod.entry(pod).or_default() += 1;
        }
        if let Some(mut history) = outcome.history.take() {
            add_all(&mut self.per_pod, std::mem::take(&mut history.landed));
            self.reconnect.get_or_insert_default().add_client(history);
        }
        if let Some(code) = outcome.close_code {
            *self.close_codes.entry(code).or_default() += 1;
        }
        match outcome.failure {
            Some(reason) => *self.failures.entry(reason).or_default() += 1,
            None => self.ok += 1,
        }
    }

    /// The finished report, with the figures `live` gathered.
    pub fn finish(mut self, live: &Live, elapsed: Duration) -> Report {
        let spread = spread(&self.per_pod);
        if let Some(reconnect) = &mut self.reconnect {
            reconnect.settle(&self.per_pod);
        }
        let handshake = lock(&live.handshake);
        let round_trip = lock(&live.round_trip);
        let secs = elapsed.as_secs_f64().max(1e-9);
        let received = live.received.load(Ordering::Relaxed);
        Report {
            url: self.url,
            attempted: self.attempted,
            ok: self.ok,
            failed: self.failures.values().sum(),
            failures: self.failures,
            per_pod: self.per_pod,
            spread,
            messages_sent: live.sent.load(Ordering::Relaxed),
            messages_received: received,
            bytes_sent: live.bytes_sent.load(Ordering::Relaxed),
            bytes_received: live.bytes_received.load(Ordering::Relaxed),
            close_codes: self.close_codes,
            handshake_ms: Percentiles::from_micros(&handshake),
            round_trip_ms: Percentiles::from_micros(&round_trip),
            duration_secs: elapsed.as_secs_f64(),
            connections_per_sec: self.attempted as f64 / secs,
            messages_per_sec: received as f64 / secs,
            histograms: RawHistograms {
                handshake_us: raw(&handshake),
                round_trip_us: raw(&round_trip),
            },
            reconnect: self.reconnect,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(landed: &[&str], final_pod: Option<&str>, closes: &[u16]) -> ConnOutcome {
        let mut history = History {
            final_pod: final_pod.map(str::to_owned),
            reconnects: landed.len().saturating_sub(1) as u64,
            ..History::default()
        };
        for pod in landed {
            *history.landed.entry((*pod).to_owned()).or_default() += 1;
        }
        for code in closes {
            *history.closes.entry(*code).or_default() += 1;
        }
        ConnOutcome {
            history: Some(history),
            ..ConnOutcome::default()
        }
    }

    fn report(outcomes: Vec<ConnOutcome>) -> Report {
        let mut collector = Collector::new("ws://x/ws", true);
        for outcome in outcomes {
            collector.add(outcome);
        }
        collector.finish(&Live::default(), Duration::from_secs(1))
    }

    #[test]
    fn reconnecting_clients_add_up_and_merge() {
        let one = report(vec![
            client(&["a", "b"], Some("b"), &[1012]),
            client(&["a"], None, &[]),
        ]);
        assert_eq!(
            one.per_pod,
            BTreeMap::from([("a".into(), 2), ("b".into(), 1)])
        );
        let r = one.reconnect.as_ref().unwrap();
        assert_eq!((r.reconnects, r.not_connected), (1, 1));
        assert_eq!(r.close_codes, BTreeMap::from([(1012, 1)]));
        // a is listed at the end though no client is on it.
        assert_eq!(
            r.final_per_pod,
            BTreeMap::from([("a".into(), 0), ("b".into(), 1)])
        );
        assert_eq!(r.final_spread, 1);

        let two = report(vec![client(&["c"], Some("c"), &[])]);
        let merged = merge(&[one, two]).unwrap();
        let r = merged.reconnect.unwrap();
        assert_eq!(
            r.final_per_pod,
            BTreeMap::from([("a".into(), 0), ("b".into(), 1), ("c".into(), 1)])
        );
        assert_eq!((r.final_spread, r.not_connected, r.reconnects), (1, 1, 1));
    }

    #[test]
    fn a_run_without_reconnect_has_no_reconnect_section() {
        let mut collector = Collector::new("ws://x/ws", false);
        collector.add(ConnOutcome {
            pod: Some("a".into()),
            close_code: Some(1000),
            ..ConnOutcome::default()
        });
        let report = collector.finish(&Live::default(), Duration::from_secs(1));
        assert!(report.reconnect.is_none());
        let json = serde_json::to_value(&report).unwrap();
        assert!(json.get("reconnect").is_none());
        assert!(!report.render().contains("reconnects"));
    }
}
