//! Desired states in SQLite and the generation high-water mark.
//!
//! Contract: a desired state is stored only with a generation above the stored one and
//! only if it is deliverable ([`store_desired`]); table `generations` holds, per node,
//! the highest generation ever handed out, so [`next_after`] never hands one out twice,
//! across processes (the caller holds an immediate transaction). Every generation handed
//! out is in the master's epoch ([`crate::epoch`]): at least `epoch << 32 | 1`.

use hedge_wire::limits::DEFAULT_MAX_FRAME;
use hedge_wire::{DesiredState, Name, Validate, WireError};
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::super::blob::{allocated, decode_desired, encode};
use super::super::{Result, StoreError};
use super::sql::{from_sql, seq_sql};

/// Highest generation handed out or stored for `node`.
fn high_water(tx: &Transaction<'_>, node: &Name) -> Result<u64> {
    let reserved: Option<i64> = tx
        .query_row(
            "SELECT last FROM generations WHERE node = ?1",
            [node.as_str()],
            |r| r.get(0),
        )
        .optional()?;
    let stored: Option<i64> = tx
        .query_row(
            "SELECT generation FROM desired WHERE node = ?1",
            [node.as_str()],
            |r| r.get(0),
        )
        .optional()?;
    Ok(from_sql(reserved.unwrap_or(0).max(stored.unwrap_or(0))))
}

fn set_high_water(tx: &Transaction<'_>, node: &Name, generation: i64) -> Result<()> {
    tx.execute(
        "INSERT INTO generations (node, last) VALUES (?1, ?2)
         ON CONFLICT (node) DO UPDATE SET last = MAX(last, excluded.last)",
        params![node.as_str(), generation],
    )?;
    Ok(())
}

/// The stored desired state of `node`.
pub(super) fn stored_desired(tx: &Connection, node: &Name) -> Result<Option<DesiredState>> {
    let blob: Option<Vec<u8>> = tx
        .query_row(
            "SELECT state FROM desired WHERE node = ?1",
            [node.as_str()],
            |r| r.get(0),
        )
        .optional()?;
    blob.map(|b| decode_desired(node.as_str(), &b)).transpose()
}

/// Stores `d` if its generation is above the stored one; the caller holds an
/// immediate transaction.
pub(super) fn store_desired(tx: &Transaction<'_>, d: &DesiredState) -> Result<()> {
    d.validate()?;
    // What the run loop publishes and a node decodes: refuse here what could never be
    // delivered, while the caller can still be told.
    match hedge_wire::codec::encode(&hedge_wire::Message::Desired(d.clone()), DEFAULT_MAX_FRAME) {
        Ok(_) => {}
        Err(WireError::TooLarge { len, max }) => {
            return Err(StoreError::TooLarge {
                node: d.node.clone(),
                len,
                max,
            })
        }
        Err(e) => return Err(e.into()),
    }
    let generation = seq_sql(d.generation)?;
    let current = stored_desired(tx, &d.node)?.map_or(0, |s| s.generation);
    if d.generation <= current {
        return Err(StoreError::StaleGeneration {
            node: d.node.clone(),
            current,
            given: d.generation,
        });
    }
    tx.execute(
        "INSERT INTO desired (node, generation, allocated, state) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (node) DO UPDATE SET generation = excluded.generation,
             allocated = excluded.allocated, state = excluded.state",
        params![
            d.node.as_str(),
            generation,
            allocated(&d.instances),
            encode("desired state", d)?
        ],
    )?;
    set_high_water(tx, &d.node, generation)
}

/// The generation after the high-water mark in the master's epoch
/// ([`crate::epoch::next_generation`]), within SQLite's range.
pub(super) fn next_after(tx: &Transaction<'_>, node: &Name) -> Result<u64> {
    crate::epoch::next_generation(high_water(tx, node)?, super::meta::epoch(tx)?)
        .ok_or_else(|| StoreError::GenerationExhausted(node.clone()))
}

/// Reserves the generation after the high-water mark and returns it.
pub(super) fn reserve_generation(tx: &Transaction<'_>, node: &Name) -> Result<u64> {
    let next = next_after(tx, node)?;
    set_high_water(tx, node, seq_sql(next)?)?;
    Ok(next)
}

/// Every node's stored desired generation, by node (rows with an invalid name skipped).
pub(super) fn generation(conn: &Connection, node: &Name) -> Result<Option<u64>> {
    let g = conn
        .prepare_cached("SELECT generation FROM desired WHERE node = ?1")?
        .query_row(params![node.as_str()], |r| r.get::<_, i64>(0))
        .optional()?;
    Ok(g.map(|g| u64::try_from(g).unwrap_or(0)))
}

pub(super) fn generations(conn: &Connection) -> Result<Vec<(Name, u64)>> {
    let mut stmt = conn.prepare("SELECT node, generation FROM desired ORDER BY node")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    let mut out = Vec::new();
    for row in rows {
        let (node, generation) = row?;
        if let Ok(n) = Name::new(&node) {
            out.push((n, u64::try_from(generation).unwrap_or(0)));
        }
    }
    Ok(out)
}
