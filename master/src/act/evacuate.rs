//! Which instances leave draining, retiring and lost nodes, how, and when a retiring
//! node is revoked.
//!
//! Contract: [`decide`] is pure; the master runs it every `[failover] check_every_ms`
//! (and `hedge master drain` / `retire` run it once for their node) over the fleet as the
//! store shows it, and carries out what it returns with the store's move primitive and
//! [`crate::revocation`]. Rules, for each instance whose owner's copy (the master's
//! live copy with the highest fence) is on node N:
//! 1. N lost ([`crate::node_state::lost`]) and the instance `move` (its terms carry a
//!    lease): moved *fenced* (destroyed on N at once: N stopped its copy when its lease
//!    lapsed, and learns it moved when it comes back).
//! 2. N retiring and lost: every instance is moved fenced (the operator declared N
//!    gone), whatever its policy.
//! 3. N draining or retiring and not lost: moved with the two-phase handover (N keeps
//!    its copy until the new one runs). An instance already moved (its owner is on
//!    another node) is never moved again by this rule.
//! 4. Otherwise (N schedulable and heard from; N lost and the instance `wait`; N
//!    retired): nothing. A lost draining node's `wait` instances wait for it: N still
//!    runs them offline, and a second copy elsewhere is what fencing must prevent.
//!
//! A retiring node is revoked ([`Act::Revoke`]) when it is lost (after its moves above,
//! which leave it nothing), or when its state holds no live copy and it reported every
//! copy it held destroyed (so nothing keeps running on a node that, revoked, can no
//! longer hear it should stop).

use hedge_wire::Name;

use crate::node_state::NodeState;

pub mod driver;

/// A node, as [`decide`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    /// The node.
    pub node: Name,
    /// What the operator set.
    pub state: NodeState,
    /// Whether it is lost now.
    pub lost: bool,
}

/// One copy of an instance in a node's desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyFacts {
    /// The instance.
    pub instance: Name,
    /// The node whose desired state holds it.
    pub node: Name,
    /// Not requested `destroyed`.
    pub live: bool,
    /// It is the instance's owner copy (live, highest fence).
    pub owner: bool,
    /// Its terms' lease (0: policy `wait`).
    pub lease_ms: u32,
    /// The node reported it destroyed.
    pub reported_destroyed: bool,
}

/// Why an instance leaves its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Its node is lost and its policy is `move`.
    Lost,
    /// Its node is being drained.
    Draining,
    /// Its node is being retired.
    Retiring,
    /// Its node is being retired and is lost.
    RetiringLost,
}

/// What the master does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Act {
    /// Move `instance` off `from` (allocation picks the node); `fenced`: destroy the old
    /// copy at once, else after the new copy runs.
    Move {
        /// The instance.
        instance: Name,
        /// The node it leaves.
        from: Name,
        /// Destroyed on `from` at once.
        fenced: bool,
        /// Why.
        why: Why,
    },
    /// Revoke a retiring node.
    Revoke {
        /// The node.
        node: Name,
        /// It was lost (else: empty).
        lost: bool,
    },
}

