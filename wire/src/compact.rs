//! The compact encoding of an [`Up`] batch: envelope version [`COMPACT_UP_VERSION`].
//!
//! Contract: [`encode_up`] validates the batch and writes the version byte, then the
//! body below; [`crate::codec::decode`] reads it back into the same [`Up`] (every
//! `u64` round-trips exactly, wrapping arithmetic throughout). Decoding is pure over
//! `&[u8]`: any input gives an [`Up`] or a typed [`WireError`] (short input and bad
//! varints as [`WireError::Decode`], broken rules of this format as
//! [`WireError::Compact`]), never a panic; it allocates only for records present in its
//! input (one byte at least each, at most [`MAX_RECORDS`]).
//!
//! The body: the node (postcard), the epoch (varint), `covers` (0, or 1 then two
//! varints), the record count (varint), then each record: a head byte, a seq gap, the
//! time, the kind. Seqs and times are deltas; a usage record's fields are predicted from
//! the batch's earlier usage records and cost nothing when the prediction holds:
//! consecutive records of a tick share `to_ms` and `from_ms`, an instance's memory and
//! disk change little between its records, a running instance's uptime is its span.
//!
//! - head: bit 0 [`SEQ_NEXT`]; bit 1 [`USAGE`]; for a usage record bits 2..=7 are the
//!   flags below, for another kind they must be 0.
//! - seq: the expected seq is `covers.0` (0 without `covers`) for the first record and
//!   the previous seq + 1 after; [`SEQ_NEXT`]: it is the expected one, else a varint
//!   gap follows (seq = expected + gap). Seqs strictly increase by construction.
//! - time: varint zigzag of `time_ms - previous time_ms` (0 before the first).
//! - another kind than usage: its postcard encoding (as in wire version 2).
//! - usage: the instance, a varint `v`: `1..=64` is a new name of `v` bytes that
//!   follow, `v > 64` the batch's name number `v - 65` (numbered in order of first
//!   appearance). Then, with `P` the batch's previous usage record and `S` the previous
//!   one of the same instance (else `P`; absent fields read 0, an absent `P`'s `to_ms`
//!   reads as this record's time):
//!   `to_ms` ([`TO_PRED`]: `P.to_ms`, else zigzag delta to it),
//!   `from_ms` ([`FROM_PRED`]: `to_ms - (P.to_ms - P.from_ms)`, else zigzag delta),
//!   `cpu_ms` (varint),
//!   `mem_avg_bytes` ([`MEM_PRED`]: `S`'s, else zigzag delta),
//!   `mem_peak_bytes` ([`PEAK_IS_AVG`]: equal to the average, else zigzag delta to it),
//!   `disk_bytes` (zigzag delta to `S`'s),
//!   `net_rx_bytes` and `net_tx_bytes` ([`NET`]: two postcard `Option<u64>`, else both
//!   `None`), `uptime_ms` ([`UPTIME_FULL`]: `to_ms - from_ms`, else zigzag delta).

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::bounded::PREALLOC_BYTES;
use crate::error::WireError;
use crate::limits::MAX_RECORDS;
use crate::types::{Name, Record, RecordKind, Up, NAME_MAX};
use crate::validate::Validate;

/// The envelope version of a compact [`Up`] batch.
pub const COMPACT_UP_VERSION: u8 = 3;

/// Head bit: the seq is the expected one (no gap follows).
pub const SEQ_NEXT: u8 = 1;
/// Head bit: a usage record in the compact form (the bits below apply).
pub const USAGE: u8 = 1 << 1;
/// Usage bit: `to_ms` is predicted.
pub const TO_PRED: u8 = 1 << 2;
/// Usage bit: `from_ms` is predicted.
pub const FROM_PRED: u8 = 1 << 3;
/// Usage bit: `mem_avg_bytes` is the instance's previous one.
pub const MEM_PRED: u8 = 1 << 4;
/// Usage bit: `mem_peak_bytes` equals `mem_avg_bytes`.
pub const PEAK_IS_AVG: u8 = 1 << 5;
/// Usage bit: the network options follow (else both `None`).
pub const NET: u8 = 1 << 6;
/// Usage bit: `uptime_ms` is `to_ms - from_ms`.
pub const UPTIME_FULL: u8 = 1 << 7;

/// A name number `v` above this refers to the batch's name `v - NAME_REF - 1`.
const NAME_REF: u64 = NAME_MAX as u64;

/// What later usage records are predicted from.
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    to_ms: u64,
    from_ms: u64,
    mem_avg: u64,
    disk: u64,
}

