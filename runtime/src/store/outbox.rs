//! The outbox: records in the segment log (`segments.rs`), indexed by sequence number,
//! and the accountants' states written with them.
//!
//! Contract:
//! - A frame's payload is one entry: a tag byte, then postcard —
//!   `0` a record and the accountant state after it (`Option`, for usage records): a
//!   new record, or one that replaces the record with its seq (a shed merge or fold);
//!   `1` one shedding pass, whole: the records it rewrote (merged or folded, each
//!   replacing the record with its seq) and the seqs it dropped, so a crash never keeps
//!   a merged record beside the records merged into it; `2` an instance's accountant
//!   state saved or forgotten (`None`) between records. Later entries win.
//! - A usage record and its accountant state are one frame: durable together or not at
//!   all, so an interval is never lost nor counted twice.
//! - Records with `seq <= acked` (the acknowledged floor, kept in `meta`) are gone,
//!   whatever the log still holds. A segment is deleted once every seq its frames name
//!   is at or below the floor and every older segment is gone.
//! - States: the `usage` tree is a checkpoint of every instance's state as of a log
//!   position (`meta/usage_from`); state entries at or after it are newer. Before a
//!   segment is deleted the store writes the states changed since the last checkpoint
//!   into the tree and moves the position to the log's end ([`OutboxLog::checkpoint`]).
//! - The next seq is max(highest seq any entry names + 1, the floors the store keeps).

use std::collections::{BTreeMap, VecDeque};

use hedge_wire::{Name, Record};

use super::segments::{Pos, Segments};
use super::{enc, StoreError};
use crate::monitor::usage::AccountantState;

const RECORD: u8 = 0;
const SHED: u8 = 1;
const USAGE: u8 = 2;

/// About how large one entry of a shedding pass grows (well under
/// [`super::frame::MAX_PAYLOAD`]).
const SHED_ENTRY_BYTES: usize = 64 << 10;

/// Where a record's frame is.
#[derive(Debug, Clone, Copy)]
struct Slot {
    pos: Pos,
    /// The frame's length on disk.
    frame_len: u32,
    /// The record's encoded length (what the quota counts).
    rec_len: u32,
    /// 0: the frame is this record's; k > 0: the k-th record of a shedding pass's frame.
    part: u32,
}

/// The outbox's records and recent accountant states.
#[derive(Debug)]
pub(super) struct OutboxLog {
    segs: Segments,
    ix: Index,
}

/// What replaying the log learns: the records' places and the recent states.
#[derive(Debug)]
struct Index {
    /// The seq of `slots[0]`.
    base: u64,
    slots: VecDeque<Option<Slot>>,
    count: usize,
    bytes: u64,
    /// Per segment, the highest seq its entries name.
    seg_max: BTreeMap<u64, u64>,
    /// The highest seq any entry names.
    max_seq: u64,
    acked: u64,
    usage_from: Pos,
    /// States written since the last checkpoint (`None`: forgotten).
    usage: BTreeMap<String, Option<AccountantState>>,
    /// Whether any entry replayed or put since the open held a relayed batch (the
    /// daemon's custody index is rebuilt at boot by reading the outbox only then).
    relayed: bool,
}

fn corrupt(pos: Pos, e: postcard::Error) -> StoreError {
    StoreError::Decode {
        tree: "outbox",
        key: format!("segment {} offset {}", pos.seg, pos.off),
        source: e,
    }
}

/// One decoded entry.
enum Entry {
    Record {
        record: Record,
        rec_len: usize,
        state: Option<AccountantState>,
    },
    Shed(Vec<Record>, Vec<u64>),
    Usage(Name, Option<AccountantState>),
}

fn is_relayed(r: &Record) -> bool {
    matches!(r.kind, hedge_wire::RecordKind::Relayed(_))
}

