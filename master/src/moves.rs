//! Moving an instance to another node: fences, the two-phase handover, the decision log
//! and the moves-per-hour budget. Pure rules; every [`crate::store::FleetStore`]
//! backend applies them in the one transaction of
//! [`crate::store::FleetStore::move_instance`] and
//! [`crate::store::FleetStore::complete_handovers`].
//!
//! Contract:
//! - **Fence.** Each copy of an instance a desired state holds carries a fence (u64):
//!   the placement's epoch. The first placement of a name gets 1; every placement on
//!   another node (a move, or `hedge master request --node B`) gets the instance's
//!   highest fence + 1, so the fence only grows per instance, across nodes and masters.
//!   Writing a node's state again (an update, a re-signing) keeps its copies' fences. A
//!   copy no fence was ever given (a state written before fences) gets the instance's
//!   current highest fence (1 if none): it was not placed anew. Every state the
//!   master writes carries its copies' fences in its signed `terms`.
//! - **Owner.** The copy the master means is the live one (not `destroyed`) with the
//!   highest fence ([`owner`]; ties by node name). Live copies with a lower fence are
//!   *stale*: old copies waiting for their handover ([`stale`]). A request without a
//!   node goes to the owner, and leaves stale copies to their handover.
//! - **Move** ([`check_move`]): only the owner's node can be moved from; never to the
//!   same node nor to a node holding a live copy; the target must fit the instance's
//!   placement criteria ([`criteria`]) and have a free slot, in the same transaction.
//!   The target's state gains the instance with the next fence at once.
//! - **Handover.** By default the old node keeps its copy until the new one runs:
//!   once the owner's node reported the instance `Running` (an `InstanceState` record)
//!   after it accepted a generation at or above the one that first carried the new
//!   fence ([`crate::placement::applied_at`] gives that position), every stale copy is
//!   requested `destroyed` (then pruned as any destroyed instance). A *fenced* move (the
//!   caller says the old copy has stopped, or will by its lease) requests it
//!   `destroyed` on the old node in the move's own transaction.
//! - **Decision log.** Every move is logged with its time, instance, from, to, fence,
//!   reason line and incident if any ([`Decision`]); so are refusals the caller wants
//!   shown (once: the same line the log already ends with for that incident is not
//!   logged again) and completed handovers. At most one move per incident: a second
//!   is refused ([`MoveError::AlreadyDecided`]).
//! - **Budget** ([`over_budget`]): a move made for an incident is refused when the log
//!   already holds, within the window, `fleet` such moves, or `per_instance` of this
//!   instance. Checked in the move's transaction, so concurrent masters keep it too.
//!   Moves made for no incident (an operator's, a drain) are neither counted nor
//!   limited.
//! - [`with_decisions`] adds the log to the incidents view: each decision about an
//!   incident becomes a timeline entry after the record it answered.

use std::collections::BTreeMap;
use std::fmt;

use hedge_wire::Name;
use serde::{Deserialize, Serialize};

use crate::alloc::Placement;
use crate::store::{IncidentTransition, IncidentView, NodeSummary};

/// A node's desired state holding an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The node.
    pub node: Name,
    /// The fence of its copy.
    pub fence: u64,
    /// Not requested `destroyed`.
    pub live: bool,
}

/// Where one instance is: every desired state holding it, and its criteria.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstancePlacement {
    /// The instance.
    pub instance: Name,
    /// Every node holding it, by node.
    pub holders: Vec<Holder>,
    /// The placement it was requested with (no node), if the master placed it with one.
    pub criteria: Option<Placement>,
}

impl InstancePlacement {
    /// The copy the master means ([`owner`]).
    pub fn owner(&self) -> Option<&Holder> {
        owner(&self.holders)
    }
}

/// The live copy with the highest fence (ties: the first, i.e. by node name).
pub fn owner(holders: &[Holder]) -> Option<&Holder> {
    holders
        .iter()
        .filter(|h| h.live)
        .fold(None, |best: Option<&Holder>, h| match best {
            Some(b) if b.fence >= h.fence => Some(b),
            _ => Some(h),
        })
}

/// Live copies with a lower fence than the owner's: waiting for their handover.
pub fn stale(holders: &[Holder]) -> Vec<&Holder> {
    let Some(o) = owner(holders) else {
        return Vec::new();
    };
    holders
        .iter()
        .filter(|h| h.live && h.fence < o.fence)
        .collect()
}

/// `holders` as [`crate::placement::target`] takes them: `(node, live)`, the owner
/// first, then the others by node.
pub fn by_preference(holders: &[Holder]) -> Vec<(Name, bool)> {
    let first = owner(holders).map(|o| o.node.clone());
    let mut out: Vec<(Name, bool)> = first.iter().map(|n| (n.clone(), true)).collect();
    out.extend(
        holders
            .iter()
            .filter(|h| Some(&h.node) != first.as_ref())
            .map(|h| (h.node.clone(), h.live)),
    );
    out
}

