//! The backend-agnostic half of ingest: checking an `Up` batch and computing what each
//! of its records is stored with.
//!
//! Contract: [`check`] is pure. It refuses a batch that names another node than the
//! transport's ([`StoreError::NodeMismatch`]), breaks a wire rule
//! ([`StoreError::Invalid`]) or carries a seq or covered range above `i64::MAX`, the
//! range every backend indexes ([`StoreError::SeqOutOfRange`]); otherwise it returns
//! each record's [`Row`]: its postcard blob, its index columns ([`index_of`]) and its
//! event [`digest`] (time and content: the same event under another seq or epoch has
//! the same digest, which is how repeats are counted). A `Relayed` record's blob is its
//! summary ([`crate::relay::stored_kind`]). A backend stores the rows
//! (`INSERT OR IGNORE` by `(node, epoch, seq)`) and does the counting.

use hedge_wire::{Name, Record, RecordKind, Up, Validate};

use super::blob::encode;
use super::{Result, StoreError};

/// What a record is indexed by, beside its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Index<'a> {
    /// The record kind, as stored in `kind_tag` (`usage`, `incident`, ...).
    pub tag: &'static str,
    /// The instance the record is about, if one.
    pub instance: Option<&'a str>,
    /// A usage record's interval `[from_ms, to_ms)`.
    pub span: Option<(u64, u64)>,
}

/// One record of a checked batch, ready to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row<'a> {
    /// Its seq, within `i64`.
    pub seq: i64,
    /// The record as sent.
    pub record: &'a Record,
    /// Its kind, encoded: what is stored and what the byte quota counts.
    pub blob: Vec<u8>,
    /// Its index columns.
    pub index: Index<'a>,
    /// Its event identity ([`digest`]).
    pub digest: Vec<u8>,
}

/// A batch that may be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked<'a> {
    /// The range the batch covers, within `i64`.
    pub covers: Option<(i64, i64)>,
    /// Its records, in the batch's order.
    pub rows: Vec<Row<'a>>,
}

/// `v` as a signed 64-bit integer, else [`StoreError::SeqOutOfRange`].
pub fn seq_i64(v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| StoreError::SeqOutOfRange(v))
}

/// Checks `up`, which arrived on `node`'s topic, and prepares its rows. See the module
/// doc.
pub fn check<'a>(node: &Name, up: &'a Up) -> Result<Checked<'a>> {
    if &up.node != node {
        return Err(StoreError::NodeMismatch {
            topic: node.to_string(),
            sent: up.node.to_string(),
        });
    }
    up.validate()?;
    let covers = match up.covers {
        Some((from, to)) => Some((seq_i64(from)?, seq_i64(to)?)),
        None => None,
    };
    let mut rows = Vec::with_capacity(up.records.len());
    for record in &up.records {
        let seq = seq_i64(record.seq)?;
        // A `Relayed` record keeps its summary, not the bytes it carried.
        let blob = match crate::relay::stored_kind(&record.kind, hedge_wire::DEFAULT_MAX_FRAME) {
            Some(summary) => encode("record", &summary)?,
            None => encode("record", &record.kind)?,
        };
        rows.push(Row {
            seq,
            record,
            digest: digest(record.time_ms, &blob),
            index: index_of(&record.kind),
            blob,
        });
    }
    Ok(Checked { covers, rows })
}

/// The event identity of a record: its time and its encoded kind, hashed (the first 16
/// bytes of sha256).
pub fn digest(time_ms: u64, kind_blob: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(time_ms.to_be_bytes());
    h.update(kind_blob);
    h.finalize()[..16].to_vec()
}

/// The index columns of a record: tag, instance, usage interval.
pub fn index_of(kind: &RecordKind) -> Index<'_> {
    let (tag, instance, span) = match kind {
        RecordKind::InstanceState { instance, .. } => {
            ("instance_state", Some(instance.as_str()), None)
        }
        RecordKind::PromiseResult { instance, .. } => {
            ("promise_result", Some(instance.as_str()), None)
        }
        RecordKind::Usage {
            instance,
            from_ms,
            to_ms,
            ..
        } => ("usage", Some(instance.as_str()), Some((*from_ms, *to_ms))),
        RecordKind::Incident { instance, .. } => ("incident", Some(instance.as_str()), None),
        RecordKind::NodeHealth { .. } => ("node_health", None, None),
        RecordKind::LocalRequest { request } => {
            ("local_request", Some(request.name.as_str()), None)
        }
        RecordKind::NodeInfo { .. } => ("node_info", None, None),
        RecordKind::Desired { .. } => ("desired", None, None),
        RecordKind::DesiredExpired { .. } => ("desired_expired", None, None),
        RecordKind::Shed { .. } => ("shed", None, None),
        RecordKind::ConnectionParameters { instance, .. } => {
            ("connection_parameters", Some(instance.as_str()), None)
        }
        RecordKind::Artifact { .. } => ("artifact", None, None),
        RecordKind::Fence { instance, .. } => ("fence", Some(instance.as_str()), None),
        RecordKind::Relayed(_) => ("relayed", None, None),
        RecordKind::Backup { instance, .. } => ("backup", Some(instance.as_str()), None),
    };
    Index {
        tag,
        instance,
        span,
    }
}

#[cfg(test)]
mod tests;