/// A usage record's fields, by value.
#[derive(Debug, Clone, Copy)]
struct Usage {
    to_ms: u64,
    from_ms: u64,
    cpu_ms: u64,
    mem_avg: u64,
    mem_peak: u64,
    disk: u64,
    rx: Option<u64>,
    tx: Option<u64>,
    uptime: u64,
}

impl Usage {
    fn seen(&self) -> Seen {
        Seen {
            to_ms: self.to_ms,
            from_ms: self.from_ms,
            mem_avg: self.mem_avg,
            disk: self.disk,
        }
    }
}

/// The state both ends keep while walking a batch.
struct Walk {
    /// The seq a [`SEQ_NEXT`] record has; `None` past `u64::MAX`.
    next_seq: Option<u64>,
    time_ms: u64,
    /// The batch's previous usage record.
    prev: Option<Seen>,
}

impl Walk {
    fn new(covers: Option<(u64, u64)>) -> Self {
        Walk {
            next_seq: Some(covers.map_or(0, |c| c.0)),
            time_ms: 0,
            prev: None,
        }
    }

    /// `to_ms` and `from_ms` as predicted for a record made at `time_ms`.
    fn predict_to(&self, time_ms: u64) -> u64 {
        self.prev.map_or(time_ms, |p| p.to_ms)
    }

    fn predict_from(&self, to_ms: u64) -> u64 {
        let span = self.prev.map_or(0, |p| p.to_ms.wrapping_sub(p.from_ms));
        to_ms.wrapping_sub(span)
    }
}

/// Zigzag of the two's complement difference `a - b`: small either way, small varint.
fn zigzag(a: u64, b: u64) -> u64 {
    let d = a.wrapping_sub(b);
    (d << 1) ^ 0u64.wrapping_sub(d >> 63)
}

/// The inverse of [`zigzag`]: the `a` with `zigzag(a, b) == z`.
fn unzigzag(z: u64, b: u64) -> u64 {
    let d = (z >> 1) ^ 0u64.wrapping_sub(z & 1);
    b.wrapping_add(d)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v.to_le_bytes()[0] | 0x80);
        v >>= 7;
    }
    out.push(v.to_le_bytes()[0]);
}

fn put_postcard<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) -> Result<(), WireError> {
    *out = postcard::to_extend(v, core::mem::take(out)).map_err(WireError::Encode)?;
    Ok(())
}

fn put_option(out: &mut Vec<u8>, v: Option<u64>) {
    match v {
        None => out.push(0),
        Some(v) => {
            out.push(1);
            put_varint(out, v);
        }
    }
}

/// Validates `up` and encodes it as a compact batch (version byte included).
///
/// Fails like [`crate::codec::encode`]: [`WireError::Invalid`] for a batch that breaks
/// a rule of [`crate::validate`], [`WireError::TooLarge`] if longer than `max`. The
/// output is built whole before its length is checked: it is about as long as the
/// batch's own data.
pub fn encode_up(up: &Up, max: usize) -> Result<Vec<u8>, WireError> {
    up.validate()?;
    let mut out = Vec::with_capacity(32 + 16 * up.records.len());
    out.push(COMPACT_UP_VERSION);
    put_postcard(&mut out, &up.node)?;
    put_varint(&mut out, up.epoch);
    match up.covers {
        None => out.push(0),
        Some((from, to)) => {
            out.push(1);
            put_varint(&mut out, from);
            put_varint(&mut out, to);
        }
    }
    put_varint(&mut out, up.records.len() as u64);
    let mut walk = Walk::new(up.covers);
    // Name → its number and its last usage record.
    let mut names: BTreeMap<&str, (u64, Seen)> = BTreeMap::new();
    for r in &up.records {
        let head_at = out.len();
        let mut head = 0u8;
        out.push(0);
        // validate() checked that seqs strictly increase and lie within `covers`, so
        // the gap never wraps.
        let expected = walk.next_seq.unwrap_or(u64::MAX);
        if r.seq == expected {
            head |= SEQ_NEXT;
        } else {
            put_varint(&mut out, r.seq.wrapping_sub(expected));
        }
        walk.next_seq = r.seq.checked_add(1);
        put_varint(&mut out, zigzag(r.time_ms, walk.time_ms));
        walk.time_ms = r.time_ms;
        match usage_of(&r.kind) {
            Some((instance, u)) => {
                head |= USAGE;
                let known = names.get(instance.as_str()).copied();
                match known {
                    Some((n, _)) => put_varint(&mut out, NAME_REF + 1 + n),
                    // Its postcard length prefix is one byte, 1..=NAME_MAX.
                    None => put_postcard(&mut out, instance)?,
                }
                head |= put_usage(&mut out, &walk, known.map(|k| k.1), r.time_ms, &u);
                walk.prev = Some(u.seen());
                let n = known.map_or(names.len() as u64, |k| k.0);
                names.insert(instance.as_str(), (n, u.seen()));
            }
            None => put_postcard(&mut out, &r.kind)?,
        }
        if let Some(h) = out.get_mut(head_at) {
            *h = head;
        }
    }
    if out.len() > max {
        return Err(WireError::TooLarge {
            len: out.len(),
            max,
        });
    }
    Ok(out)
}

