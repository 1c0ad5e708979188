//! Values to and from SQLite's columns.
//!
//! Contract: u64 values that are keys or compared by range must fit SQLite's signed
//! integers ([`seq_sql`], else [`StoreError::SeqOutOfRange`]); index columns whose exact
//! value lives in a blob are clamped ([`clamp_sql`]); an epoch is stored bit-for-bit
//! ([`epoch_sql`]: only compared for equality). Reading back never fails on a negative
//! value, which is never written ([`from_sql`] reads it as 0).

use hedge_wire::{Name, Record};

use super::super::blob::{decode, name};
use super::super::ingest::seq_i64;
use super::super::Result;
#[cfg(doc)]
use super::super::StoreError;

/// An epoch as stored: its 64 bits as SQLite's signed integer.
pub(super) fn epoch_sql(e: u64) -> i64 {
    i64::from_ne_bytes(e.to_ne_bytes())
}

/// A record's time as stored: bit-for-bit, so it reads back exactly ([`time_of_sql`]);
/// never queried by range.
pub(super) fn time_sql(t: u64) -> i64 {
    i64::from_ne_bytes(t.to_ne_bytes())
}

/// A stored record time back to what was sent.
pub(super) fn time_of_sql(t: i64) -> u64 {
    u64::from_ne_bytes(t.to_ne_bytes())
}

/// Checks that `v` fits SQLite's signed 64-bit integers.
pub(super) fn seq_sql(v: u64) -> Result<i64> {
    seq_i64(v)
}

/// Clamps `v` into SQLite's range, for index columns whose exact value lives elsewhere.
pub(super) fn clamp_sql(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A stored non-negative integer back to u64 (negative values, never written, read as 0).
pub(super) fn from_sql(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Raw `(node, seq, time_ms, kind)` rows.
pub(super) type RawRecord = (String, i64, i64, Vec<u8>);

pub(super) fn raw_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawRecord> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
}

pub(super) fn decode_record(raw: RawRecord) -> Result<(Name, Record)> {
    let (node, seq, time_ms, kind) = raw;
    let kind = decode("record", &node, &kind)?;
    Ok((
        name(node)?,
        Record {
            seq: from_sql(seq),
            time_ms: time_of_sql(time_ms),
            kind,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_epochs_round_trip_bit_for_bit_and_seqs_are_bounded() {
        for t in [0, 1, i64::MAX as u64, 1 << 63, u64::MAX] {
            assert_eq!(time_of_sql(time_sql(t)), t);
        }
        assert_eq!(epoch_sql(u64::MAX), -1);
        assert_eq!(seq_sql(i64::MAX as u64).ok(), Some(i64::MAX));
        assert!(seq_sql(1 << 63).is_err());
        assert_eq!(clamp_sql(u64::MAX), i64::MAX);
        assert_eq!((from_sql(-5), from_sql(7)), (0, 7));
    }
}
