//! Stale copies' records in SQLite: table `stale_records`, marked at ingest.
//!
//! Contract: applies [`crate::store::stale`]'s rule inside the ingest transaction. A
//! [`Judge`] lives for one batch and caches, per instance, the current placement (the
//! `fences` row with the highest fence, ties by node) and the node's fence (its latest
//! `Fence` record before the batch's first judged record about the instance, in the same
//! life, then the batch's own `Fence` records in order). A record judged stale gets a row
//! in `stale_records` (its key and instance); a clearing `Fence` deletes the rows of the
//! records of that node, life and instance that follow it. The views leave the marked
//! records out ([`NOT_STALE`]).

use std::collections::HashMap;

use hedge_wire::{Name, Record, RecordKind};
use rusqlite::{params, Connection, OptionalExtension};

use super::super::blob::decode;
use super::super::stale::{clears, judged, stale};
use super::super::Result;
use super::sql::from_sql;

/// The table of this file (created at every open: see `schema`).
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS stale_records (
    node     TEXT    NOT NULL,
    epoch    INTEGER NOT NULL,
    seq      INTEGER NOT NULL,
    instance TEXT    NOT NULL,
    PRIMARY KEY (node, epoch, seq)
);
CREATE INDEX IF NOT EXISTS stale_by_instance ON stale_records (node, instance, epoch, seq);
";

/// The newest fence record of node `?1` for instance `?2` in life `?3` before seq `?4`.
pub(super) const FENCE_BEFORE: &str = "SELECT r.kind
    FROM records r INDEXED BY records_by_tag
    WHERE r.kind_tag = 'fence' AND r.node = ?1 AND r.instance = ?2 AND r.epoch = ?3
    AND r.seq < ?4 AND r.kind_tag <> 'usage' ORDER BY r.seq DESC LIMIT 1";

/// A condition on a `records r` row: it is not marked stale.
pub(super) const NOT_STALE: &str = "NOT EXISTS (SELECT 1 FROM stale_records s
    WHERE s.node = r.node AND s.epoch = r.epoch AND s.seq = r.seq)";

/// The judge of one batch of one node's life. See the module doc.
pub(super) struct Judge<'a> {
    node: &'a Name,
    epoch: i64,
    owners: HashMap<Name, Option<(Name, u64)>>,
    fences: HashMap<Name, Option<u64>>,
}

impl<'a> Judge<'a> {
    pub(super) fn new(node: &'a Name, epoch: i64) -> Self {
        Judge {
            node,
            epoch,
            owners: HashMap::new(),
            fences: HashMap::new(),
        }
    }

    fn owner(&mut self, tx: &Connection, instance: &Name) -> Result<Option<(Name, u64)>> {
        if let Some(o) = self.owners.get(instance) {
            return Ok(o.clone());
        }
        let row: Option<(String, i64)> = tx
            .prepare_cached(
                "SELECT node, fence FROM fences WHERE instance = ?1
                 ORDER BY fence DESC, node LIMIT 1",
            )?
            .query_row([instance.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let owner = match row {
            Some((node, fence)) => Name::new(&node).ok().map(|n| (n, from_sql(fence))),
            None => None,
        };
        self.owners.insert(instance.clone(), owner.clone());
        Ok(owner)
    }

    /// The node's fence for `instance` at `seq` (its latest `Fence` before it).
    fn node_fence(&mut self, tx: &Connection, instance: &Name, seq: i64) -> Result<Option<u64>> {
        if let Some(f) = self.fences.get(instance) {
            return Ok(*f);
        }
        let blob: Option<Vec<u8>> = tx
            .prepare_cached(FENCE_BEFORE)?
            .query_row(
                params![self.node.as_str(), instance.as_str(), self.epoch, seq],
                |r| r.get(0),
            )
            .optional()?;
        let fence = match blob {
            Some(b) => match decode("record", self.node.as_str(), &b)? {
                RecordKind::Fence { fence, .. } => Some(fence),
                _ => None,
            },
            None => None,
        };
        self.fences.insert(instance.clone(), fence);
        Ok(fence)
    }

    /// Judges `record`, newly stored at `seq`; returns whether it was marked stale.
    pub(super) fn judge(&mut self, tx: &Connection, seq: i64, record: &Record) -> Result<bool> {
        if let RecordKind::Fence {
            instance, fence, ..
        } = &record.kind
        {
            let owner = self.owner(tx, instance)?;
            if clears(self.node, owner.as_ref().map(|(n, f)| (n, *f)), *fence) {
                tx.prepare_cached(
                    "DELETE FROM stale_records WHERE node = ?1 AND instance = ?2
                     AND epoch = ?3 AND seq > ?4",
                )?
                .execute(params![
                    self.node.as_str(),
                    instance.as_str(),
                    self.epoch,
                    seq
                ])?;
            }
            self.fences.insert(instance.clone(), Some(*fence));
            return Ok(false);
        }
        let Some(instance) = judged(&record.kind) else {
            return Ok(false);
        };
        let owner = self.owner(tx, instance)?;
        // Fences start at 1: a node's copy of a first placement cannot be older.
        let node_fence = match &owner {
            Some((n, f)) if n == self.node && *f > 1 => self.node_fence(tx, instance, seq)?,
            _ => None,
        };
        if !stale(self.node, owner.as_ref().map(|(n, f)| (n, *f)), node_fence) {
            return Ok(false);
        }
        tx.prepare_cached(
            "INSERT OR IGNORE INTO stale_records (node, epoch, seq, instance)
             VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![
            self.node.as_str(),
            self.epoch,
            seq,
            instance.as_str()
        ])?;
        Ok(true)
    }
}