fn decode(pos: Pos, payload: &[u8]) -> Result<Entry, StoreError> {
    let (tag, rest) = payload
        .split_first()
        .ok_or_else(|| corrupt(pos, postcard::Error::DeserializeUnexpectedEnd))?;
    match *tag {
        RECORD => {
            let (record, tail) =
                postcard::take_from_bytes::<Record>(rest).map_err(|e| corrupt(pos, e))?;
            let state = postcard::from_bytes(tail).map_err(|e| corrupt(pos, e))?;
            Ok(Entry::Record {
                record,
                rec_len: rest.len() - tail.len(),
                state,
            })
        }
        SHED => {
            let (records, dropped) = postcard::from_bytes(rest).map_err(|e| corrupt(pos, e))?;
            Ok(Entry::Shed(records, dropped))
        }
        USAGE => {
            let (name, state) = postcard::from_bytes(rest).map_err(|e| corrupt(pos, e))?;
            Ok(Entry::Usage(name, state))
        }
        _ => Err(corrupt(pos, postcard::Error::DeserializeBadEnum)),
    }
}

fn record_payload(
    record: &Record,
    state: Option<&AccountantState>,
) -> Result<(Vec<u8>, usize), StoreError> {
    let rec = enc(record)?;
    let mut payload = Vec::with_capacity(1 + rec.len() + 64);
    payload.push(RECORD);
    payload.extend_from_slice(&rec);
    payload.extend_from_slice(&enc(&state)?);
    Ok((payload, rec.len()))
}

fn len32(n: usize) -> Result<u32, StoreError> {
    u32::try_from(n).map_err(|_| StoreError::Io(std::io::Error::other("entry too large")))
}

impl OutboxLog {
    /// Opens the log in `dir`: records at or below `acked` are gone; state entries before
    /// `usage_from` are in the checkpoint already.
    pub fn open(dir: &std::path::Path, acked: u64, usage_from: Pos) -> Result<Self, StoreError> {
        let mut ix = Index {
            base: 0,
            slots: VecDeque::new(),
            count: 0,
            bytes: 0,
            seg_max: BTreeMap::new(),
            max_seq: 0,
            acked,
            usage_from,
            usage: BTreeMap::new(),
            relayed: false,
        };
        let segs = Segments::open(dir, |pos, payload| ix.replay(pos, payload))?;
        Ok(OutboxLog { segs, ix })
    }
}

impl Index {
    fn replay(&mut self, pos: Pos, payload: &[u8]) -> Result<(), StoreError> {
        let frame_len = len32(payload.len() + super::frame::HEADER)?;
        match decode(pos, payload)? {
            Entry::Record {
                record,
                rec_len,
                state,
            } => {
                self.relayed |= is_relayed(&record);
                let slot = Slot {
                    pos,
                    frame_len,
                    rec_len: len32(rec_len)?,
                    part: 0,
                };
                self.put_slot(record.seq, slot);
                if let Some(s) = state {
                    if pos >= self.usage_from {
                        self.usage.insert(s.instance.as_str().to_owned(), Some(s));
                    }
                }
            }
            Entry::Shed(records, dropped) => {
                self.relayed |= records.iter().any(is_relayed);
                self.put_shed(pos, frame_len, records.iter(), &dropped)?;
            }
            Entry::Usage(name, state) => {
                if pos >= self.usage_from {
                    self.usage.insert(name.as_str().to_owned(), state);
                }
            }
        }
        Ok(())
    }

