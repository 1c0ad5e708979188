//! Ingest into SQLite: storing the rows of a checked batch, counting, and extending the
//! coverage of its `(node, epoch)`.
//!
//! Contract: [`ingest_in`] runs inside the caller's transaction or savepoint, which
//! commits; it keeps the ingest rules of [`super::FleetStore`] (idempotence, the quota,
//! lives, the integrity counters, the newest `NodeInfo`/`NodeHealth` for the registry,
//! the path of carried batches and the count of refused relayed batches).

use hedge_wire::{Name, Record, RecordKind};
use rusqlite::{params, Connection, OptionalExtension};

use super::super::blob::{decode, encode};
use super::super::ingest::{check, Row};
use super::super::{Batch, Ingested, Result, StoreError};
use super::fleet;
use super::sql::{clamp_sql, epoch_sql, from_sql, seq_sql, time_sql};
use crate::coverage::Coverage;

/// The body of [`super::FleetStore::ingest_within`], inside the caller's transaction or
/// savepoint, which commits.
pub(super) fn ingest_in(tx: &Connection, batch: &Batch) -> Result<Ingested> {
    let Batch {
        node,
        up,
        now_ms,
        max_bytes,
        ..
    } = batch;
    let (now_ms, max_bytes) = (*now_ms, *max_bytes);
    let checked = check(node, up)?;
    let epoch = epoch_sql(up.epoch);
    let bytes_before = stored_bytes(tx, node)?;
    if bytes_before >= max_bytes {
        return Err(StoreError::QuotaExceeded {
            node: node.clone(),
            stored: bytes_before,
            limit: max_bytes,
        });
    }
    tx.prepare_cached("INSERT OR IGNORE INTO nodes (node) VALUES (?1)")?
        .execute([node.as_str()])?;
    // A life not seen before gets the next number.
    tx.prepare_cached(
        "INSERT OR IGNORE INTO epochs (node, epoch, life, first_seen_ms)
         VALUES (?1, ?2, (SELECT COALESCE(MAX(life), 0) + 1 FROM epochs WHERE node = ?1), ?3)",
    )?
    .execute(params![node.as_str(), epoch, clamp_sql(now_ms)])?;
    let (life, newest_life): (i64, i64) = tx
        .prepare_cached(
            "SELECT e.life, (SELECT MAX(life) FROM epochs WHERE node = ?1)
         FROM epochs e WHERE e.node = ?1 AND e.epoch = ?2",
        )?
        .query_row(params![node.as_str(), epoch], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    let (mut duplicates, mut last_seq) = (0usize, 0i64);
    // The rows stored now, in the batch's order.
    let mut stored_rows: Vec<&Row<'_>> = Vec::with_capacity(checked.rows.len());
    let mut new_bytes = 0u64;
    let mut conflicts = 0usize;
    let mut forged = 0u64;
    let mut stale = 0usize;
    let mut judge = super::stale::Judge::new(node, epoch);
    let mut health: Option<(i64, &Record)> = None;
    let mut info: Option<(i64, &Record)> = None;
    let fresh = super::bulk::insert_records(tx, node.as_str(), epoch, &checked.rows)?;
    {
        let mut same_key = tx.prepare_cached(
            "SELECT time_ms, kind FROM records WHERE node = ?1 AND epoch = ?2 AND seq = ?3",
        )?;
        for (row, &fresh) in checked.rows.iter().zip(&fresh) {
            let (seq, record, blob) = (&row.seq, row.record, &row.blob);
            if !fresh {
                duplicates += 1;
                let (time_ms, kind): (i64, Vec<u8>) = same_key
                    .query_row(params![node.as_str(), epoch, seq], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })?;
                if time_ms != time_sql(record.time_ms) || &kind != blob {
                    conflicts += 1;
                }
                continue;
            }
            if batch.refused_relayed.contains(&record.seq) {
                forged += 1;
            }
            stored_rows.push(row);
            if judge.judge(tx, *seq, record)? {
                stale += 1;
            }
            new_bytes += u64::try_from(blob.len()).unwrap_or(u64::MAX);
            last_seq = last_seq.max(*seq);
            super::restores::note_record(tx, node, &record.kind)?;
            let newest = match record.kind {
                RecordKind::NodeHealth { .. } => &mut health,
                RecordKind::NodeInfo { .. } => &mut info,
                _ => continue,
            };
            if newest.is_none_or(|(s, _)| s < *seq) {
                *newest = Some((*seq, record));
            }
        }
    }
    let stored = stored_rows.len();
    let repeats = stored.saturating_sub(super::bulk::new_events(tx, node.as_str(), &stored_rows)?);
    if conflicts > 0 {
        tracing::warn!(node = %node, epoch = up.epoch, conflicts,
            "records delivered again with other content: two copies of one node life?");
    }

    if new_bytes > 0 {
        tx.prepare_cached("UPDATE node_bytes SET bytes = ?2 WHERE node = ?1")?
            .execute(params![
                node.as_str(),
                clamp_sql(bytes_before.saturating_add(new_bytes))
            ])?;
    }
    let mut coverage = load_coverage(tx, node, up.epoch)?;
    if let Some((from, to)) = checked.covers {
        coverage.add(from_sql(from), from_sql(to));
        tx.prepare_cached(
            "INSERT INTO coverage (node, epoch, acked, pending) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (node, epoch) DO UPDATE SET acked = excluded.acked,
                 pending = excluded.pending",
        )?
        .execute(params![
            node.as_str(),
            epoch,
            seq_sql(coverage.acked)?,
            encode("coverage", &coverage.pending)?
        ])?;
    }

    // `last_seq` and `epoch` follow the latest life; a new life starts them afresh.
    tx.prepare_cached(
        "UPDATE nodes SET first_seen_ms = COALESCE(first_seen_ms, ?2),
             last_seen_ms = MAX(COALESCE(last_seen_ms, ?2), ?2),
             records = records + ?3,
             last_seq = CASE WHEN ?6 < ?7 THEN last_seq
                 WHEN epoch IS ?5 THEN MAX(last_seq, ?4) ELSE ?4 END,
             epoch = CASE WHEN ?6 < ?7 THEN epoch ELSE ?5 END,
             repeats = repeats + ?8,
             conflicts = conflicts + ?9
         WHERE node = ?1",
    )?
    .execute(params![
        node.as_str(),
        clamp_sql(now_ms),
        i64::try_from(stored).unwrap_or(i64::MAX),
        last_seq,
        epoch,
        life,
        newest_life,
        i64::try_from(repeats).unwrap_or(i64::MAX),
        i64::try_from(conflicts).unwrap_or(i64::MAX),
    ])?;
    super::carry::note(tx, node, &batch.via, forged, now_ms)?;
    if let Some((seq, record)) = health {
        fleet::newest_health(tx, node, life, seq, record)?;
    }
    if let Some((seq, record)) = info {
        fleet::newest_info(tx, node, life, seq, record)?;
    }
    Ok(Ingested {
        stored,
        duplicates,
        repeats,
        conflicts,
        ack_upto: coverage.acked,
        epoch: up.epoch,
        stale,
    })
}

