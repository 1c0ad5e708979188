//! `hedge master restore`: rebuilding an instance on a node from a snapshot in the
//! master's blob store.
//!
//! Contract: [`restore`] unseals the snapshot's key (its header's `sealed_key`, sealed
//! on the source node to the fleet's recovery public key) with the recovery private
//! key, then opens the restore in the store ([`FleetStore::place_restore`]), in one
//! transaction: the restore is recorded (target, instance, source node, snapshot, key),
//! the instance is placed on the target (moved there, fenced, if it lives elsewhere:
//! the old copy is requested destroyed at once, so two copies never write diverging
//! data), and the target's new signed state carries a [`RestoreDirective`]. At most one
//! restore of an instance is open: a new one replaces it. The restore closes when the
//! target's `Backup { event: Restored }` record for that snapshot is ingested, or when
//! the instance leaves the target's state: its key is wiped from the store then and the
//! directive is left out of the target's next state. While open, the blob service gives
//! the target the key ([`FleetStore::open_restore_for`]) and the source's chunks, and
//! retention keeps the snapshot ([`FleetStore::open_restores_from`]).

use hedge_common::seal::{unseal, RecoveryKey, SealError};
use hedge_wire::backup::{RestoreDirective, SnapshotHeader, SnapshotId};
use hedge_wire::{DesiredState, Name};
use zeroize::Zeroizing;

use crate::sign::{sign, MasterKey};
use crate::store::{FleetStore, OpenRestore, StoreError, StoredSnapshot};

/// A restore to open ([`FleetStore::place_restore`]).
#[derive(Clone)]
pub struct RestoreRequest {
    /// The instance.
    pub instance: Name,
    /// The node it is rebuilt and then runs on.
    pub target: Name,
    /// The node that took the snapshot.
    pub source: Name,
    /// The snapshot.
    pub snapshot: SnapshotId,
    /// The snapshot's key, unsealed.
    pub key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for RestoreRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoreRequest")
            .field("instance", &self.instance)
            .field("target", &self.target)
            .field("source", &self.source)
            .field("snapshot", &self.snapshot)
            .finish_non_exhaustive()
    }
}

impl RestoreRequest {
    /// The directive the target's state carries.
    pub fn directive(&self) -> RestoreDirective {
        RestoreDirective {
            instance: self.instance.clone(),
            source: self.source.clone(),
            snapshot: self.snapshot,
        }
    }
}

/// What [`FleetStore::place_restore`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restoring {
    /// The target's new signed state (it carries the directive).
    pub state: DesiredState,
    /// The node the instance was moved off (its copy requested destroyed), with that
    /// node's new generation; `None` when it was already on the target.
    pub moved_from: Option<(Name, u64)>,
    /// The open restore it replaced, if any.
    pub replaced: Option<OpenRestore>,
}

/// Why [`restore`] did nothing.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The snapshot's key does not unseal with this recovery key.
    #[error("snapshot {snapshot} of {instance}: the recovery key does not open its key: {source}")]
    Unseal {
        /// The instance.
        instance: Name,
        /// The snapshot.
        snapshot: SnapshotId,
        /// Why.
        source: SealError,
    },
    /// The master stores no such snapshot of the instance.
    #[error("the master stores no snapshot{} of {instance} (hedge master backups {instance})", .id.map(|i| format!(" {i}")).unwrap_or_default())]
    NoSnapshot {
        /// The instance.
        instance: Name,
        /// The snapshot asked for, if one was.
        id: Option<SnapshotId>,
    },
    /// The store refused (the instance is not placed anywhere, the target does not fit)
    /// or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The snapshot of `instance` to restore among those the master stores: `id` if given
/// (taken on any node), else the newest (by time taken, then id).
pub fn pick<'a>(
    stored: &'a [StoredSnapshot],
    instance: &Name,
    id: Option<SnapshotId>,
) -> Result<&'a StoredSnapshot, RestoreError> {
    let mut of = stored.iter().filter(|s| &s.instance == instance);
    let found = match id {
        Some(id) => of.find(|s| s.id == id),
        None => of.max_by_key(|s| (s.taken_ms, s.id)),
    };
    found.ok_or_else(|| RestoreError::NoSnapshot {
        instance: instance.clone(),
        id,
    })
}

