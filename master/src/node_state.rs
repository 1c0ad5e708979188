//! A node's state in the fleet: what the operator set (schedulable, draining, retiring,
//! retired) and what the master derives from silence (lost).
//!
//! Contract (pure, no I/O, no clock: time comes in as arguments):
//! - [`NodeState`] is the operator's, stored by [`crate::store::FleetStore::update_node_state`]
//!   and changed only through [`NodeState::apply`]: `drain` makes a schedulable node
//!   draining, `retire` makes a schedulable or draining node retiring (a drain that ends in
//!   revocation), `undrain` makes a draining or retiring node schedulable again, and
//!   `retired` is what a retiring node becomes once it is revoked. Retired is final: every
//!   operation on a retired node but `retire` (a no-op) is refused
//!   ([`NodeStateError::Retired`]). Each operation is idempotent.
//! - Allocation places new instances only on schedulable nodes ([`NodeState::schedulable`]);
//!   nothing is placed on a draining, retiring or retired node, not even when named.
//! - [`lost`] is derived, never stored: a node is lost once nothing arrived from it for
//!   longer than `lost_after_ms`, counted from its last batch or from when the master
//!   began listening, whichever is later (so a master that was itself down or cut off
//!   from the broker does not declare the whole fleet lost when it comes back). A node
//!   never heard from is not lost: it never ran anything. [`Condition`] is what `hedge
//!   master nodes` shows: the operator's state, or `lost` for a silent node that is
//!   schedulable or draining.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What the operator set for a node. See the module doc.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// New instances may be placed on it (the default).
    #[default]
    Schedulable,
    /// Its instances are moved away; nothing new is placed on it.
    Draining,
    /// Draining, then revoked once empty (at once if lost).
    Retiring,
    /// Revoked. Final.
    Retired,
}

/// An operator's operation on a node's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeOp {
    /// `hedge master drain NODE`.
    Drain,
    /// `hedge master undrain NODE`.
    Undrain,
    /// `hedge master retire NODE`.
    Retire,
    /// The retirement completed: the node was revoked.
    Revoked,
}

/// A refused change of a node's state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeStateError {
    /// Retired is final.
    #[error("node {node} is retired: it cannot be {op}")]
    Retired {
        /// The node.
        node: String,
        /// What was asked (`drained`, `undrained`).
        op: &'static str,
    },
    /// Only a retiring node becomes retired.
    #[error("node {node} is {state}, not retiring: it cannot be marked retired")]
    NotRetiring {
        /// The node.
        node: String,
        /// Its state.
        state: NodeState,
    },
    /// A stored state is not one of the known names.
    #[error("unknown node state {0:?}")]
    Unknown(String),
}

impl NodeState {
    /// Whether allocation may place new instances on it.
    pub fn schedulable(self) -> bool {
        self == NodeState::Schedulable
    }

    /// Whether its instances are to be moved away.
    pub fn draining(self) -> bool {
        matches!(self, NodeState::Draining | NodeState::Retiring)
    }

    /// The state after `op` on a node named `node` in this state. See the module doc.
    pub fn apply(self, op: NodeOp, node: &str) -> Result<NodeState, NodeStateError> {
        use NodeState as S;
        let retired = |op| NodeStateError::Retired {
            node: node.to_owned(),
            op,
        };
        Ok(match (self, op) {
            (S::Retired, NodeOp::Retire | NodeOp::Revoked) => S::Retired,
            (S::Retired, NodeOp::Drain) => return Err(retired("drained")),
            (S::Retired, NodeOp::Undrain) => return Err(retired("undrained")),
            (S::Schedulable | S::Draining, NodeOp::Drain) => S::Draining,
            (S::Retiring, NodeOp::Drain) => S::Retiring,
            (_, NodeOp::Undrain) => S::Schedulable,
            (_, NodeOp::Retire) => S::Retiring,
            (S::Retiring, NodeOp::Revoked) => S::Retired,
            (state, NodeOp::Revoked) => {
                return Err(NodeStateError::NotRetiring {
                    node: node.to_owned(),
                    state,
                })
            }
        })
    }

    /// Its stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Schedulable => "schedulable",
            NodeState::Draining => "draining",
            NodeState::Retiring => "retiring",
            NodeState::Retired => "retired",
        }
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NodeState {
    type Err = NodeStateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "schedulable" => NodeState::Schedulable,
            "draining" => NodeState::Draining,
            "retiring" => NodeState::Retiring,
            "retired" => NodeState::Retired,
            other => return Err(NodeStateError::Unknown(other.to_owned())),
        })
    }
}

