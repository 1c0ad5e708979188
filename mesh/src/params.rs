//! Connection parameters that cross the mesh: the newest signed parameters per
//! (publishing node, instance).
//!
//! Contract: [`Book`] is a pure core (no I/O, no clock, no key). The mesh link verifies
//! a peer's `SignedParams` (certificate chain to the fleet CA, CN == node, signature)
//! *before* it offers them, so everything held is genuine. Newest generation wins (the
//! publisher's ms clock, made strictly increasing by [`Book::next_generation`], and past
//! any own publication a peer echoes back, [`Book::own_seen`]: a node whose clock went
//! back, or that restarted, still supersedes what it published before). Bounds:
//! at most `per_node` instances per publishing node (a node publishing more replaces its
//! own oldest), at most `max_entries` entries and `max_bytes` of encoded parameters in
//! all, this node's own kept last. A newly kept entry is forwarded by the link to every
//! peer but its sender, and every entry held goes to a peer when its session comes up;
//! as only strictly newer ones are kept, the flood ends.

use hedge_wire::mesh::SignedParams;
use hedge_wire::Name;

use crate::newest::{Kept, Newest};

/// See the [module docs](self).
#[derive(Debug)]
pub struct Book {
    me: Name,
    per_node: usize,
    entries: Newest<(Name, Name), SignedParams>,
    last_generation: u64,
}

impl Book {
    /// A book for node `me`: at most `per_node` (≥ 1) instances per node,
    /// `max_entries` entries and `max_bytes` bytes.
    pub fn new(me: Name, per_node: usize, max_entries: usize, max_bytes: usize) -> Self {
        Book {
            me,
            per_node: per_node.max(1),
            entries: Newest::new(max_entries, max_bytes),
            last_generation: 0,
        }
    }

    /// Offers verified parameters; `size` is their encoded length.
    pub fn offer(&mut self, p: SignedParams, size: usize) -> Kept {
        let key = (p.node.clone(), p.instance.clone());
        if self
            .entries
            .get(&key)
            .is_some_and(|(g, _)| g >= p.generation)
        {
            return Kept::Stale;
        }
        if self.entries.get(&key).is_none() {
            let theirs: Vec<(u64, (Name, Name))> = self
                .entries
                .iter()
                .filter(|((n, _), _, _)| n == &p.node)
                .map(|(k, g, _)| (g, k.clone()))
                .collect();
            if theirs.len() >= self.per_node {
                if let Some((_, oldest)) = theirs.into_iter().min() {
                    self.entries.remove(&oldest);
                }
            }
        }
        let generation = p.generation;
        let me = &self.me;
        self.entries
            .offer(key, generation, p, size, |(node, _)| node == me)
    }

    /// The parameters held for `node`'s `instance`.
    pub fn get(&self, node: &Name, instance: &Name) -> Option<&SignedParams> {
        self.entries
            .get(&(node.clone(), instance.clone()))
            .map(|(_, p)| p)
    }

    /// Every entry held (to send to a peer whose session came up).
    pub fn all(&self) -> Vec<SignedParams> {
        self.entries.iter().map(|(_, _, p)| p.clone()).collect()
    }

    /// The generation for this node's next publication at wall-clock `now_ms`: `now_ms`,
    /// or one more than the last if the clock did not move forward (a board without an
    /// RTC, a clock set back).
    pub fn next_generation(&mut self, now_ms: u64) -> u64 {
        self.last_generation = now_ms.max(self.last_generation.saturating_add(1));
        self.last_generation
    }

