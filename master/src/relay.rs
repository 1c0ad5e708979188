//! Relayed batches (the mesh): unwrapping the batches a node carried for its peers.
//!
//! Contract: [`unwrap`] is pure. Given an `Up` batch that arrived on node R's topic (the
//! broker's ACL binds the topic to R's certificate), it finds every
//! `RecordKind::Relayed(SignedBatch)` record, decodes the `Up` frame inside, checks its
//! signature with `verify` against the node the inner batch names (every layer: a
//! relay's own batch can only be signed by that relay), and goes on into the inner
//! batch's own `Relayed` records, down to [`MAX_RELAY_DEPTH`] layers below R. It
//! returns each accepted inner batch as a [`Layer`] (its node, the batch, and the path
//! it came by: the relays from R inwards) and each refused one as a [`Refused`], with
//! the seq of the record that carried it and the node whose batch held that record.
//! A refused record refuses its whole subtree (nothing under a forged layer is trusted)
//! and never the records around it. At most [`MAX_LAYERS`] inner batches are accepted
//! per frame; the rest are refused ([`RelayRefusal::TooMany`], not counted as forged),
//! so a frame costs a bounded number of signature checks. Accepted layers are stored like direct batches,
//! keyed `(node, epoch, seq)`: how many copies arrive, by whatever path, each record is
//! stored once.
//!
//! What the store keeps of a `Relayed` record itself is [`stored_kind`]: the record
//! with its batch replaced by a [`RelaySummary`] (origin, epoch, range, record count,
//! sha256 of the signed bytes); the carried records are stored under their own node.

use hedge_wire::mesh::{SignedBatch, MAX_RELAY_DEPTH};
use hedge_wire::{Name, RecordKind, Up};
use serde::{Deserialize, Serialize};

/// At most this many inner batches of one frame are checked and stored: as many as an
/// `Up` holds records ([`hedge_wire::limits::MAX_RECORDS`]), more than a frame of
/// [`hedge_wire::DEFAULT_MAX_FRAME`] can hold (each layer is a signed frame of its own,
/// about 100 bytes at the least), so a relay's legitimate frame never reaches it.
pub const MAX_LAYERS: usize = hedge_wire::limits::MAX_RECORDS;

/// Why a relayed batch was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RelayRefusal {
    /// The bytes are not one `Up` frame within the frame limit.
    #[error("not an Up frame")]
    Malformed,
    /// Nested deeper than `MAX_RELAY_DEPTH`.
    #[error("nested too deep")]
    TooDeep,
    /// More than [`MAX_LAYERS`] inner batches in one frame (not a forgery: see
    /// [`RelayRefusal::forged`]).
    #[error("too many relayed batches in one frame")]
    TooMany,
    /// The node it names has no enrolled key.
    #[error("no enrolled key for its node")]
    UnknownNode,
    /// The signature does not verify against its node's enrolled keys.
    #[error("forged or altered: the signature does not verify")]
    BadSignature,
    /// Its node is revoked.
    #[error("its node is revoked")]
    Revoked,
}

impl RelayRefusal {
    /// Whether it says the batch is not what its node signed or may not be stored
    /// (everything but [`RelayRefusal::TooMany`]): what `forged_relayed` counts.
    pub fn forged(self) -> bool {
        self != RelayRefusal::TooMany
    }
}

/// One accepted inner batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// The node that signed it (the batch's own `node`).
    pub node: Name,
    /// The batch.
    pub up: Up,
    /// The relays it came through, the one that published it to the broker first.
    pub via: Vec<Name>,
}

/// One refused inner batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The node whose (accepted) batch held the `Relayed` record.
    pub by: Name,
    /// That record's seq.
    pub seq: u64,
    /// The node the inner batch names, when it decoded.
    pub origin: Option<Name>,
    /// Why.
    pub reason: RelayRefusal,
}

/// What [`unwrap`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unwrapped {
    /// The accepted inner batches, outer ones first.
    pub layers: Vec<Layer>,
    /// The refused ones.
    pub refused: Vec<Refused>,
}

/// What the store keeps of a `Relayed` record instead of the carried bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelaySummary {
    /// The node the carried batch names (`None`: it did not decode).
    pub origin: Option<Name>,
    /// Its epoch.
    pub epoch: u64,
    /// Its covered range.
    pub covers: Option<(u64, u64)>,
    /// How many records it held.
    pub records: u32,
    /// Its signed bytes' length.
    pub bytes: u32,
    /// sha256 of its signed bytes.
    pub sha256: [u8; 32],
}

