//! Per-node acknowledged prefix of the outbox sequence numbers.
//!
//! Contract: [`Coverage`] is pure data driven by the store's ingest (one value per
//! node, persisted with serde). [`Coverage::add`] takes a range `from..=to` that an
//! `Up` batch *covers* (every record the node still holds in it is stored; seqs
//! missing inside it were shed and never come) and returns the new `acked`: the
//! highest `n` such that every seq in `1..=n` is covered. A range that starts at or
//! below `acked + 1` extends the prefix; any other range waits in `pending` until the
//! gap below it is covered. Pending ranges are kept disjoint and non-adjacent (ranges
//! that overlap or touch are merged). `acked` never decreases.
//!
//! Pending ranges are bounded by [`MAX_PENDING`]: past it the highest ranges are
//! forgotten. That is safe because the node keeps every record it has not seen
//! acknowledged and covers it again later; forgetting only delays an ack.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Most disjoint ranges kept waiting above the acknowledged prefix.
pub const MAX_PENDING: usize = 1024;

/// Errors of [`Coverage::try_add`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoverageError {
    /// The range is empty (`from > to`).
    #[error("covered range {from}..={to} is empty")]
    Empty {
        /// First seq claimed.
        from: u64,
        /// Last seq claimed (inclusive), below `from`.
        to: u64,
    },
}

/// The acknowledged prefix of one node and the covered ranges above it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coverage {
    /// Every seq in `1..=acked` is covered.
    pub acked: u64,
    /// Covered ranges above `acked + 1`, `start -> end` (inclusive), disjoint,
    /// non-adjacent.
    pub pending: BTreeMap<u64, u64>,
}

impl Coverage {
    /// Nothing covered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Merges the covered range `from..=to` and returns the new `acked`.
    ///
    /// An empty range (`from > to`) changes nothing; seq 0 is treated as already
    /// covered (sequence numbers start at 1).
    pub fn add(&mut self, from: u64, to: u64) -> u64 {
        let from = from.max(1);
        if from > to || to <= self.acked {
            return self.acked;
        }
        let mut start = from.max(self.acked.saturating_add(1));
        let mut end = to;
        // Absorb every pending range that overlaps or touches `start..=end`. Pending
        // ranges are disjoint and sorted, so their ends are sorted too: walking down
        // from the highest start that could touch, stop at the first that ends below.
        let touching: Vec<(u64, u64)> = self
            .pending
            .range(..=end.saturating_add(1))
            .rev()
            .take_while(|(_, &e)| e.saturating_add(1) >= start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in touching {
            self.pending.remove(&s);
            start = start.min(s);
            end = end.max(e);
        }
        self.pending.insert(start, end);
        // Extend the prefix with whatever now starts right above it.
        while let Some((&s, &e)) = self.pending.first_key_value() {
            if s > self.acked.saturating_add(1) {
                break;
            }
            self.pending.remove(&s);
            self.acked = self.acked.max(e);
        }
        while self.pending.len() > MAX_PENDING {
            self.pending.pop_last();
        }
        self.acked
    }

    /// Like [`Coverage::add`], but refuses an empty range.
    pub fn try_add(&mut self, from: u64, to: u64) -> Result<u64, CoverageError> {
        if from > to {
            return Err(CoverageError::Empty { from, to });
        }
        Ok(self.add(from, to))
    }

    /// Whether `seq` is covered (acknowledged or in a pending range).
    pub fn contains(&self, seq: u64) -> bool {
        if seq <= self.acked {
            return true;
        }
        self.pending
            .range(..=seq)
            .next_back()
            .is_some_and(|(_, &e)| seq <= e)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn contiguous_ranges_extend_the_prefix() {
        let mut c = Coverage::new();
        assert_eq!(c.add(1, 10), 10);
        assert_eq!(c.add(11, 20), 20);
        assert_eq!(c.add(5, 25), 25, "overlap with the prefix extends it");
        assert!(c.pending.is_empty());
    }

    #[test]
    fn a_gap_waits_until_filled() {
        let mut c = Coverage::new();
        assert_eq!(c.add(11, 20), 0);
        assert_eq!(c.add(31, 40), 0);
        assert_eq!(c.pending.len(), 2);
        assert_eq!(c.add(21, 30), 0, "touching ranges merge but stay pending");
        assert_eq!(c.pending, BTreeMap::from([(11, 40)]));
        assert_eq!(c.add(1, 10), 40);
        assert!(c.pending.is_empty());
    }

    #[test]
    fn a_range_spanning_several_pending_ones_merges_them() {
        let mut c = Coverage::new();
        c.add(10, 12);
        c.add(20, 22);
        c.add(30, 32);
        c.add(50, 52);
        c.add(11, 31);
        assert_eq!(c.pending, BTreeMap::from([(10, 32), (50, 52)]));
        assert!(c.contains(25) && !c.contains(40) && c.contains(51) && !c.contains(9));
    }

    #[test]
    fn old_empty_and_zero_ranges_change_nothing() {
        let mut c = Coverage::new();
        c.add(1, 5);
        assert_eq!(c.add(2, 3), 5);
        assert_eq!(c.add(9, 8), 5);
        assert!(c.try_add(9, 8).is_err());
        assert_eq!(c.add(0, 0), 5);
        assert_eq!(c.add(0, 7), 7, "seq 0 counts as covered");
        assert!(c.pending.is_empty());
    }

    #[test]
    fn extremes_do_not_overflow() {
        let mut c = Coverage::new();
        assert_eq!(c.add(u64::MAX, u64::MAX), 0);
        assert_eq!(c.add(1, u64::MAX - 1), u64::MAX);
        assert_eq!(c.add(1, u64::MAX), u64::MAX);
        assert!(c.pending.is_empty());
    }

    #[test]
    fn pending_is_bounded() {
        let mut c = Coverage::new();
        for i in 0..(MAX_PENDING as u64 + 10) {
            c.add(10 + 3 * i, 10 + 3 * i);
        }
        assert_eq!(c.pending.len(), MAX_PENDING);
        assert_eq!(c.pending.first_key_value(), Some((&10, &10)));
    }

    #[test]
    fn any_order_of_ranges_gives_the_same_result() {
        // Deterministic shuffles of a split of 1..=100 into ranges.
        let ranges: Vec<(u64, u64)> = (0..20).map(|i| (i * 5 + 1, i * 5 + 5)).collect();
        for seed in 0..50u64 {
            let mut order = ranges.clone();
            let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            for i in (1..order.len()).rev() {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                order.swap(i, (x >> 33) as usize % (i + 1));
            }
            let mut c = Coverage::new();
            for (f, t) in order {
                c.add(f, t);
            }
            assert_eq!(c.acked, 100);
            assert!(c.pending.is_empty());
        }
    }

    #[test]
    fn serde_round_trip() {
        let mut c = Coverage::new();
        c.add(1, 3);
        c.add(7, 9);
        let bytes = postcard::to_allocvec(&c).unwrap();
        assert_eq!(postcard::from_bytes::<Coverage>(&bytes).unwrap(), c);
    }
}