    /// A verified publication of this node's own, seen at a peer (from before a restart,
    /// or made with a clock since set back): later own generations go past it. Whether
    /// the one held here for that instance is older, so it must be published again.
    pub fn own_seen(&mut self, p: &SignedParams) -> bool {
        self.last_generation = self.last_generation.max(p.generation);
        self.get(&p.node, &p.instance)
            .is_some_and(|mine| mine.generation < p.generation)
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use hedge_wire::mesh::SignedParams;
    use hedge_wire::Name;

    use super::Book;
    use crate::newest::Kept;

    fn name(s: &str) -> Name {
        Name::new(s).expect("valid name")
    }

    fn params(node: &str, instance: &str, generation: u64, port: &str) -> SignedParams {
        SignedParams {
            node: name(node),
            instance: name(instance),
            generation,
            parameters: BTreeMap::from([("port".to_string(), port.to_string())]),
            cert: Vec::new(),
            signature: Vec::new(),
        }
    }

    #[test]
    fn the_newest_publication_of_an_instance_wins() {
        let mut b = Book::new(name("me"), 4, 16, 1 << 20);
        assert_eq!(b.offer(params("n2", "db", 10, "5432"), 50), Kept::Newer);
        assert_eq!(b.offer(params("n2", "db", 9, "1"), 50), Kept::Stale);
        assert_eq!(b.offer(params("n2", "db", 10, "2"), 50), Kept::Stale);
        let got = b.get(&name("n2"), &name("db")).expect("held");
        assert_eq!(got.parameters["port"], "5432");
        assert_eq!(b.offer(params("n2", "db", 11, "6543"), 50), Kept::Newer);
        assert_eq!(
            b.get(&name("n2"), &name("db")).expect("held").parameters["port"],
            "6543"
        );
        // Another node's instance of the same name is another entry.
        assert_eq!(b.offer(params("n3", "db", 1, "7"), 50), Kept::Newer);
        assert_eq!(b.len(), 2);
        assert_eq!(b.all().len(), 2);
    }

    #[test]
    fn a_node_publishing_many_instances_replaces_its_own_oldest_not_others() {
        let mut b = Book::new(name("me"), 2, 16, 1 << 20);
        b.offer(params("n3", "x", 1, "1"), 10);
        b.offer(params("n2", "a", 5, "1"), 10);
        b.offer(params("n2", "b", 6, "1"), 10);
        b.offer(params("n2", "c", 7, "1"), 10);
        assert!(b.get(&name("n2"), &name("a")).is_none());
        assert!(b.get(&name("n2"), &name("b")).is_some());
        assert!(b.get(&name("n2"), &name("c")).is_some());
        assert!(b.get(&name("n3"), &name("x")).is_some());
    }

    #[test]
    fn own_parameters_are_evicted_last() {
        let mut b = Book::new(name("me"), 8, 2, 1 << 20);
        b.offer(params("me", "web", 1, "80"), 10);
        b.offer(params("n2", "a", 1, "1"), 10);
        b.offer(params("n3", "a", 1, "1"), 10);
        assert!(b.get(&name("me"), &name("web")).is_some());
        assert!(b.get(&name("n2"), &name("a")).is_none());
        assert!(!b.is_empty());
    }

    #[test]
    fn an_own_publication_echoed_back_pushes_later_generations_past_it() {
        let mut b = Book::new(name("me"), 8, 8, 1 << 20);
        let g = b.next_generation(5);
        b.offer(params("me", "web", g, "80"), 10);
        // Before a restart this node published at 1_000_000 (its clock since went back).
        assert!(b.own_seen(&params("me", "web", 1_000_000, "8080")));
        assert!(b.next_generation(6) > 1_000_000);
        // An echo older than what is held asks for nothing.
        assert!(!b.own_seen(&params("me", "web", 3, "1")));
        // An instance this node no longer holds asks for nothing either.
        assert!(!b.own_seen(&params("me", "gone", 2_000_000, "1")));
        assert!(b.next_generation(7) > 2_000_000);
    }

    #[test]
    fn own_generations_increase_even_when_the_clock_does_not() {
        let mut b = Book::new(name("me"), 8, 8, 1 << 20);
        assert_eq!(b.next_generation(1_000), 1_000);
        assert_eq!(b.next_generation(1_000), 1_001);
        assert_eq!(b.next_generation(5), 1_002);
        assert_eq!(b.next_generation(2_000), 2_000);
    }
}
