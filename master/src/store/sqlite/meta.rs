//! The master's epoch in SQLite: table `meta` (key `epoch`; no row: 0).
//!
//! Contract: [`epoch`] is read by every generation handed out
//! (`desired::next_after`, [`crate::epoch::next_generation`]); only
//! `hedge master recover` sets it ([`set_epoch`], `recover`).

use rusqlite::{Connection, OptionalExtension};

use super::super::Result;

/// The table of this file (created at every open: see `schema`).
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
";

/// The master's epoch (0 when never recovered).
pub(super) fn epoch(conn: &Connection) -> Result<u32> {
    let v: Option<i64> = conn
        .prepare_cached("SELECT value FROM meta WHERE key = 'epoch'")?
        .query_row([], |r| r.get(0))
        .optional()?;
    Ok(v.map_or(0, |v| u32::try_from(v).unwrap_or(u32::MAX)))
}

/// Sets the master's epoch.
pub(super) fn set_epoch(conn: &Connection, epoch: u32) -> Result<()> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('epoch', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [i64::from(epoch)],
    )?;
    Ok(())
}
