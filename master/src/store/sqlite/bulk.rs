//! Multi-row inserts of a checked batch: its records and their events, a few statements
//! per batch instead of two per record.
//!
//! Contract: [`insert_records`] stores the rows not stored yet (`INSERT OR IGNORE` by
//! `(node, epoch, seq)`) and says, per row, whether it was stored now; [`new_events`]
//! adds the events of the rows stored now to `events` and returns how many of them
//! were not there yet (the others are repeats: the same event under another key). Both
//! run inside the caller's transaction. Rows go in chunks whose sizes are powers of two
//! up to [`CHUNK`], so a batch of any length uses at most eight distinct statements per
//! table, each prepared once per connection.

use std::collections::HashSet;
use std::sync::OnceLock;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{params_from_iter, Connection};

use super::super::ingest::Row;
use super::super::{Result, StoreError};
use super::sql::{clamp_sql, time_sql};

/// Rows per statement, at most (ten parameters each: 1,280 of SQLite's 32,766).
pub(super) const CHUNK: usize = 128;

/// The columns of `records` an ingest writes, in the order of [`record_values`].
const RECORD_COLUMNS: &str =
    "node, epoch, seq, time_ms, kind_tag, instance, span_from, span_to, kind, digest";

/// Stores the rows of `rows` that `node`'s life `epoch` has not stored yet; per row,
/// whether it was stored now (the others were there: duplicates). A row is told by its
/// seq, which is unique within a checked batch (strictly increasing: `Up::validate`).
pub(super) fn insert_records(
    tx: &Connection,
    node: &str,
    epoch: i64,
    rows: &[Row<'_>],
) -> Result<Vec<bool>> {
    let mut stored = HashSet::with_capacity(rows.len());
    for chunk in chunks(rows) {
        let mut values = Vec::with_capacity(chunk.len() * 10);
        for row in chunk {
            record_values(&mut values, node, epoch, row);
        }
        let mut stmt = tx.prepare_cached(records_sql(chunk.len())?)?;
        let mut seqs = stmt.query(params_from_iter(values.iter()))?;
        while let Some(r) = seqs.next()? {
            stored.insert(r.get::<_, i64>(0)?);
        }
    }
    Ok(rows.iter().map(|r| stored.contains(&r.seq)).collect())
}

/// Adds the events of `rows` (those stored now) to `events`; returns how many were new.
pub(super) fn new_events(tx: &Connection, node: &str, rows: &[&Row<'_>]) -> Result<usize> {
    let mut added = 0;
    for chunk in chunks(rows) {
        let mut values = Vec::with_capacity(chunk.len() * 3);
        for row in chunk {
            values.push(text(node));
            values.push(int(time_sql(row.record.time_ms)));
            values.push(ToSqlOutput::Borrowed(ValueRef::Blob(&row.digest)));
        }
        added += tx
            .prepare_cached(events_sql(chunk.len())?)?
            .execute(params_from_iter(values.iter()))?;
    }
    Ok(added)
}

/// `rows` cut into chunks of [`CHUNK`], then the rest by decreasing powers of two.
fn chunks<T>(mut rows: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        if rows.is_empty() {
            return None;
        }
        let n = CHUNK.min(1 << rows.len().ilog2());
        let (head, tail) = rows.split_at(n);
        rows = tail;
        Some(head)
    })
}

/// The insert of `n` records (`n` a chunk's length: a power of two up to [`CHUNK`]),
/// built once per process rather than for every chunk of every batch.
fn records_sql(n: usize) -> Result<&'static str> {
    static SQL: OnceLock<Vec<String>> = OnceLock::new();
    by_size(&SQL, n, |n| {
        let head = format!("INSERT OR IGNORE INTO records ({RECORD_COLUMNS})");
        values_sql(&head, 10, n, " RETURNING seq")
    })
}

