//! Backups in SQLite: the blob service's snapshots (`snapshots`), its per-node counters
//! (`blob_nodes`) and open restores (`restores`).
//!
//! Contract: a snapshot is stored once per `(node, instance, id)` (a second put changes
//! nothing); its header is kept as postcard, its id list stays a file of the blob
//! directory (the row names it). Counters only grow, except the stored bytes a sweep
//! sets. One open restore per `(target, instance)`; closing it erases its key.

use hedge_wire::backup::{SnapshotHeader, SnapshotId};
use hedge_wire::Name;
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::super::blob::{decode, encode, name};
use super::super::{BlobCounters, OpenRestore, Result, StoreError, StoredSnapshot};
use super::sql::{clamp_sql, from_sql, time_of_sql, time_sql};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS snapshots (
    node        TEXT    NOT NULL,
    instance    TEXT    NOT NULL,
    id          INTEGER NOT NULL,
    taken_ms    INTEGER NOT NULL,
    consistency TEXT    NOT NULL,
    bytes       INTEGER NOT NULL,
    new_bytes   INTEGER NOT NULL,
    chunks      INTEGER NOT NULL,
    stored_ms   INTEGER NOT NULL,
    ids         TEXT    NOT NULL,
    header      BLOB    NOT NULL,
    PRIMARY KEY (node, instance, id)
);
CREATE TABLE IF NOT EXISTS blob_nodes (
    node           TEXT PRIMARY KEY,
    bytes          INTEGER NOT NULL DEFAULT 0,
    chunk_puts     INTEGER NOT NULL DEFAULT 0,
    duplicate_puts INTEGER NOT NULL DEFAULT 0,
    refused        INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS restores (
    target    TEXT    NOT NULL,
    instance  TEXT    NOT NULL,
    source    TEXT    NOT NULL,
    snapshot  INTEGER NOT NULL,
    key       BLOB    NOT NULL,
    opened_ms INTEGER NOT NULL,
    PRIMARY KEY (target, instance)
);
";

/// A snapshot id as stored: its 64 bits as SQLite's signed integer.
fn id_sql(id: SnapshotId) -> i64 {
    time_sql(id.0)
}

fn id_of_sql(v: i64) -> SnapshotId {
    SnapshotId(time_of_sql(v))
}

fn consistency_text(c: hedge_wire::backup::Consistency) -> &'static str {
    use hedge_wire::backup::Consistency::*;
    match c {
        Frozen => "frozen",
        Command => "command",
        Live => "live",
    }
}

fn consistency_of(s: &str) -> Result<hedge_wire::backup::Consistency> {
    use hedge_wire::backup::Consistency::*;
    Ok(match s {
        "frozen" => Frozen,
        "command" => Command,
        "live" => Live,
        other => return Err(StoreError::BadName(other.to_owned())),
    })
}

pub(super) fn put(
    tx: &Transaction<'_>,
    s: &StoredSnapshot,
    header: &SnapshotHeader,
) -> Result<bool> {
    let blob = encode("snapshot header", header)?;
    let n = tx.execute(
        "INSERT OR IGNORE INTO snapshots
         (node, instance, id, taken_ms, consistency, bytes, new_bytes, chunks, stored_ms, ids, header)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            s.node.as_str(),
            s.instance.as_str(),
            id_sql(s.id),
            time_sql(s.taken_ms),
            consistency_text(s.consistency),
            clamp_sql(s.bytes),
            clamp_sql(s.new_bytes),
            clamp_sql(s.chunks),
            time_sql(s.stored_ms),
            s.ids,
            blob
        ],
    )?;
    Ok(n == 1)
}

type Row = (String, String, i64, i64, String, i64, i64, i64, i64, String);

pub(super) fn all(conn: &Connection) -> Result<Vec<StoredSnapshot>> {
    let mut stmt = conn.prepare_cached(
        "SELECT node, instance, id, taken_ms, consistency, bytes, new_bytes, chunks, stored_ms, ids
         FROM snapshots",
    )?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
                r.get(9)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<Row>>>()?;
    let mut out = rows
        .into_iter()
        .map(
            |(node, instance, id, taken, c, bytes, new_bytes, chunks, stored, ids)| {
                Ok(StoredSnapshot {
                    node: name(node)?,
                    instance: name(instance)?,
                    id: id_of_sql(id),
                    taken_ms: time_of_sql(taken),
                    consistency: consistency_of(&c)?,
                    bytes: from_sql(bytes),
                    new_bytes: from_sql(new_bytes),
                    chunks: from_sql(chunks),
                    stored_ms: time_of_sql(stored),
                    ids,
                })
            },
        )
        .collect::<Result<Vec<_>>>()?;
    out.sort_by(|a, b| {
        (&a.node, &a.instance, a.taken_ms, a.id).cmp(&(&b.node, &b.instance, b.taken_ms, b.id))
    });
    Ok(out)
}

