//! Rule: an incident escalated to Critical moves its instance to another node.
//!
//! Contract: [`decide`] is pure. Every open incident (not `Resolved`) whose latest
//! record is `Critical`, oldest (last seen) first, gets at most one move in its life:
//! - its instance must be the master's live copy on the reporting node (its owner's
//!   node); a stale copy (a move of it is handing over) is passed over silently, an
//!   instance the master did not place there is refused ("the master did not place it
//!   there");
//! - an instance already moved in this pass is passed over (one move at a time);
//! - the moves-per-hour budget must allow it ([`crate::moves::over_budget`], counting
//!   this pass's moves), else refused;
//! - a node must fit ([`super::fit::choose`]: never the same node, nor one holding a
//!   live copy), else refused with why each node was passed over.
//!
//! A refusal is logged again only when its line changed (the incident stays eligible:
//! a node may free up, the budget's window slides on); the incident's move, once
//! logged, is its one decision.

use hedge_wire::{IncidentState, Severity};

use super::{fit, Outcome, Pass, Policy, Snapshot};
use crate::moves::{self, DecisionKind, IncidentRef};
use crate::store::IncidentView;

/// The incidents this rule answers, in order.
fn critical(snapshot: &Snapshot) -> Vec<&IncidentView> {
    let mut open: Vec<&IncidentView> = snapshot
        .incidents
        .iter()
        .filter(|i| i.severity == Severity::Critical && i.state != IncidentState::Resolved)
        .collect();
    open.sort_by(|a, b| {
        (a.last_seen_ms, &a.node, a.life, a.id).cmp(&(b.last_seen_ms, &b.node, b.life, b.id))
    });
    open
}

/// Adds this rule's outcomes to `pass`. See the module doc.
pub fn decide(snapshot: &Snapshot, policy: &Policy, now_ms: u64, pass: &mut Pass) {
    for inc in critical(snapshot) {
        let Some(seq) = inc
            .timeline
            .iter()
            .filter(|t| t.decision.is_none())
            .map(|t| t.seq)
            .next_back()
        else {
            continue;
        };
        let incident = IncidentRef {
            node: inc.node.clone(),
            life: inc.life,
            id: inc.id,
            seq,
        };
        let about = |d: &&moves::Decision| {
            d.incident
                .as_ref()
                .is_some_and(|i| (&i.node, i.life, i.id) == (&inc.node, inc.life, inc.id))
        };
        let logged: Vec<&moves::Decision> = snapshot.decisions.iter().filter(about).collect();
        if logged.iter().any(|d| d.kind == DecisionKind::Move) {
            continue;
        }
        let (instance, from) = (&inc.instance, &inc.node);
        let head = format!("critical incident {}", inc.id);
        // A refusal, unless the last one logged said the same.
        let refusal = |why: String| {
            let reason = format!("did not move {instance} from {from}: {head}, {why}");
            let last = logged
                .iter()
                .rev()
                .find(|d| d.kind == DecisionKind::Refused);
            last.is_none_or(|d| d.reason != reason)
                .then(|| Outcome::Refuse {
                    instance: instance.clone(),
                    from: from.clone(),
                    reason,
                    incident: incident.clone(),
                })
        };
        let placement = snapshot.placements.iter().find(|p| &p.instance == instance);
        let Some(placement) = placement.filter(|p| p.owner().is_some_and(|o| &o.node == from))
        else {
            let stale =
                placement.is_some_and(|p| p.holders.iter().any(|h| h.live && &h.node == from));
            if !stale {
                pass.outcomes
                    .extend(refusal("the master did not place it there".into()));
            }
            continue;
        };
        if pass.moved.iter().any(|(i, _)| i == instance) {
            continue;
        }
        if let Some(line) = moves::over_budget(
            &snapshot.decisions,
            &pass.moved,
            instance,
            now_ms,
            &policy.budget,
        ) {
            pass.outcomes.extend(refusal(line));
            continue;
        }
        match fit::choose(snapshot, pass, policy, placement, from, now_ms) {
            Ok(fit) => {
                pass.outcomes.push(Outcome::Move {
                    instance: instance.clone(),
                    from: from.clone(),
                    to: fit.node.clone(),
                    reason: format!(
                        "moved {instance} from {from} to {}: {head}, {}",
                        fit.node, fit.line
                    ),
                    incident: incident.clone(),
                });
                pass.moved.push((instance.clone(), now_ms));
                pass.taken.push(fit.node);
            }
            Err(why) => pass.outcomes.extend(refusal(why)),
        }
    }
}
