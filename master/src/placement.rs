//! Placing an instance request: where it goes, what a move destroys, when a destroyed
//! instance leaves a desired state, and the signed request `hedge master request` makes.
//!
//! Contract (the rules every [`FleetStore`] backend applies in the one transaction of
//! [`FleetStore::place`], so concurrent masters serialize and a node's capacity is
//! never over-filled):
//! - Sticky: a name lives on one node. Without a node named, a request goes where the
//!   name lives (where it is live, else the first node holding it destroyed); a new
//!   name is allocated ([`crate::alloc::pick`]) ([`target`]). While a move hands an
//!   instance over ([`crate::moves`]), "where it lives" is its owner's node (the live
//!   copy with the highest fence), and the old copy is left to its handover.
//! - Moves: requested on another node (`--node B` for an instance on A), the name is
//!   *moved*: in the same transaction A's state gets it `destroyed` and B's gets the
//!   request ([`moved_from`]). A destroys it as soon as it applies its new state, without
//!   waiting for B to run it: an instance owns a partition and whatever it drives or
//!   bills, and two live copies are worse than a gap; the master cannot tell whether B
//!   will ever run it. Make-before-break is for the operator to do with a second name.
//! - A `destroyed` request must name the node the instance is on, or none; else
//!   [`StoreError::NotPlaced`]. A name no node's state holds may be destroyed on the
//!   node it names: after `hedge master recover`, nodes hold over instances the
//!   restored store forgot (`hedge_runtime::holdover`), and only a request naming them
//!   removes them.
//! - Pruning: before each write, an instance requested `destroyed` is pruned from the
//!   node's state once the node has reported it destroyed (an `InstanceState` record
//!   with status `Destroyed`) *after* accepting a generation at or above the one that
//!   destroyed it ([`applied_at`]). An older report (a previous life of the name, or of
//!   the node) never prunes. An instance destroyed before its node ever held it is never
//!   reported destroyed and so stays in the state, destroyed.
//! - A state whose signed, framed encoding exceeds the frame limit is refused
//!   ([`StoreError::TooLarge`]) and nothing of the transaction is stored.
//!
//! [`request`] is what `hedge master request` does once its arguments are parsed: it
//! places the request, signing each state written with the master's key at the time of
//! signing, and tells refusals ([`PlaceError::Refused`]: the operator's request cannot
//! be met, nothing stored) from failures of the store. [`report`] is what it prints.

use hedge_wire::backup::BackupPolicy;
use hedge_wire::{DesiredState, InstanceRequest, Name};

use crate::alloc::Placement;
use crate::sign::{sign, MasterKey};
use crate::store::{FleetStore, Placed, StoreError};

/// Where a request goes, before allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The node the name lives on.
    On(Name),
    /// A node allocation picks (the one named, if the placement names one).
    Allocate,
}

/// Where a request for `instance` goes, given the nodes whose desired state holds it
/// (`holders`: node, and whether it is live there) and whether it is a `destroyed`
/// request. See the module doc.
pub fn target(
    instance: &Name,
    holders: &[(Name, bool)],
    placement: &Placement,
    destroy: bool,
) -> Result<Target, StoreError> {
    match &placement.node {
        Some(n) if destroy && holders.is_empty() => Ok(Target::On(n.clone())),
        Some(n) if destroy && !holders.iter().any(|(h, _)| h == n) => Err(StoreError::NotPlaced {
            instance: instance.clone(),
            node: Some(Box::new(n.clone())),
        }),
        Some(_) => Ok(Target::Allocate),
        None => match holders.iter().find(|(_, live)| *live).or(holders.first()) {
            Some((n, _)) => Ok(Target::On(n.clone())),
            None if destroy => Err(StoreError::NotPlaced {
                instance: instance.clone(),
                node: None,
            }),
            None => Ok(Target::Allocate),
        },
    }
}

/// The holders a request placed on `target` moves the instance off: those where it is
/// live, other than `target`, in `holders`' order.
pub fn moved_from(holders: &[(Name, bool)], target: &Name) -> Vec<Name> {
    holders
        .iter()
        .filter(|(node, live)| *live && node != target)
        .map(|(node, _)| node.clone())
        .collect()
}

/// Where (a `(life, seq)` position in the node's records) the node first accepted a
/// generation at or above `since`, the one that destroyed an instance; `accepted` holds
/// the position and generation of every accepted `Desired` record. Only a `Destroyed`
/// report after that position prunes the instance. `None`: not applied yet.
pub fn applied_at(accepted: &[((i64, i64), u64)], since: u64) -> Option<(i64, i64)> {
    accepted
        .iter()
        .filter(|(_, g)| *g >= since)
        .map(|(pos, _)| *pos)
        .min()
}

/// Why [`request`] placed nothing.
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    /// The request cannot be met as asked (no node fits, the state would be too large
    /// to deliver, a destroy names a node the instance is not on, a move breaks a rule
    /// of [`crate::moves`], the request breaks a wire rule); nothing was stored.
    #[error(transparent)]
    Refused(StoreError),
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for PlaceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Alloc(_)
            | StoreError::Move(_)
            | StoreError::TooLarge { .. }
            | StoreError::NotPlaced { .. }
            | StoreError::Invalid(_) => PlaceError::Refused(e),
            e => PlaceError::Store(e),
        }
    }
}

/// Places `request` in `store` with its backup policy (`None` removes it:
/// [`FleetStore::place_with_backup`]), signing every state written with `key` at
/// `now_ms()` when it is signed.
pub fn request<S: FleetStore>(
    store: &S,
    key: &MasterKey,
    request: InstanceRequest,
    backup: Option<&BackupPolicy>,
    placement: &Placement,
    stale_after_ms: u64,
    now_ms: impl Fn() -> u64,
) -> Result<Placed, PlaceError> {
    Ok(store.place_with_backup(
        request,
        backup,
        placement,
        now_ms(),
        stale_after_ms,
        |d: &mut DesiredState| sign(key, d, now_ms()),
    )?)
}

/// One line of what `hedge master request` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// On standard output.
    Out(String),
    /// On standard error.
    Err(String),
}

/// What `hedge master request` prints about `placed`, the placement of `name`, in order.
pub fn report(name: &Name, placed: &Placed) -> Vec<Line> {
    let mut out = Vec::new();
    for (node, generation) in &placed.destroyed_on {
        out.push(Line::Out(format!(
            "{name} destroyed on {node} (generation {generation}): moved"
        )));
    }
    for (node, pruned) in &placed.pruned {
        out.push(Line::Err(format!(
            "{pruned} pruned from {node}'s desired state (destroyed, reported destroyed)"
        )));
    }
    out.push(Line::Out(format!(
        "{name} requested on {} (generation {}); `hedge master run` publishes it",
        placed.state.node, placed.state.generation
    )));
    if let Some(b) = placed.state.backup_of(name) {
        out.push(Line::Out(format!(
            "{name} backed up every {} s, {} kept, paths {}{}",
            b.interval_s,
            b.retain,
            b.paths.join(" "),
            if b.command.is_empty() {
                String::new()
            } else {
                format!(", after `{}`", b.command.join(" "))
            }
        )));
    }
    out
}

#[cfg(test)]
mod tests;