/// What to do about `nodes` given every copy the desired states hold. See the module
/// doc. Moves come first (by instance), then revocations (by node).
pub fn decide(nodes: &[NodeFacts], copies: &[CopyFacts]) -> Vec<Act> {
    let facts = |n: &Name| nodes.iter().find(|f| &f.node == n);
    let mut moves: Vec<Act> = Vec::new();
    for c in copies.iter().filter(|c| c.owner && c.live) {
        let Some(n) = facts(&c.node) else { continue };
        let leased = c.lease_ms > 0;
        let act = match (n.state, n.lost) {
            (NodeState::Retired, _) => None,
            (NodeState::Retiring, true) => Some((true, Why::RetiringLost)),
            (_, true) if leased => Some((true, Why::Lost)),
            (_, true) => None,
            (NodeState::Draining, false) => Some((false, Why::Draining)),
            (NodeState::Retiring, false) => Some((false, Why::Retiring)),
            (NodeState::Schedulable, false) => None,
        };
        if let Some((fenced, why)) = act {
            moves.push(Act::Move {
                instance: c.instance.clone(),
                from: c.node.clone(),
                fenced,
                why,
            });
        }
    }
    moves.sort_by(|a, b| match (a, b) {
        (Act::Move { instance: x, .. }, Act::Move { instance: y, .. }) => x.cmp(y),
        _ => std::cmp::Ordering::Equal,
    });
    for n in nodes.iter().filter(|n| n.state == NodeState::Retiring) {
        let mine = copies.iter().filter(|c| c.node == n.node);
        let empty = mine.clone().all(|c| !c.live && c.reported_destroyed);
        if n.lost || empty {
            moves.push(Act::Revoke {
                node: n.node.clone(),
                lost: n.lost,
            });
        }
    }
    moves
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Why::Lost => "node lost, policy move",
            Why::Draining => "node draining",
            Why::Retiring => "node retiring",
            Why::RetiringLost => "node retiring and lost",
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn n(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    fn node(name: &str, state: NodeState, lost: bool) -> NodeFacts {
        NodeFacts {
            node: n(name),
            state,
            lost,
        }
    }

    fn copy(instance: &str, on: &str, lease_ms: u32) -> CopyFacts {
        CopyFacts {
            instance: n(instance),
            node: n(on),
            live: true,
            owner: true,
            lease_ms,
            reported_destroyed: false,
        }
    }

    fn mv(instance: &str, from: &str, fenced: bool, why: Why) -> Act {
        Act::Move {
            instance: n(instance),
            from: n(from),
            fenced,
            why,
        }
    }

    #[test]
    fn lost_nodes_move_only_leased_instances_fenced() {
        let nodes = [
            node("a", NodeState::Schedulable, true),
            node("b", NodeState::Schedulable, false),
        ];
        let copies = [
            copy("db", "a", 0),
            copy("web", "a", 4000),
            copy("api", "b", 4000),
        ];
        assert_eq!(
            decide(&nodes, &copies),
            vec![mv("web", "a", true, Why::Lost)]
        );
    }

    #[test]
    fn draining_moves_everything_two_phase_once() {
        let nodes = [
            node("a", NodeState::Draining, false),
            node("b", NodeState::Schedulable, false),
        ];
        let mut copies = vec![copy("db", "a", 0), copy("web", "a", 4000)];
        assert_eq!(
            decide(&nodes, &copies),
            vec![
                mv("db", "a", false, Why::Draining),
                mv("web", "a", false, Why::Draining)
            ]
        );
        // Moved: the owner is on b now, a's copy is stale until the handover.
        copies[0].owner = false;
        copies.push(copy("db", "b", 0));
        assert_eq!(
            decide(&nodes, &copies),
            vec![mv("web", "a", false, Why::Draining)]
        );
    }

    #[test]
    fn a_lost_draining_node_keeps_its_wait_instances() {
        let nodes = [node("a", NodeState::Draining, true)];
        let copies = [copy("db", "a", 0), copy("web", "a", 4000)];
        assert_eq!(
            decide(&nodes, &copies),
            vec![mv("web", "a", true, Why::Lost)]
        );
    }

    #[test]
    fn retiring_revokes_once_empty_or_at_once_when_lost() {
        let nodes = [node("a", NodeState::Retiring, false)];
        let mut copies = vec![copy("db", "a", 0)];
        assert_eq!(
            decide(&nodes, &copies),
            vec![mv("db", "a", false, Why::Retiring)]
        );
        // Moved and handed over: destroyed on a, not yet reported.
        copies[0].owner = false;
        copies[0].live = false;
        assert_eq!(decide(&nodes, &copies), vec![]);
        copies[0].reported_destroyed = true;
        let revoke = Act::Revoke {
            node: n("a"),
            lost: false,
        };
        assert_eq!(decide(&nodes, &copies), vec![revoke.clone()]);
        // Nothing at all: revoked too.
        assert_eq!(decide(&nodes, &[]), vec![revoke]);

        let lost = [node("a", NodeState::Retiring, true)];
        assert_eq!(
            decide(&lost, &[copy("db", "a", 0)]),
            vec![
                mv("db", "a", true, Why::RetiringLost),
                Act::Revoke {
                    node: n("a"),
                    lost: true
                }
            ]
        );
    }

    #[test]
    fn schedulable_and_retired_nodes_are_left_alone() {
        let nodes = [
            node("a", NodeState::Schedulable, false),
            node("r", NodeState::Retired, true),
        ];
        let copies = [copy("db", "a", 4000), copy("web", "r", 4000)];
        assert_eq!(decide(&nodes, &copies), vec![]);
    }
}
