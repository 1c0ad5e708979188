//! Held-over instances: a desired state from a new master epoch never destroys by
//! omission.
//!
//! A master recovered from an older backup (`hedge master recover`) raises its epoch,
//! the high 32 bits of every generation (`hedge_wire::DesiredState::generation`), so
//! the node accepts its states; but its store knows nothing requested after the
//! backup, and the states it signs leave those instances out. Reconcile destroys an
//! instance absent from the desired set (`crate::reconcile`), so without this rule the
//! partitions of every instance requested after the backup would be lost.
//!
//! Contract (pure: no I/O, no clock): [`next`] takes the previously applied state, the
//! state being applied and the current held-over set, and returns the new held-over
//! set (and what changed, for the report):
//! - When the new state's epoch is higher than the previous state's, every instance
//!   the previous state named (not requested `destroyed`) that the new one does not
//!   name is *held over*: it stays in the desired set with the previous state's
//!   request. A request whose placement had a lease (`InstanceTerms::lease_ms > 0`)
//!   is held over *stopped*: a lease of the old life cannot be renewed (the new
//!   master does not know the instance, and may place it elsewhere), and a leased
//!   copy runs only while it holds one; its partition is kept all the same. The held
//!   request carries no terms: the node reports no fence for it.
//! - A held-over instance stays held over through every later state, of the same or
//!   a higher epoch, that does not name it.
//! - The first later state that names it releases it: the master's request wins,
//!   `destroyed` included (which destroys it).
//! - Within one epoch nothing is held over: a state that omits an instance its
//!   predecessor named destroys it, as the reconcile contract says.
//!
//! The daemon (`daemon::desired`) stores the set with the applied state in one atomic
//! write, merges it into the desired set after the master's instances and local
//! requests, and reports newly held-over instances once (the `Desired` record's
//! reason); `hedge node status` marks them. A local request for the name (`hedge node
//! request`, or `destroy`/`stop`/`start NAME`) takes a held-over instance over as a
//! local one.

use std::collections::BTreeMap;

use hedge_wire::{DesiredState, InstanceRequest, Name, RequestedState};

/// Held-over instances, by name, with the request they keep running under.
pub type HeldOver = BTreeMap<Name, InstanceRequest>;

/// The held-over set after applying a state, and what changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    /// The new held-over set.
    pub held: HeldOver,
    /// Instances held over by this state (not held before).
    pub added: Vec<Name>,
    /// Instances this state names that were held over: the master's request wins.
    pub released: Vec<Name>,
}

/// The epoch of a generation: its high 32 bits.
pub fn epoch_of(generation: u64) -> u32 {
    u32::try_from(generation >> 32).unwrap_or(u32::MAX)
}

/// The held-over set once `new` is applied over `previous` (`None`: the node applied
/// no state before), given the `current` held-over set.
pub fn next(previous: Option<&DesiredState>, new: &DesiredState, current: &HeldOver) -> Change {
    let named = |n: &Name| new.instances.iter().any(|r| &r.name == n);
    let mut change = Change::default();
    for (name, request) in current {
        if named(name) {
            change.released.push(name.clone());
        } else {
            change.held.insert(name.clone(), request.clone());
        }
    }
    let Some(prev) = previous else {
        return change;
    };
    if epoch_of(new.generation) <= epoch_of(prev.generation) {
        return change;
    }
    for r in &prev.instances {
        if r.state == RequestedState::Destroyed
            || named(&r.name)
            || change.held.contains_key(&r.name)
        {
            continue;
        }
        let leased = prev
            .terms
            .iter()
            .any(|t| t.instance == r.name && t.lease_ms > 0);
        let mut held = r.clone();
        if leased {
            held.state = RequestedState::Stopped;
        }
        change.added.push(r.name.clone());
        change.held.insert(r.name.clone(), held);
    }
    change
}