/// Bytes of records stored for `node`; creates its `node_bytes` row (from `records`,
/// for stores written before the table existed) when missing.
pub(super) fn stored_bytes(tx: &Connection, node: &Name) -> Result<u64> {
    let row: Option<i64> = tx
        .prepare_cached("SELECT bytes FROM node_bytes WHERE node = ?1")?
        .query_row([node.as_str()], |r| r.get(0))
        .optional()?;
    if let Some(b) = row {
        return Ok(from_sql(b));
    }
    let sum: i64 = tx
        .prepare_cached("SELECT COALESCE(SUM(length(kind)), 0) FROM records WHERE node = ?1")?
        .query_row([node.as_str()], |r| r.get(0))?;
    tx.prepare_cached("INSERT INTO node_bytes (node, bytes) VALUES (?1, ?2)")?
        .execute(params![node.as_str(), sum])?;
    Ok(from_sql(sum))
}

/// The coverage of `node`'s life `epoch` (empty when none is stored).
pub(super) fn load_coverage(conn: &Connection, node: &Name, epoch: u64) -> Result<Coverage> {
    let row: Option<(i64, Vec<u8>)> = conn
        .prepare_cached("SELECT acked, pending FROM coverage WHERE node = ?1 AND epoch = ?2")?
        .query_row(params![node.as_str(), epoch_sql(epoch)], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    match row {
        None => Ok(Coverage::new()),
        Some((acked, pending)) => Ok(Coverage {
            acked: from_sql(acked),
            pending: decode("coverage", node.as_str(), &pending)?,
        }),
    }
}
