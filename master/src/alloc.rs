//! Allocation: which node gets a new instance.
//!
//! Contract: [`pick`] is pure; [`crate::store::FleetStore::place`] calls it with the
//! fleet as its write transaction sees it and the clock, and stores the instance in that
//! same transaction, so concurrent requests never over-fill a node. Rules, in order:
//!
//! 1. An explicit [`Placement::node`] wins if the node is known and schedulable,
//!    whatever its capacity, criteria or silence (the operator decided); unknown:
//!    [`AllocError::NoSuchNode`]; draining, retiring or retired:
//!    [`AllocError::Unschedulable`].
//! 2. Otherwise a candidate must match `arch` (the node's target triple, e.g.
//!    `aarch64-unknown-linux-gnu`, or its first part, `aarch64`) and `region` exactly
//!    (when asked), carry every requested label with the same value, and have free
//!    capacity (`capacity_instances > allocated_instances`). Region and labels are the
//!    operator-assigned ones ([`NodeSummary::labels`], [`NodeSummary::region`]); what a
//!    node reports about itself (`reported_*`) is never matched, since a stolen or
//!    misconfigured node could claim a region (a legal criterion) to attract workloads.
//!    Arch and capacity are the node's report (capacity capped by the operator's
//!    `max_instances` when assigned): a lie there can only misplace work onto itself.
//!    It must be schedulable ([`crate::node_state::NodeState::schedulable`]: not
//!    draining, retiring nor retired) and, when [`Placement::lost_after_ms`] is given,
//!    not lost ([`crate::node_state::lost`]: silent for longer than that).
//! 3. Among candidates, nodes seen within `stale_after_ms` of `now_ms` come first;
//!    then the least loaded (`allocated / capacity`, compared exactly); then by name.
//!
//! When nothing fits, [`AllocError::NoCandidate`] lists why each node was passed over.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use hedge_wire::Name;
use serde::{Deserialize, Serialize};

use crate::node_state::{lost, NodeState};
use crate::store::NodeSummary;

/// Where an instance may go.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    /// This node, and no other.
    #[serde(default)]
    pub node: Option<Name>,
    /// Labels the node must carry, with these values.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Architecture the node must have (e.g. `aarch64`).
    #[serde(default)]
    pub arch: Option<String>,
    /// Region the node must be in.
    #[serde(default)]
    pub region: Option<String>,
    /// A node silent for longer is lost and passed over (master.toml's `[failover]
    /// lost_after_ms`, set by `hedge master request` and the master's moves).
    #[serde(default)]
    pub lost_after_ms: Option<u64>,
    /// The lease the instance's terms carry: its `--on-lost` policy
    /// ([`crate::failover::lease_for`]; 0: `wait`). `None` keeps the instance's current
    /// one (0 for a new name). Not a criterion: allocation ignores it.
    #[serde(default)]
    pub lease_ms: Option<u32>,
}

/// Why one node was passed over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mismatch {
    /// Different or unknown architecture.
    Arch {
        /// Asked for.
        want: String,
        /// The node's registered value; `None` when it reported none.
        have: Option<String>,
    },
    /// Different or unknown region.
    Region {
        /// Asked for.
        want: String,
        /// The node's registered value; `None` when it reported none.
        have: Option<String>,
    },
    /// A label is missing or has another value.
    Label {
        /// Label key.
        key: String,
        /// Asked for.
        want: String,
        /// The node's value for the label; `None` when the label is absent.
        have: Option<String>,
    },
    /// Draining, retiring or retired.
    State(NodeState),
    /// Silent for longer than `lost_after_ms`.
    Lost {
        /// How long it has been silent, ms.
        silent_ms: u64,
    },
    /// No free capacity.
    Full {
        /// Instances allocated.
        allocated: u32,
        /// The node's instance slots (`max_instances` as it registered).
        capacity: u32,
    },
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let have = |h: &Option<String>| h.clone().unwrap_or_else(|| "unset".into());
        match self {
            Mismatch::Arch { want, have: h } => write!(f, "arch is {}, want {want}", have(h)),
            Mismatch::Region { want, have: h } => {
                write!(f, "region is {}, want {want}", have(h))
            }
            Mismatch::Label { key, want, have: h } => {
                write!(f, "label {key} is {}, want {want}", have(h))
            }
            Mismatch::Full {
                allocated,
                capacity,
            } => write!(f, "full ({allocated}/{capacity} instances)"),
            Mismatch::State(s) => write!(f, "{s}"),
            Mismatch::Lost { silent_ms } => write!(f, "lost (silent for {silent_ms} ms)"),
        }
    }
}

