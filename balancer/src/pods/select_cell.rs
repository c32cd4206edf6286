//! What selection reads of a pod on every new connection, published so
//! that it is read without a lock.
//!
//! A new connection looks at every pod; with a lock per pod that is a
//! thousand lock round trips per handshake at a thousand pods. Instead, a
//! pod's status (changed under its lock by polls and dials, a few times a
//! second at most) is copied into a [`SelectCell`] each time it changes,
//! and readers take a consistent copy with a sequence lock: the writer
//! (always under the pod's status lock, so one at a time) makes the
//! sequence odd, stores, and makes it even again; a reader that sees it
//! change retries.
//!
//! Times are nanoseconds since one process-wide instant, so one clock read
//! per connection serves every pod.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};
use std::time::Instant;

/// The instant every published time counts from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// `at` as nanoseconds since the epoch (0 before it, saturating far
/// after).
pub fn nanos(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX)
}

/// Now, as [`nanos`] counts.
pub fn now() -> u64 {
    nanos(Instant::now())
}

/// The report a pod's effective load counts from, with this balancer's own
/// counters when it was taken.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Anchored {
    /// The reported count it starts from.
    pub count: u64,
    /// Dials settled when its poll was sent.
    pub settled: u64,
    /// Connections closed when its poll was sent.
    pub closed: u64,
}

/// A pod's selection inputs, as last published.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Published {
    /// The count the effective load starts from, once there is a report.
    pub anchor: Option<Anchored>,
    /// The last report's count.
    pub reported: u64,
    /// When the last report arrived ([`nanos`]).
    pub report_at: Option<u64>,
    /// The last report's `capacity`.
    pub capacity: Option<u64>,
    /// Whether its state takes new connections.
    pub accepting: bool,
    /// Whether it is ejected.
    pub ejected: bool,
    /// When it (re)joined the rotation, for slow start ([`nanos`]).
    pub warm_since: Option<u64>,
    /// When it last failed ([`nanos`]).
    pub last_failure: Option<u64>,
}

/// Set once any pod published a `capacity` (see [`SelectCell::capacity_seen`]).
static CAPACITY_SEEN: AtomicBool = AtomicBool::new(false);

/// Flag bits of the first word.
const HAS_ANCHOR: u64 = 1;
const HAS_REPORT: u64 = 1 << 1;
const HAS_CAPACITY: u64 = 1 << 2;
const ACCEPTING: u64 = 1 << 3;
const EJECTED: u64 = 1 << 4;
const WARMING: u64 = 1 << 5;
const FAILED: u64 = 1 << 6;

/// Words of a [`Published`]: flags, anchor count, anchor settled, anchor
/// closed, reported, report time, last failure (what a ranking needs of a
/// [`Plain`] pod), then capacity and warm-up start.
const WORDS: usize = 9;

/// The words a [`Plain`] pod is read from: the first ones.
const PLAIN_WORDS: usize = 7;

/// The flags that make a pod [`Plain`], among those that could not.
const PLAIN_MASK: u64 = HAS_ANCHOR | HAS_REPORT | HAS_CAPACITY | ACCEPTING | EJECTED | WARMING;
const PLAIN: u64 = HAS_ANCHOR | HAS_REPORT | ACCEPTING;

/// A pod as most rankings find most pods: reported (so its effective load
/// has a count to start from), taking connections, not ejected, warm, and
/// with no `capacity` of its own. What a ranking needs of it is in the
/// first words of its cell, so a ranking of a thousand pods reads and
/// decodes that much less per pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plain {
    /// The count the effective load starts from.
    pub anchor: Anchored,
    /// The last report's count.
    pub reported: u64,
    /// When the last report arrived ([`nanos`]).
    pub report_at: u64,
    /// When it last failed ([`nanos`]).
    pub last_failure: Option<u64>,
}

/// A [`Published`] that one writer at a time updates and any thread reads,
/// beside the pod's own connection counters: what a ranking reads of a
/// pod sits in two adjacent cache lines, the first holding all that most
/// rankings need.
#[derive(Debug, Default)]
#[repr(C, align(64))]
pub struct SelectCell {
    /// Odd while a write is under way.
    seq: AtomicU64,
    /// Connections this balancer opened (or is opening) to the pod, ever.
    pub opened: AtomicU64,
    /// Of those, how many have ended (or failed to open).
    pub closed: AtomicU64,
    words: [AtomicU64; WORDS],
    /// Of the opened, how many finished their dial (answered or failed).
    pub settled: AtomicU64,
}

