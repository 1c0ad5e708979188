//! Epidemic spread of the master's signed desired states through the mesh.
//!
//! Contract: [`Carrier`] is a pure core (no I/O, no clock, no key). It holds the newest
//! desired state per node that this node carries for others, at most
//! `MAX_CARRIED` nodes and `max_bytes` of encoded states; the mesh link verifies the
//! master's signature (and the wire bounds) *before* it offers a state, so everything
//! held here is genuine. Newest generation wins: [`Carrier::offer`] keeps a state only
//! if it is newer than the one held for its node. What to push to whom:
//! - a peer's `Hello.desired` summary is answered with [`Carrier::newer_than`]: every
//!   held state newer than the peer's (a node absent from the summary counts as
//!   generation 0);
//! - a newly kept state goes to every peer but the one it came from (the link does
//!   that); since only strictly newer states are kept and forwarded, each generation
//!   crosses each link at most once per direction and the flood ends.
//!
//! The nodes this node fetches states for when it has a direct uplink
//! ([`Carrier::wanted`]: its peers and the origins it holds custody for, noted with
//! [`Carrier::want`]) are bounded to `MAX_CARRIED` too, least recently noted forgotten
//! first; their states are evicted last when the bound is reached.

use hedge_wire::mesh::MAX_CARRIED;
use hedge_wire::{DesiredState, Name};

use crate::newest::{Kept, Newest};

/// See the [module docs](self).
#[derive(Debug)]
pub struct Carrier {
    me: Name,
    states: Newest<Name, DesiredState>,
    wanted: Newest<Name, ()>,
    noted: u64,
}

impl Carrier {
    /// A carrier for node `me` holding at most `max_bytes` of encoded states.
    pub fn new(me: Name, max_bytes: usize) -> Self {
        Carrier {
            me,
            states: Newest::new(MAX_CARRIED, max_bytes),
            wanted: Newest::new(MAX_CARRIED, usize::MAX),
            noted: 0,
        }
    }

    /// Offers a state whose signature the caller verified; `size` is its encoded length.
    pub fn offer(&mut self, state: DesiredState, size: usize) -> Kept {
        let (node, generation) = (state.node.clone(), state.generation);
        let (me, wanted) = (&self.me, &self.wanted);
        self.states.offer(node, generation, state, size, |n| {
            n == me || wanted.get(n).is_some()
        })
    }

    /// `(node, generation)` of every state held, for `Hello.desired` (at most
    /// `MAX_CARRIED`).
    pub fn summary(&self) -> Vec<(Name, u64)> {
        self.states.iter().map(|(n, g, _)| (n.clone(), g)).collect()
    }

    /// The states held that are newer than a peer's `summary` says it holds.
    pub fn newer_than(&self, summary: &[(Name, u64)]) -> Vec<DesiredState> {
        self.states
            .iter()
            .filter(|(node, generation, _)| {
                let theirs = summary
                    .iter()
                    .find(|(n, _)| n == *node)
                    .map_or(0, |(_, g)| *g);
                *generation > theirs
            })
            .map(|(_, _, s)| s.clone())
            .collect()
    }

    /// The state held for `node`.
    pub fn get(&self, node: &Name) -> Option<&DesiredState> {
        self.states.get(node).map(|(_, s)| s)
    }

    /// Notes that this node carries for `node` (a peer, or an origin it took custody
    /// from); whether it was not noted before (the link then fetches again).
    pub fn want(&mut self, node: &Name) -> bool {
        if node == &self.me {
            return false;
        }
        let new = self.wanted.get(node).is_none();
        self.noted += 1;
        self.wanted
            .offer(node.clone(), self.noted, (), 0, |_| false);
        new
    }

    /// The nodes to fetch states for, at most `MAX_CARRIED`, in name order.
    pub fn wanted(&self) -> Vec<Name> {
        self.wanted.iter().map(|(n, _, _)| n.clone()).collect()
    }

    /// States held and their encoded bytes.
    pub fn held(&self) -> (usize, usize) {
        (self.states.len(), self.states.bytes())
    }
}

#[cfg(test)]
mod tests {
    use hedge_wire::mesh::MAX_CARRIED;
    use hedge_wire::{DesiredState, Name};

    use super::Carrier;
    use crate::newest::Kept;

    fn name(s: &str) -> Name {
        Name::new(s).expect("valid name")
    }

    fn state(node: &str, generation: u64) -> DesiredState {
        DesiredState {
            node: name(node),
            generation,
            instances: Vec::new(),
            signature: heapless::Vec::new(),
            expires_ms: 0,
            terms: Vec::new(),
            imports: Vec::new(),
            backups: Vec::new(),
            restores: Vec::new(),
        }
    }

    #[test]
    fn newest_generation_wins_whatever_the_order_of_arrival() {
        let mut c = Carrier::new(name("me"), 1 << 20);
        assert_eq!(c.offer(state("a", 5), 10), Kept::Newer);
        assert_eq!(c.offer(state("a", 3), 10), Kept::Stale);
        assert_eq!(c.offer(state("a", 5), 10), Kept::Stale);
        assert_eq!(c.get(&name("a")).map(|s| s.generation), Some(5));
        assert_eq!(c.offer(state("a", 6), 10), Kept::Newer);
        assert_eq!(c.summary(), vec![(name("a"), 6)]);
    }

    #[test]
    fn a_peer_gets_what_it_lacks_or_holds_older_and_nothing_else() {
        let mut c = Carrier::new(name("me"), 1 << 20);
        for (n, g) in [("a", 5), ("b", 2), ("c", 7)] {
            c.offer(state(n, g), 10);
        }
        let peer = [(name("a"), 5), (name("b"), 1), (name("c"), 9)];
        let push: Vec<_> = c
            .newer_than(&peer)
            .into_iter()
            .map(|s| (s.node.to_string(), s.generation))
            .collect();
        assert_eq!(push, vec![("b".to_string(), 2)]);
        let all = c.newer_than(&[]);
        assert_eq!(all.len(), 3);
    }

    #[test]
    fn at_most_max_carried_states_and_wanted_nodes_are_kept_last() {
        let mut c = Carrier::new(name("me"), 1 << 20);
        assert!(c.want(&name("n0")));
        assert!(!c.want(&name("n0")));
        for i in 0..MAX_CARRIED + 10 {
            c.offer(state(&format!("n{i}"), 1), 10);
        }
        assert_eq!(c.held().0, MAX_CARRIED);
        assert!(c.get(&name("n0")).is_some(), "a wanted node's state stays");
        assert!(c.get(&name("n1")).is_none(), "the oldest unwanted one went");
        assert!(c.summary().len() <= MAX_CARRIED);
    }

    #[test]
    fn the_byte_bound_holds() {
        let mut c = Carrier::new(name("me"), 100);
        for i in 0..5 {
            c.offer(state(&format!("n{i}"), 1), 30);
        }
        assert_eq!(c.held(), (3, 90));
        assert_eq!(c.offer(state("huge", 1), 101), Kept::TooLarge);
    }

    #[test]
    fn wanted_nodes_are_bounded_and_never_include_this_node() {
        let mut c = Carrier::new(name("me"), 1 << 20);
        assert!(!c.want(&name("me")));
        for i in 0..MAX_CARRIED + 3 {
            c.want(&name(&format!("o{i}")));
        }
        let w = c.wanted();
        assert_eq!(w.len(), MAX_CARRIED);
        assert!(!w.contains(&name("o0")), "the least recently noted went");
        assert!(w.contains(&name(&format!("o{}", MAX_CARRIED + 2))));
    }
}
