//! Custody a relay holds for other nodes: what it keeps per origin, the per-origin byte
//! bound, and which held batches to shed to make room.
//!
//! Contract: pure (no I/O, no clock). A relay stores each peer batch it takes custody of
//! as one `RecordKind::Relayed` record of its own outbox; [`Held`] mirrors those records
//! (seq, origin, stored bytes, whether the batch carries an incident or an instance
//! state: `keep`). The daemon rebuilds it from the outbox at boot ([`Held::stored`] for
//! each relayed record), calls [`Held::room`] before appending a new batch, applies the
//! drops it returns (one shedding entry of the outbox log), appends, and reports
//! [`Held::stored`], [`Held::shed`] and [`Held::acked`] as they happen.
//!
//! [`Held::room`] keeps an origin's held bytes at most `bound`:
//! - a batch larger than `bound` never fits ([`Full`]);
//! - otherwise the origin's held batches that carry neither an incident nor an instance
//!   state (`keep == false`) and were not yet handed to a link (seq > `handed_upto`: a
//!   handed record may be in a batch on its way to the master) are dropped, oldest
//!   first, until the new batch fits; batches with `keep` are never dropped;
//! - if that is not enough, nothing is dropped and the answer is [`Full`] (the peer is
//!   refused, `CustodyRefusal::Full`).
//!
//! Shedding a relayed batch loses nothing: its origin keeps every record until the
//! master's signed ack, and sends the range again after its next link-up. Only an
//! origin destroyed for good loses what its relays shed, and then never an incident or
//! an instance state that a relay accepted.

use std::collections::BTreeMap;

use hedge_wire::mesh::{CustodyRefusal, SignedBatch, MAX_RELAY_DEPTH};
use hedge_wire::{Name, RecordKind};

/// What a relay must know of a peer's batch before it holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Class {
    /// The node whose batch it is (the inner `Up`'s node).
    pub origin: Name,
    /// Its store's epoch.
    pub epoch: u64,
    /// The range it covers.
    pub covers: Option<(u64, u64)>,
    /// It carries, at any depth, an incident or an instance state.
    pub keep: bool,
    /// Records in it, at every depth.
    pub records: u64,
}

/// Decodes `batch` (and every batch nested in it, frames at most `max` bytes): its
/// origin, range, whether it carries an incident or an instance state (at any depth),
/// how many records it holds. A batch that does not decode is `Malformed`; one nested
/// deeper than `MAX_RELAY_DEPTH` (counting this one) is `TooDeep`.
pub fn classify(batch: &SignedBatch, max: usize) -> Result<Class, CustodyRefusal> {
    let up = batch.up(max).map_err(|_| CustodyRefusal::Malformed)?;
    let mut keep = false;
    let mut records = 0;
    scan(&up.records, 1, max, &mut keep, &mut records)?;
    Ok(Class {
        origin: up.node,
        epoch: up.epoch,
        covers: up.covers,
        keep,
        records,
    })
}

fn scan(
    recs: &[hedge_wire::Record],
    depth: usize,
    max: usize,
    keep: &mut bool,
    records: &mut u64,
) -> Result<(), CustodyRefusal> {
    for r in recs {
        match &r.kind {
            RecordKind::Relayed(inner) => {
                if depth >= MAX_RELAY_DEPTH {
                    return Err(CustodyRefusal::TooDeep);
                }
                let up = inner.up(max).map_err(|_| CustodyRefusal::Malformed)?;
                scan(&up.records, depth + 1, max, keep, records)?;
            }
            kind => {
                *records += 1;
                *keep |= matches!(
                    crate::monitor::shed::RecordClass::of(kind),
                    crate::monitor::shed::RecordClass::Incident
                        | crate::monitor::shed::RecordClass::InstanceState
                );
            }
        }
    }
    Ok(())
}

/// No room for a batch of this origin, even after shedding what may be shed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("custody bound of this origin reached")]
pub struct Full;

/// One relayed batch held in the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    bytes: u64,
    keep: bool,
}

