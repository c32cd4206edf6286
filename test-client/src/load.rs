//! Driving a load: one task per client, started at a fixed rate
//! (`--rate`) or as fast as `--concurrency` allows, their outcomes summed
//! into a report as they finish. A client is one connection (its steps are
//! in `crate::connection`) or, with `--reconnect`, one that reconnects
//! until the run is over ([`crate::reconnect`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::connection::{Shared, one_connection};
use crate::options::LoadOptions;
use crate::outcome::ConnOutcome;
use crate::reconnect::reconnecting_client;
use crate::report::{Collector, Live, Report};

/// Runs the load and returns the report; `live` is updated as it goes
/// (for a progress display).
pub async fn run(options: LoadOptions, live: Arc<Live>) -> Report {
    run_until(options, live, CancellationToken::new()).await
}

/// [`run`], ended early when `stop` is cancelled: as at the end of
/// `--duration`, no client starts after it, holds end and connections
/// close with 1000.
pub async fn run_until(options: LoadOptions, live: Arc<Live>, stop: CancellationToken) -> Report {
    let options = Arc::new(options);
    // Checked by `validate`; should the CA file have gone since, `wss://`
    // connections fail and say so.
    let tls = options.tls().ok().flatten();
    let permits = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let started = Instant::now();
    let end = options.duration.map(|d| started + d);
    // Cut holds short at the end of the run.
    let over = stop.child_token();
    if let Some(end) = end {
        let over = over.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(end).await;
            over.cancel();
        });
    }
    let mut tasks = JoinSet::new();
    let mut collector = Collector::new(&options.urls.join(","), options.reconnect.is_some());
    for n in 0..options.connections {
        let id = options.first_id + n;
        if let Some(rate) = options.rate {
            let at = started + Duration::from_secs_f64(n as f64 / rate);
            tokio::select! {
                () = tokio::time::sleep_until(at) => {}
                () = over.cancelled() => break,
            }
        }
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p,
            () = over.cancelled() => break,
        };
        let (task_options, task_live, task_over) = (options.clone(), live.clone(), over.clone());
        let task_tls = tls.clone();
        tasks.spawn(async move {
            let shared = Shared {
                options: &task_options,
                tls: task_tls.as_ref(),
                live: &task_live,
                over: &task_over,
            };
            match &task_options.reconnect {
                Some(policy) => reconnecting_client(id, &shared, policy, permit.ok()).await,
                None => {
                    let _permit = permit;
                    one_connection(id, &shared).await
                }
            }
        });
        // Collect as we go, so a long run does not keep every outcome.
        while let Some(joined) = tasks.try_join_next() {
            collect(&mut collector, &live, joined);
        }
    }
    while let Some(joined) = tasks.join_next().await {
        collect(&mut collector, &live, joined);
    }
    over.cancel();
    collector.finish(&live, started.elapsed())
}

fn collect(
    collector: &mut Collector,
    live: &Live,
    joined: Result<ConnOutcome, tokio::task::JoinError>,
) {
    let outcome = joined.unwrap_or_else(|error| ConnOutcome {
        failure: Some(format!("client task failed: {error}")),
        ..ConnOutcome::default()
    });
    let counter = if outcome.failure.is_some() {
        &live.failed
    } else {
        &live.ok
    };
    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    collector.add(outcome);
}
