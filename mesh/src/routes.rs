//! The routes core: which peers are up, how far each is from the broker, which one is the
//! best next hop, and which beacon-heard nodes to dial when.
//!
//! Contract: pure (no I/O, no clock: the driver passes `now` in milliseconds of any
//! monotonic clock). A peer's hops come only from its authenticated `Hello`
//! ([`Routes::hello`]); until then it is [`NO_PATH`]. A path longer than
//! [`MAX_RELAY_DEPTH`] relays is no path (the master would refuse the nesting). The best
//! next hop is the up peer with the fewest hops, ties broken by name (stable, so equal
//! peers do not alternate). A node with no such peer hands its batches to a ferry
//! ([`FERRY`]: a peer configured `ferry` that has no path either), unless it is a ferry
//! itself; a ferry without a path announces [`FERRY`], any other node [`NO_PATH`].
//! [`Routes::hops_for`] poisons the reverse route: a node tells
//! its own next hop that it has no path, so two nodes never count up through each other.
//! Beacons ([`Routes::beacon`]) are hints: they only decide whom to dial, at most
//! [`MAX_HEARD`] nodes are remembered, each forgotten when not heard for the TTL, at most
//! the caller's bound of dials is in flight, a failing dial backs off exponentially per
//! node, and of two nodes that hear each other the lower name dials first (the higher
//! one after a grace), so their dials seldom cross. [`keep_new_session`] decides between two
//! sessions with the same peer the same way on both ends.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use hedge_wire::mesh::{FERRY, MAX_RELAY_DEPTH, NO_PATH};
use hedge_wire::Name;

/// Most beacon-heard nodes remembered at once; more are ignored until some expire.
pub const MAX_HEARD: usize = 256;
/// First backoff after a failed dial, milliseconds.
pub const BACKOFF_BASE_MS: u64 = 500;

/// What an up peer said about itself in its latest `Hello`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerRoute {
    /// Its hops to the broker ([`NO_PATH`] before its first `Hello`).
    pub hops: u8,
    /// Its outbox depth.
    pub outbox: u64,
}

/// A node heard in a beacon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heard {
    /// Where its sessions are accepted (beacon source address, beacon port).
    pub addr: SocketAddr,
    /// Its claimed hops (a hint).
    pub hops: u8,
    /// Its claimed outbox depth (a hint).
    pub outbox: u64,
    /// When it was last heard.
    pub last_ms: u64,
    fails: u32,
    next_dial_ms: u64,
    dialing: bool,
    /// Since when it has been heard without a session up.
    missing_since: Option<u64>,
}

/// Peers, their routes, and beacon-heard candidates.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    peers: BTreeMap<Name, PeerRoute>,
    heard: BTreeMap<Name, Heard>,
    ferry: bool,
}

impl Routes {
    /// The routes of a ferry (`true`) or of any other node.
    pub fn new(ferry: bool) -> Self {
        Routes {
            ferry,
            ..Routes::default()
        }
    }

    /// A session with `peer` is up; no path known yet.
    pub fn up(&mut self, peer: &Name) {
        self.peers.insert(
            peer.clone(),
            PeerRoute {
                hops: NO_PATH,
                outbox: 0,
            },
        );
    }

    /// `peer` said hello: its hops and outbox. Ignored unless its session is up.
    pub fn hello(&mut self, peer: &Name, hops: u8, outbox: u64) {
        if let Some(r) = self.peers.get_mut(peer) {
            *r = PeerRoute { hops, outbox };
        }
    }

    /// The session with `peer` is down.
    pub fn down(&mut self, peer: &Name) {
        self.peers.remove(peer);
    }

    /// The route of an up peer.
    pub fn peer(&self, peer: &Name) -> Option<PeerRoute> {
        self.peers.get(peer).copied()
    }

    /// Up peers and their routes, by name.
    pub fn peers(&self) -> impl Iterator<Item = (&Name, &PeerRoute)> {
        self.peers.iter()
    }

    /// The best next hop toward the broker and its hops: the up peer with a usable path
    /// and the fewest hops; without one, for a node that is not a ferry itself, a ferry
    /// (hops [`FERRY`]).
    pub fn best(&self) -> Option<(&Name, u8)> {
        let fewest = |want: fn(u8) -> bool| {
            self.peers
                .iter()
                .filter(|(_, r)| want(r.hops))
                .min_by_key(|(n, r)| (r.hops, *n))
                .map(|(n, r)| (n, r.hops))
        };
        fewest(usable).or_else(|| {
            if self.ferry {
                None
            } else {
                fewest(|h| h == FERRY)
            }
        })
    }