pub(super) fn header(
    conn: &Connection,
    node: &Name,
    instance: &Name,
    id: SnapshotId,
) -> Result<Option<SnapshotHeader>> {
    let blob: Option<Vec<u8>> = conn
        .query_row(
            "SELECT header FROM snapshots WHERE node = ?1 AND instance = ?2 AND id = ?3",
            params![node.as_str(), instance.as_str(), id_sql(id)],
            |r| r.get(0),
        )
        .optional()?;
    blob.map(|b| decode("snapshot header", node.as_str(), &b))
        .transpose()
}

pub(super) fn forget(
    tx: &Transaction<'_>,
    node: &Name,
    which: &[(Name, SnapshotId)],
) -> Result<()> {
    for (instance, id) in which {
        tx.execute(
            "DELETE FROM snapshots WHERE node = ?1 AND instance = ?2 AND id = ?3",
            params![node.as_str(), instance.as_str(), id_sql(*id)],
        )?;
    }
    Ok(())
}

fn ensure_node(tx: &Transaction<'_>, node: &Name) -> Result<()> {
    tx.execute(
        "INSERT OR IGNORE INTO blob_nodes (node) VALUES (?1)",
        [node.as_str()],
    )?;
    Ok(())
}

pub(super) fn count_put(
    tx: &Transaction<'_>,
    node: &Name,
    added: u64,
    duplicate: bool,
) -> Result<()> {
    ensure_node(tx, node)?;
    if duplicate {
        tx.execute(
            "UPDATE blob_nodes SET duplicate_puts = duplicate_puts + 1 WHERE node = ?1",
            [node.as_str()],
        )?;
    } else {
        tx.execute(
            "UPDATE blob_nodes SET chunk_puts = chunk_puts + 1,
             bytes = MIN(bytes + ?2, 9223372036854775807) WHERE node = ?1",
            params![node.as_str(), clamp_sql(added)],
        )?;
    }
    Ok(())
}

pub(super) fn count_refused(tx: &Transaction<'_>, node: &Name) -> Result<()> {
    ensure_node(tx, node)?;
    tx.execute(
        "UPDATE blob_nodes SET refused = refused + 1 WHERE node = ?1",
        [node.as_str()],
    )?;
    Ok(())
}

pub(super) fn set_bytes(tx: &Transaction<'_>, node: &Name, bytes: u64) -> Result<()> {
    ensure_node(tx, node)?;
    tx.execute(
        "UPDATE blob_nodes SET bytes = ?2 WHERE node = ?1",
        params![node.as_str(), clamp_sql(bytes)],
    )?;
    Ok(())
}

pub(super) fn counters(conn: &Connection) -> Result<Vec<BlobCounters>> {
    let mut stmt = conn.prepare_cached(
        "SELECT node, bytes, chunk_puts, duplicate_puts, refused FROM blob_nodes ORDER BY node",
    )?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter()
        .map(|(node, bytes, puts, dups, refused)| {
            Ok(BlobCounters {
                node: name(node)?,
                bytes: from_sql(bytes),
                chunk_puts: from_sql(puts),
                duplicate_puts: from_sql(dups),
                refused: from_sql(refused),
            })
        })
        .collect()
}

pub(super) fn restore_for(
    conn: &Connection,
    target: &Name,
    instance: &Name,
    snapshot: SnapshotId,
) -> Result<Option<(Name, [u8; 32])>> {
    let row: Option<(String, Vec<u8>)> = conn
        .query_row(
            "SELECT source, key FROM restores WHERE target = ?1 AND instance = ?2 AND snapshot = ?3",
            params![target.as_str(), instance.as_str(), id_sql(snapshot)],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((source, key)) = row else {
        return Ok(None);
    };
    let key: [u8; 32] = key
        .as_slice()
        .try_into()
        .map_err(|_| StoreError::BadName(format!("restore key of {target}/{instance}")))?;
    Ok(Some((name(source)?, key)))
}

pub(super) fn restores_from(conn: &Connection, source: &Name) -> Result<Vec<OpenRestore>> {
    let mut stmt = conn.prepare_cached(
        "SELECT target, instance, snapshot FROM restores WHERE source = ?1 ORDER BY target, instance",
    )?;
    let rows = stmt
        .query_map([source.as_str()], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter()
        .map(|(target, instance, snapshot)| {
            Ok(OpenRestore {
                target: name(target)?,
                instance: name(instance)?,
                source: source.clone(),
                snapshot: id_of_sql(snapshot),
            })
        })
        .collect()
}

pub(super) fn open(
    tx: &Transaction<'_>,
    r: &OpenRestore,
    key: &[u8; 32],
    now_ms: u64,
) -> Result<()> {
    tx.execute(
        "INSERT OR REPLACE INTO restores (target, instance, source, snapshot, key, opened_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            r.target.as_str(),
            r.instance.as_str(),
            r.source.as_str(),
            id_sql(r.snapshot),
            key.as_slice(),
            time_sql(now_ms)
        ],
    )?;
    Ok(())
}

pub(super) fn close(tx: &Transaction<'_>, target: &Name, instance: &Name) -> Result<()> {
    tx.execute(
        "DELETE FROM restores WHERE target = ?1 AND instance = ?2",
        params![target.as_str(), instance.as_str()],
    )?;
    Ok(())
}
