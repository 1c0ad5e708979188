//! The fleet registry in SQLite: nodes, what they report, what the operator assigned.
//!
//! Contract: keeps the registry rules of [`super::FleetStore`]: labels and region that
//! allocation matches are the operator's only ([`load_assignment`]), reported ones are
//! shown; the capacity is the reported one capped by an assigned `max_instances`; the
//! newest `NodeInfo` and `NodeHealth` by (life, seq) win, whatever order they arrive in.

use std::collections::BTreeMap;

use hedge_wire::{Name, Record, RecordKind};
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::super::blob::{decode, encode, name};
use super::super::views::health_of;
use super::super::{Assignment, NodeInfo, NodeSummary, Result};
use super::sql::{clamp_sql, from_sql};
use crate::node_state::NodeState;

/// Writes an operator's registry facts of `info.node` (its assignment is written
/// first, by the caller).
pub(super) fn register(conn: &Connection, info: &NodeInfo) -> Result<()> {
    conn.execute(
        "INSERT INTO nodes (node, board, arch, cpus, mem_bytes, capacity_instances)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (node) DO UPDATE SET board = excluded.board,
             arch = excluded.arch, cpus = excluded.cpus,
             mem_bytes = COALESCE(excluded.mem_bytes, nodes.mem_bytes),
             capacity_instances = excluded.capacity_instances",
        params![
            info.node.as_str(),
            info.board,
            info.arch,
            info.cpus,
            info.mem_bytes.map(clamp_sql),
            info.capacity_instances
        ],
    )?;
    Ok(())
}

/// Reads `node`'s assignment, lets `f` change it, writes it and makes the node known.
pub(super) fn update_assignment(
    tx: &Transaction<'_>,
    node: &Name,
    f: impl FnOnce(&mut Assignment),
) -> Result<Assignment> {
    let mut a = load_assignment(tx, node)?;
    f(&mut a);
    tx.execute(
        "INSERT INTO assigned (node, labels, region, max_instances) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (node) DO UPDATE SET labels = excluded.labels,
             region = excluded.region, max_instances = excluded.max_instances",
        params![
            node.as_str(),
            serde_json::to_string(&a.labels)?,
            a.region,
            a.max_instances
        ],
    )?;
    tx.execute(
        "INSERT OR IGNORE INTO nodes (node) VALUES (?1)",
        [node.as_str()],
    )?;
    Ok(a)
}

