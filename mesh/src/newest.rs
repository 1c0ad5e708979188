//! A bounded map that keeps the newest generation of each key: the shared core of
//! [`crate::epidemic`] and [`crate::params`].
//!
//! Contract: pure. [`Newest::offer`] keeps a value only if its generation is strictly
//! newer than the one held for its key. At most `max_entries` keys and `max_bytes` of
//! values (as the caller measures them) are held; past either bound the least recently
//! refreshed keys are evicted, those the caller's `keep` predicate does not protect
//! first, and never the key just offered. A value alone larger than `max_bytes` is
//! refused. Recency is a logical counter, not a clock.

use std::collections::BTreeMap;

/// What became of an offered value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// Newer than what was held (or the first for its key): kept.
    Newer,
    /// Not newer than what is held: dropped.
    Stale,
    /// Larger than the whole byte bound: dropped.
    TooLarge,
}

#[derive(Debug)]
struct Slot<V> {
    generation: u64,
    value: V,
    size: usize,
    touched: u64,
}

/// See the [module docs](self).
#[derive(Debug)]
pub(crate) struct Newest<K, V> {
    map: BTreeMap<K, Slot<V>>,
    max_entries: usize,
    max_bytes: usize,
    bytes: usize,
    clock: u64,
}

impl<K: Ord + Clone, V> Newest<K, V> {
    /// Holds at most `max_entries` (≥ 1) keys and `max_bytes` of values.
    pub(crate) fn new(max_entries: usize, max_bytes: usize) -> Self {
        Newest {
            map: BTreeMap::new(),
            max_entries: max_entries.max(1),
            max_bytes,
            bytes: 0,
            clock: 0,
        }
    }

    /// Offers `value` of `size` bytes as `key`'s `generation`; evicts what the bounds
    /// require (keys `keep` protects last).
    pub(crate) fn offer(
        &mut self,
        key: K,
        generation: u64,
        value: V,
        size: usize,
        keep: impl Fn(&K) -> bool,
    ) -> Kept {
        if self
            .map
            .get(&key)
            .is_some_and(|s| s.generation >= generation)
        {
            return Kept::Stale;
        }
        if size > self.max_bytes {
            return Kept::TooLarge;
        }
        self.clock += 1;
        let slot = Slot {
            generation,
            value,
            size,
            touched: self.clock,
        };
        if let Some(old) = self.map.insert(key.clone(), slot) {
            self.bytes -= old.size;
        }
        self.bytes += size;
        while self.map.len() > self.max_entries || self.bytes > self.max_bytes {
            let victim = self
                .map
                .iter()
                .filter(|(k, _)| **k != key)
                .min_by_key(|(k, s)| (keep(k), s.touched))
                .map(|(k, _)| k.clone());
            match victim {
                Some(k) => {
                    self.remove(&k);
                }
                None => break,
            }
        }
        Kept::Newer
    }

    /// Forgets `key`; its value, if held.
    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        let slot = self.map.remove(key)?;
        self.bytes -= slot.size;
        Some(slot.value)
    }

    /// The generation and value held for `key`.
    pub(crate) fn get(&self, key: &K) -> Option<(u64, &V)> {
        self.map.get(key).map(|s| (s.generation, &s.value))
    }

    /// Every key with its generation and value, in key order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, u64, &V)> {
        self.map.iter().map(|(k, s)| (k, s.generation, &s.value))
    }

    /// Keys held.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Bytes held (as measured by the callers).
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::{Kept, Newest};

    #[test]
    fn only_a_strictly_newer_generation_replaces_a_value() {
        let mut n = Newest::new(4, 100);
        assert_eq!(n.offer("a", 2, "two", 3, |_| false), Kept::Newer);
        assert_eq!(n.offer("a", 2, "again", 5, |_| false), Kept::Stale);
        assert_eq!(n.offer("a", 1, "one", 3, |_| false), Kept::Stale);
        assert_eq!(n.get(&"a"), Some((2, &"two")));
        assert_eq!(n.offer("a", 3, "three", 5, |_| false), Kept::Newer);
        assert_eq!(n.get(&"a"), Some((3, &"three")));
        assert_eq!(n.bytes(), 5);
    }

    #[test]
    fn entries_are_bounded_least_recently_refreshed_evicted_first() {
        let mut n = Newest::new(2, 100);
        n.offer("a", 1, (), 1, |_| false);
        n.offer("b", 1, (), 1, |_| false);
        n.offer("a", 2, (), 1, |_| false);
        n.offer("c", 1, (), 1, |_| false);
        assert_eq!(n.len(), 2);
        assert!(n.get(&"b").is_none(), "b was refreshed least recently");
        assert!(n.get(&"a").is_some() && n.get(&"c").is_some());
    }

    #[test]
    fn protected_keys_are_evicted_last() {
        let mut n = Newest::new(2, 100);
        n.offer("a", 1, (), 1, |_| false);
        n.offer("b", 1, (), 1, |_| false);
        n.offer("c", 1, (), 1, |k| *k == "a");
        assert!(n.get(&"a").is_some(), "a is protected");
        assert!(n.get(&"b").is_none());
        // When everything is protected, the oldest goes anyway, never the new key.
        n.offer("d", 1, (), 1, |_| true);
        assert_eq!(n.len(), 2);
        assert!(n.get(&"d").is_some());
    }

    #[test]
    fn bytes_are_bounded_and_an_oversized_value_is_refused() {
        let mut n = Newest::new(10, 10);
        assert_eq!(n.offer("big", 1, (), 11, |_| false), Kept::TooLarge);
        assert_eq!(n.len(), 0);
        n.offer("a", 1, (), 4, |_| false);
        n.offer("b", 1, (), 4, |_| false);
        n.offer("c", 1, (), 4, |_| false);
        assert_eq!(n.bytes(), 8);
        assert!(n.get(&"a").is_none());
        assert_eq!(n.remove(&"b"), Some(()));
        assert_eq!(n.bytes(), 4);
    }
}