/// What the relay holds for one origin.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Origin {
    bytes: u64,
    entries: BTreeMap<u64, Entry>,
    /// Batches taken in custody, this run.
    stored: u64,
    /// Bytes taken in custody, this run.
    stored_bytes: u64,
    /// Batches shed to stay under the bound, this run.
    shed: u64,
    /// Bytes shed, this run.
    shed_bytes: u64,
    /// Batches refused for want of room, this run.
    refused: u64,
}

/// What a relay holds for one origin, for `status` and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginView {
    /// The origin node.
    pub origin: Name,
    /// Batches held now.
    pub batches: u64,
    /// Bytes held now.
    pub bytes: u64,
    /// Batches taken in custody, this run.
    pub stored: u64,
    /// Bytes taken in custody, this run.
    pub stored_bytes: u64,
    /// Batches shed to stay under the bound, this run.
    pub shed: u64,
    /// Bytes shed, this run.
    pub shed_bytes: u64,
    /// Batches refused for want of room, this run.
    pub refused: u64,
}

/// The custody a relay holds, per origin.
#[derive(Debug, Clone, Default)]
pub struct Held {
    origins: BTreeMap<Name, Origin>,
    /// Which origin each held seq belongs to.
    by_seq: BTreeMap<u64, Name>,
}

impl Held {
    /// Nothing held.
    pub fn new() -> Self {
        Held::default()
    }

    /// The outbox holds the relayed batch `seq` of `origin` (`bytes` stored; `keep`:
    /// it carries an incident or an instance state). `fresh`: taken in custody now
    /// (counted), not found at boot.
    pub fn stored(&mut self, origin: &Name, seq: u64, bytes: u64, keep: bool, fresh: bool) {
        let o = self.origins.entry(origin.clone()).or_default();
        if let Some(old) = o.entries.insert(seq, Entry { bytes, keep }) {
            o.bytes = o.bytes.saturating_sub(old.bytes);
        }
        o.bytes = o.bytes.saturating_add(bytes);
        if fresh {
            o.stored += 1;
            o.stored_bytes = o.stored_bytes.saturating_add(bytes);
        }
        self.by_seq.insert(seq, origin.clone());
    }

    /// The seqs to drop so that a new batch of `origin` of `bytes` fits under `bound`
    /// (see the module doc); records at or below `handed_upto` are never dropped.
    pub fn room(
        &self,
        origin: &Name,
        bytes: u64,
        handed_upto: u64,
        bound: u64,
    ) -> Result<Vec<u64>, Full> {
        if bytes > bound {
            return Err(Full);
        }
        let Some(o) = self.origins.get(origin) else {
            return Ok(Vec::new());
        };
        let mut over = (o.bytes + bytes).saturating_sub(bound);
        let mut drop = Vec::new();
        for (seq, e) in o.entries.range(handed_upto.saturating_add(1)..) {
            if over == 0 {
                break;
            }
            if e.keep {
                continue;
            }
            drop.push(*seq);
            over = over.saturating_sub(e.bytes);
        }
        if over > 0 {
            return Err(Full);
        }
        Ok(drop)
    }

    /// A batch of `origin` was refused for want of room.
    pub fn refused(&mut self, origin: &Name) {
        self.origins.entry(origin.clone()).or_default().refused += 1;
    }

    /// The seqs `seqs` were shed (dropped to make room).
    pub fn shed(&mut self, seqs: &[u64]) {
        for seq in seqs {
            if let Some(e) = self.forget(*seq) {
                let (origin, entry) = e;
                if let Some(o) = self.origins.get_mut(&origin) {
                    o.shed += 1;
                    o.shed_bytes = o.shed_bytes.saturating_add(entry.bytes);
                }
            }
        }
    }

    /// The master acknowledged (and the outbox deleted) every seq `<= upto`.
    pub fn acked(&mut self, upto: u64) {
        let gone: Vec<u64> = self.by_seq.range(..=upto).map(|(s, _)| *s).collect();
        for seq in gone {
            self.forget(seq);
        }
    }

