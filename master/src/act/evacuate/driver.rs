//! The driver of [`super::decide`]: it reads the fleet from the store, moves what must
//! leave through the store's move primitive, and revokes retiring nodes.
//!
//! Contract: [`pass`] runs one pass at `now_ms` over any [`FleetStore`] (`hedge master
//! run` every `[failover] check_every_ms` on its store worker; `hedge master drain` /
//! `retire` once, for their node):
//! 1. reads the nodes (state; lost as [`crate::node_state::lost`] judges with the
//!    settings), where every instance is ([`FleetStore::placements`]), the instances'
//!    leases and which copies their nodes reported destroyed;
//! 2. [`super::decide`], then for each move picks the target as allocation does
//!    ([`crate::alloc::pick`] over the nodes holding no live copy, against the
//!    instance's criteria ([`crate::moves::criteria`]) and not lost), and makes the move
//!    ([`FleetStore::move_instance`]: fenced or two-phase, logged with its one-line
//!    reason, "moved web from a to b: node a draining, b fits arch=aarch64, 1 of 4 slots
//!    used"). A move that cannot be made (no node fits, the store refused it) is
//!    returned as [`Done::Refused`] with its line; the caller logs it (rate-limited).
//! 3. for each revocation, calls `revoke` (the caller's: [`crate::revocation::revoke`]
//!    in the master directory) and then marks the node retired.
//!
//! Every state written is signed with `key` at `now_ms`. Store failures end the pass;
//! what was done before stays done.

use std::collections::BTreeSet;

use hedge_wire::{DesiredState, InstanceStatus, Name};

use super::{decide, Act, CopyFacts, NodeFacts, Why};
use crate::alloc;
use crate::moves::{self, Decision, MoveRequest};
use crate::node_state::{lost, NodeOp};
use crate::sign::{sign, MasterKey};
use crate::store::{FleetStore, NodeSummary, StoreError};

/// What a pass judges with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// `[failover] lost_after_ms`.
    pub lost_after_ms: u64,
    /// `[allocation] stale_after_ms`: fresher nodes are preferred targets.
    pub stale_after_ms: u64,
    /// When this master began listening to nodes (0: unknown, e.g. the CLI).
    pub listening_since_ms: u64,
}

/// One thing a pass did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// A move, as logged (boxed: the other variants are small).
    Moved(Box<Decision>),
    /// A move that could not be made: the line says why.
    Refused {
        /// The instance.
        instance: Name,
        /// The node it stays on.
        from: Name,
        /// The line.
        line: String,
    },
    /// A retiring node was revoked and is now retired.
    Revoked {
        /// The node.
        node: Name,
        /// It was lost (else: empty).
        lost: bool,
    },
}

impl std::fmt::Display for Done {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Done::Moved(d) => f.write_str(&d.reason),
            Done::Refused { line, .. } => f.write_str(line),
            Done::Revoked { node, lost: true } => write!(f, "{node} revoked: retiring and lost"),
            Done::Revoked { node, lost: false } => write!(f, "{node} revoked: retiring and empty"),
        }
    }
}

/// The facts [`decide`] takes, as the store shows them at `now_ms`.
fn facts<S: FleetStore>(
    store: &S,
    nodes: &[NodeSummary],
    now_ms: u64,
    s: &Settings,
) -> Result<(Vec<NodeFacts>, Vec<CopyFacts>), StoreError> {
    let node_facts = nodes
        .iter()
        .map(|n| NodeFacts {
            node: n.node.clone(),
            state: n.state,
            lost: lost(
                n.last_seen_ms,
                now_ms,
                s.lost_after_ms,
                s.listening_since_ms,
            ),
        })
        .collect();
    let leases = store.leases()?;
    let destroyed: BTreeSet<(Name, Name)> = store
        .instances()?
        .into_iter()
        .filter(|v| v.status == Some(InstanceStatus::Destroyed))
        .map(|v| (v.node, v.name))
        .collect();
    let mut copies = Vec::new();
    for p in store.placements()? {
        let owner = p.owner().map(|o| o.node.clone());
        for h in &p.holders {
            copies.push(CopyFacts {
                instance: p.instance.clone(),
                node: h.node.clone(),
                live: h.live,
                owner: h.live && owner.as_ref() == Some(&h.node),
                lease_ms: leases.get(&p.instance).copied().unwrap_or(0),
                reported_destroyed: destroyed.contains(&(h.node.clone(), p.instance.clone())),
            });
        }
    }
    Ok((node_facts, copies))
}

/// Why, as the line says it.
fn why_words(why: Why, from: &NodeSummary, now_ms: u64) -> String {
    let silent = from.last_seen_ms.map_or(String::new(), |t| {
        format!(" (silent {} s)", now_ms.saturating_sub(t) / 1000)
    });
    match why {
        Why::Lost => format!(
            "node {} lost{silent}, policy move, old copy fenced",
            from.node
        ),
        Why::Draining => format!("node {} draining", from.node),
        Why::Retiring => format!("node {} retiring", from.node),
        Why::RetiringLost => format!(
            "node {} retiring and lost{silent}, old copy fenced",
            from.node
        ),
    }
}

