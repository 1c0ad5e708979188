//! Which records come from a stale copy: the backend-agnostic rule ingest applies.
//!
//! Contract (pure): a record a node sends about an instance the master placed is made
//! under the fence of the latest `Fence` record that node sent about that instance
//! before it, in its seq order within one life ([`hedge_wire::RecordKind::Fence`]). It
//! is *stale* ([`stale`]) when the instance's current placement (its copy with the
//! highest fence, which the store's `fences` hold) is on another node, or on this node
//! under a higher fence than the node's records were made under. Only records a copy
//! makes about itself are judged ([`judged`]): instance states (but a report that the
//! copy is destroyed, which is how a stale copy's end is seen), promise results, usage,
//! incidents and connection parameters; not the `Fence` records themselves, not local
//! requests, not records about instances the master never placed. A node whose records
//! about an instance carry no `Fence` yet (a node before wire v4, or the first records
//! of a copy) is judged by ownership alone. A stale record is stored like any other
//! (nothing is lost; usage still bills) and counted, but never folded into the live
//! instance view. A `Fence` record from the current owner at or above the current fence
//! ([`clears`]) makes the records that follow it live again, whatever order they arrived
//! in (an express record may overtake its `Fence`).

use hedge_wire::{InstanceStatus, Name, RecordKind};

/// The instance `kind` is judged about, if it is judged at all.
pub fn judged(kind: &RecordKind) -> Option<&Name> {
    match kind {
        RecordKind::InstanceState {
            status: InstanceStatus::Destroyed,
            ..
        } => None,
        RecordKind::InstanceState { instance, .. }
        | RecordKind::PromiseResult { instance, .. }
        | RecordKind::Usage { instance, .. }
        | RecordKind::Incident { instance, .. }
        | RecordKind::ConnectionParameters { instance, .. } => Some(instance),
        _ => None,
    }
}

/// Whether a judged record from `from` is stale, the instance's current placement being
/// `owner` (node, fence; `None`: the master never placed it) and `from`'s fence for it at
/// that record `node_fence` (`None`: no `Fence` record before it).
pub fn stale(from: &Name, owner: Option<(&Name, u64)>, node_fence: Option<u64>) -> bool {
    match owner {
        None => false,
        Some((node, fence)) => from != node || node_fence.is_some_and(|f| f < fence),
    }
}

/// Whether a `Fence` record under `fence` from `from` makes the records that follow it
/// live: `from` holds the current placement at that fence or above.
pub fn clears(from: &Name, owner: Option<(&Name, u64)>, fence: u64) -> bool {
    owner.is_some_and(|(node, current)| from == node && fence >= current)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn n(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    #[test]
    fn the_rule() {
        let (a, b) = (n("a"), n("b"));
        assert!(!stale(&a, None, None), "not placed by the master");
        assert!(
            !stale(&a, Some((&a, 2)), None),
            "no Fence yet: ownership only"
        );
        assert!(!stale(&a, Some((&a, 2)), Some(2)));
        assert!(!stale(&a, Some((&a, 2)), Some(3)));
        assert!(stale(&a, Some((&a, 2)), Some(1)), "an older fence");
        assert!(
            stale(&a, Some((&b, 2)), Some(2)),
            "another node's placement"
        );
        assert!(stale(&a, Some((&b, 2)), None));
        assert!(clears(&a, Some((&a, 2)), 2));
        assert!(!clears(&a, Some((&a, 2)), 1));
        assert!(!clears(&a, Some((&b, 2)), 5));
        assert!(!clears(&a, None, 5));
        let destroyed = RecordKind::InstanceState {
            instance: a.clone(),
            status: InstanceStatus::Destroyed,
            pid: None,
            restarts: 0,
            last_exit: None,
        };
        assert_eq!(judged(&destroyed), None);
        let running = RecordKind::InstanceState {
            instance: a.clone(),
            status: InstanceStatus::Running,
            pid: Some(1),
            restarts: 0,
            last_exit: None,
        };
        assert_eq!(judged(&running), Some(&a));
        let fence = RecordKind::Fence {
            instance: a,
            fence: 1,
            holding: true,
        };
        assert_eq!(judged(&fence), None);
    }
}