/// The insert of `n` events, as [`records_sql`].
fn events_sql(n: usize) -> Result<&'static str> {
    static SQL: OnceLock<Vec<String>> = OnceLock::new();
    by_size(&SQL, n, |n| {
        values_sql(
            "INSERT OR IGNORE INTO events (node, time_ms, digest)",
            3,
            n,
            "",
        )
    })
}

/// The statement for chunk length `n` from `cache`, which `build` fills for every chunk
/// length (1, 2, 4, … [`CHUNK`]) on first use.
fn by_size(
    cache: &'static OnceLock<Vec<String>>,
    n: usize,
    build: impl Fn(usize) -> String,
) -> Result<&'static str> {
    let all = cache.get_or_init(|| (0..=CHUNK.ilog2()).map(|k| build(1 << k)).collect());
    (n.is_power_of_two()
        .then(|| all.get(n.ilog2() as usize))
        .flatten())
    .map(String::as_str)
    .ok_or_else(|| StoreError::Batch(format!("no insert for a chunk of {n} rows")))
}

/// `head VALUES (?, …), … tail` with `rows` groups of `columns` parameters.
fn values_sql(head: &str, columns: usize, rows: usize, tail: &str) -> String {
    let group = format!("({})", vec!["?"; columns].join(", "));
    format!("{head} VALUES {}{tail}", vec![group; rows].join(", "))
}

/// The ten values of `row`, in the order of [`RECORD_COLUMNS`].
fn record_values<'a>(out: &mut Vec<ToSqlOutput<'a>>, node: &'a str, epoch: i64, row: &'a Row<'_>) {
    let span = row.index.span;
    out.push(text(node));
    out.push(int(epoch));
    out.push(int(row.seq));
    out.push(int(time_sql(row.record.time_ms)));
    out.push(text(row.index.tag));
    out.push(
        row.index
            .instance
            .map_or(ToSqlOutput::Borrowed(ValueRef::Null), text),
    );
    out.push(
        span.map_or(ToSqlOutput::Borrowed(ValueRef::Null), |(f, _)| {
            int(clamp_sql(f))
        }),
    );
    out.push(
        span.map_or(ToSqlOutput::Borrowed(ValueRef::Null), |(_, t)| {
            int(clamp_sql(t))
        }),
    );
    out.push(ToSqlOutput::Borrowed(ValueRef::Blob(&row.blob)));
    out.push(ToSqlOutput::Borrowed(ValueRef::Blob(&row.digest)));
}

fn text(s: &str) -> ToSqlOutput<'_> {
    ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes()))
}

fn int<'a>(v: i64) -> ToSqlOutput<'a> {
    ToSqlOutput::Borrowed(ValueRef::Integer(v))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn chunks_are_powers_of_two_and_cover_every_row_once_in_order() {
        for len in [0usize, 1, 2, 3, 127, 128, 129, 255, 256, 1000, 1024] {
            let rows: Vec<usize> = (0..len).collect();
            let mut seen = Vec::new();
            for c in chunks(&rows) {
                assert!(
                    c.len().is_power_of_two() && c.len() <= CHUNK,
                    "{len}: {}",
                    c.len()
                );
                seen.extend_from_slice(c);
            }
            assert_eq!(seen, rows, "{len}");
        }
    }

    #[test]
    fn each_chunk_length_has_its_statement() {
        for n in (0..=CHUNK.ilog2()).map(|k| 1usize << k) {
            assert_eq!(records_sql(n).unwrap().matches("(?,").count(), n, "{n}");
            assert_eq!(events_sql(n).unwrap().matches("(?,").count(), n, "{n}");
        }
        assert!(records_sql(3).is_err() && events_sql(2 * CHUNK).is_err());
    }

    #[test]
    fn the_values_clause_has_one_group_per_row() {
        assert_eq!(
            values_sql("INSERT INTO t (a, b)", 2, 3, " RETURNING a"),
            "INSERT INTO t (a, b) VALUES (?, ?), (?, ?), (?, ?) RETURNING a"
        );
    }
}