/// The nodes a request placed on `target` destroys the instance on
/// ([`crate::placement::moved_from`]), less the stale copies when `target` is the
/// owner's node: those wait for their handover.
pub fn moved_off(holders: &[Holder], target: &Name) -> Vec<Name> {
    let keep = match owner(holders) {
        Some(o) if &o.node == target => stale(holders),
        _ => Vec::new(),
    };
    let pairs: Vec<(Name, bool)> = holders
        .iter()
        .filter(|h| !keep.iter().any(|k| k.node == h.node))
        .map(|h| (h.node.clone(), h.live))
        .collect();
    crate::placement::moved_from(&pairs, target)
}

/// Which incident a decision answers: `(node, life, id)` names it, `seq` is the
/// record (an `Incident` record of that node's life) it answered.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct IncidentRef {
    /// The node that reported it.
    pub node: Name,
    /// Its life (incident ids are per life).
    pub life: u32,
    /// Its node-local id.
    pub id: u64,
    /// The record decided upon.
    pub seq: u64,
}

/// What a logged decision did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DecisionKind {
    /// The instance was placed on `to` under `fence`.
    Move,
    /// Nothing was moved; `reason` says why.
    Refused,
    /// The old copy on `from` was requested destroyed: the copy on `to` runs.
    Handover,
}

impl DecisionKind {
    /// Its stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionKind::Move => "move",
            DecisionKind::Refused => "refused",
            DecisionKind::Handover => "handover",
        }
    }

    /// From its stored name.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Move, Self::Refused, Self::Handover]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// One entry of the decision log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Its number in the log (grows; the store sets it, whatever it is given).
    pub id: u64,
    /// When, ms since the epoch.
    pub time_ms: u64,
    /// What it did.
    pub kind: DecisionKind,
    /// The instance.
    pub instance: Name,
    /// The node it was on (for a handover: the node that lost its copy).
    pub from: Name,
    /// The node it went to, if any.
    pub to: Option<Name>,
    /// The fence of the copy on `to`.
    pub fence: Option<u64>,
    /// One line saying what and why.
    pub reason: String,
    /// The incident it answers, if any.
    pub incident: Option<IncidentRef>,
}

/// Moves made for incidents allowed within a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveBudget {
    /// The sliding window, ms.
    pub window_ms: u64,
    /// At most this many across the fleet.
    pub fleet: u32,
    /// At most this many of one instance.
    pub per_instance: u32,
}

/// One move for [`crate::store::FleetStore::move_instance`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveRequest {
    /// The instance.
    pub instance: Name,
    /// The node it is on (must be its owner's).
    pub from: Name,
    /// The node to place it on; `None`: allocation picks among the nodes that fit.
    pub to: Option<Name>,
    /// The copy on `from` has stopped or will by its lease: destroy it there at once
    /// instead of after the new copy runs.
    pub fenced: bool,
    /// The decision log's line.
    pub reason: String,
    /// The incident it answers, if any (at most one move per incident).
    pub incident: Option<IncidentRef>,
    /// Refuse when an incident move would exceed it (only with `incident`).
    pub budget: Option<MoveBudget>,
}

/// What [`crate::store::FleetStore::move_instance`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    /// The target's new signed state.
    pub state: hedge_wire::DesiredState,
    /// The copy's new fence.
    pub fence: u64,
    /// For a fenced move: the old node's new generation (the copy destroyed there).
    pub destroyed_on: Option<(Name, u64)>,
    /// The logged decision.
    pub decision: Decision,
}

/// A completed handover ([`crate::store::FleetStore::complete_handovers`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handover {
    /// The instance.
    pub instance: Name,
    /// The node whose stale copy is now requested destroyed, and its new generation.
    pub destroyed_on: (Name, u64),
    /// The owner's node, whose copy ran.
    pub owner: Name,
    /// The owner's fence.
    pub fence: u64,
}

/// Why a move was refused (nothing stored).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoveError {
    /// The instance is not live on `from` as its owner (moved since, destroyed, or
    /// never the master's there).
    #[error("{instance} is not the master's live copy on {from}")]
    NotOnNode {
        /// The instance.
        instance: Name,
        /// The node named.
        from: Name,
    },
    /// `to` is `from`, or already holds a live copy.
    #[error("{instance} cannot move to {to}: it already holds a live copy")]
    Holds {
        /// The instance.
        instance: Name,
        /// The node named.
        to: Name,
    },
    /// The incident already has a move.
    #[error("incident {} of {} already has a move (decision {decision})", .incident.id, .incident.node)]
    AlreadyDecided {
        /// The incident.
        incident: IncidentRef,
        /// The earlier decision's id.
        decision: u64,
    },
    /// The budget is spent.
    #[error("{0}")]
    OverBudget(String),
}