/// The `Desired` record's reason for a state that held instances over (empty when it
/// held none over).
pub fn reason(change: &Change) -> String {
    if change.added.is_empty() {
        return String::new();
    }
    let names: Vec<&str> = change.added.iter().map(Name::as_str).collect();
    format!(
        "held over (a new master epoch left them out; kept until the master names them): {}",
        names.join(", ")
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use hedge_wire::InstanceTerms;

    use super::*;
    use crate::reconcile::tests::req;

    const E1: u64 = 1 << 32;
    const E2: u64 = 2 << 32;

    fn state(generation: u64, instances: Vec<InstanceRequest>) -> DesiredState {
        DesiredState {
            node: Name::new("n1").unwrap(),
            generation,
            instances,
            signature: heapless::Vec::new(),
            expires_ms: 0,
            terms: vec![],
            imports: vec![],
            backups: Vec::new(),
            restores: Vec::new(),
        }
    }

    fn names(h: &HeldOver) -> Vec<&str> {
        h.keys().map(Name::as_str).collect()
    }

    fn n(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    #[test]
    fn a_new_epoch_holds_over_what_it_leaves_out() {
        let prev = state(
            E1 | 7,
            vec![
                req("a", RequestedState::Started),
                req("b", RequestedState::Started),
                req("s", RequestedState::Stopped),
            ],
        );
        let new = state(
            E2 | 1,
            vec![
                req("a", RequestedState::Started),
                req("c", RequestedState::Started),
            ],
        );
        let c = next(Some(&prev), &new, &HeldOver::new());
        assert_eq!(names(&c.held), ["b", "s"]);
        assert_eq!(c.added, [n("b"), n("s")]);
        assert!(c.released.is_empty());
        // Exactly as the previous state requested it.
        assert_eq!(c.held[&n("b")], req("b", RequestedState::Started));
        assert_eq!(c.held[&n("s")], req("s", RequestedState::Stopped));
        assert!(reason(&c).ends_with(": b, s"), "{}", reason(&c));
    }

    #[test]
    fn within_an_epoch_an_omission_still_destroys() {
        let prev = state(E1 | 7, vec![req("b", RequestedState::Started)]);
        let new = state(E1 | 8, vec![]);
        let c = next(Some(&prev), &new, &HeldOver::new());
        assert!(c.held.is_empty() && c.added.is_empty());
        assert_eq!(reason(&c), "");
        // Epoch 0 to epoch 0 likewise; and a first state holds nothing over.
        let c = next(
            Some(&state(3, vec![req("b", RequestedState::Started)])),
            &state(4, vec![]),
            &HeldOver::new(),
        );
        assert!(c.held.is_empty());
        assert!(next(None, &state(E2 | 1, vec![]), &HeldOver::new())
            .held
            .is_empty());
    }

    #[test]
    fn a_held_over_instance_stays_until_the_master_names_it() {
        let prev = state(5, vec![req("b", RequestedState::Started)]);
        let first = state(E2 | 1, vec![req("c", RequestedState::Started)]);
        let held = next(Some(&prev), &first, &HeldOver::new()).held;
        // A later state of the same new epoch that still omits it: still held, not
        // reported again.
        let second = state(
            E2 | 2,
            vec![
                req("c", RequestedState::Started),
                req("d", RequestedState::Started),
            ],
        );
        let c = next(Some(&first), &second, &held);
        assert_eq!(names(&c.held), ["b"]);
        assert!(c.added.is_empty() && c.released.is_empty());
        // Then the master names it (here: destroyed): released, the master's wins.
        let third = state(E2 | 3, vec![req("b", RequestedState::Destroyed)]);
        let c = next(Some(&second), &third, &c.held);
        assert!(c.held.is_empty());
        assert_eq!(c.released, [n("b")]);
        // And the instances `second` named but `third` omits are destroyed (same epoch).
        assert!(c.added.is_empty());
    }

    #[test]
    fn another_epoch_keeps_what_is_held_and_adds_what_it_omits() {
        let held: HeldOver = [(n("b"), req("b", RequestedState::Started))].into();
        let prev = state(E1 | 2, vec![req("c", RequestedState::Started)]);
        let new = state(E2 | 1, vec![]);
        let c = next(Some(&prev), &new, &held);
        assert_eq!(names(&c.held), ["b", "c"]);
        assert_eq!(c.added, [n("c")]);
    }

    #[test]
    fn destroyed_requests_are_not_held_over() {
        let prev = state(E1 | 2, vec![req("gone", RequestedState::Destroyed)]);
        let c = next(Some(&prev), &state(E2 | 1, vec![]), &HeldOver::new());
        assert!(c.held.is_empty());
    }

    #[test]
    fn a_leased_request_is_held_over_stopped() {
        let mut prev = state(
            E1 | 2,
            vec![
                req("leased", RequestedState::Started),
                req("free", RequestedState::Started),
            ],
        );
        prev.terms = vec![
            InstanceTerms {
                instance: n("leased"),
                fence: 3,
                lease_ms: 30_000,
            },
            InstanceTerms {
                instance: n("free"),
                fence: 1,
                lease_ms: 0,
            },
        ];
        let c = next(Some(&prev), &state(E2 | 1, vec![]), &HeldOver::new());
        assert_eq!(c.held[&n("leased")].state, RequestedState::Stopped);
        assert_eq!(c.held[&n("free")].state, RequestedState::Started);
    }
}
