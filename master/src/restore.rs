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
use crate::store::{FleetStore, OpenRestore, StoreError};

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
    /// The store refused (the instance is not placed anywhere, the target does not fit)
    /// or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
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
