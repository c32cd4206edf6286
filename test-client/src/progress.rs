//! A live line on a terminal while the load runs: connections open, done
//! and failed, messages per second and the current p99 round trip (and,
//! once there are any, reconnects and failed opens). Nothing
//! is drawn when stderr is not a terminal (CI logs, pipes).

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::report::Live;

/// How often the line is redrawn.
const TICK: Duration = Duration::from_millis(500);

/// The running display; [`Progress::finish`] clears it.
pub struct Progress {
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts drawing `live` toward `total` connections, if stderr is a
    /// terminal and `quiet` is off.
    pub fn start(live: Arc<Live>, total: u64, quiet: bool) -> Self {
        let stop = CancellationToken::new();
        let task = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            tokio::spawn(draw(bar, live, stop.clone()))
        });
        Progress { stop, task }
    }

    /// Stops and clears the display.
    pub async fn finish(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

async fn draw(bar: ProgressBar, live: Arc<Live>, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(TICK);
    let mut last_received = 0;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stop.cancelled() => break,
        }
        let ok = live.ok.load(Ordering::Relaxed);
        let failed = live.failed.load(Ordering::Relaxed);
        let received = live.received.load(Ordering::Relaxed);
        let per_sec = (received - last_received) as f64 / TICK.as_secs_f64();
        last_received = received;
        let p99 = live
            .take_recent_p99()
            .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.2}ms"));
        bar.set_position(ok + failed);
        let reconnects = live.reconnects.load(Ordering::Relaxed);
        let failed_attempts = live.failed_attempts.load(Ordering::Relaxed);
        let reconnecting = if reconnects + failed_attempts > 0 {
            format!(" | reconnects {reconnects} failed opens {failed_attempts}")
        } else {
            String::new()
        };
        bar.set_message(format!(
            "open {} failed {failed} | {per_sec:.0} msg/s | p99 {p99}{reconnecting}",
            live.open.load(Ordering::Relaxed)
        ));
    }
    bar.finish_and_clear();
}
