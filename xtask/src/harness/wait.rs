//! Waiting for a condition, never for a fixed time: a task waits for what
//! it needs to see (a count a pod reports, a balancer that answers
//! `ready`, a port that accepts), checked at an interval, and gives up at
//! a deadline instead of hanging.

use std::time::Duration;

use tokio::time::MissedTickBehavior;

/// Calls `check` at once and then every `every` until it gives a value,
/// for at most `within`; `None` when the time ran out (a check under way
/// then is dropped).
pub async fn poll<T>(
    within: Duration,
    every: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> Option<T> {
    let until_true = async {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if let Some(value) = check().await {
                return value;
            }
        }
    };
    tokio::time::timeout(within, until_true).await.ok()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[tokio::test]
    async fn gives_the_first_value_and_gives_up_at_the_deadline() {
        let mut calls = 0;
        let third = super::poll(
            Duration::from_secs(5),
            Duration::from_millis(1),
            async || {
                calls += 1;
                (calls == 3).then_some(calls)
            },
        )
        .await;
        assert_eq!(third, Some(3));
        let never = super::poll(
            Duration::from_millis(30),
            Duration::from_millis(1),
            async || None::<()>,
        )
        .await;
        assert_eq!(never, None);
    }
}