fn usage_of(kind: &RecordKind) -> Option<(&Name, Usage)> {
    match kind {
        RecordKind::Usage {
            instance,
            from_ms,
            to_ms,
            cpu_ms,
            mem_avg_bytes,
            mem_peak_bytes,
            disk_bytes,
            net_rx_bytes,
            net_tx_bytes,
            uptime_ms,
        } => Some((
            instance,
            Usage {
                to_ms: *to_ms,
                from_ms: *from_ms,
                cpu_ms: *cpu_ms,
                mem_avg: *mem_avg_bytes,
                mem_peak: *mem_peak_bytes,
                disk: *disk_bytes,
                rx: *net_rx_bytes,
                tx: *net_tx_bytes,
                uptime: *uptime_ms,
            },
        )),
        _ => None,
    }
}

/// Writes a usage record's fields after its name; returns its head bits.
fn put_usage(out: &mut Vec<u8>, walk: &Walk, same: Option<Seen>, time_ms: u64, u: &Usage) -> u8 {
    let mut head = 0u8;
    let s = same.or(walk.prev).unwrap_or_default();
    let to = walk.predict_to(time_ms);
    if u.to_ms == to {
        head |= TO_PRED;
    } else {
        put_varint(out, zigzag(u.to_ms, to));
    }
    let from = walk.predict_from(u.to_ms);
    if u.from_ms == from {
        head |= FROM_PRED;
    } else {
        put_varint(out, zigzag(u.from_ms, from));
    }
    put_varint(out, u.cpu_ms);
    if u.mem_avg == s.mem_avg {
        head |= MEM_PRED;
    } else {
        put_varint(out, zigzag(u.mem_avg, s.mem_avg));
    }
    if u.mem_peak == u.mem_avg {
        head |= PEAK_IS_AVG;
    } else {
        put_varint(out, zigzag(u.mem_peak, u.mem_avg));
    }
    put_varint(out, zigzag(u.disk, s.disk));
    if u.rx.is_some() || u.tx.is_some() {
        head |= NET;
        put_option(out, u.rx);
        put_option(out, u.tx);
    }
    let span = u.to_ms.wrapping_sub(u.from_ms);
    if u.uptime == span {
        head |= UPTIME_FULL;
    } else {
        put_varint(out, zigzag(u.uptime, span));
    }
    head
}