    fn forget(&mut self, seq: u64) -> Option<(Name, Entry)> {
        let origin = self.by_seq.remove(&seq)?;
        let o = self.origins.get_mut(&origin)?;
        let e = o.entries.remove(&seq)?;
        o.bytes = o.bytes.saturating_sub(e.bytes);
        Some((origin, e))
    }

    /// Bytes held for every origin now.
    pub fn total(&self) -> u64 {
        self.origins.values().map(|o| o.bytes).sum()
    }

    /// Bytes held for `origin` now.
    pub fn bytes_of(&self, origin: &Name) -> u64 {
        self.origins.get(origin).map_or(0, |o| o.bytes)
    }

    /// Every origin seen this run, by name.
    pub fn view(&self) -> Vec<OriginView> {
        self.origins
            .iter()
            .map(|(n, o)| OriginView {
                origin: n.clone(),
                batches: o.entries.len() as u64,
                bytes: o.bytes,
                stored: o.stored,
                stored_bytes: o.stored_bytes,
                shed: o.shed,
                shed_bytes: o.shed_bytes,
                refused: o.refused,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn n(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    #[test]
    fn under_the_bound_nothing_is_dropped_and_bytes_add_up() {
        let mut h = Held::new();
        let a = n("a");
        assert_eq!(h.room(&a, 400, 0, 1000), Ok(vec![]));
        h.stored(&a, 1, 400, false, true);
        assert_eq!(h.room(&a, 600, 0, 1000), Ok(vec![]));
        h.stored(&a, 2, 600, true, true);
        assert_eq!(h.bytes_of(&a), 1000);
        // Another origin has a bound of its own.
        assert_eq!(h.room(&n("b"), 1000, 0, 1000), Ok(vec![]));
        assert_eq!(
            h.room(&a, 1001, 0, 1000),
            Err(Full),
            "larger than the bound"
        );
    }

    #[test]
    fn sheds_oldest_non_keep_first_and_never_keep_nor_handed() {
        let mut h = Held::new();
        let a = n("a");
        h.stored(&a, 1, 100, false, true); // handed below
        h.stored(&a, 2, 100, true, true); // incident: kept
        h.stored(&a, 3, 100, false, true);
        h.stored(&a, 4, 100, false, true);
        h.stored(&a, 5, 100, true, true);
        // 500 held, bound 500: a 150-byte batch needs 150 out: seqs 3 and 4 (1 is handed).
        assert_eq!(h.room(&a, 150, 1, 500), Ok(vec![3, 4]));
        // Nothing of that is sheddable past seq 4 but keep batches: 350 cannot be made.
        assert_eq!(h.room(&a, 350, 1, 500), Err(Full));
        // With nothing handed, seq 1 goes first.
        assert_eq!(h.room(&a, 100, 0, 500), Ok(vec![1]));
        h.shed(&[3, 4]);
        assert_eq!(h.bytes_of(&a), 300);
        let v = h.view();
        assert_eq!(v[0].shed, 2);
        assert_eq!(v[0].shed_bytes, 200);
        assert_eq!(v[0].batches, 3);
        assert_eq!(v[0].stored, 5);
    }

    #[test]
    fn acks_forget_what_they_cover_across_origins() {
        let mut h = Held::new();
        let (a, b) = (n("a"), n("b"));
        h.stored(&a, 1, 10, false, false);
        h.stored(&b, 2, 20, false, false);
        h.stored(&a, 3, 30, true, true);
        h.acked(2);
        assert_eq!(h.bytes_of(&a), 30);
        assert_eq!(h.bytes_of(&b), 0);
        let v = h.view();
        assert_eq!(
            (v[0].stored, v[0].batches),
            (1, 1),
            "boot entries are not counted"
        );
        h.acked(u64::MAX);
        assert_eq!(h.bytes_of(&a), 0);
        h.refused(&a);
        assert_eq!(h.view()[0].refused, 1);
    }
}
