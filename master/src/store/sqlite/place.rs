//! Placement in SQLite: where an instance lives, moves and pruning, each inside the one
//! `BEGIN IMMEDIATE` transaction that stores the new state(s).
//!
//! Contract: keeps the rules of [`crate::placement`] (which picks the target and the
//! nodes a move destroys the instance on, and says when a destroyed instance is
//! pruned); this file reads what those rules need and writes their outcome. Table
//! `destroyed` remembers, per node and instance, the generation that destroyed it and
//! whether it was pruned since (so a pruned instance stays in the instances view as
//! the master's, destroyed).

use std::collections::BTreeSet;

use hedge_wire::backup::BackupPolicy;
use hedge_wire::{DesiredState, InstanceRequest, InstanceStatus, Name, RecordKind, RequestedState};
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::super::blob::{self, decode};
use super::super::{Placed, Result, StoreError};
use super::desired::{next_after, store_desired, stored_desired};
use super::fleet::load_nodes;
use super::moves;
use super::sql::{from_sql, seq_sql};
use crate::alloc::{self, Placement};
use crate::placement::{self as rules, Target};

/// The body of [`super::super::FleetStore::place`] (`backup: None`: the instance's
/// policy is kept) and [`super::super::FleetStore::place_with_backup`] (`Some`: set or
/// removed), inside the caller's transaction.
pub(super) fn place(
    tx: &Transaction<'_>,
    request: InstanceRequest,
    backup: Option<Option<&BackupPolicy>>,
    placement: &Placement,
    now_ms: u64,
    stale_after_ms: u64,
    sign: &dyn Fn(&mut DesiredState),
) -> Result<Placed> {
    let name = request.name.clone();
    let fenced = moves::holders(tx, &name)?;
    let holders = crate::moves::by_preference(&fenced);
    let destroy = request.state == RequestedState::Destroyed;
    let allocated = rules::target(&name, &holders, placement, destroy)?;
    let target = match &allocated {
        Target::On(node) => node.clone(),
        Target::Allocate => alloc::pick(&load_nodes(tx)?, placement, now_ms, stale_after_ms)?,
    };
    if !destroy {
        if allocated == Target::Allocate {
            moves::set_criteria(tx, &name, placement)?;
        }
        if !fenced.iter().any(|h| h.live && h.node == target) {
            moves::bump_fence(tx, &target, &name)?;
        }
        if let Some(lease_ms) = placement.lease_ms {
            super::leases::set(tx, &name, lease_ms)?;
        }
    }
    if let Some(policy) = backup {
        super::policies::set(tx, &name, policy)?;
    }
    let mut pruned = Vec::new();
    let (state, p) = write_desired(
        tx,
        &target,
        |mut v| {
            v.retain(|r| r.name != name);
            v.push(request);
            v
        },
        sign,
    )?;
    pruned.extend(p.into_iter().map(|i| (target.clone(), i)));
    let mut destroyed_on = Vec::new();
    for node in crate::moves::moved_off(&fenced, &target) {
        let (d, p) = destroy_on(tx, &node, &name, sign)?;
        pruned.extend(p.into_iter().map(|i| (node.clone(), i)));
        destroyed_on.push((node, d.generation));
    }
    Ok(Placed {
        state,
        destroyed_on,
        pruned,
    })
}

/// `(node, instance)` of every instance pruned from a desired state after its node
/// reported it destroyed (and not requested there again since).
pub(super) fn pruned(conn: &Connection) -> Result<Vec<(Name, Name)>> {
    let rows = conn
        .prepare_cached(
            "SELECT node, instance FROM destroyed WHERE pruned = 1 ORDER BY node, instance",
        )?
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter()
        .map(|(n, i)| Ok((blob::name(n)?, blob::name(i)?)))
        .collect()
}

/// Requests `name` `destroyed` in `node`'s state (a new generation, signed).
pub(super) fn destroy_on(
    tx: &Transaction<'_>,
    node: &Name,
    name: &Name,
    sign: &dyn Fn(&mut DesiredState),
) -> Result<(DesiredState, Vec<Name>)> {
    write_desired(
        tx,
        node,
        |mut v| {
            for r in v.iter_mut().filter(|r| &r.name == name) {
                r.state = RequestedState::Destroyed;
            }
            v
        },
        sign,
    )
}