/// Whether a node last heard from at `last_seen_ms` (`None`: never) is lost at `now_ms`,
/// the master having listened since `listening_since_ms` (0 when unknown, e.g. a CLI
/// view). See the module doc.
pub fn lost(
    last_seen_ms: Option<u64>,
    now_ms: u64,
    lost_after_ms: u64,
    listening_since_ms: u64,
) -> bool {
    last_seen_ms
        .is_some_and(|seen| now_ms.saturating_sub(seen.max(listening_since_ms)) > lost_after_ms)
}

/// What `hedge master nodes` shows of a node's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// Schedulable and heard from.
    Schedulable,
    /// Draining (its instances are moved away).
    Draining,
    /// Draining, then revoked.
    Retiring,
    /// Silent for longer than `lost_after_ms`.
    Lost,
    /// Revoked.
    Retired,
}

/// The condition of a node in `state`, silent as [`lost`] judges. A retired node is
/// retired however silent; a lost draining or retiring node shows lost.
pub fn condition(state: NodeState, lost: bool) -> Condition {
    match (state, lost) {
        (NodeState::Retired, _) => Condition::Retired,
        (_, true) => Condition::Lost,
        (NodeState::Schedulable, false) => Condition::Schedulable,
        (NodeState::Draining, false) => Condition::Draining,
        (NodeState::Retiring, false) => Condition::Retiring,
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Condition::Schedulable => "schedulable",
            Condition::Draining => "draining",
            Condition::Retiring => "retiring",
            Condition::Lost => "lost",
            Condition::Retired => "retired",
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn transitions_and_retired_is_final() {
        use NodeOp::*;
        use NodeState::*;
        assert_eq!(Schedulable.apply(Drain, "a").unwrap(), Draining);
        assert_eq!(Draining.apply(Drain, "a").unwrap(), Draining);
        assert_eq!(Draining.apply(Undrain, "a").unwrap(), Schedulable);
        assert_eq!(Schedulable.apply(Undrain, "a").unwrap(), Schedulable);
        assert_eq!(Draining.apply(Retire, "a").unwrap(), Retiring);
        assert_eq!(Retiring.apply(Drain, "a").unwrap(), Retiring);
        assert_eq!(Retiring.apply(Undrain, "a").unwrap(), Schedulable);
        assert_eq!(Retiring.apply(Revoked, "a").unwrap(), Retired);
        assert_eq!(Retired.apply(Retire, "a").unwrap(), Retired);
        assert_eq!(Retired.apply(Revoked, "a").unwrap(), Retired);
        assert!(matches!(
            Retired.apply(Undrain, "a"),
            Err(NodeStateError::Retired {
                op: "undrained",
                ..
            })
        ));
        assert!(matches!(
            Retired.apply(Drain, "a"),
            Err(NodeStateError::Retired { .. })
        ));
        assert!(matches!(
            Draining.apply(Revoked, "a"),
            Err(NodeStateError::NotRetiring { .. })
        ));
        for s in [Schedulable, Draining, Retiring, Retired] {
            assert_eq!(s.as_str().parse::<NodeState>().unwrap(), s);
            assert_eq!(s.schedulable(), s == Schedulable);
        }
        assert!("gone".parse::<NodeState>().is_err());
    }

    #[test]
    fn lost_counts_silence_from_the_later_of_last_batch_and_listening() {
        let after = 10_000;
        assert!(
            !lost(None, 1_000_000, after, 0),
            "never heard from: not lost"
        );
        assert!(
            !lost(Some(100_000), 110_000, after, 0),
            "exactly lost_after: not yet"
        );
        assert!(lost(Some(100_000), 110_001, after, 0));
        // The master listened only from 105 000: the silence before does not count.
        assert!(!lost(Some(100_000), 110_001, after, 105_000));
        assert!(lost(Some(100_000), 115_001, after, 105_000));
        // A clock that went back never makes a node lost.
        assert!(!lost(Some(200_000), 100_000, after, 0));
    }

    #[test]
    fn condition_shows_lost_over_draining_and_retired_over_lost() {
        assert_eq!(
            condition(NodeState::Schedulable, false),
            Condition::Schedulable
        );
        assert_eq!(condition(NodeState::Schedulable, true), Condition::Lost);
        assert_eq!(condition(NodeState::Draining, true), Condition::Lost);
        assert_eq!(condition(NodeState::Retiring, false), Condition::Retiring);
        assert_eq!(condition(NodeState::Retired, true), Condition::Retired);
        assert_eq!(Condition::Lost.to_string(), "lost");
    }
}