/// Checks that a node signed a batch (and may be stored).
pub type Verify<'a> = &'a dyn Fn(&Name, &SignedBatch) -> Result<(), RelayRefusal>;

/// The summary of `batch` (see [`RelaySummary`]); decodes with `max_frame`.
pub fn summary(batch: &SignedBatch, max_frame: usize) -> RelaySummary {
    use sha2::Digest;
    let up = batch.up(max_frame).ok();
    RelaySummary {
        origin: up.as_ref().map(|u| u.node.clone()),
        epoch: up.as_ref().map_or(0, |u| u.epoch),
        covers: up.as_ref().and_then(|u| u.covers),
        records: up
            .as_ref()
            .map_or(0, |u| u32::try_from(u.records.len()).unwrap_or(u32::MAX)),
        bytes: u32::try_from(batch.bytes.len()).unwrap_or(u32::MAX),
        sha256: sha2::Sha256::digest(&batch.bytes).into(),
    }
}

/// The kind the store keeps for `kind`: a `Relayed` record's batch becomes a
/// `SignedBatch` whose `bytes` are the postcard [`RelaySummary`] and whose signature is
/// empty; every other kind is kept as is (`None`).
pub fn stored_kind(kind: &RecordKind, max_frame: usize) -> Option<RecordKind> {
    let RecordKind::Relayed(batch) = kind else {
        return None;
    };
    let bytes = postcard::to_allocvec(&summary(batch, max_frame)).unwrap_or_default();
    Some(RecordKind::Relayed(SignedBatch {
        bytes,
        signature: Vec::new(),
    }))
}

/// Reads back a stored `Relayed` record's summary ([`stored_kind`]).
pub fn read_summary(kind: &RecordKind) -> Option<RelaySummary> {
    match kind {
        RecordKind::Relayed(b) if b.signature.is_empty() => postcard::from_bytes(&b.bytes).ok(),
        _ => None,
    }
}

/// Unwraps the relayed batches of `up` (see the module doc). `verify(node, batch)`
/// checks that `node` signed `batch` and may be stored (not revoked).
pub fn unwrap(up: &Up, max_frame: usize, verify: Verify<'_>) -> Unwrapped {
    let mut out = Unwrapped::default();
    walk(up, &[], 0, max_frame, verify, &mut out);
    out
}

fn walk(
    up: &Up,
    via: &[Name],
    depth: usize,
    max_frame: usize,
    verify: Verify<'_>,
    out: &mut Unwrapped,
) {
    for record in &up.records {
        let RecordKind::Relayed(batch) = &record.kind else {
            continue;
        };
        let mut refuse = |origin: Option<Name>, reason| {
            out.refused.push(Refused {
                by: up.node.clone(),
                seq: record.seq,
                origin,
                reason,
            });
        };
        let inner = match batch.up(max_frame) {
            Ok(inner) => inner,
            Err(_) => {
                refuse(None, RelayRefusal::Malformed);
                continue;
            }
        };
        if depth >= MAX_RELAY_DEPTH {
            refuse(Some(inner.node), RelayRefusal::TooDeep);
            continue;
        }
        if out.layers.len() >= MAX_LAYERS {
            refuse(Some(inner.node), RelayRefusal::TooMany);
            continue;
        }
        if let Err(reason) = verify(&inner.node, batch) {
            refuse(Some(inner.node), reason);
            continue;
        }
        let mut path = via.to_vec();
        path.push(up.node.clone());
        let at = out.layers.len();
        out.layers.push(Layer {
            node: inner.node.clone(),
            up: inner,
            via: path.clone(),
        });
        let inner = out.layers[at].up.clone();
        walk(&inner, &path, depth + 1, max_frame, verify, out);
    }
}

/// `via` as `hedge master nodes` shows it: `direct`, or `via c,b,a` (the relay that
/// reached the broker first).
pub fn path_text<S: std::fmt::Display>(via: &[S]) -> String {
    if via.is_empty() {
        return "direct".into();
    }
    let names: Vec<String> = via.iter().map(ToString::to_string).collect();
    format!("via {}", names.join(","))
}

#[cfg(test)]
mod tests;