/// Unseals `header`'s key with `recovery` and opens the restore of `header.instance`
/// onto `target` ([`FleetStore::place_restore`]), signing every state written with `key`
/// at `now_ms()` when it is signed.
pub fn restore<S: FleetStore>(
    store: &S,
    key: &MasterKey,
    recovery: &RecoveryKey,
    header: &SnapshotHeader,
    target: &Name,
    stale_after_ms: u64,
    now_ms: impl Fn() -> u64,
) -> Result<Restoring, RestoreError> {
    let unsealed = unseal(&header.sealed_key, recovery).map_err(|source| RestoreError::Unseal {
        instance: header.instance.clone(),
        snapshot: header.id,
        source,
    })?;
    let request = RestoreRequest {
        instance: header.instance.clone(),
        target: target.clone(),
        source: header.node.clone(),
        snapshot: header.id,
        key: unsealed,
    };
    Ok(store.place_restore(
        &request,
        now_ms(),
        stale_after_ms,
        |d: &mut DesiredState| sign(key, d, now_ms()),
    )?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use hedge_wire::backup::Consistency;

    use super::*;

    fn stored(node: &str, instance: &str, id: u64, taken_ms: u64) -> StoredSnapshot {
        StoredSnapshot {
            node: Name::new(node).unwrap(),
            instance: Name::new(instance).unwrap(),
            id: SnapshotId(id),
            taken_ms,
            consistency: Consistency::Frozen,
            bytes: 1,
            new_bytes: 1,
            chunks: 1,
            stored_ms: taken_ms,
            ids: String::new(),
        }
    }

    fn header(recovery: &RecoveryKey, key: &[u8; 32]) -> SnapshotHeader {
        SnapshotHeader {
            node: Name::new("a").unwrap(),
            instance: Name::new("web").unwrap(),
            id: SnapshotId(0x5eed),
            taken_ms: 1,
            consistency: Consistency::Frozen,
            bytes: 1,
            new_bytes: 1,
            chunks: 1,
            root: Vec::new(),
            sealed_key: heapless::Vec::from_slice(&hedge_common::seal::seal(
                key,
                &recovery.public(),
            ))
            .unwrap(),
        }
    }

    #[test]
    fn the_snapshot_key_is_unsealed_with_the_recovery_key_and_kept_with_the_restore() {
        use crate::store::conformance::{n, open, request};
        let (_dir, store) = open();
        for node in ["a", "b"] {
            store
                .register_node(&crate::store::NodeInfo {
                    node: n(node),
                    board: None,
                    arch: Some("aarch64".into()),
                    labels: Default::default(),
                    region: None,
                    cpus: None,
                    mem_bytes: None,
                    capacity_instances: 4,
                })
                .unwrap();
        }
        let signing = MasterKey::generate();
        store
            .place(
                request("web", hedge_wire::RequestedState::Started),
                &crate::alloc::Placement {
                    node: Some(n("a")),
                    ..Default::default()
                },
                0,
                0,
                |d| sign(&signing, d, 0),
            )
            .unwrap();
        let recovery = RecoveryKey::generate();
        let h = header(&recovery, &[42; 32]);
        // Another recovery key opens nothing, and nothing is stored.
        let wrong = RecoveryKey::generate();
        assert!(matches!(
            restore(&store, &signing, &wrong, &h, &n("b"), 0, || 7),
            Err(RestoreError::Unseal { .. })
        ));
        assert!(store.open_restores().unwrap().is_empty());
        let done = restore(&store, &signing, &recovery, &h, &n("b"), 0, || 7).unwrap();
        crate::sign::verify(&signing.public(), &done.state).unwrap();
        assert_eq!(done.state.node, n("b"));
        assert_eq!(
            done.state.restore_of(&n("web")).map(|r| r.snapshot),
            Some(h.id)
        );
        let (source, key) = store
            .open_restore_for(&n("b"), &n("web"), h.id)
            .unwrap()
            .unwrap();
        assert_eq!((source, key), (n("a"), [42; 32]));
    }

    #[test]
    fn the_newest_snapshot_of_the_instance_or_the_one_named() {
        let web = Name::new("web").unwrap();
        let all = [
            stored("a", "web", 9, 100),
            stored("b", "web", 2, 300),
            stored("a", "db", 7, 900),
            stored("a", "web", 1, 300),
        ];
        let p = pick(&all, &web, None).unwrap();
        assert_eq!((p.node.as_str(), p.id), ("b", SnapshotId(2)));
        let p = pick(&all, &web, Some(SnapshotId(9))).unwrap();
        assert_eq!((p.node.as_str(), p.taken_ms), ("a", 100));
        assert!(matches!(
            pick(&all, &web, Some(SnapshotId(7))),
            Err(RestoreError::NoSnapshot { .. })
        ));
        let none = Name::new("none").unwrap();
        let e = pick(&all, &none, None).unwrap_err().to_string();
        assert!(e.contains("no snapshot of none"), "{e}");
    }
}