/// Moves `instance` off `from` for `why`.
#[allow(clippy::too_many_arguments)]
fn move_off<S: FleetStore>(
    store: &S,
    key: &MasterKey,
    instance: &Name,
    from: &Name,
    fenced: bool,
    why: Why,
    now_ms: u64,
    s: &Settings,
) -> Result<Done, StoreError> {
    let nodes = store.nodes()?;
    let placements = store.placements()?;
    let placement = placements.iter().find(|p| &p.instance == instance);
    let refused = |line: String| Done::Refused {
        instance: instance.clone(),
        from: from.clone(),
        line,
    };
    let Some(from_node) = nodes.iter().find(|n| &n.node == from) else {
        return Ok(refused(format!(
            "{instance} not moved: node {from} vanished"
        )));
    };
    let head = why_words(why, from_node, now_ms);
    let mut want = moves::criteria(placement.and_then(|p| p.criteria.as_ref()), Some(from_node));
    want.lost_after_ms = Some(s.lost_after_ms);
    let candidates: Vec<NodeSummary> = nodes
        .iter()
        .filter(|n| {
            !placement.is_some_and(|p| p.holders.iter().any(|h| h.live && h.node == n.node))
        })
        .cloned()
        .collect();
    let to = match alloc::pick(&candidates, &want, now_ms, s.stale_after_ms) {
        Ok(to) => to,
        Err(e) => {
            return Ok(refused(format!(
                "{instance} not moved from {from}: {head}; {e}"
            )))
        }
    };
    let (used, slots) = candidates
        .iter()
        .find(|n| n.node == to)
        .map_or((0, 0), |n| (n.allocated_instances, n.capacity_instances));
    let reason = format!(
        "moved {instance} from {from} to {to}: {head}, {to} fits {}, {used} of {slots} slots used",
        super::super::fit::criteria_words(&want)
    );
    let mv = MoveRequest {
        instance: instance.clone(),
        from: from.clone(),
        to: Some(to),
        fenced,
        reason,
        incident: None,
        budget: None,
    };
    match store.move_instance(&mv, now_ms, s.stale_after_ms, |d: &mut DesiredState| {
        sign(key, d, now_ms)
    }) {
        Ok(m) => Ok(Done::Moved(Box::new(m.decision))),
        Err(e @ (StoreError::Move(_) | StoreError::Alloc(_) | StoreError::TooLarge { .. })) => Ok(
            refused(format!("{instance} not moved from {from}: {head}; {e}")),
        ),
        Err(e) => Err(e),
    }
}

/// What `hedge master run` evacuates with, pass after pass.
#[derive(Debug)]
pub struct Standing {
    /// Signs every state written.
    pub key: std::sync::Arc<MasterKey>,
    /// The master directory: revocations ([`crate::revocation::revoke`]).
    pub dir: std::path::PathBuf,
    /// `[failover] lost_after_ms`.
    pub lost_after_ms: u64,
    /// `[allocation] stale_after_ms`.
    pub stale_after_ms: u64,
    /// `[failover] check_every_ms`.
    pub every: std::time::Duration,
}

impl Standing {
    /// Completes the handovers whose new copy runs
    /// ([`FleetStore::complete_handovers`]: a drained node's old copies go), then one
    /// [`pass`] over the whole fleet at `now_ms`, revoking in [`Standing::dir`].
    pub fn pass<S: FleetStore>(
        &self,
        store: &S,
        listening_since_ms: u64,
        now_ms: u64,
    ) -> Result<Vec<Done>, StoreError> {
        for h in
            store.complete_handovers(now_ms, |d: &mut DesiredState| sign(&self.key, d, now_ms))?
        {
            tracing::info!(instance = %h.instance, from = %h.destroyed_on.0, owner = %h.owner,
                "handover: the old copy is destroyed, the new one runs");
        }
        let settings = Settings {
            lost_after_ms: self.lost_after_ms,
            stale_after_ms: self.stale_after_ms,
            listening_since_ms,
        };
        pass(store, &self.key, now_ms, &settings, None, &mut |node| {
            crate::revocation::revoke(&self.dir, node)
                .map(drop)
                .map_err(|e| e.to_string())
        })
    }
}

/// One pass; `only`: act on that node alone. See the module doc.
pub fn pass<S: FleetStore>(
    store: &S,
    key: &MasterKey,
    now_ms: u64,
    s: &Settings,
    only: Option<&Name>,
    revoke: &mut dyn FnMut(&Name) -> Result<(), String>,
) -> Result<Vec<Done>, StoreError> {
    let nodes = store.nodes()?;
    let (node_facts, copies) = facts(store, &nodes, now_ms, s)?;
    let mut out = Vec::new();
    for act in decide(&node_facts, &copies) {
        match act {
            Act::Move {
                instance,
                from,
                fenced,
                why,
            } if only.is_none_or(|o| o == &from) => {
                out.push(move_off(
                    store, key, &instance, &from, fenced, why, now_ms, s,
                )?);
            }
            Act::Revoke { node, lost } if only.is_none_or(|o| o == &node) => {
                if let Err(e) = revoke(&node) {
                    out.push(Done::Refused {
                        instance: node.clone(),
                        from: node.clone(),
                        line: format!("{node} not revoked: {e}"),
                    });
                    continue;
                }
                store.update_node_state(&node, NodeOp::Revoked, now_ms)?;
                out.push(Done::Revoked { node, lost });
            }
            _ => {}
        }
    }
    Ok(out)
}
