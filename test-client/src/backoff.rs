//! When a reconnecting client (`--reconnect`) tries again: after a random
//! delay in a first window (`--reconnect-backoff`, 50ms..250ms by default),
//! the window doubling with every failed attempt in a row up to a cap
//! (`--reconnect-backoff-max`), and back to the first window once a
//! connection opens. The randomness is what keeps clients that were closed
//! together (a rebalance, a pod going away) from all coming back in the same
//! instant; it is the jitter browser wrappers, socket.io and Phoenix use.
//!
//! Pure: no clock and no I/O, seeded, so it is tested by plain unit tests.

use std::str::FromStr;
use std::time::Duration;

/// A range of delays, `LOW..HIGH` (for example `50ms..250ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Shortest delay.
    pub low: Duration,
    /// Longest delay.
    pub high: Duration,
}

/// Why a window could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// A bound is not a duration.
    #[error("{0:?}: expected LOW..HIGH durations, e.g. 50ms..250ms")]
    Shape(String),
    /// The bounds are the wrong way round.
    #[error("{0:?}: LOW must not be above HIGH")]
    Order(String),
}

impl FromStr for Window {
    type Err = WindowError;

    /// `LOW..HIGH`, or one duration for a window without jitter.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (low, high) = text.split_once("..").unwrap_or((text, text));
        let parse = |d: &str| {
            humantime::parse_duration(d.trim()).map_err(|_| WindowError::Shape(text.to_owned()))
        };
        let window = Window {
            low: parse(low)?,
            high: parse(high)?,
        };
        if window.low > window.high {
            return Err(WindowError::Order(text.to_owned()));
        }
        Ok(window)
    }
}

/// How the delays grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// Where the first retry falls (after a close, or a first failure).
    pub first: Window,
    /// The longest any delay gets, however many attempts failed.
    pub max: Duration,
}

impl Default for BackoffPolicy {
    /// 50–250 ms first: quick enough that a rebalanced client is barely
    /// away, spread enough that a batch closed at once does not come back
    /// at once. A 5 s cap: a client of a dead service keeps trying without
    /// hammering it.
    fn default() -> Self {
        BackoffPolicy {
            first: Window {
                low: Duration::from_millis(50),
                high: Duration::from_millis(250),
            },
            max: Duration::from_secs(5),
        }
    }
}

impl BackoffPolicy {
    /// The window after `failures` failed attempts in a row: the first one
    /// doubled that many times. Where the cap cuts it, it becomes
    /// `[max/2, max]` at most, so delays at the cap still spread out.
    pub fn window(&self, failures: u32) -> Window {
        let factor = 2u32.saturating_pow(failures);
        let high = self.first.high.saturating_mul(factor);
        let low = self.first.low.saturating_mul(factor);
        if high <= self.max {
            return Window { low, high };
        }
        Window {
            low: low.min(self.max / 2),
            high: self.max,
        }
    }
}

/// One client's backoff: the policy, the failures so far, and its own
/// random numbers.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: BackoffPolicy,
    /// Delays handed out since the last open: the window's exponent.
    failures: u32,
    /// Splitmix64 state: a few lines instead of a dependency, and good
    /// enough to spread delays.
    state: u64,
}

impl Backoff {
    /// A backoff starting at the first window; `seed` makes its delays
    /// (give each client its own).
    pub fn new(policy: BackoffPolicy, seed: u64) -> Self {
        Backoff {
            policy,
            failures: 0,
            state: seed,
        }
    }

    /// The delay before the next attempt; each call until [`Backoff::reset`]
    /// doubles the window the next one is drawn from.
    pub fn next_delay(&mut self) -> Duration {
        let window = self.policy.window(self.failures);
        self.failures = self.failures.saturating_add(1);
        // 53 random bits: a fraction in [0, 1].
        let fraction = (self.next_u64() >> 11) as f64 / ((1u64 << 53) - 1) as f64;
        window.low + (window.high - window.low).mul_f64(fraction)
    }

    /// A connection opened: the next delay is from the first window again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn within(d: Duration, low: u64, high: u64) -> bool {
        ms(low) <= d && d <= ms(high)
    }

    #[test]
    fn windows_parse() {
        let w: Window = "50ms..250ms".parse().unwrap();
        assert_eq!((w.low, w.high), (ms(50), ms(250)));
        let w: Window = "1s".parse().unwrap();
        assert_eq!((w.low, w.high), (ms(1000), ms(1000)));
        assert!(matches!(
            "250ms..50ms".parse::<Window>(),
            Err(WindowError::Order(_))
        ));
        assert!(matches!(
            "soon..later".parse::<Window>(),
            Err(WindowError::Shape(_))
        ));
    }

    #[test]
    fn delays_double_up_to_the_cap_and_start_over_after_a_reset() {
        let mut backoff = Backoff::new(BackoffPolicy::default(), 7);
        for _ in 0..100 {
            backoff.reset();
            assert!(within(backoff.next_delay(), 50, 250));
            assert!(within(backoff.next_delay(), 100, 500));
            assert!(within(backoff.next_delay(), 200, 1000));
            assert!(within(backoff.next_delay(), 400, 2000));
            assert!(within(backoff.next_delay(), 800, 4000));
            // The cap: 1600..8000 is cut to 1600..5000, then 2500..5000.
            assert!(within(backoff.next_delay(), 1600, 5000));
            for _ in 0..40 {
                assert!(within(backoff.next_delay(), 2500, 5000));
            }
        }
    }

    #[test]
    fn a_narrow_first_window_is_kept() {
        let policy = BackoffPolicy {
            first: "200ms..250ms".parse().unwrap(),
            max: ms(5000),
        };
        assert_eq!(policy.window(0), "200ms..250ms".parse().unwrap());
        assert_eq!(policy.window(1), "400ms..500ms".parse().unwrap());
        // A cap below the first window bounds it too.
        let tight = BackoffPolicy {
            max: ms(100),
            ..policy
        };
        assert_eq!(tight.window(0), "50ms..100ms".parse().unwrap());
    }

    #[test]
    fn delays_are_spread_and_seeded() {
        let delays = |seed| {
            let mut backoff = Backoff::new(BackoffPolicy::default(), seed);
            (0..50)
                .map(|_| {
                    let d = backoff.next_delay();
                    backoff.reset();
                    d
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(delays(1), delays(1));
        assert_ne!(delays(1), delays(2));
        let spread = delays(3);
        let (min, max) = (spread.iter().min().unwrap(), spread.iter().max().unwrap());
        // 50 draws from 50..250 ms cover most of it.
        assert!(*min < ms(100) && *max > ms(200), "{min:?}..{max:?}");
    }
}