/// The shared write path: prunes what `node` reported destroyed, maps the instances
/// with `f`, fills the imports (`sqlite::imports`), the terms (`moves`), the backup
/// policies (`policies`) and restore directives (`restores`), takes a new generation, signs, stores
/// (refusing what cannot be delivered) and tracks destroyed instances. Returns the state and the names pruned.
pub(super) fn write_desired<F, S>(
    tx: &Transaction<'_>,
    node: &Name,
    f: F,
    sign: S,
) -> Result<(DesiredState, Vec<Name>)>
where
    F: FnOnce(Vec<InstanceRequest>) -> Vec<InstanceRequest>,
    S: FnOnce(&mut DesiredState),
{
    let current = stored_desired(tx, node)?;
    let prune = match &current {
        Some(d) => prunable(tx, d)?,
        None => BTreeSet::new(),
    };
    let kept: Vec<InstanceRequest> = current
        .as_ref()
        .map(|d| d.instances.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|r| !prune.contains(&r.name))
        .collect();
    let generation = next_after(tx, node)?;
    let instances = f(kept);
    // Terms carry over for what the new state still names; imports are filled anew.
    let terms = current
        .as_ref()
        .map(|d| d.terms.clone())
        .unwrap_or_default();
    let carries = |n: &Name| instances.iter().any(|i| &i.name == n);
    let terms = terms.into_iter().filter(|t| carries(&t.instance)).collect();
    let imports = super::imports::imports_for(tx, node, &instances)?;
    let mut d = DesiredState {
        node: node.clone(),
        generation,
        terms,
        imports,
        backups: Vec::new(),
        restores: Vec::new(),
        instances,
        signature: heapless::Vec::new(),
        expires_ms: 0,
    };
    moves::fill_terms(tx, &mut d)?;
    // Backup policies and restore directives come from their tables.
    d.backups = super::policies::of_live(tx, &d.instances)?;
    super::restores::directives(tx, &mut d)?;
    sign(&mut d);
    if &d.node != node || d.generation != generation {
        return Err(StoreError::SignerChangedState(node.clone()));
    }
    store_desired(tx, &d)?;
    track_destroyed(tx, current.as_ref(), &d, &prune)?;
    Ok((d, prune.into_iter().collect()))
}

