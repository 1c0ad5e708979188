//! The fleet registry in SQLite: nodes, what they report, what the operator assigned.
//!
//! Contract: keeps the registry rules of [`super::FleetStore`]: labels and region that
//! allocation matches are the operator's only ([`load_assignment`]), reported ones are
//! shown; the capacity is the reported one capped by an assigned `max_instances`.

use std::collections::BTreeMap;

use hedge_wire::Name;
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::super::blob::{decode, name};
use super::super::views::health_of;
use super::super::{Assignment, NodeInfo, NodeSummary, Result};
use super::sql::{clamp_sql, from_sql};

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
    );
    let mut stmt = conn.prepare_cached(
        "SELECT n.node, n.first_seen_ms, n.last_seen_ms, n.board, n.arch, n.labels,
                 n.region, n.cpus, n.mem_bytes, n.capacity_instances, n.records, n.last_seq,
                 COALESCE(c.acked, 0), COALESCE(d.allocated, 0), n.health,
                 a.labels, a.region, a.max_instances,
                 (SELECT COUNT(*) FROM epochs e WHERE e.node = n.node), n.repeats, n.conflicts
             FROM nodes n
             LEFT JOIN coverage c ON c.node = n.node AND c.epoch = n.epoch
             LEFT JOIN desired d ON d.node = n.node
             LEFT JOIN assigned a ON a.node = n.node
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
            ))
        })?
        .collect::<rusqlite::Result<Vec<Row>>>()?;
    rows.into_iter()
        .map(|row| {
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
            })
        })
        .collect()
}
