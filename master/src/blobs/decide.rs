//! The blob service's decisions, pure: who may read what, the quota, a snapshot body's
//! header, and which snapshots retention drops.
//!
//! Contract: [`may_get_chunk`] lets a node read chunks stored under its own name, or
//! under a node an open restore onto it is from; [`fits_quota`] refuses a new chunk that
//! would take a node past its quota; [`snapshot_header`] accepts a header only from the
//! node it names, valid, with a body whose rest is whole ids; [`to_drop`] keeps the
//! newest `retain` snapshots (by time taken, then id) and every one an open restore
//! names.

use hedge_wire::backup::{SnapshotHeader, SnapshotId};
use hedge_wire::{Name, Validate};

use super::request::MAX_HEADER;
use crate::store::OpenRestore;

/// Why a blob request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The caller may not have it (`403`).
    #[error("forbidden")]
    Forbidden,
    /// A chunk's body does not hash to its name (`409`).
    #[error("the chunk does not hash to its name")]
    Mismatch,
    /// A snapshot names chunks not stored (`409`, the body lists them).
    #[error("{} chunk(s) missing", .0.len())]
    Missing(Vec<[u8; 32]>),
    /// The node's quota is used up (`507`).
    #[error("over the node's quota")]
    Quota,
    /// The body breaks a rule (`400`).
    #[error("bad request: {0}")]
    Bad(&'static str),
    /// Not stored (`404`).
    #[error("not found")]
    NotFound,
}

impl Refusal {
    /// The HTTP status that answers it.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Forbidden => 403,
            Refusal::Mismatch | Refusal::Missing(_) => 409,
            Refusal::Quota => 507,
            Refusal::Bad(_) => 400,
            Refusal::NotFound => 404,
        }
    }
}

/// Whether `caller` may read chunks stored under `source`: its own, or those of a node
/// an open restore onto `caller` is from (`restores`: the open restores from `source`).
pub fn may_get_chunk(caller: &Name, source: &Name, restores: &[OpenRestore]) -> bool {
    caller == source
        || restores
            .iter()
            .any(|r| &r.target == caller && &r.source == source)
}

/// Whether a new chunk of `len` bytes fits a node that stores `used` of `quota` bytes.
pub fn fits_quota(used: u64, len: u64, quota: u64) -> bool {
    used.checked_add(len).is_some_and(|t| t <= quota)
}

/// The header length a snapshot body of `body_len` bytes starts with (`prefix`: its
/// first 4 bytes, big-endian), checked against the bounds.
pub fn header_len(prefix: [u8; 4], body_len: u64) -> Result<u32, Refusal> {
    let n = u32::from_be_bytes(prefix);
    if n == 0 || n > MAX_HEADER || u64::from(n) + 4 > body_len {
        return Err(Refusal::Bad("snapshot header length out of bounds"));
    }
    if (body_len - 4 - u64::from(n)) % 32 != 0 {
        return Err(Refusal::Bad("snapshot ids are not whole 32-byte ids"));
    }
    Ok(n)
}

/// Decodes and checks the header `caller` sent.
pub fn snapshot_header(caller: &Name, bytes: &[u8]) -> Result<SnapshotHeader, Refusal> {
    let header: SnapshotHeader =
        postcard::from_bytes(bytes).map_err(|_| Refusal::Bad("snapshot header does not decode"))?;
    header
        .validate()
        .map_err(|_| Refusal::Bad("snapshot header breaks a wire bound"))?;
    if &header.node != caller {
        return Err(Refusal::Forbidden);
    }
    Ok(header)
}

/// The snapshots of one (node, instance) retention drops: all but the newest `retain`
/// (by `taken_ms`, then id), less those in `protected` (named by open restores).
pub fn to_drop(
    snapshots: &[(SnapshotId, u64)],
    retain: u16,
    protected: &[SnapshotId],
) -> Vec<SnapshotId> {
    let mut newest_first: Vec<(SnapshotId, u64)> = snapshots.to_vec();
    newest_first.sort_by_key(|s| std::cmp::Reverse((s.1, s.0)));
    newest_first
        .into_iter()
        .skip(usize::from(retain.max(1)))
        .map(|(id, _)| id)
        .filter(|id| !protected.contains(id))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn n(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    #[test]
    fn chunks_are_read_by_their_node_or_a_restore_target_from_it() {
        let r = OpenRestore {
            target: n("b"),
            instance: n("web"),
            source: n("a"),
            snapshot: SnapshotId(1),
        };
        assert!(may_get_chunk(&n("a"), &n("a"), &[]));
        assert!(!may_get_chunk(&n("b"), &n("a"), &[]));
        assert!(may_get_chunk(&n("b"), &n("a"), std::slice::from_ref(&r)));
        assert!(!may_get_chunk(&n("c"), &n("a"), &[r]));
    }

    #[test]
    fn the_quota_holds_without_overflow() {
        assert!(fits_quota(0, 10, 10));
        assert!(!fits_quota(1, 10, 10));
        assert!(!fits_quota(u64::MAX, 1, u64::MAX));
    }

    #[test]
    fn header_lengths_are_bounded_and_ids_whole() {
        assert_eq!(header_len(10u32.to_be_bytes(), 14 + 64), Ok(10));
        assert!(header_len(10u32.to_be_bytes(), 14 + 63).is_err());
        assert!(header_len(0u32.to_be_bytes(), 100).is_err());
        assert!(header_len(100u32.to_be_bytes(), 50).is_err());
        assert!(header_len((MAX_HEADER + 1).to_be_bytes(), u64::MAX / 2).is_err());
    }

    #[test]
    fn retention_keeps_the_newest_and_what_a_restore_names() {
        let s = |i: u64, t: u64| (SnapshotId(i), t);
        let all = [s(1, 10), s(2, 30), s(3, 20), s(4, 40)];
        let mut d = to_drop(&all, 2, &[]);
        d.sort();
        assert_eq!(d, vec![SnapshotId(1), SnapshotId(3)]);
        assert_eq!(to_drop(&all, 2, &[SnapshotId(1)]), vec![SnapshotId(3)]);
        assert!(to_drop(&all, 24, &[]).is_empty());
        assert_eq!(to_drop(&all, 0, &[]).len(), 3, "at least one is kept");
        // Equal times: the higher id is the newer.
        assert_eq!(to_drop(&[s(1, 5), s(2, 5)], 1, &[]), vec![SnapshotId(1)]);
    }

    #[test]
    fn a_header_is_accepted_only_from_its_node() {
        let h = SnapshotHeader {
            node: n("a"),
            instance: n("web"),
            id: SnapshotId(7),
            taken_ms: 1,
            consistency: hedge_wire::backup::Consistency::Live,
            bytes: 1,
            new_bytes: 1,
            chunks: 1,
            root: vec![1, 2, 3],
            sealed_key: heapless::Vec::from_slice(&[0u8; 80]).unwrap(),
        };
        let bytes = postcard::to_allocvec(&h).unwrap();
        assert_eq!(snapshot_header(&n("a"), &bytes), Ok(h.clone()));
        assert_eq!(snapshot_header(&n("b"), &bytes), Err(Refusal::Forbidden));
        assert!(matches!(
            snapshot_header(&n("a"), &bytes[..5]),
            Err(Refusal::Bad(_))
        ));
        let mut short = h;
        short.sealed_key = heapless::Vec::from_slice(&[0u8; 8]).unwrap();
        let bytes = postcard::to_allocvec(&short).unwrap();
        assert!(matches!(
            snapshot_header(&n("a"), &bytes),
            Err(Refusal::Bad(_))
        ));
    }
}