    /// This node's hops: 0 with a direct uplink, else one more than the best next hop's;
    /// without a path [`FERRY`] for a ferry, [`NO_PATH`] for any other node (also when
    /// its next hop is a ferry: nobody should count on that path).
    pub fn own_hops(&self, direct: bool) -> u8 {
        if direct {
            return 0;
        }
        match self.best() {
            Some((_, h)) if usable(h) => h.saturating_add(1),
            _ if self.ferry => FERRY,
            _ => NO_PATH,
        }
    }

    /// The hops to announce to `peer`: [`Routes::own_hops`], except [`NO_PATH`] to the
    /// peer that is this node's own next hop (poisoned reverse).
    pub fn hops_for(&self, peer: &Name, direct: bool) -> u8 {
        if !direct && self.best().is_some_and(|(n, _)| n == peer) {
            return NO_PATH;
        }
        self.own_hops(direct)
    }

    /// A beacon of `node` was heard from `addr` at `now`.
    pub fn beacon(&mut self, node: &Name, addr: SocketAddr, hops: u8, outbox: u64, now: u64) {
        let up = self.peers.contains_key(node);
        if let Some(h) = self.heard.get_mut(node) {
            h.missing_since = if up {
                None
            } else {
                h.missing_since.or(Some(now))
            };
            if h.addr != addr {
                // Moved: a fresh address deserves a fresh dial.
                h.fails = 0;
                h.next_dial_ms = now;
            }
            h.addr = addr;
            h.hops = hops;
            h.outbox = outbox;
            h.last_ms = now;
            return;
        }
        if self.heard.len() >= MAX_HEARD {
            return;
        }
        self.heard.insert(
            node.clone(),
            Heard {
                addr,
                hops,
                outbox,
                last_ms: now,
                fails: 0,
                next_dial_ms: now,
                dialing: false,
                missing_since: (!up).then_some(now),
            },
        );
    }

    /// Heard nodes that are not up, not being dialled and due, so that at most `max`
    /// dials are in flight: each is marked dialling. Of two nodes that hear each other
    /// the lower name (`me` against the node's) dials at once and the higher only once the
    /// node has been heard without a session for `grace_ms`, so the two seldom cross.
    pub fn to_dial(
        &mut self,
        now: u64,
        max: usize,
        me: &Name,
        grace_ms: u64,
    ) -> Vec<(Name, SocketAddr)> {
        let mut out = Vec::new();
        let mut room = max.saturating_sub(self.heard.values().filter(|h| h.dialing).count());
        for (n, h) in &mut self.heard {
            if room == 0 {
                break;
            }
            let waited = h
                .missing_since
                .is_some_and(|t| now.saturating_sub(t) >= grace_ms);
            let mine = me < n || waited;
            if mine && !self.peers.contains_key(n) && !h.dialing && h.next_dial_ms <= now {
                room -= 1;
                h.dialing = true;
                out.push((n.clone(), h.addr));
            }
        }
        out
    }

    /// A dial of `node` ended: `ok` when a session came up, else it backs off.
    pub fn dial_done(&mut self, node: &Name, ok: bool, now: u64, max_backoff_ms: u64) {
        if let Some(h) = self.heard.get_mut(node) {
            h.dialing = false;
            if ok {
                h.fails = 0;
            } else {
                h.fails = h.fails.saturating_add(1);
                h.next_dial_ms = now.saturating_add(backoff_ms(h.fails, max_backoff_ms));
            }
        }
    }

    /// Forgets heard nodes not heard for `ttl_ms` (and not being dialled).
    pub fn expire(&mut self, now: u64, ttl_ms: u64) {
        self.heard
            .retain(|_, h| h.dialing || now.saturating_sub(h.last_ms) < ttl_ms);
    }

    /// The heard nodes.
    pub fn heard(&self) -> impl Iterator<Item = (&Name, &Heard)> {
        self.heard.iter()
    }
}

/// Whether a peer with `hops` offers a path this node may use (its own would be `hops+1`).
fn usable(hops: u8) -> bool {
    usize::from(hops) < MAX_RELAY_DEPTH
}

/// Backoff before the next dial after `fails` failures in a row: doubling from
/// [`BACKOFF_BASE_MS`], at most `max_ms`.
pub fn backoff_ms(fails: u32, max_ms: u64) -> u64 {
    let shift = fails.saturating_sub(1).min(20);
    BACKOFF_BASE_MS.saturating_mul(1 << shift).min(max_ms)
}