    /// Indexes the entry of a shedding pass at `pos`: its records, then its drops.
    fn put_shed<'r>(
        &mut self,
        pos: Pos,
        frame_len: u32,
        records: impl Iterator<Item = &'r Record>,
        dropped: &[u64],
    ) -> Result<(), StoreError> {
        for (k, r) in records.enumerate() {
            let slot = Slot {
                pos,
                frame_len,
                rec_len: len32(enc(r)?.len())?,
                part: len32(k + 1)?,
            };
            self.put_slot(r.seq, slot);
        }
        self.drop_seqs(pos.seg, dropped);
        Ok(())
    }

    fn note(&mut self, seg: u64, seq: u64) {
        let m = self.seg_max.entry(seg).or_insert(0);
        *m = (*m).max(seq);
        self.max_seq = self.max_seq.max(seq);
    }

    /// Indexes the record `seq` at `slot` (replacing an earlier frame of it).
    fn put_slot(&mut self, seq: u64, slot: Slot) {
        self.note(slot.pos.seg, seq);
        if seq <= self.acked {
            return;
        }
        if self.slots.is_empty() {
            self.base = seq;
        }
        while seq < self.base {
            self.slots.push_front(None);
            self.base -= 1;
        }
        let i = usize::try_from(seq - self.base).unwrap_or(usize::MAX);
        if i >= self.slots.len() {
            self.slots.resize(i + 1, None);
        }
        if let Some(old) = self.slots[i].replace(slot) {
            self.bytes -= u64::from(old.rec_len);
        } else {
            self.count += 1;
        }
        self.bytes += u64::from(slot.rec_len);
    }

    fn slot(&self, seq: u64) -> Option<Slot> {
        let i = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        self.slots.get(i).copied().flatten()
    }

    fn drop_seqs(&mut self, seg: u64, seqs: &[u64]) {
        for &seq in seqs {
            self.note(seg, seq);
            let Some(i) = seq
                .checked_sub(self.base)
                .and_then(|i| usize::try_from(i).ok())
            else {
                continue;
            };
            if let Some(old) = self.slots.get_mut(i).and_then(Option::take) {
                self.bytes -= u64::from(old.rec_len);
                self.count -= 1;
            }
        }
        self.trim();
    }

    /// Keeps `slots[0]` a live record.
    fn trim(&mut self) {
        while let Some(None) = self.slots.front() {
            self.slots.pop_front();
            self.base += 1;
        }
    }
}

impl OutboxLog {
    /// The highest seq any entry names (0: none).
    pub fn max_seq(&self) -> u64 {
        self.ix.max_seq
    }

    /// Records held.
    pub fn count(&self) -> usize {
        self.ix.count
    }

    /// Sum of the records' encoded lengths.
    pub fn bytes(&self) -> u64 {
        self.ix.bytes
    }

    /// The acknowledged floor.
    pub fn acked(&self) -> u64 {
        self.ix.acked
    }

    /// False only when no entry replayed at the open or put since held a relayed
    /// batch: then the log holds none, and nobody needs to read it to find them.
    pub fn may_hold_relayed(&self) -> bool {
        self.ix.relayed
    }

    /// Whether the record `seq` is held.
    pub fn has(&self, seq: u64) -> bool {
        self.ix.slot(seq).is_some()
    }

    /// Buffers `record` (a new one, or a replacement of the one with its seq) with the
    /// accountant state after it. Returns the record's encoded length.
    pub fn put(
        &mut self,
        record: &Record,
        state: Option<&AccountantState>,
    ) -> Result<u64, StoreError> {
        let (payload, rec_len) = record_payload(record, state)?;
        let (pos, frame_len) = self.segs.push(&payload)?;
        self.ix.relayed |= is_relayed(record);
        let rec_len = len32(rec_len)?;
        self.ix.put_slot(
            record.seq,
            Slot {
                pos,
                frame_len,
                rec_len,
                part: 0,
            },
        );
        if let Some(s) = state {
            self.ix
                .usage
                .insert(s.instance.as_str().to_owned(), Some(s.clone()));
        }
        Ok(u64::from(rec_len))
    }

    /// Buffers a shedding pass. Each unit — a record that replaces the one with its
    /// seq (a merge or fold result, or none) and the seqs it absorbs or drops — is
    /// written whole within one entry, so a crash never keeps a merged record beside
    /// what was merged into it; a large pass spans several entries of about
    /// [`SHED_ENTRY_BYTES`] each.
    pub fn shed(&mut self, units: &[(Option<Record>, Vec<u64>)]) -> Result<(), StoreError> {
        let mut records: Vec<&Record> = Vec::new();
        let mut dropped: Vec<u64> = Vec::new();
        let mut size = 0;
        for (i, (record, drops)) in units.iter().enumerate() {
            if let Some(r) = record {
                size += enc(r)?.len();
                self.ix.relayed |= is_relayed(r);
                records.push(r);
            }
            size += 10 * drops.len();
            dropped.extend_from_slice(drops);
            if size >= SHED_ENTRY_BYTES || i + 1 == units.len() {
                self.shed_entry(&records, &dropped)?;
                (records, dropped, size) = (Vec::new(), Vec::new(), 0);
            }
        }
        Ok(())
    }

