//! The driver of the decision core: it reads the fleet from the store, completes
//! handovers, decides, and applies the outcomes through the store.
//!
//! Contract: [`act`] runs one pass at `now_ms` over any [`FleetStore`]:
//! 1. [`FleetStore::complete_handovers`]: old copies whose new copy runs are requested
//!    destroyed;
//! 2. loads the [`Snapshot`] (incidents, placements, nodes, the whole decision log:
//!    it grows by a line per decision, bounded by the incidents stored);
//! 3. [`super::decide`], then applies each outcome in order: a move through
//!    [`FleetStore::move_instance`] (two-phase, the budget checked again in the
//!    transaction), a refusal through [`FleetStore::record_decision`]. A move the store
//!    refuses ([`PlaceError::Refused`]: the snapshot went stale, the target's state
//!    would be too large to deliver) is logged as a refusal saying why; one another
//!    master made first for the same incident is left alone.
//!
//! Every state written is signed with `key` at `now_ms`. Each decision is logged with
//! `tracing` (one line, the decision's own). Store failures end the pass with the
//! error; what was applied before stays applied.

use hedge_wire::{DesiredState, Name};

use super::{decide, Outcome, Policy, Snapshot};
use crate::moves::{Decision, DecisionKind, Handover, MoveError, MoveRequest};
use crate::placement::PlaceError;
use crate::sign::{sign, MasterKey};
use crate::store::{FleetStore, StoreError};

/// What one pass did.
#[derive(Debug, Default)]
pub struct Report {
    /// Handovers completed.
    pub handovers: Vec<Handover>,
    /// Decisions logged (moves and refusals), in order.
    pub decisions: Vec<Decision>,
}

/// Reads what [`decide`] needs from `store`.
pub fn snapshot<S: FleetStore>(store: &S) -> Result<Snapshot, StoreError> {
    Ok(Snapshot {
        incidents: store.incidents()?,
        placements: store.placements()?,
        nodes: store.nodes()?,
        decisions: store.decisions(0)?,
    })
}

fn refusal(
    instance: Name,
    from: Name,
    reason: String,
    incident: crate::moves::IncidentRef,
    now_ms: u64,
) -> Decision {
    Decision {
        id: 0,
        time_ms: now_ms,
        kind: DecisionKind::Refused,
        instance,
        from,
        to: None,
        fence: None,
        reason,
        incident: Some(incident),
    }
}

/// One pass. See the module doc.
pub fn act<S: FleetStore>(
    store: &S,
    key: &MasterKey,
    policy: &Policy,
    now_ms: u64,
) -> Result<Report, StoreError> {
    let signer = |d: &mut DesiredState| sign(key, d, now_ms);
    let mut report = Report {
        handovers: store.complete_handovers(now_ms, signer)?,
        ..Report::default()
    };
    for h in &report.handovers {
        tracing::info!(instance = %h.instance, node = %h.destroyed_on.0, owner = %h.owner, fence = h.fence, "handover done: old copy destroyed");
    }
    let snap = snapshot(store)?;
    for outcome in decide(&snap, policy, now_ms) {
        let logged = match outcome {
            Outcome::Move {
                instance,
                from,
                to,
                reason,
                incident,
            } => {
                let mv = MoveRequest {
                    instance: instance.clone(),
                    from: from.clone(),
                    to: Some(to),
                    fenced: false,
                    reason: reason.clone(),
                    incident: Some(incident.clone()),
                    budget: Some(policy.budget),
                };
                match store.move_instance(&mv, now_ms, policy.stale_after_ms, signer) {
                    Ok(moved) => moved.decision,
                    Err(StoreError::Move(e)) if matches!(*e, MoveError::AlreadyDecided { .. }) => {
                        continue
                    }
                    Err(e) => match PlaceError::from(e) {
                        PlaceError::Refused(e) => {
                            let why = format!(
                                "did not move {instance} from {from}: critical incident {}, {e}",
                                incident.id
                            );
                            store
                                .record_decision(&refusal(instance, from, why, incident, now_ms))?
                        }
                        PlaceError::Store(e) => return Err(e),
                    },
                }
            }
            Outcome::Refuse {
                instance,
                from,
                reason,
                incident,
            } => store.record_decision(&refusal(instance, from, reason, incident, now_ms))?,
        };
        tracing::info!(
            id = logged.id,
            kind = logged.kind.as_str(),
            "{}",
            logged.reason
        );
        report.decisions.push(logged);
    }
    Ok(report)
}