/// What the operator assigned to `node` (empty when nothing).
pub(super) fn load_assignment(conn: &Connection, node: &Name) -> Result<Assignment> {
    let row: Option<(String, Option<String>, Option<u32>)> = conn
        .query_row(
            "SELECT labels, region, max_instances FROM assigned WHERE node = ?1",
            [node.as_str()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    Ok(match row {
        None => Assignment::default(),
        Some((labels, region, max_instances)) => Assignment {
            labels: serde_json::from_str(&labels)?,
            region,
            max_instances,
        },
    })
}

/// Every known node, by name, as `conn` (or the transaction it derefs from) sees them.
pub(super) fn load_nodes(conn: &Connection) -> Result<Vec<NodeSummary>> {
    type Row = (
        String,
        Option<i64>,
        Option<i64>,
        Option<String>,
        Option<String>,
        String,
        Option<String>,
        Option<u32>,
        Option<i64>,
        u32,
        i64,
        i64,
        i64,
        u32,
        Option<Vec<u8>>,
        Option<String>,
        Option<String>,
        Option<u32>,
        (u32, i64, i64),
        (Option<String>, Option<i64>, i64),
    );
    let mut stmt = conn.prepare_cached(
        "SELECT n.node, n.first_seen_ms, n.last_seen_ms, n.board, n.arch, n.labels,
                 n.region, n.cpus, n.mem_bytes, n.capacity_instances, n.records, n.last_seq,
                 COALESCE(c.acked, 0), COALESCE(d.allocated, 0), n.health,
                 a.labels, a.region, a.max_instances,
                 (SELECT COUNT(*) FROM epochs e WHERE e.node = n.node), n.repeats, n.conflicts,
                 s.state, s.since_ms,
                 (SELECT COUNT(*) FROM stale_records x WHERE x.node = n.node)
             FROM nodes n
             LEFT JOIN coverage c ON c.node = n.node AND c.epoch = n.epoch
             LEFT JOIN desired d ON d.node = n.node
             LEFT JOIN assigned a ON a.node = n.node
             LEFT JOIN node_states s ON s.node = n.node
             ORDER BY n.node",
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
                r.get(10)?,
                r.get(11)?,
                r.get(12)?,
                r.get(13)?,
                r.get(14)?,
                r.get(15)?,
                r.get(16)?,
                r.get(17)?,
                (r.get(18)?, r.get(19)?, r.get(20)?),
                (r.get(21)?, r.get(22)?, r.get(23)?),
            ))
        })?
        .collect::<rusqlite::Result<Vec<Row>>>()?;
    let mut carry = super::carry::load(conn)?;
    rows.into_iter()
        .map(|row| {
            let (path, forged_relayed) = match carry.remove(&row.0) {
                Some((p, f)) => (Some(p), f),
                None => (None, 0),
            };
            let health = match &row.14 {
                Some(blob) => health_of(decode("health", &row.0, blob)?),
                None => None,
            };
            let capacity = match row.17 {
                Some(cap) => row.9.min(cap),
                None => row.9,
            };
            Ok(NodeSummary {
                reported_labels: serde_json::from_str(&row.5)?,
                reported_region: row.6,
                labels: match &row.15 {
                    Some(l) => serde_json::from_str(l)?,
                    None => BTreeMap::new(),
                },
                region: row.16,
                node: name(row.0)?,
                first_seen_ms: row.1.map(from_sql),
                last_seen_ms: row.2.map(from_sql),
                board: row.3,
                arch: row.4,
                cpus: row.7,
                mem_bytes: row.8.map(from_sql),
                capacity_instances: capacity,
                records: from_sql(row.10),
                last_seq: from_sql(row.11),
                acked_upto: from_sql(row.12),
                lives: row.18 .0,
                repeats: from_sql(row.18 .1),
                conflicts: from_sql(row.18 .2),
                allocated_instances: row.13,
                health,
                state: match &row.19 .0 {
                    Some(s) => s.parse()?,
                    None => NodeState::Schedulable,
                },
                state_since_ms: row.19 .1.map(from_sql),
                stale: from_sql(row.19 .2),
                path,
                forged_relayed,
            })
        })
        .collect()
}

/// Keeps `record`, a `NodeHealth` of `node` at `(life, seq)`, as its health (and its
/// total memory as its memory size) unless a newer one is kept.
pub(super) fn newest_health(
    tx: &Connection,
    node: &Name,
    life: i64,
    seq: i64,
    record: &Record,
) -> Result<()> {
    if let RecordKind::NodeHealth { mem_total, .. } = record.kind {
        tx.prepare_cached(
            "UPDATE nodes SET health_life = ?5, health_seq = ?2, health = ?3, mem_bytes = ?4
             WHERE node = ?1 AND (health_seq IS NULL OR (health_life, health_seq) < (?5, ?2))",
        )?
        .execute(params![
            node.as_str(),
            seq,
            encode("health", record)?,
            clamp_sql(mem_total),
            life
        ])?;
    }
    Ok(())
}

/// Takes `node`'s reported registry facts from `record`, a `NodeInfo` at `(life, seq)`,
/// unless newer ones were taken (an empty region reads as none).
pub(super) fn newest_info(
    tx: &Connection,
    node: &Name,
    life: i64,
    seq: i64,
    record: &Record,
) -> Result<()> {
    if let RecordKind::NodeInfo {
        board,
        arch,
        cores,
        mem_total,
        max_instances,
        labels,
        region,
    } = &record.kind
    {
        let region = (!region.is_empty()).then_some(region);
        tx.prepare_cached(
            "UPDATE nodes SET info_life = ?10, info_seq = ?2, board = ?3, arch = ?4,
                 cpus = ?5, mem_bytes = ?6, capacity_instances = ?7, labels = ?8,
                 region = ?9
             WHERE node = ?1 AND (info_seq IS NULL OR (info_life, info_seq) < (?10, ?2))",
        )?
        .execute(params![
            node.as_str(),
            seq,
            board,
            arch,
            cores,
            clamp_sql(*mem_total),
            max_instances,
            serde_json::to_string(labels)?,
            region,
            life
        ])?;
    }
    Ok(())
}
