//! Cross-node connection parameters: which published values a node's desired state
//! must carry (`DesiredState::imports`).
//!
//! Contract: pure (the store reads the states and records, signs and writes). An
//! instance references another by name, fleet-wide, with the node's usual
//! `{{other.key}}` syntax (`hedge_wire::template::references`). [`owners`] says which
//! node owns each instance: the node whose desired state holds it live (not
//! `destroyed`); when several do (a handover in progress), the one with the highest
//! fence in its state's terms, then the first by name ([`holders`] lists them all). [`wanted`] lists, for one node,
//! the instances its live requests reference that another node owns, with that owner
//! (an instance the node holds itself resolves on the node, never through an import).
//! [`latest`] picks an instance's parameters from `ConnectionParameters` records: only
//! the owner's count (a node publishing for an instance it does not own changes
//! nothing), and "latest" is the highest (life, seq) among them. [`imports`] puts them
//! together; while the owner has published nothing, the next holder's record serves
//! (the old copy of a handover still runs); an instance none of whose holders has
//! published is not imported, and its consumers wait on the node until it is. A state never imports a name it carries
//! itself (the wire refuses it), not even a `destroyed` one ([`blocked`] tells the
//! store when pruning such a name would let an import in), and carries at most
//! `MAX_IMPORTS`.

use std::collections::{BTreeMap, BTreeSet};

use hedge_wire::limits::MAX_IMPORTS;
use hedge_wire::template::references;
use hedge_wire::{DesiredState, Import, InstanceRequest, Name, RequestedState};

/// Parameters as published: key → value.
pub type Parameters = BTreeMap<String, String>;

/// One stored `ConnectionParameters` record: the node that sent it, its (life, seq) at
/// that node, and what it published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The node that sent the record.
    pub node: Name,
    /// The node's life and the record's seq in it.
    pub at: (u32, u64),
    /// The parameters published.
    pub parameters: Parameters,
}

/// Every node that holds each instance live, best first: highest fence in its state's
/// terms, then by name. The first is the owner ([`owners`]); the others are copies a
/// handover has not removed yet.
pub fn holders<'a>(
    states: impl IntoIterator<Item = &'a DesiredState>,
) -> BTreeMap<Name, Vec<Name>> {
    let mut all: BTreeMap<Name, Vec<(std::cmp::Reverse<u64>, Name)>> = BTreeMap::new();
    for d in states {
        for r in d
            .instances
            .iter()
            .filter(|r| r.state != RequestedState::Destroyed)
        {
            let fence = d.terms_of(&r.name).map_or(0, |t| t.fence);
            all.entry(r.name.clone())
                .or_default()
                .push((std::cmp::Reverse(fence), d.node.clone()));
        }
    }
    all.into_iter()
        .map(|(i, mut h)| {
            h.sort();
            (i, h.into_iter().map(|(_, n)| n).collect())
        })
        .collect()
}

/// The owning node of every instance some state holds live (the first of [`holders`]).
pub fn owners<'a>(states: impl IntoIterator<Item = &'a DesiredState>) -> BTreeMap<Name, Name> {
    holders(states)
        .into_iter()
        .filter_map(|(i, h)| h.into_iter().next().map(|n| (i, n)))
        .collect()
}

/// `(instance, owner)` of every instance that `node`'s live `instances` reference and
/// another node owns, by instance; never one the state names (even `destroyed`).
pub fn wanted(
    node: &Name,
    instances: &[InstanceRequest],
    owners: &BTreeMap<Name, Name>,
) -> Vec<(Name, Name)> {
    // Every name the state carries, destroyed ones too: a state never imports one.
    let here: BTreeSet<&Name> = instances.iter().map(|r| &r.name).collect();
    let referenced = referenced(instances);
    referenced
        .into_iter()
        .filter_map(|other| Name::new(&other).ok())
        .filter(|other| !here.contains(other))
        .filter_map(|other| {
            let owner = owners.get(&other)?;
            (owner != node).then(|| (other, owner.clone()))
        })
        .collect()
}

/// Whether a live instance of `node` references an instance another node owns that the
/// state still names `destroyed` (moved away): [`wanted`] skips it until the node's
/// state is written without it (pruned once the node reported it destroyed).
pub fn blocked(node: &Name, instances: &[InstanceRequest], owners: &BTreeMap<Name, Name>) -> bool {
    let referenced = referenced(instances);
    instances
        .iter()
        .filter(|r| r.state == RequestedState::Destroyed)
        .any(|r| {
            referenced.contains(r.name.as_str()) && owners.get(&r.name).is_some_and(|o| o != node)
        })
}

/// What the live (not `destroyed`) requests of `instances` reference.
fn referenced(instances: &[InstanceRequest]) -> BTreeSet<String> {
    instances
        .iter()
        .filter(|r| r.state != RequestedState::Destroyed)
        .flat_map(references)
        .collect()
}

/// The parameters of the owner's latest record (highest (life, seq)); records of other
/// nodes are ignored.
pub fn latest<'a>(
    owner: &Name,
    records: impl IntoIterator<Item = &'a Published>,
) -> Option<&'a Parameters> {
    records
        .into_iter()
        .filter(|p| &p.node == owner)
        .max_by_key(|p| p.at)
        .map(|p| &p.parameters)
}

/// The imports of `node`'s state: for each of [`wanted`], the parameters `published`
/// gives for (instance, owner), when it gives any; while the owner has published
/// nothing (a handover: the new copy is still starting), those of the next of
/// `holders` that has, so consumers keep the running old copy's values instead of
/// waiting. By instance, at most [`MAX_IMPORTS`] (the wire's bound: past it, the first
/// by name are kept and the consumers of the others wait).
pub fn imports(
    node: &Name,
    instances: &[InstanceRequest],
    owners: &BTreeMap<Name, Name>,
    holders: &BTreeMap<Name, Vec<Name>>,
    mut published: impl FnMut(&Name, &Name) -> Option<Parameters>,
) -> Vec<Import> {
    wanted(node, instances, owners)
        .into_iter()
        .filter_map(|(instance, owner)| {
            let others = holders
                .get(&instance)
                .into_iter()
                .flatten()
                .filter(|h| *h != &owner && *h != node);
            let parameters = published(&instance, &owner)
                .or_else(|| others.into_iter().find_map(|h| published(&instance, h)))?;
            Some(Import {
                instance,
                parameters,
            })
        })
        .take(MAX_IMPORTS)
        .collect()
}

#[cfg(test)]
mod tests;
