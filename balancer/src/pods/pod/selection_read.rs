//! What a ranking reads of a pod, for every pod on every new connection:
//! its published cell, without a lock and without copying a string. Kept
//! apart from the pod's status changes (the parent module), which write
//! what this reads.

use std::sync::atomic::Ordering;

use common::selection::{Health, PodLoad};

use super::Pod;
use crate::pods::figures::{Figures, Moment};
use crate::pods::select_cell::Published;

impl Pod {
    /// What selection needs of the pod at `moment`, without a lock and
    /// without copying any string: this runs for every pod on every new
    /// connection. `limit` is `maxConnectionsPerPod`. Most pods are
    /// [`Plain`](crate::pods::select_cell::Plain), read from the first words of
    /// their cell; the others are read whole, with the same result.
    #[inline(always)]
    pub(in crate::pods) fn load(&self, moment: &Moment, limit: u64) -> PodLoad {
        if let Some(plain) = self.cell.read_plain() {
            let counters = self.counters();
            return PodLoad {
                load: moment.effective(plain.anchor, counters),
                reported: plain.reported,
                local: counters.0.saturating_sub(counters.1),
                capacity: None,
                limit,
                warmup: 1.0,
                health: if moment.is_stale(plain.report_at) {
                    Health::Unknown
                } else {
                    Health::Healthy
                },
                accepting: true,
                last_failure: plain.last_failure.unwrap_or(0),
            };
        }
        self.load_whole(moment, limit)
    }

    /// [`Pod::load`] from the whole published status, as any pod that is
    /// not [`Plain`](crate::pods::select_cell::Plain) is read.
    #[inline(always)]
    pub(super) fn load_whole(&self, moment: &Moment, limit: u64) -> PodLoad {
        let view = self.cell.read();
        let figures = self.figures(&view, moment);
        PodLoad {
            load: figures.effective,
            reported: view.reported,
            local: figures.relayed,
            capacity: view.capacity,
            limit,
            warmup: figures.warmup,
            health: figures.health,
            accepting: view.accepting,
            last_failure: view.last_failure.unwrap_or(0),
        }
    }

    /// Asks the CPU to start loading the pod's cell: a ranking does so a
    /// few pods ahead of the one it reads.
    #[inline(always)]
    pub(in crate::pods) fn prefetch(&self) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            let at = std::ptr::from_ref(&self.cell).cast::<i8>();
            // SAFETY: a prefetch is a hint: it reads nothing the program
            // sees, cannot fault, and SSE (which it needs) is part of
            // x86_64. Both addresses are inside the cell (two lines).
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(at);
                _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(64));
            }
        }
    }

    /// The pod's last published `capacity` (one word, no lock).
    pub(in crate::pods) fn capacity(&self) -> Option<u64> {
        self.cell.capacity()
    }

    /// The derived figures every view shares, from what was published,
    /// at `moment`.
    #[inline(always)]
    pub(super) fn figures(&self, view: &Published, moment: &Moment) -> Figures {
        Figures::of(view, self.counters(), moment)
    }

    /// The pod's `(opened, closed)` counters.
    #[inline(always)]
    pub(super) fn counters(&self) -> (u64, u64) {
        (
            self.cell.opened.load(Ordering::Relaxed),
            self.cell.closed.load(Ordering::Relaxed),
        )
    }
}
