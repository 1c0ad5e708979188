//! Reading stored records back from SQLite, for the views.
//!
//! Contract: read-only; every life of a node, in (life, seq) order where an order is
//! promised ([`super::FleetStore`]); the folds into views are [`super::super::views`]'.

use hedge_wire::{Name, Record};
use rusqlite::{params, Connection};

use super::super::blob::decode_desired;
use super::super::{InstanceSources, Result};
use super::sql::{clamp_sql, decode_record, from_sql, raw_record, RawRecord};
use super::stale::NOT_STALE;

/// Up to `limit` records of `node` with `seq >= from_seq`, in (life, seq) order.
pub(super) fn records(
    conn: &Connection,
    node: &Name,
    from_seq: u64,
    limit: u32,
) -> Result<Vec<Record>> {
    let mut stmt = conn.prepare_cached(
        "SELECT r.node, r.seq, r.time_ms, r.kind FROM records r
         JOIN epochs e ON e.node = r.node AND e.epoch = r.epoch
         WHERE r.node = ?1 AND r.seq >= ?2 ORDER BY e.life, r.seq LIMIT ?3",
    )?;
    let rows = stmt
        .query_map(
            params![node.as_str(), clamp_sql(from_seq), limit],
            raw_record,
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter()
        .map(|raw| decode_record(raw).map(|(_, r)| r))
        .collect()
}

/// How many records of `node` are stored.
pub(super) fn count(conn: &Connection, node: &Name) -> Result<u64> {
    let n: i64 = conn.query_row(
        "SELECT COUNT(*) FROM records WHERE node = ?1",
        [node.as_str()],
        |r| r.get(0),
    )?;
    Ok(from_sql(n))
}

/// Usage records overlapping `[?1, ?2)`, by node, life then seq.
pub(super) const USAGE: &str = "SELECT r.node, r.seq, r.time_ms, r.kind
    FROM records r INDEXED BY records_by_span
    JOIN epochs e ON e.node = r.node AND e.epoch = r.epoch
    WHERE r.kind_tag = 'usage' AND r.span_from < ?2
      AND (r.span_to > ?1 OR (r.span_to = r.span_from AND r.span_from >= ?1))
    ORDER BY r.node, e.life, r.seq";

/// Every record of kind `?1` (not usage), with its life, by node, life then seq.
pub(super) const BY_TAG: &str = "SELECT r.node, r.seq, r.time_ms, r.kind, e.life
    FROM records r INDEXED BY records_by_tag
    JOIN epochs e ON e.node = r.node AND e.epoch = r.epoch
    WHERE r.kind_tag = ?1 AND r.kind_tag <> 'usage' ORDER BY r.node, e.life, r.seq";

/// The latest record of kind `?1` (not usage) per (node, instance): highest (life, seq),
/// a stale copy's left out.
pub(super) fn latest_sql() -> String {
    format!(
        "SELECT node, seq, time_ms, kind FROM (
             SELECT r.node, r.seq, r.time_ms, r.kind, ROW_NUMBER() OVER (
                 PARTITION BY r.node, r.instance
                 ORDER BY e.life DESC, r.seq DESC) AS nth
             FROM records r INDEXED BY records_by_tag
             JOIN epochs e ON e.node = r.node AND e.epoch = r.epoch
             WHERE r.kind_tag = ?1 AND r.kind_tag <> 'usage' AND {NOT_STALE})
         WHERE nth = 1"
    )
}

/// Usage records overlapping `[start, end)` (`start < end`), by node, life then seq.
pub(super) fn usage(conn: &Connection, start: u64, end: u64) -> Result<Vec<(Name, Record)>> {
    let mut stmt = conn.prepare_cached(USAGE)?;
    let rows = stmt
        .query_map(params![clamp_sql(start), clamp_sql(end)], raw_record)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter().map(decode_record).collect()
}

/// Every incident record as `(node, life, record)`, by node, life then seq.
pub(super) fn incidents(conn: &Connection) -> Result<Vec<(Name, u32, Record)>> {
    let rows = {
        let mut stmt = conn.prepare_cached(BY_TAG)?;
        let rows = stmt
            .query_map(["incident"], |r| Ok((raw_record(r)?, r.get::<_, u32>(4)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows
    };
    rows.into_iter()
        .map(|(raw, life)| {
            let (node, record) = decode_record(raw)?;
            Ok((node, life, record))
        })
        .collect()
}

/// Every backup record as `(node, record)`, by node, life then seq.
pub(super) fn backups(conn: &Connection) -> Result<Vec<(Name, Record)>> {
    let rows = conn
        .prepare_cached(BY_TAG)?
        .query_map(["backup"], raw_record)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter().map(decode_record).collect()
}

/// The desired states and the latest local request and state report per instance, a
/// stale copy's records left out (`pruned` is left empty: the caller reads it).
pub(super) fn instance_sources(conn: &Connection) -> Result<InstanceSources> {
    let desired = conn
        .prepare_cached("SELECT node, state FROM desired ORDER BY node")?
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let latest = |tag: &str| -> Result<Vec<(Name, Record)>> {
        let rows: Vec<RawRecord> = conn
            .prepare_cached(&latest_sql())?
            .query_map([tag], raw_record)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter().map(decode_record).collect()
    };
    let states = latest("instance_state")?;
    let local_requests = latest("local_request")?;
    Ok(InstanceSources {
        desired: desired
            .into_iter()
            .map(|(node, blob)| decode_desired(&node, &blob))
            .collect::<Result<_>>()?,
        pruned: Vec::new(),
        local_requests,
        states,
    })
}
