//! Cross-node connection parameters in SQLite: the imports of a state being written,
//! and re-signing the states whose imports changed.
//!
//! Contract: keeps the rules of [`crate::imports`]; this file reads what they need
//! (every other node's stored state, the owner's latest `ConnectionParameters` record
//! of an instance, through the `records_by_tag` index) inside the caller's transaction.
//! [`imports_for`] is called by every state write (`place::write_desired`);
//! [`stale`] finds, in one read, the nodes whose stored imports are out of date (or
//! held back by a `destroyed` name that pruning may remove), and
//! [`refresh_node`] writes a new signed state for one of them only when (checked again
//! in its write transaction) the imports it would carry differ from its stored
//! state's.

use hedge_wire::{DesiredState, Import, InstanceRequest, Name, RecordKind};
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::super::blob::{self, decode};
use super::super::Result;
use super::desired::stored_desired;
use super::place::{prunable, write_desired};
use super::sql::from_sql;
use crate::imports::{self as rules, Parameters, Published};

/// The imports `node`'s state carries when it holds `instances`.
pub(super) fn imports_for(
    tx: &Connection,
    node: &Name,
    instances: &[InstanceRequest],
) -> Result<Vec<Import>> {
    let states = all_states(tx)?;
    imports_among(tx, node, instances, &states)
}

/// The nodes whose stored state carries other imports than it would now: one read of
/// every state, for [`refresh_node`] to write (each in its own transaction).
pub(super) fn stale(conn: &Connection) -> Result<Vec<Name>> {
    let states = all_states(conn)?;
    let mut out = Vec::new();
    for d in &states {
        let owners = rules::owners(states.iter().filter(|o| o.node != d.node));
        if rules::blocked(&d.node, &d.instances, &owners)
            || imports_among(conn, &d.node, &d.instances, &states)? != d.imports
        {
            out.push(d.node.clone());
        }
    }
    Ok(out)
}

/// [`imports_for`] given every stored state (`node`'s own is not asked who owns what:
/// it is being replaced).
fn imports_among(
    conn: &Connection,
    node: &Name,
    instances: &[InstanceRequest],
    states: &[DesiredState],
) -> Result<Vec<Import>> {
    let holders = rules::holders(states.iter().filter(|d| &d.node != node));
    let owners = rules::owners(states.iter().filter(|d| &d.node != node));
    let mut failed = None;
    let imports =
        rules::imports(
            node,
            instances,
            &owners,
            &holders,
            |instance, owner| match latest_published(conn, instance, owner) {
                Ok(p) => p,
                Err(e) => {
                    failed.get_or_insert(e);
                    None
                }
            },
        );
    match failed {
        Some(e) => Err(e),
        None => Ok(imports),
    }
}

/// Writes a new state for `node`, signed with `sign`, when the imports it would carry
/// differ from its stored state's; returns the new generation if it wrote one.
pub(super) fn refresh_node(
    tx: &Transaction<'_>,
    node: &Name,
    sign: &dyn Fn(&mut DesiredState),
) -> Result<Option<u64>> {
    let Some(current) = stored_desired(tx, node)? else {
        return Ok(None);
    };
    // As the write would see them: less what it prunes (a destroyed name that kept an
    // import out, once the node reported it destroyed).
    let prune = prunable(tx, &current)?;
    let kept: Vec<InstanceRequest> = current
        .instances
        .iter()
        .filter(|r| !prune.contains(&r.name))
        .cloned()
        .collect();
    if imports_for(tx, node, &kept)? == current.imports {
        return Ok(None);
    }
    let (d, _) = write_desired(tx, node, |v| v, sign)?;
    Ok(Some(d.generation))
}

/// Every stored state, by node.
fn all_states(conn: &Connection) -> Result<Vec<DesiredState>> {
    let nodes = conn
        .prepare_cached("SELECT node FROM desired ORDER BY node")?
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut out = Vec::with_capacity(nodes.len());
    for n in nodes {
        if let Some(d) = stored_desired(conn, &blob::name(n)?)? {
            out.push(d);
        }
    }
    Ok(out)
}

/// The newest `ConnectionParameters` record of node `?1` for instance `?2`.
pub(super) const LATEST_PUBLISHED: &str = "SELECT e.life, r.seq, r.kind
    FROM records r INDEXED BY records_by_tag
    JOIN epochs e ON e.node = r.node AND e.epoch = r.epoch
    WHERE r.kind_tag = 'connection_parameters' AND r.node = ?1 AND r.instance = ?2
    AND r.kind_tag <> 'usage' ORDER BY e.life DESC, r.seq DESC LIMIT 1";

/// What `owner` last published for `instance` (highest (life, seq) of its records).
fn latest_published(tx: &Connection, instance: &Name, owner: &Name) -> Result<Option<Parameters>> {
    let row: Option<(i64, i64, Vec<u8>)> = tx
        .prepare_cached(LATEST_PUBLISHED)?
        .query_row(params![owner.as_str(), instance.as_str()], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    let Some((life, seq, kind)) = row else {
        return Ok(None);
    };
    let RecordKind::ConnectionParameters {
        instance: named,
        parameters,
    } = decode("record", owner.as_str(), &kind)?
    else {
        return Ok(None);
    };
    if &named != instance {
        return Ok(None);
    }
    let record = Published {
        node: owner.clone(),
        at: (u32::try_from(life).unwrap_or(0), from_sql(seq)),
        parameters,
    };
    Ok(rules::latest(owner, [&record]).cloned())
}
