//! Restores placed by `hedge master restore`, in SQLite, over table `restores` (kept by
//! `backups`: target, instance, source, snapshot, the unsealed key, opened_ms).
//!
//! Contract: keeps [`crate::restore`]'s rules. [`place`] opens a restore (closing every
//! other open restore of the instance, onto any node) and places the instance on its
//! target in the same transaction; [`directives`] runs in every desired-state write,
//! before signing: the state carries the directive of each open restore whose target it
//! is and whose instance it holds live, and closes the others whose target it is;
//! [`note_record`] closes a restore when its target's `Restored` record for that
//! snapshot is stored. Closing deletes the row, key included (with `secure_delete`, set
//! at open: the key's bytes are overwritten in the page; older copies of the page in
//! the WAL go at the next checkpoint, and a backup taken meanwhile holds the key).

use hedge_wire::backup::{BackupEvent, RestoreDirective, SnapshotId};
use hedge_wire::{DesiredState, Name, RecordKind, RequestedState};
use rusqlite::{params, Connection, Transaction};

use super::super::blob::name;
use super::super::{OpenRestore, Result, StoreError};
use super::moves;
use super::place::write_desired;
use super::sql::{from_sql, time_of_sql, time_sql};
use crate::moves::MoveRequest;
use crate::restore::{RestoreRequest, Restoring};

/// A snapshot id as `backups` stores it: its 64 bits as SQLite's signed integer.
fn id_sql(id: SnapshotId) -> i64 {
    time_sql(id.0)
}

type Row = (String, String, String, i64, i64);

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn open_of((target, instance, source, snapshot, _opened): Row) -> Result<OpenRestore> {
    Ok(OpenRestore {
        target: name(target)?,
        instance: name(instance)?,
        source: name(source)?,
        snapshot: SnapshotId(time_of_sql(snapshot)),
    })
}

const COLUMNS: &str = "SELECT target, instance, source, snapshot, opened_ms FROM restores";

/// Every open restore, by target then instance.
pub(super) fn all(conn: &Connection) -> Result<Vec<OpenRestore>> {
    let rows = conn
        .prepare_cached(&format!("{COLUMNS} ORDER BY target, instance"))?
        .query_map([], row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter().map(open_of).collect()
}

/// Open restores of `instance`, onto any node.
fn of_instance(conn: &Connection, instance: &Name) -> Result<Vec<(OpenRestore, u64)>> {
    let rows = conn
        .prepare_cached(&format!("{COLUMNS} WHERE instance = ?1 ORDER BY target"))?
        .query_map([instance.as_str()], row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter()
        .map(|r| {
            let opened = from_sql(r.4);
            Ok((open_of(r)?, opened))
        })
        .collect()
}

/// Sets `d.restores` for the state `d` about to be signed and stored (see the module
/// doc).
pub(super) fn directives(tx: &Transaction<'_>, d: &mut DesiredState) -> Result<()> {
    let rows = tx
        .prepare_cached(&format!("{COLUMNS} WHERE target = ?1 ORDER BY instance"))?
        .query_map([d.node.as_str()], row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut out = Vec::new();
    for r in rows {
        let open = open_of(r)?;
        let live = d
            .instances
            .iter()
            .any(|i| i.name == open.instance && i.state != RequestedState::Destroyed);
        if live {
            out.push(RestoreDirective {
                instance: open.instance,
                source: open.source,
                snapshot: open.snapshot,
            });
        } else {
            tx.execute(
                "DELETE FROM restores WHERE target = ?1 AND instance = ?2",
                params![d.node.as_str(), open.instance.as_str()],
            )?;
        }
    }
    d.restores = out;
    Ok(())
}

/// Closes the open restore a stored record of `node` reports done: a `Backup` record of
/// event `Restored` for the snapshot of the restore open onto `node`.
pub(super) fn note_record(tx: &Connection, node: &Name, kind: &RecordKind) -> Result<()> {
    let RecordKind::Backup {
        instance,
        snapshot,
        event: BackupEvent::Restored { source },
        ..
    } = kind
    else {
        return Ok(());
    };
    tx.execute(
        "DELETE FROM restores
         WHERE target = ?1 AND instance = ?2 AND snapshot = ?3 AND source = ?4",
        params![
            node.as_str(),
            instance.as_str(),
            id_sql(*snapshot),
            source.as_str()
        ],
    )?;
    Ok(())
}

/// The body of [`super::super::FleetStore::place_restore`].
pub(super) fn place(
    tx: &Transaction<'_>,
    r: &RestoreRequest,
    now_ms: u64,
    stale_after_ms: u64,
    sign: &dyn Fn(&mut DesiredState),
) -> Result<Restoring> {
    let instance = &r.instance;
    let holders = moves::holders(tx, instance)?;
    let owner = crate::moves::owner(&holders)
        .cloned()
        .ok_or_else(|| StoreError::NotPlaced {
            instance: instance.clone(),
            node: None,
        })?;
    let replaced = of_instance(tx, instance)?
        .into_iter()
        .max_by_key(|(_, opened)| *opened)
        .map(|(o, _)| o);
    tx.execute(
        "DELETE FROM restores WHERE instance = ?1",
        [instance.as_str()],
    )?;
    tx.execute(
        "INSERT INTO restores (target, instance, source, snapshot, key, opened_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            r.target.as_str(),
            instance.as_str(),
            r.source.as_str(),
            id_sql(r.snapshot),
            r.key.as_slice(),
            time_sql(now_ms)
        ],
    )?;
    if owner.node == r.target {
        let (state, _) = write_desired(tx, &r.target, |v| v, sign)?;
        return Ok(Restoring {
            state,
            moved_from: None,
            replaced,
        });
    }
    let moved = moves::move_instance(
        tx,
        &MoveRequest {
            instance: instance.clone(),
            from: owner.node.clone(),
            to: Some(r.target.clone()),
            fenced: true,
            reason: format!("restore from snapshot {} taken on {}", r.snapshot, r.source),
            incident: None,
            budget: None,
        },
        now_ms,
        stale_after_ms,
        sign,
    )?;
    Ok(Restoring {
        state: moved.state,
        moved_from: moved.destroyed_on,
        replaced,
    })
}