/// Two sessions with `peer`: whether the new one replaces the old. Same direction: the
/// newer wins (the old one is stale). Crossed dials: the one dialled by the lower name
/// wins, which both ends compute alike.
pub fn keep_new_session(me: &Name, peer: &Name, old_dialed: bool, new_dialed: bool) -> bool {
    if old_dialed == new_dialed {
        return true;
    }
    new_dialed == (me < peer)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn n(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    impl Routes {
        fn due(&mut self, now: u64) -> Vec<(Name, SocketAddr)> {
            self.to_dial(now, usize::MAX, &n("a"), 0)
        }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    #[test]
    fn the_best_hop_is_the_fewest_hops_then_the_name_and_unknown_is_no_path() {
        let mut r = Routes::default();
        assert_eq!(r.own_hops(false), NO_PATH);
        assert_eq!(r.own_hops(true), 0);
        r.up(&n("b"));
        r.up(&n("a"));
        assert_eq!(r.best(), None, "no hello yet: no path");
        r.hello(&n("b"), 1, 10);
        r.hello(&n("a"), 2, 0);
        assert_eq!(r.best(), Some((&n("b"), 1)));
        assert_eq!(r.own_hops(false), 2);
        r.hello(&n("a"), 1, 500);
        assert_eq!(r.best(), Some((&n("a"), 1)), "tie: by name, not by outbox");
        r.down(&n("a"));
        assert_eq!(r.best(), Some((&n("b"), 1)));
        r.hello(&n("ghost"), 0, 0);
        assert_eq!(
            r.peer(&n("ghost")),
            None,
            "hello without a session is ignored"
        );
    }

    #[test]
    fn pathless_nodes_hand_to_a_ferry_and_a_ferry_waits_for_a_real_path() {
        let mut c = Routes::new(false);
        c.up(&n("b"));
        c.hello(&n("b"), NO_PATH, 0);
        assert_eq!(c.best(), None, "a pathless peer that is no ferry is no hop");
        c.hello(&n("b"), FERRY, 0);
        assert_eq!(c.best(), Some((&n("b"), FERRY)));
        assert_eq!(
            c.own_hops(false),
            NO_PATH,
            "a path through a ferry is announced as none"
        );
        assert_eq!(c.hops_for(&n("b"), false), NO_PATH);
        c.up(&n("g"));
        c.hello(&n("g"), 0, 0);
        assert_eq!(c.best(), Some((&n("g"), 0)), "a real path beats a ferry");
        assert_eq!(c.own_hops(false), 1);

        let mut b = Routes::new(true);
        assert_eq!(b.own_hops(false), FERRY);
        assert_eq!(b.own_hops(true), 0);
        b.up(&n("c"));
        b.hello(&n("c"), NO_PATH, 0);
        b.up(&n("f"));
        b.hello(&n("f"), FERRY, 0);
        assert_eq!(
            b.best(),
            None,
            "a ferry never hands custody to another pathless node"
        );
        assert_eq!(b.own_hops(false), FERRY);
        b.up(&n("g"));
        b.hello(&n("g"), 2, 0);
        assert_eq!(b.best(), Some((&n("g"), 2)));
        assert_eq!(b.own_hops(false), 3);
    }

    #[test]
    fn paths_deeper_than_the_relay_depth_are_no_path() {
        let mut r = Routes::default();
        r.up(&n("p"));
        r.hello(&n("p"), u8::try_from(MAX_RELAY_DEPTH - 1).unwrap(), 0);
        assert_eq!(r.own_hops(false), u8::try_from(MAX_RELAY_DEPTH).unwrap());
        r.hello(&n("p"), u8::try_from(MAX_RELAY_DEPTH).unwrap(), 0);
        assert_eq!(r.own_hops(false), NO_PATH);
        r.hello(&n("p"), NO_PATH, 0);
        assert_eq!(r.own_hops(false), NO_PATH);
    }

    #[test]
    fn the_next_hop_is_told_no_path_so_two_nodes_never_count_up() {
        let mut r = Routes::default();
        r.up(&n("up"));
        r.up(&n("down"));
        r.hello(&n("up"), 0, 0);
        r.hello(&n("down"), 2, 0);
        assert_eq!(r.hops_for(&n("up"), false), NO_PATH);
        assert_eq!(r.hops_for(&n("down"), false), 1);
        assert_eq!(r.hops_for(&n("up"), true), 0, "a direct node hides nothing");
        // The uplink's own path is gone: it says NO_PATH; so this node has none either
        // (it does not believe `down`, whose 2 hops went through this node).
        r.hello(&n("up"), NO_PATH, 0);
        r.hello(&n("down"), NO_PATH, 0);
        assert_eq!(r.own_hops(false), NO_PATH);
    }

    #[test]
    fn heard_nodes_are_dialled_once_backed_off_on_failure_and_forgotten() {
        let mut r = Routes::default();
        r.beacon(&n("x"), addr(1), 3, 0, 0);
        assert_eq!(r.due(0), vec![(n("x"), addr(1))]);
        assert!(r.due(1).is_empty(), "one dial at a time");
        r.dial_done(&n("x"), false, 10, 30_000);
        assert!(r.due(10 + BACKOFF_BASE_MS - 1).is_empty());
        assert_eq!(r.due(10 + BACKOFF_BASE_MS).len(), 1);
        r.dial_done(&n("x"), false, 1000, 30_000);
        assert!(r.due(1000 + 2 * BACKOFF_BASE_MS - 1).is_empty());
        // Heard at a new address: dialled at once.
        r.beacon(&n("x"), addr(2), 3, 0, 1001);
        assert_eq!(r.due(1001), vec![(n("x"), addr(2))]);
        r.dial_done(&n("x"), true, 1002, 30_000);
        r.up(&n("x"));
        assert!(r.due(5000).is_empty(), "up peers are not dialled");
        r.expire(20_000, 6000);
        assert_eq!(r.heard().count(), 0);
    }

    #[test]
    fn the_higher_name_waits_for_the_lower_to_dial() {
        let mut r = Routes::default();
        r.beacon(&n("m"), addr(1), 0, 0, 100);
        assert!(r.to_dial(100, 4, &n("z"), 600).is_empty(), "m dials z");
        assert!(r.to_dial(699, 4, &n("z"), 600).is_empty());
        assert_eq!(
            r.to_dial(700, 4, &n("z"), 600).len(),
            1,
            "m did not: z dials"
        );
        r.dial_done(&n("m"), true, 700, 1000);
        r.up(&n("m"));
        r.beacon(&n("m"), addr(1), 0, 0, 800);
        r.down(&n("m"));
        // Lost again: the grace starts anew from the next beacon heard without a session.
        r.beacon(&n("m"), addr(1), 0, 0, 5000);
        assert!(r.to_dial(5000, 4, &n("z"), 600).is_empty());
        assert_eq!(r.to_dial(5600, 4, &n("z"), 600).len(), 1);
        // The lower name never waits.
        r.beacon(&n("x"), addr(2), 0, 0, 0);
        assert_eq!(r.to_dial(0, 4, &n("b"), 600).len(), 1);
    }

    #[test]
    fn dials_in_flight_are_bounded() {
        let mut r = Routes::default();
        for i in 0..10 {
            r.beacon(&n(&format!("n{i}")), addr(1), 0, 0, 0);
        }
        assert_eq!(r.to_dial(0, 3, &n("a"), 0).len(), 3);
        assert!(r.to_dial(0, 3, &n("a"), 0).is_empty());
        r.dial_done(&n("n0"), false, 0, 1000);
        assert_eq!(r.to_dial(0, 3, &n("a"), 0).len(), 1);
    }

    #[test]
    fn beacons_of_too_many_nodes_are_ignored() {
        let mut r = Routes::default();
        for i in 0..MAX_HEARD + 10 {
            r.beacon(&n(&format!("n{i}")), addr(1), 0, 0, 0);
        }
        assert_eq!(r.heard().count(), MAX_HEARD);
    }

    #[test]
    fn backoff_doubles_up_to_the_max() {
        assert_eq!(backoff_ms(1, 30_000), BACKOFF_BASE_MS);
        assert_eq!(backoff_ms(2, 30_000), 2 * BACKOFF_BASE_MS);
        assert_eq!(backoff_ms(40, 30_000), 30_000);
        assert_eq!(backoff_ms(0, 30_000), BACKOFF_BASE_MS);
    }

    #[test]
    fn both_ends_keep_the_same_session_of_a_crossed_dial() {
        let (a, b) = (n("a"), n("b"));
        // At a: old = a dialled b, new = b dialled a. At b: old = b dialled a (dialled
        // by b), new = a dialled b. Both keep the one a (the lower name) dialled.
        assert!(!keep_new_session(&a, &b, true, false));
        assert!(keep_new_session(&b, &a, true, false));
        assert!(keep_new_session(&a, &b, false, true));
        assert!(!keep_new_session(&b, &a, false, true));
        // Same direction: a reconnection, the newer wins.
        assert!(keep_new_session(&a, &b, true, true));
        assert!(keep_new_session(&a, &b, false, false));
    }
}
