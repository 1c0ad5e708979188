//! Each instance's lease (its `--on-lost` policy) in SQLite: table `leases`.
//!
//! Contract: [`set`] records the lease a request gave (`lease_ms`, 0 for `wait`) in the
//! placement's transaction; an instance without a row has none (0). The lease belongs
//! to the instance, not to a copy: it follows the instance when it moves. [`of`] is
//! what a state being written puts in the instance's signed terms (`moves`'
//! `fill_terms`).

use std::collections::BTreeMap;

use hedge_wire::Name;
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::super::blob;
use super::super::Result;

/// The table of this file (created at every open: see `schema`).
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS leases (
    instance TEXT PRIMARY KEY,
    lease_ms INTEGER NOT NULL
);
";

/// Records `instance`'s lease.
pub(super) fn set(tx: &Transaction<'_>, instance: &Name, lease_ms: u32) -> Result<()> {
    tx.execute(
        "INSERT INTO leases (instance, lease_ms) VALUES (?1, ?2)
         ON CONFLICT (instance) DO UPDATE SET lease_ms = excluded.lease_ms",
        params![instance.as_str(), lease_ms],
    )?;
    Ok(())
}

/// Every instance's lease that is not 0, by instance.
pub(super) fn all(conn: &Connection) -> Result<BTreeMap<Name, u32>> {
    let rows = conn
        .prepare_cached("SELECT instance, lease_ms FROM leases WHERE lease_ms > 0")?
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter()
        .map(|(i, l)| Ok((blob::name(i)?, l)))
        .collect()
}

/// `instance`'s lease (0: none).
pub(super) fn of(conn: &Connection, instance: &Name) -> Result<u32> {
    Ok(conn
        .query_row(
            "SELECT lease_ms FROM leases WHERE instance = ?1",
            [instance.as_str()],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0))
}