/// A cursor over the body being decoded.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> Result<u8, WireError> {
        let (&b, rest) = self
            .0
            .split_first()
            .ok_or(WireError::Decode(postcard::Error::DeserializeUnexpectedEnd))?;
        self.0 = rest;
        Ok(b)
    }

    /// A LEB128 `u64` of at most 10 bytes (postcard's varint).
    fn varint(&mut self) -> Result<u64, WireError> {
        let mut v = 0u64;
        for i in 0..10u32 {
            let b = self.byte()?;
            let low = u64::from(b & 0x7f);
            if i == 9 && b > 1 {
                return Err(WireError::Decode(postcard::Error::DeserializeBadVarint));
            }
            v |= low << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(WireError::Decode(postcard::Error::DeserializeBadVarint))
    }

    /// `base` if `head` has `bit`, else a zigzag delta to it.
    fn predicted(&mut self, head: u8, bit: u8, base: u64) -> Result<u64, WireError> {
        if head & bit != 0 {
            Ok(base)
        } else {
            Ok(unzigzag(self.varint()?, base))
        }
    }

    fn option(&mut self) -> Result<Option<u64>, WireError> {
        match self.byte()? {
            0 => Ok(None),
            1 => self.varint().map(Some),
            _ => Err(WireError::Decode(postcard::Error::DeserializeBadOption)),
        }
    }

    /// A postcard value, as wire version 2 encodes it.
    fn postcard<T: serde::de::DeserializeOwned>(&mut self) -> Result<T, WireError> {
        let (v, rest) = postcard::take_from_bytes::<T>(self.0).map_err(WireError::Decode)?;
        self.0 = rest;
        Ok(v)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.0.len() {
            return Err(WireError::Decode(postcard::Error::DeserializeUnexpectedEnd));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
}

/// Decodes a compact batch's body (after the version byte); the caller validates.
pub(crate) fn decode_up(body: &[u8]) -> Result<Up, WireError> {
    let mut inp = Input(body);
    let node: Name = inp.postcard()?;
    let epoch = inp.varint()?;
    let covers = match inp.byte()? {
        0 => None,
        1 => Some((inp.varint()?, inp.varint()?)),
        _ => return Err(WireError::Decode(postcard::Error::DeserializeBadOption)),
    };
    let count = usize::try_from(inp.varint()?).unwrap_or(usize::MAX);
    if count > MAX_RECORDS {
        return Err(WireError::Invalid("too many records"));
    }
    let cap = count.min(PREALLOC_BYTES / core::mem::size_of::<Record>());
    let mut records = Vec::with_capacity(cap);
    let mut walk = Walk::new(covers);
    // Each name's last usage record, by number.
    let mut names: Vec<(Name, Seen)> = Vec::new();
    for _ in 0..count {
        let head = inp.byte()?;
        let gap = if head & SEQ_NEXT != 0 {
            0
        } else {
            inp.varint()?
        };
        let seq = walk
            .next_seq
            .and_then(|s| s.checked_add(gap))
            .ok_or(WireError::Compact("seq past u64::MAX"))?;
        walk.next_seq = seq.checked_add(1);
        let time_ms = unzigzag(inp.varint()?, walk.time_ms);
        walk.time_ms = time_ms;
        let kind = if head & USAGE != 0 {
            let v = inp.varint()?;
            let (instance, same) = if v > NAME_REF {
                let n = usize::try_from(v - NAME_REF - 1).unwrap_or(usize::MAX);
                let (name, seen) = names
                    .get(n)
                    .ok_or(WireError::Compact("name number not yet defined"))?;
                (name.clone(), Some((n, *seen)))
            } else if v == 0 {
                return Err(WireError::Compact("empty name"));
            } else {
                let len = usize::try_from(v).unwrap_or(usize::MAX);
                let text = core::str::from_utf8(inp.take(len)?)
                    .map_err(|_| WireError::Decode(postcard::Error::DeserializeBadUtf8))?;
                (Name::new(text)?, None)
            };
            let u = take_usage(&mut inp, &walk, same.map(|s| s.1), time_ms, head)?;
            walk.prev = Some(u.seen());
            match same {
                Some((n, _)) => {
                    if let Some(e) = names.get_mut(n) {
                        e.1 = u.seen();
                    }
                }
                None => names.push((instance.clone(), u.seen())),
            }
            RecordKind::Usage {
                instance,
                from_ms: u.from_ms,
                to_ms: u.to_ms,
                cpu_ms: u.cpu_ms,
                mem_avg_bytes: u.mem_avg,
                mem_peak_bytes: u.mem_peak,
                disk_bytes: u.disk,
                net_rx_bytes: u.rx,
                net_tx_bytes: u.tx,
                uptime_ms: u.uptime,
            }
        } else {
            if head & !SEQ_NEXT != 0 {
                return Err(WireError::Compact("reserved head bits set"));
            }
            inp.postcard()?
        };
        records.push(Record { seq, time_ms, kind });
    }
    if !inp.0.is_empty() {
        return Err(WireError::TrailingBytes);
    }
    Ok(Up {
        node,
        records,
        covers,
        epoch,
    })
}

/// Reads a usage record's fields after its name (the inverse of [`put_usage`]).
fn take_usage(
    inp: &mut Input<'_>,
    walk: &Walk,
    same: Option<Seen>,
    time_ms: u64,
    head: u8,
) -> Result<Usage, WireError> {
    let s = same.or(walk.prev).unwrap_or_default();
    let to_ms = inp.predicted(head, TO_PRED, walk.predict_to(time_ms))?;
    let from_ms = inp.predicted(head, FROM_PRED, walk.predict_from(to_ms))?;
    let cpu_ms = inp.varint()?;
    let mem_avg = inp.predicted(head, MEM_PRED, s.mem_avg)?;
    let mem_peak = inp.predicted(head, PEAK_IS_AVG, mem_avg)?;
    let disk = unzigzag(inp.varint()?, s.disk);
    let (rx, tx) = if head & NET != 0 {
        (inp.option()?, inp.option()?)
    } else {
        (None, None)
    };
    let uptime = inp.predicted(head, UPTIME_FULL, to_ms.wrapping_sub(from_ms))?;
    Ok(Usage {
        to_ms,
        from_ms,
        cpu_ms,
        mem_avg,
        mem_peak,
        disk,
        rx,
        tx,
        uptime,
    })
}
