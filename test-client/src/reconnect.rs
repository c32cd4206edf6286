//! A reconnecting client (`--reconnect`): the kind a balancer's live
//! rebalancing relies on (reconnecting browser wrappers, socket.io, Phoenix
//! channels). It opens a connection, sends its messages and holds the
//! connection until the far side closes it (any code, 1012 from a
//! rebalance included) or it drops; then it waits a jittered backoff
//! ([`crate::backoff`]) and opens the next one, at the next URL when there
//! are several. A failed open is retried the same way, with the window
//! doubling. When the run is over the client closes with 1000, noting
//! first the pod it was on, so the report has the spread at the end.
//!
//! A client fails when an echo was wrong or late, when it gave up after
//! `--reconnect-attempts` failed opens in a row, or when the run ended
//! while it was failing to open. Being closed, even dropped, is not a
//! failure: it is what the client is there to survive.

use std::hash::BuildHasher;
use std::sync::atomic::Ordering;

use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::connection::{
    Cut, Opened, Shared, Tally, Ws, close, exchange, finish_closing, hold, open,
};
use crate::options::Reconnect;
use crate::outcome::{ConnOutcome, History};

/// How one connection of the client ended.
enum End {
    /// The run is over (and the connection closed with 1000).
    Over,
    /// The far side closed it, or it dropped: reconnect.
    Cut,
}

/// Runs client `id` until the run is over or it gives up. `first_open`
/// (its `--concurrency` permit) is held through the first open attempt only:
/// the ramp is paced, reconnects are paced by their backoff alone, as real
/// clients' are.
pub(crate) async fn reconnecting_client(
    id: usize,
    shared: &Shared<'_>,
    policy: &Reconnect,
    mut first_open: Option<OwnedSemaphorePermit>,
) -> ConnOutcome {
    let Shared { live, over, .. } = *shared;
    let mut outcome = ConnOutcome::default();
    let mut history = History::default();
    let seed = std::collections::hash_map::RandomState::new().hash_one(id);
    let mut backoff = Backoff::new(policy.backoff, seed);
    // The pod of the client's last connection, once it had one.
    let mut last_pod: Option<String> = None;
    // Failed opens since the last connection, and why the latest failed.
    let mut failing: (u32, Option<String>) = (0, None);
    for attempt in 0.. {
        let opened = tokio::select! {
            opened = open(id, attempt, shared) => opened,
            () = over.cancelled() => break,
        };
        drop(first_open.take());
        match opened {
            Err(reason) => {
                live.failed_attempts.fetch_add(1, Ordering::Relaxed);
                *history.failed_attempts.entry(reason.clone()).or_default() += 1;
                failing = (failing.0 + 1, Some(reason));
                if policy.attempts.is_some_and(|most| failing.0 >= most) {
                    history.gave_up = true;
                    let reason = failing.1.take().unwrap_or_default();
                    outcome.failure.get_or_insert(format!(
                        "gave up after {} failed attempts: {reason}",
                        failing.0
                    ));
                    break;
                }
            }
            Ok(Opened { mut ws, pod }) => {
                failing = (0, None);
                backoff.reset();
                *history.landed.entry(pod.clone()).or_default() += 1;
                if let Some(last) = last_pod.replace(pod.clone()) {
                    history.reconnects += 1;
                    history.moves += u64::from(last != pod);
                    live.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                live.open.fetch_add(1, Ordering::Relaxed);
                let end = connection(
                    id,
                    shared,
                    policy,
                    &mut ws,
                    &pod,
                    &mut history,
                    &mut outcome,
                )
                .await;
                live.open.fetch_sub(1, Ordering::Relaxed);
                if let End::Over = end {
                    break;
                }
            }
        }
        if !wait(&mut backoff, over).await {
            break;
        }
    }
    if let Some(reason) = failing.1 {
        outcome
            .failure
            .get_or_insert(format!("not connected at the end: {reason}"));
    }
    outcome.history = Some(history);
    outcome
}

/// Waits out the next backoff delay; `false` when the run ended first.
async fn wait(backoff: &mut Backoff, over: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(backoff.next_delay()) => true,
        () = over.cancelled() => false,
    }
}

/// One connection of the client: its messages, then held until the far
/// side closes it or the run is over.
async fn connection(
    id: usize,
    shared: &Shared<'_>,
    policy: &Reconnect,
    ws: &mut Ws,
    pod: &str,
    history: &mut History,
    outcome: &mut ConnOutcome,
) -> End {
    let Shared {
        options,
        live,
        over,
        ..
    } = *shared;
    let tally = Tally::new(live);
    let aged_at = policy
        .max_age
        .and_then(|age| tokio::time::Instant::now().checked_add(age));
    let cut = async {
        exchange(id, options, &tally, ws).await?;
        hold(options, over, aged_at, &tally, ws).await
    };
    let cut = tokio::select! {
        cut = cut => cut.err(),
        () = over.cancelled() => None,
    };
    let Some(cut) = cut else {
        // The client closes it itself: the run is over (mid-messages, or
        // holding), or the connection was held to its maximum age and the
        // client reconnects. Only the run's final close is the report's.
        let aged_out = !over.is_cancelled();
        history.cut_off += tally.unanswered();
        let mut aged_close = None;
        let code = if aged_out {
            history.aged_out += 1;
            &mut aged_close
        } else {
            history.final_pod = Some(pod.to_owned());
            &mut outcome.close_code
        };
        if let Err(reason) = close(options, ws, code).await {
            outcome.failure.get_or_insert(reason);
        }
        return if aged_out { End::Cut } else { End::Over };
    };
    match (tally.closed_with(), cut) {
        (Some(code), _) => {
            *history.closes.entry(code).or_default() += 1;
            history.cut_off += tally.unanswered();
            finish_closing(options, ws).await;
        }
        (None, Cut::Echo(reason)) => {
            // A client whose echoes go wrong drops the connection and
            // starts over, as a heartbeat timeout would make it; the run
            // still fails.
            outcome.failure.get_or_insert(reason.to_owned());
        }
        (None, Cut::Closed(_) | Cut::Lost(_)) => {
            history.drops += 1;
            history.cut_off += tally.unanswered();
        }
    }
    End::Cut
}
