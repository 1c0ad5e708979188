//! Where a moved instance goes, and the words saying why it fits.
//!
//! Contract: [`choose`] is pure. The target is what [`crate::alloc::pick`] picks among
//! the schedulable nodes (seen within the policy's `stale_after_ms`: a node not heard
//! from may be dead) that hold no live copy of the instance, against the instance's
//! criteria ([`crate::moves::criteria`]: its placement, and the arch of the node it is
//! on when that names none), counting the slots earlier moves of the same pass took.
//! [`Fit::line`] says it as "node-5 fits arch=aarch64 site=north, 2 of 4 slots used"
//! (slots used before the move); a refusal says why each node was passed over.

use hedge_wire::Name;

use super::{Pass, Policy, Snapshot};
use crate::alloc::{self, AllocError, Placement};
use crate::moves::{self, InstancePlacement};
use crate::store::NodeSummary;

/// The node chosen and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fit {
    /// The target.
    pub node: Name,
    /// "node-5 fits arch=aarch64 site=north, 2 of 4 slots used".
    pub line: String,
}

/// Whether a move may land on `node` at `now_ms`: seen recently.
pub fn schedulable(node: &NodeSummary, policy: &Policy, now_ms: u64) -> bool {
    node.last_seen_ms
        .is_some_and(|seen| now_ms.saturating_sub(seen) <= policy.stale_after_ms)
}

/// The criteria as words: "arch=aarch64 region=eu site=north".
pub fn criteria_words(p: &Placement) -> String {
    let mut words = Vec::new();
    if let Some(a) = &p.arch {
        words.push(format!("arch={a}"));
    }
    if let Some(r) = &p.region {
        words.push(format!("region={r}"));
    }
    words.extend(p.labels.iter().map(|(k, v)| format!("{k}={v}")));
    if words.is_empty() {
        "(no criteria)".into()
    } else {
        words.join(" ")
    }
}

/// The node `placement.instance` moves to from `from`, or why there is none.
pub fn choose(
    snapshot: &Snapshot,
    pass: &Pass,
    policy: &Policy,
    placement: &InstancePlacement,
    from: &Name,
    now_ms: u64,
) -> Result<Fit, String> {
    let want = moves::criteria(
        placement.criteria.as_ref(),
        snapshot.nodes.iter().find(|n| &n.node == from),
    );
    let mut candidates = Vec::new();
    let mut unseen = Vec::new();
    for node in &snapshot.nodes {
        if placement
            .holders
            .iter()
            .any(|h| h.live && h.node == node.node)
        {
            continue;
        }
        if !schedulable(node, policy, now_ms) {
            unseen.push(node.node.as_str());
            continue;
        }
        let mut n = node.clone();
        n.allocated_instances = n.allocated_instances.saturating_add(pass.taken_on(&n.node));
        candidates.push(n);
    }
    let unseen_words = || {
        format!(
            "not seen within {} s: {}",
            policy.stale_after_ms / 1000,
            unseen.join(", ")
        )
    };
    if candidates.is_empty() {
        return Err(if unseen.is_empty() {
            "no other node".into()
        } else {
            format!("no node fits: {}", unseen_words())
        });
    }
    match alloc::pick(&candidates, &want, now_ms, policy.stale_after_ms) {
        Ok(name) => {
            let n = candidates
                .iter()
                .find(|c| c.node == name)
                .ok_or_else(|| format!("{name} vanished from the candidates"))?;
            Ok(Fit {
                line: format!(
                    "{name} fits {}, {} of {} slots used",
                    criteria_words(&want),
                    n.allocated_instances,
                    n.capacity_instances
                ),
                node: name,
            })
        }
        Err(e @ AllocError::NoCandidate { .. }) if !unseen.is_empty() => {
            Err(format!("{e}; {}", unseen_words()))
        }
        Err(e) => Err(e.to_string()),
    }
}
