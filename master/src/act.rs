//! The master acting for the fleet: what to move where, and why. A pure core and its
//! driver.
//!
//! Contract: [`decide`] is pure (no I/O, no clock: `now_ms` comes in). Given a
//! [`Snapshot`] of the fleet (incidents as their views, where every instance is, the
//! nodes as allocation sees them, the decision log) and a [`Policy`], it returns
//! [`Outcome`]s in order: moves to make and refusals to log, each with a one-line
//! reason ("moved web from node-3 to node-5: critical incident 12, node-5 fits
//! arch=aarch64 site=north, 2 of 4 slots used"). Each rule is one file and adds its
//! outcomes to one [`Pass`], which carries what earlier outcomes of the same pass
//! changed (slots taken, moves counted against the budget), so rules compose:
//! - [`critical`]: an open incident whose latest record is `Critical` asks for its
//!   instance to be moved off the node that reported it.
//! - [`evacuate`]: instances leave draining, retiring and lost nodes (fenced or
//!   two-phase), and retiring nodes are revoked; it has its own outcomes and driver
//!   ([`evacuate::driver`]), run beside [`driver::act`] on the same worker.
//!
//! Moves are checked again by the store when applied
//! ([`crate::store::FleetStore::move_instance`]: owner, fit, free slot, one move per
//! incident, budget), so a stale snapshot or a concurrent master can only make a move
//! fail, never break a rule. The driver ([`driver::act`]) loads the snapshot, completes
//! handovers, runs [`decide`] and applies its outcomes through the store, signing each
//! state written; `hedge master run` calls it on its store worker periodically and
//! after ingesting a Critical incident or an instance reported running.

use hedge_wire::Name;

use crate::moves::{Decision, InstancePlacement, MoveBudget};
use crate::store::{IncidentView, NodeSummary};

pub mod critical;
pub mod driver;
pub mod evacuate;
pub mod fit;

/// What the master knows of the fleet when it decides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Every incident, as its view (latest record's state and severity).
    pub incidents: Vec<IncidentView>,
    /// Where every instance a desired state holds is.
    pub placements: Vec<InstancePlacement>,
    /// Every node, as allocation sees it.
    pub nodes: Vec<NodeSummary>,
    /// The decision log (at least the budget's window and every decision about the
    /// incidents of the snapshot).
    pub decisions: Vec<Decision>,
}

/// How the master acts (`[act]` in `master.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Moves made for incidents allowed per window, fleet-wide and per instance.
    pub budget: MoveBudget,
    /// A node not seen for longer is no target.
    pub stale_after_ms: u64,
}

/// One thing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Move `instance` from `from` to `to`.
    Move {
        /// The instance.
        instance: Name,
        /// Its owner's node.
        from: Name,
        /// The node that fits.
        to: Name,
        /// The one line saying why.
        reason: String,
        /// The incident it answers.
        incident: crate::moves::IncidentRef,
    },
    /// Log that `instance` was not moved.
    Refuse {
        /// The instance.
        instance: Name,
        /// The node it stays on.
        from: Name,
        /// The one line saying why.
        reason: String,
        /// The incident it answers.
        incident: crate::moves::IncidentRef,
    },
}

/// The outcomes of one [`decide`] so far, and what they changed.
#[derive(Debug, Default)]
pub struct Pass {
    /// The outcomes, in order.
    pub outcomes: Vec<Outcome>,
    /// Moves decided in this pass, as `(instance, time_ms)` (the budget counts them).
    pub moved: Vec<(Name, u64)>,
    /// Slots taken on each node by the moves of this pass.
    pub taken: Vec<Name>,
}

impl Pass {
    /// Slots `node` has taken in this pass.
    pub fn taken_on(&self, node: &Name) -> u32 {
        u32::try_from(self.taken.iter().filter(|n| *n == node).count()).unwrap_or(u32::MAX)
    }
}

/// Every outcome of the rules for `snapshot` at `now_ms`. See the module doc.
pub fn decide(snapshot: &Snapshot, policy: &Policy, now_ms: u64) -> Vec<Outcome> {
    let mut pass = Pass::default();
    critical::decide(snapshot, policy, now_ms, &mut pass);
    pass.outcomes
}

#[cfg(test)]
mod tests;