/// The generation from which `instance` has been `destroyed` on `d.node`; recorded as
/// `d.generation` when unknown (a state written by an older master or by
/// [`super::super::FleetStore::put_desired`]), which can only delay pruning.
fn destroyed_since(tx: &Transaction<'_>, d: &DesiredState, instance: &Name) -> Result<u64> {
    let g: Option<i64> = tx
        .query_row(
            "SELECT generation FROM destroyed WHERE node = ?1 AND instance = ?2",
            params![d.node.as_str(), instance.as_str()],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(g) = g {
        return Ok(from_sql(g));
    }
    tx.execute(
        "INSERT INTO destroyed (node, instance, generation) VALUES (?1, ?2, ?3)",
        params![d.node.as_str(), instance.as_str(), seq_sql(d.generation)?],
    )?;
    Ok(d.generation)
}

/// `Destroyed` instances of `d` that `d.node` reported destroyed after accepting a
/// generation at or above the one that destroyed them.
pub(super) fn prunable(tx: &Transaction<'_>, d: &DesiredState) -> Result<BTreeSet<Name>> {
    let mut out = BTreeSet::new();
    let destroyed: Vec<&Name> = d
        .instances
        .iter()
        .filter(|r| r.state == RequestedState::Destroyed)
        .map(|r| &r.name)
        .collect();
    if destroyed.is_empty() {
        return Ok(out);
    }
    let accepted = accepted(tx, &d.node)?;
    for instance in destroyed {
        let since = destroyed_since(tx, d, instance)?;
        let Some(applied_at) = rules::applied_at(&accepted, since) else {
            continue;
        };
        if reported_after(tx, &d.node, instance, applied_at, InstanceStatus::Destroyed)? {
            out.insert(instance.clone());
        }
    }
    Ok(out)
}

/// The `Desired` records of node `?1`, with their life.
pub(super) const ACCEPTED: &str = "SELECT e.life, r.seq, r.kind
    FROM records r INDEXED BY records_by_tag
    JOIN epochs e ON e.node = r.node AND e.epoch = r.epoch
    WHERE r.kind_tag = 'desired' AND r.node = ?1 AND r.kind_tag <> 'usage'";

/// The state reports of node `?1` for instance `?2` after `(life, seq)` `(?3, ?4)`.
pub(super) const REPORTED_AFTER: &str = "SELECT r.kind
    FROM records r INDEXED BY records_by_tag
    JOIN epochs e ON e.node = r.node AND e.epoch = r.epoch
    WHERE r.kind_tag = 'instance_state' AND r.node = ?1
    AND r.instance = ?2 AND (e.life, r.seq) > (?3, ?4) AND r.kind_tag <> 'usage'";

/// `((life, seq), generation)` of every generation `node` accepted (its `Desired`
/// records, ordered by the node's life, then by seq within it).
pub(super) fn accepted(tx: &Transaction<'_>, node: &Name) -> Result<Vec<((i64, i64), u64)>> {
    let node = node.as_str();
    let rows = tx
        .prepare_cached(ACCEPTED)?
        .query_map([node], |r| {
            Ok((
                (r.get::<_, i64>(0)?, r.get::<_, i64>(1)?),
                r.get::<_, Vec<u8>>(2)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut acc = Vec::new();
    for (seq, blob) in rows {
        if let RecordKind::Desired {
            generation,
            accepted: true,
            ..
        } = decode("record", node, &blob)?
        {
            acc.push((seq, generation));
        }
    }
    Ok(acc)
}

/// Whether `node` reported `instance` in `status` (an `InstanceState` record) after
/// the position `at` (life, seq) in its records.
pub(super) fn reported_after(
    tx: &Transaction<'_>,
    node: &Name,
    instance: &Name,
    at: (i64, i64),
    status: InstanceStatus,
) -> Result<bool> {
    let node = node.as_str();
    let reports = tx
        .prepare_cached(REPORTED_AFTER)?
        .query_map(params![node, instance.as_str(), at.0, at.1], |r| {
            r.get::<_, Vec<u8>>(0)
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for blob in reports {
        if let RecordKind::InstanceState { status: s, .. } = decode("record", node, &blob)? {
            if s == status {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Keeps table `destroyed` in step with a write of `new` over `old`: an instance that
/// becomes `destroyed` records the generation; one requested again is forgotten; a
/// pruned one is marked.
fn track_destroyed(
    tx: &Transaction<'_>,
    old: Option<&DesiredState>,
    new: &DesiredState,
    pruned: &BTreeSet<Name>,
) -> Result<()> {
    let node = new.node.as_str();
    let generation = seq_sql(new.generation)?;
    for r in &new.instances {
        if r.state == RequestedState::Destroyed {
            let was = old
                .and_then(|o| o.instances.iter().find(|o| o.name == r.name))
                .is_some_and(|o| o.state == RequestedState::Destroyed);
            if !was {
                tx.execute(
                    "INSERT INTO destroyed (node, instance, generation) VALUES (?1, ?2, ?3)
                     ON CONFLICT (node, instance) DO UPDATE SET
                         generation = excluded.generation, pruned = 0",
                    params![node, r.name.as_str(), generation],
                )?;
            }
        } else {
            tx.execute(
                "DELETE FROM destroyed WHERE node = ?1 AND instance = ?2",
                params![node, r.name.as_str()],
            )?;
        }
    }
    for name in pruned {
        if !new.instances.iter().any(|r| &r.name == name) {
            tx.execute(
                "UPDATE destroyed SET pruned = 1 WHERE node = ?1 AND instance = ?2",
                params![node, name.as_str()],
            )?;
        }
    }
    Ok(())
}