/// One node and why it was passed over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// The node passed over.
    pub node: Name,
    /// Every criterion it failed.
    pub mismatches: Vec<Mismatch>,
}

fn describe(reasons: &[Rejection]) -> String {
    if reasons.is_empty() {
        return "no node is registered".into();
    }
    reasons
        .iter()
        .map(|r| {
            let why: Vec<String> = r.mismatches.iter().map(ToString::to_string).collect();
            format!("{}: {}", r.node, why.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Errors of allocation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// The requested node is not in the fleet.
    #[error("no node named {0}")]
    NoSuchNode(Name),
    /// The requested node is draining, retiring or retired.
    #[error("node {node} is {state}: nothing new is placed on it")]
    Unschedulable {
        /// The node named.
        node: Name,
        /// Its state.
        state: NodeState,
    },
    /// No node fits the placement.
    #[error("no node fits: {}", describe(.reasons))]
    NoCandidate {
        /// Why each node was passed over (empty: the fleet is empty).
        reasons: Vec<Rejection>,
    },
}

/// [`Mismatch::Lost`] when `req` names a `lost_after_ms` and `node` has been silent
/// for longer at `now_ms`.
fn silence(node: &NodeSummary, req: &Placement, now_ms: u64) -> Option<Mismatch> {
    let (after, seen) = (req.lost_after_ms?, node.last_seen_ms?);
    lost(Some(seen), now_ms, after, 0).then(|| Mismatch::Lost {
        silent_ms: now_ms.saturating_sub(seen),
    })
}

/// Every criterion of `req` (its node aside) that `node` fails, capacity included;
/// empty when it fits.
pub fn mismatches(node: &NodeSummary, req: &Placement) -> Vec<Mismatch> {
    let mut out = Vec::new();
    if !node.state.schedulable() {
        out.push(Mismatch::State(node.state));
    }
    if let Some(want) = &req.arch {
        let fits = node
            .arch
            .as_deref()
            .is_some_and(|have| have == want || have.split('-').next() == Some(want.as_str()));
        if !fits {
            out.push(Mismatch::Arch {
                want: want.clone(),
                have: node.arch.clone(),
            });
        }
    }
    if let Some(want) = &req.region {
        if node.region.as_ref() != Some(want) {
            out.push(Mismatch::Region {
                want: want.clone(),
                have: node.region.clone(),
            });
        }
    }
    for (key, want) in &req.labels {
        let have = node.labels.get(key);
        if have != Some(want) {
            out.push(Mismatch::Label {
                key: key.clone(),
                want: want.clone(),
                have: have.cloned(),
            });
        }
    }
    if node.allocated_instances >= node.capacity_instances {
        out.push(Mismatch::Full {
            allocated: node.allocated_instances,
            capacity: node.capacity_instances,
        });
    }
    out
}

fn fresh(node: &NodeSummary, now_ms: u64, stale_after_ms: u64) -> bool {
    node.last_seen_ms
        .is_some_and(|seen| now_ms.saturating_sub(seen) <= stale_after_ms)
}

/// `a` before `b` if less loaded: `a.alloc / a.cap < b.alloc / b.cap`, exactly.
/// Capacity is never 0 here (such a node is full).
fn by_load(a: &NodeSummary, b: &NodeSummary) -> Ordering {
    let lhs = u64::from(a.allocated_instances) * u64::from(b.capacity_instances);
    let rhs = u64::from(b.allocated_instances) * u64::from(a.capacity_instances);
    lhs.cmp(&rhs)
}

/// Picks the node for a new instance. See the module doc.
pub fn pick(
    nodes: &[NodeSummary],
    req: &Placement,
    now_ms: u64,
    stale_after_ms: u64,
) -> Result<Name, AllocError> {
    if let Some(want) = &req.node {
        let n = nodes
            .iter()
            .find(|n| &n.node == want)
            .ok_or_else(|| AllocError::NoSuchNode(want.clone()))?;
        if !n.state.schedulable() {
            return Err(AllocError::Unschedulable {
                node: n.node.clone(),
                state: n.state,
            });
        }
        return Ok(n.node.clone());
    }
    let mut reasons = Vec::new();
    let mut candidates = Vec::new();
    for node in nodes {
        let mut m = mismatches(node, req);
        m.extend(silence(node, req, now_ms));
        if m.is_empty() {
            candidates.push(node);
        } else {
            reasons.push(Rejection {
                node: node.node.clone(),
                mismatches: m,
            });
        }
    }
    candidates
        .into_iter()
        .min_by(|a, b| {
            fresh(b, now_ms, stale_after_ms)
                .cmp(&fresh(a, now_ms, stale_after_ms))
                .then_with(|| by_load(a, b))
                .then_with(|| a.node.cmp(&b.node))
        })
        .map(|n| n.node.clone())
        .ok_or(AllocError::NoCandidate { reasons })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn node(name: &str, arch: &str, allocated: u32, capacity: u32, seen: u64) -> NodeSummary {
        NodeSummary {
            node: Name::new(name).unwrap(),
            first_seen_ms: Some(0),
            last_seen_ms: Some(seen),
            records: 0,
            last_seq: 0,
            acked_upto: 0,
            lives: 1,
            repeats: 0,
            conflicts: 0,
            stale: 0,
            board: None,
            arch: Some(arch.into()),
            labels: BTreeMap::from([("site".into(), "lab".into())]),
            region: Some("eu".into()),
            reported_labels: BTreeMap::new(),
            reported_region: None,
            cpus: None,
            mem_bytes: None,
            capacity_instances: capacity,
            allocated_instances: allocated,
            health: None,
            state: NodeState::Schedulable,
            state_since_ms: None,
            path: None,
            forged_relayed: 0,
        }
    }

    const NOW: u64 = 1_000_000;
    const STALE: u64 = 60_000;

    #[test]
    fn least_loaded_fresh_node_wins_ties_by_name() {
        let fleet = vec![
            node("c", "aarch64", 1, 4, NOW),
            node("b", "aarch64", 2, 8, NOW),
            node("a", "aarch64", 3, 4, NOW),
        ];
        // b and c are both at 1/4; b sorts first.
        assert_eq!(
            pick(&fleet, &Placement::default(), NOW, STALE)
                .unwrap()
                .as_str(),
            "b"
        );
    }

    #[test]
    fn fresh_nodes_come_before_idle_stale_ones() {
        let mut fleet = vec![
            node("idle", "aarch64", 0, 4, 0),
            node("busy", "aarch64", 3, 4, NOW - 10),
        ];
        assert_eq!(
            pick(&fleet, &Placement::default(), NOW, STALE)
                .unwrap()
                .as_str(),
            "busy"
        );
        fleet[1].allocated_instances = 4;
        assert_eq!(
            pick(&fleet, &Placement::default(), NOW, STALE)
                .unwrap()
                .as_str(),
            "idle"
        );
        fleet[0].last_seen_ms = None;
        assert_eq!(
            pick(&fleet, &Placement::default(), NOW, STALE)
                .unwrap()
                .as_str(),
            "idle"
        );
    }

    #[test]
    fn criteria_filter_and_explain() {
        let fleet = vec![
            node("arm7", "armv7-unknown-linux-gnueabihf", 0, 4, NOW),
            node("full", "aarch64", 4, 4, NOW),
            node("ok", "aarch64-unknown-linux-gnu", 0, 4, NOW),
        ];
        let mut req = Placement {
            arch: Some("aarch64".into()),
            region: Some("eu".into()),
            labels: BTreeMap::from([("site".into(), "lab".into())]),
            node: None,
            lost_after_ms: None,
            lease_ms: None,
        };
        assert_eq!(pick(&fleet, &req, NOW, STALE).unwrap().as_str(), "ok");
        req.labels.insert("gpu".into(), "yes".into());
        let err = pick(&fleet, &req, NOW, STALE).unwrap_err();
        let AllocError::NoCandidate { reasons } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(reasons.len(), 3);
        assert_eq!(reasons[0].mismatches.len(), 2, "arch and label");
        assert_eq!(reasons[1].mismatches.len(), 2, "label and full");
        let text = err.to_string();
        assert!(
            text.contains("arm7: arch is armv7-unknown-linux-gnueabihf, want aarch64"),
            "{text}"
        );
        assert!(text.contains("full (4/4 instances)"), "{text}");
        assert!(text.contains("label gpu is unset, want yes"), "{text}");
    }

    #[test]
    fn explicit_node_wins_if_known() {
        let fleet = vec![node("full", "armv7", 4, 4, 0)];
        let mut req = Placement {
            node: Some(Name::new("full").unwrap()),
            arch: Some("aarch64".into()),
            ..Placement::default()
        };
        assert_eq!(pick(&fleet, &req, NOW, STALE).unwrap().as_str(), "full");
        req.node = Some(Name::new("ghost").unwrap());
        assert_eq!(
            pick(&fleet, &req, NOW, STALE),
            Err(AllocError::NoSuchNode(Name::new("ghost").unwrap()))
        );
    }

    #[test]
    fn empty_fleet_and_zero_capacity() {
        let err = pick(&[], &Placement::default(), NOW, STALE).unwrap_err();
        assert_eq!(err.to_string(), "no node fits: no node is registered");
        let fleet = vec![node("z", "aarch64", 0, 0, NOW)];
        assert!(matches!(
            pick(&fleet, &Placement::default(), NOW, STALE),
            Err(AllocError::NoCandidate { .. })
        ));
    }

    #[test]
    fn never_on_draining_retired_or_lost_nodes() {
        let mut fleet = vec![
            node("a-draining", "aarch64", 0, 4, NOW),
            node("b-lost", "aarch64", 0, 4, NOW - 20_000),
            node("c-retired", "aarch64", 0, 4, NOW),
            node("d-busy", "aarch64", 3, 4, NOW),
        ];
        fleet[0].state = NodeState::Draining;
        fleet[2].state = NodeState::Retired;
        let req = Placement {
            lost_after_ms: Some(10_000),
            ..Placement::default()
        };
        assert_eq!(pick(&fleet, &req, NOW, STALE).unwrap().as_str(), "d-busy");
        // Without lost_after_ms, silence only ranks.
        assert_eq!(
            pick(&fleet, &Placement::default(), NOW, STALE)
                .unwrap()
                .as_str(),
            "b-lost"
        );
        fleet[3].state = NodeState::Retiring;
        let err = pick(&fleet, &req, NOW, STALE).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("a-draining: draining"), "{text}");
        assert!(
            text.contains("b-lost: lost (silent for 20000 ms)"),
            "{text}"
        );
        assert!(text.contains("c-retired: retired"), "{text}");
        assert!(text.contains("d-busy: retiring"), "{text}");
        // Named: refused when not schedulable, allowed when only silent.
        let named = |n: &str| Placement {
            node: Some(Name::new(n).unwrap()),
            ..req.clone()
        };
        assert_eq!(
            pick(&fleet, &named("a-draining"), NOW, STALE),
            Err(AllocError::Unschedulable {
                node: Name::new("a-draining").unwrap(),
                state: NodeState::Draining
            })
        );
        assert!(pick(&fleet, &named("c-retired"), NOW, STALE).is_err());
        assert_eq!(
            pick(&fleet, &named("b-lost"), NOW, STALE).unwrap().as_str(),
            "b-lost"
        );
    }
}