impl SelectCell {
    /// Publishes `view`. Callers hold the pod's status lock: there is one
    /// writer at a time.
    pub fn publish(&self, view: &Published) {
        if view.capacity.is_some() {
            CAPACITY_SEEN.store(true, Ordering::Relaxed);
        }
        let words = encode(view);
        let seq = self.seq.load(Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        for (cell, word) in self.words.iter().zip(words) {
            cell.store(word, Ordering::Relaxed);
        }
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
    }

    /// A consistent copy of what was last published.
    #[inline(always)]
    pub fn read(&self) -> Published {
        decode(self.read_words())
    }

    /// The pod, when it is [`Plain`]; `None` when it is not (then
    /// [`SelectCell::read`] says what it is).
    #[inline(always)]
    pub fn read_plain(&self) -> Option<Plain> {
        let [
            flags,
            count,
            settled,
            closed,
            reported,
            report_at,
            last_failure,
        ] = self.read_words::<PLAIN_WORDS>();
        (flags & PLAIN_MASK == PLAIN).then_some(Plain {
            anchor: Anchored {
                count,
                settled,
                closed,
            },
            reported,
            report_at,
            last_failure: (flags & FAILED != 0).then_some(last_failure),
        })
    }

    /// The first `N` words, all from the same publication (a sequence
    /// lock's read).
    #[inline(always)]
    fn read_words<const N: usize>(&self) -> [u64; N] {
        const { assert!(N <= WORDS) };
        loop {
            let before = self.seq.load(Ordering::Acquire);
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let words: [u64; N] = std::array::from_fn(|i| self.words[i].load(Ordering::Relaxed));
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) == before {
                return words;
            }
        }
    }

    /// The last published `capacity` alone (one word: no sequence needed).
    pub fn capacity(&self) -> Option<u64> {
        let flags = self.words[0].load(Ordering::Relaxed);
        (flags & HAS_CAPACITY != 0).then(|| self.words[7].load(Ordering::Relaxed))
    }

    /// Whether any pod of this process ever published a `capacity`: until
    /// one does, a ranking needs no first pass for the mean capacity.
    pub fn capacity_seen() -> bool {
        CAPACITY_SEEN.load(Ordering::Relaxed)
    }
}

fn encode(view: &Published) -> [u64; WORDS] {
    let anchor = view.anchor.unwrap_or_default();
    let flag = |set: bool, bit: u64| if set { bit } else { 0 };
    let flags = flag(view.anchor.is_some(), HAS_ANCHOR)
        | flag(view.report_at.is_some(), HAS_REPORT)
        | flag(view.capacity.is_some(), HAS_CAPACITY)
        | flag(view.accepting, ACCEPTING)
        | flag(view.ejected, EJECTED)
        | flag(view.warm_since.is_some(), WARMING)
        | flag(view.last_failure.is_some(), FAILED);
    [
        flags,
        anchor.count,
        anchor.settled,
        anchor.closed,
        view.reported,
        view.report_at.unwrap_or_default(),
        view.last_failure.unwrap_or_default(),
        view.capacity.unwrap_or_default(),
        view.warm_since.unwrap_or_default(),
    ]
}

#[inline(always)]
fn decode(words: [u64; WORDS]) -> Published {
    let [
        flags,
        count,
        settled,
        closed,
        reported,
        report_at,
        last_failure,
        capacity,
        warm_since,
    ] = words;
    let when = |bit: u64, value: u64| (flags & bit != 0).then_some(value);
    Published {
        anchor: when(HAS_ANCHOR, 0).map(|_| Anchored {
            count,
            settled,
            closed,
        }),
        reported,
        report_at: when(HAS_REPORT, report_at),
        capacity: when(HAS_CAPACITY, capacity),
        accepting: flags & ACCEPTING != 0,
        ejected: flags & EJECTED != 0,
        warm_since: when(WARMING, warm_since),
        last_failure: when(FAILED, last_failure),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_published_is_read_back_whole() {
        let cell = SelectCell::default();
        assert_eq!(cell.read(), Published::default());
        let view = Published {
            anchor: Some(Anchored {
                count: 7,
                settled: 3,
                closed: 1,
            }),
            reported: 9,
            report_at: Some(12),
            capacity: Some(0),
            accepting: true,
            ejected: false,
            warm_since: None,
            last_failure: Some(u64::MAX),
        };
        cell.publish(&view);
        assert_eq!(cell.read(), view);
        assert_eq!(cell.capacity(), Some(0));
    }

    #[test]
    fn readers_never_see_half_a_write() {
        let cell = std::sync::Arc::new(SelectCell::default());
        let writer = {
            let cell = cell.clone();
            std::thread::spawn(move || {
                for n in 0..50_000u64 {
                    let anchor = Anchored {
                        count: n,
                        settled: n,
                        closed: n,
                    };
                    cell.publish(&Published {
                        anchor: Some(anchor),
                        reported: n,
                        ..Published::default()
                    });
                }
            })
        };
        for _ in 0..50_000 {
            let view = cell.read();
            if let Some(anchor) = view.anchor {
                assert!(anchor.count == anchor.settled && anchor.settled == anchor.closed);
                assert_eq!(anchor.count, view.reported);
            }
        }
        writer.join().expect("writer");
    }
}