    fn shed_entry(&mut self, records: &[&Record], dropped: &[u64]) -> Result<(), StoreError> {
        if records.is_empty() && dropped.is_empty() {
            return Ok(());
        }
        let mut payload = vec![SHED];
        payload.extend_from_slice(&enc(&(records, dropped))?);
        let (pos, frame_len) = self.segs.push(&payload)?;
        self.ix
            .put_shed(pos, frame_len, records.iter().copied(), dropped)?;
        Ok(())
    }

    /// Buffers an accountant state saved (or forgotten) between records.
    pub fn put_usage(
        &mut self,
        name: &Name,
        state: Option<&AccountantState>,
    ) -> Result<(), StoreError> {
        let mut payload = vec![USAGE];
        payload.extend_from_slice(&enc(&(name, state))?);
        self.segs.push(&payload)?;
        self.ix
            .usage
            .insert(name.as_str().to_owned(), state.cloned());
        Ok(())
    }

    /// The latest state of `name` written since the last checkpoint: `None` when the
    /// checkpoint has the latest, `Some(None)` when it was forgotten.
    pub fn usage(&self, name: &Name) -> Option<Option<AccountantState>> {
        self.ix.usage.get(name.as_str()).cloned()
    }

    /// Makes every buffered entry durable.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        Ok(self.segs.sync()?)
    }

    /// Since when entries wait for a sync.
    pub fn unsynced_since(&self) -> Option<std::time::Instant> {
        self.segs.unsynced_since()
    }

    /// Forgets every record `<= upto` (acknowledged); returns how many went.
    pub fn ack(&mut self, upto: u64) -> usize {
        let before = self.ix.count;
        while self.ix.base <= upto {
            let Some(front) = self.ix.slots.pop_front() else {
                break;
            };
            if let Some(s) = front {
                self.ix.bytes -= u64::from(s.rec_len);
                self.ix.count -= 1;
            }
            self.ix.base += 1;
        }
        self.ix.trim();
        if self.ix.slots.is_empty() {
            self.ix.base = 0;
        }
        self.ix.acked = self.ix.acked.max(upto);
        before - self.ix.count
    }

    /// The oldest segment that must stay: every older one names only acknowledged seqs.
    /// A large active segment that holds nothing unacknowledged is closed first, so that
    /// it can go too.
    pub fn first_kept(&mut self) -> Result<u64, StoreError> {
        const ROLL_EMPTY: u64 = 64 << 10;
        let active = self.segs.active_id();
        let active_done = self
            .ix
            .seg_max
            .get(&active)
            .is_none_or(|m| *m <= self.ix.acked);
        if self.ix.count == 0 && active_done && self.segs.end().off >= ROLL_EMPTY {
            self.segs.roll()?;
        }
        let acked = self.ix.acked;
        let seg_max = &self.ix.seg_max;
        let first = self
            .segs
            .ids()
            .find(|id| *id == self.segs.active_id() || seg_max.get(id).is_some_and(|m| *m > acked))
            .unwrap_or(self.segs.active_id());
        Ok(first)
    }

    /// Whether segments older than `first` exist.
    pub fn deletes_any(&self, first: u64) -> bool {
        self.segs.ids().next().is_some_and(|id| id < first)
    }

    /// Hands over the states changed since the last checkpoint and the position the
    /// new checkpoint covers (the log's end: call after [`OutboxLog::sync`]).
    pub fn checkpoint(&mut self) -> (BTreeMap<String, Option<AccountantState>>, Pos) {
        let at = self.segs.end();
        self.ix.usage_from = at;
        (std::mem::take(&mut self.ix.usage), at)
    }

    /// Deletes the segments older than `first` (after the checkpoint is durable).
    pub fn delete_before(&mut self, first: u64) -> Result<(), StoreError> {
        self.segs.delete_before(first)?;
        let kept = self.segs.ids().collect::<Vec<_>>();
        self.ix.seg_max.retain(|id, _| kept.contains(id));
        Ok(())
    }

    /// The seqs held from `from` on, at most `limit`, ascending.
    fn seqs_from(&self, from: u64, limit: usize) -> Vec<(u64, Slot)> {
        let start = from.max(self.ix.base);
        let skip = usize::try_from(start - self.ix.base).unwrap_or(usize::MAX);
        if skip >= self.ix.slots.len() {
            return Vec::new();
        }
        self.ix
            .slots
            .range(skip..)
            .zip(start..)
            .filter_map(|(s, seq)| s.map(|s| (seq, s)))
            .take(limit)
            .collect()
    }

    /// Up to `limit` records with `seq >= from`, in order, with their encoded lengths.
    /// Record frames that lie back to back in a segment are read with one read.
    pub fn records_from(&self, from: u64, limit: usize) -> Result<Vec<(Record, u64)>, StoreError> {
        let want = self.seqs_from(from, limit);
        let mut out = Vec::with_capacity(want.len());
        let mut shed_cache: Option<(Pos, Vec<Record>)> = None;
        let mut i = 0;
        while i < want.len() {
            let first = want[i].1;
            let mut end = first.pos.off + u64::from(first.frame_len);
            let mut j = i + 1;
            while first.part == 0
                && j < want.len()
                && want[j].1.part == 0
                && want[j].1.pos.seg == first.pos.seg
                && want[j].1.pos.off == end
            {
                end += u64::from(want[j].1.frame_len);
                j += 1;
            }
            let len = usize::try_from(end - first.pos.off).unwrap_or(usize::MAX);
            let span = self.segs.read(first.pos, len)?;
            let mut frames = super::frame::Frames::new(&span);
            for &(seq, slot) in &want[i..j] {
                let pos = slot.pos;
                let bad = |e| corrupt(pos, e);
                let (_, payload) = frames
                    .next()
                    .ok_or_else(|| bad(postcard::Error::DeserializeUnexpectedEnd))?;
                let record = if slot.part == 0 {
                    match decode(pos, payload)? {
                        Entry::Record { record, .. } => record,
                        _ => return Err(bad(postcard::Error::DeserializeBadEnum)),
                    }
                } else {
                    // The records of one shedding entry are decoded once per call.
                    if shed_cache.as_ref().is_none_or(|(at, _)| *at != pos) {
                        match decode(pos, payload)? {
                            Entry::Shed(records, _) => shed_cache = Some((pos, records)),
                            _ => return Err(bad(postcard::Error::DeserializeBadEnum)),
                        }
                    }
                    let k = usize::try_from(slot.part - 1).unwrap_or(usize::MAX);
                    shed_cache
                        .as_ref()
                        .and_then(|(_, records)| records.get(k))
                        .cloned()
                        .ok_or_else(|| bad(postcard::Error::DeserializeBadEnum))?
                };
                if record.seq != seq {
                    return Err(bad(postcard::Error::DeserializeBadEnum));
                }
                out.push((record, u64::from(slot.rec_len)));
            }
            i = j;
        }
        Ok(out)
    }

    /// The record `seq`, if held.
    pub fn get(&self, seq: u64) -> Result<Option<Record>, StoreError> {
        if !self.has(seq) {
            return Ok(None);
        }
        Ok(self.records_from(seq, 1)?.pop().map(|(r, _)| r))
    }
}

impl Drop for OutboxLog {
    /// A store closed in order (daemon exit, reopen) keeps what was buffered, as sled
    /// does on drop; a crash keeps what the last sync did.
    fn drop(&mut self) {
        if let Err(e) = self.segs.sync() {
            tracing::warn!(error = %e, "outbox log: final sync failed");
        }
    }
}
