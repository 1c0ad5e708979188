//! Backup policies in SQLite: table `backup_policies`.
//!
//! Contract: per instance, the policy its last request gave (postcard; no row, no
//! policy); it belongs to the instance, not to a copy, so it follows the instance when
//! it moves. [`of_live`] is what a state being written carries (`place`'s
//! `write_desired`): the policy of each instance it holds live.

use hedge_wire::backup::BackupPolicy;
use hedge_wire::{InstanceRequest, Name, RequestedState};
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::super::blob::{decode, encode};
use super::super::Result;

/// The table of this file (created at every open: see `schema`).
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS backup_policies (
    instance TEXT PRIMARY KEY,
    policy   BLOB NOT NULL
);
";

/// Sets (`Some`, checked by the wire's validation) or removes (`None`) `instance`'s
/// backup policy.
pub(super) fn set(
    tx: &Transaction<'_>,
    instance: &Name,
    policy: Option<&BackupPolicy>,
) -> Result<()> {
    match policy {
        Some(p) => {
            use hedge_wire::Validate;
            p.validate()?;
            let mut p = p.clone();
            p.instance = instance.clone();
            tx.execute(
                "INSERT INTO backup_policies (instance, policy) VALUES (?1, ?2)
                 ON CONFLICT (instance) DO UPDATE SET policy = excluded.policy",
                params![instance.as_str(), encode("backup policy", &p)?],
            )?;
        }
        None => {
            tx.execute(
                "DELETE FROM backup_policies WHERE instance = ?1",
                [instance.as_str()],
            )?;
        }
    }
    Ok(())
}

/// `instance`'s backup policy.
pub(super) fn of(conn: &Connection, instance: &Name) -> Result<Option<BackupPolicy>> {
    let b: Option<Vec<u8>> = conn
        .prepare_cached("SELECT policy FROM backup_policies WHERE instance = ?1")?
        .query_row([instance.as_str()], |r| r.get(0))
        .optional()?;
    b.map(|b| decode("backup policy", instance.as_str(), &b))
        .transpose()
}

/// Every backup policy, by instance.
pub(super) fn all(conn: &Connection) -> Result<Vec<BackupPolicy>> {
    let rows = conn
        .prepare_cached("SELECT instance, policy FROM backup_policies ORDER BY instance")?
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.iter()
        .map(|(i, b)| decode("backup policy", i, b))
        .collect()
}

/// The policies of the instances `instances` holds live, in their order.
pub(super) fn of_live(
    conn: &Connection,
    instances: &[InstanceRequest],
) -> Result<Vec<BackupPolicy>> {
    let mut out = Vec::new();
    for r in instances
        .iter()
        .filter(|r| r.state != RequestedState::Destroyed)
    {
        if let Some(p) = of(conn, &r.name)? {
            out.push(p);
        }
    }
    Ok(out)
}
