//! The path each node's last batch came by, and the relayed batches refused in each
//! node's batches (the mesh).
//!
//! Contract: [`note`] runs in the ingest transaction of a stored batch: it sets the
//! node's path to the batch's (`''`: direct; else the relays, comma-separated, the one
//! that reached the broker first) and adds the refused relayed records the batch newly
//! stored. [`load`] reads them for the fleet view.

use std::collections::BTreeMap;

use hedge_wire::Name;
use rusqlite::{params, Connection};

use super::super::Result;
use super::sql::{clamp_sql, from_sql};

/// The table of this file (created at every open: see `schema`).
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS carry (
    node    TEXT PRIMARY KEY,
    via     TEXT    NOT NULL,
    via_ms  INTEGER NOT NULL,
    forged  INTEGER NOT NULL DEFAULT 0
);
";

/// Notes a stored batch of `node` that came by `via` and newly stored `forged` refused
/// relayed records.
pub(super) fn note(
    tx: &Connection,
    node: &Name,
    via: &[Name],
    forged: u64,
    now_ms: u64,
) -> Result<()> {
    let via: Vec<&str> = via.iter().map(Name::as_str).collect();
    tx.prepare_cached(
        "INSERT INTO carry (node, via, via_ms, forged) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (node) DO UPDATE SET via = excluded.via, via_ms = excluded.via_ms,
             forged = forged + excluded.forged",
    )?
    .execute(params![
        node.as_str(),
        via.join(","),
        clamp_sql(now_ms),
        clamp_sql(forged)
    ])?;
    Ok(())
}

/// Every node's path (as [`crate::relay::path_text`] shows it) and refused relayed
/// records.
pub(super) fn load(conn: &Connection) -> Result<BTreeMap<String, (String, u64)>> {
    let mut stmt = conn.prepare_cached("SELECT node, via, forged FROM carry")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    let mut out = BTreeMap::new();
    for row in rows {
        let (node, via, forged) = row?;
        let hops: Vec<&str> = via.split(',').filter(|h| !h.is_empty()).collect();
        let path = crate::relay::path_text(&hops);
        out.insert(node, (path, from_sql(forged)));
    }
    Ok(out)
}