/// Checks the node rules of a move of `instance` with `holders` from `from` to `to`.
pub fn check_move(
    instance: &Name,
    holders: &[Holder],
    from: &Name,
    to: Option<&Name>,
) -> Result<(), Box<MoveError>> {
    if owner(holders).is_none_or(|o| &o.node != from) {
        return Err(Box::new(MoveError::NotOnNode {
            instance: instance.clone(),
            from: from.clone(),
        }));
    }
    if let Some(to) = to {
        if to == from || holders.iter().any(|h| h.live && &h.node == to) {
            return Err(Box::new(MoveError::Holds {
                instance: instance.clone(),
                to: to.clone(),
            }));
        }
    }
    Ok(())
}

/// The criteria a moved instance's new node must meet: those it was placed with (no
/// node), and when they name no arch, the arch of the node it is on (its software
/// was chosen for it: an `exec:` path, an artifact variant).
pub fn criteria(stored: Option<&Placement>, from: Option<&NodeSummary>) -> Placement {
    let mut p = stored.cloned().unwrap_or_default();
    p.node = None;
    if p.arch.is_none() {
        p.arch = from.and_then(|n| n.arch.as_deref()).map(|a| {
            // The first part of a target triple: what allocation matches.
            a.split('-').next().unwrap_or(a).to_owned()
        });
    }
    p
}

/// `Some(line)` when a move of `instance` made for an incident at `now_ms` would
/// exceed `budget`, given the log `decisions` (and `extra` moves decided but not yet
/// logged, as `(instance, time_ms)`).
pub fn over_budget(
    decisions: &[Decision],
    extra: &[(Name, u64)],
    instance: &Name,
    now_ms: u64,
    budget: &MoveBudget,
) -> Option<String> {
    let since = now_ms.saturating_sub(budget.window_ms);
    let recent: Vec<(&Name, u64)> = decisions
        .iter()
        .filter(|d| d.kind == DecisionKind::Move && d.incident.is_some())
        .map(|d| (&d.instance, d.time_ms))
        .chain(extra.iter().map(|(i, t)| (i, *t)))
        .filter(|(_, t)| *t > since)
        .collect();
    let mine = recent.iter().filter(|(i, _)| *i == instance).count();
    let window = Window(budget.window_ms);
    if mine >= usize::try_from(budget.per_instance).unwrap_or(usize::MAX) {
        return Some(format!(
            "{instance} moved {mine} time(s) in the last {window} (limit {} per instance)",
            budget.per_instance
        ));
    }
    if recent.len() >= usize::try_from(budget.fleet).unwrap_or(usize::MAX) {
        return Some(format!(
            "{} move(s) in the last {window} fleet-wide (limit {})",
            recent.len(),
            budget.fleet
        ));
    }
    None
}

/// A window, said as people say it.
struct Window(u64);

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            3_600_000 => write!(f, "hour"),
            ms if ms % 60_000 == 0 => write!(f, "{} min", ms / 60_000),
            ms => write!(f, "{ms} ms"),
        }
    }
}

/// The incidents view with the decision log added: each decision about an incident
/// becomes a timeline entry (its `decision` set, its state and severity those of the
/// record it answered) right after that record and the decisions before it (after
/// every record of a lower seq when that record is not in the timeline).
pub fn with_decisions(
    mut incidents: Vec<IncidentView>,
    decisions: &[Decision],
) -> Vec<IncidentView> {
    let mut by_incident: BTreeMap<(&Name, u32, u64), Vec<&Decision>> = BTreeMap::new();
    for d in decisions {
        if let Some(i) = &d.incident {
            by_incident
                .entry((&i.node, i.life, i.id))
                .or_default()
                .push(d);
        }
    }
    for v in &mut incidents {
        let Some(ds) = by_incident.get(&(&v.node, v.life, v.id)) else {
            continue;
        };
        for d in ds {
            let Some(i) = &d.incident else { continue };
            let (state, severity) = v
                .timeline
                .iter()
                .find(|t| t.seq == i.seq && t.decision.is_none())
                .map_or((v.state, v.severity), |t| (t.state, t.severity));
            // After the record and the decisions already placed after it.
            let at = v
                .timeline
                .iter()
                .rposition(|t| t.seq <= i.seq)
                .map_or(0, |p| p + 1);
            v.timeline.insert(
                at,
                IncidentTransition {
                    seq: i.seq,
                    time_ms: d.time_ms,
                    state,
                    severity,
                    message: d.reason.clone(),
                    decision: Some((*d).clone()),
                },
            );
        }
    }
    incidents
}

#[cfg(test)]
pub(crate) mod tests;
