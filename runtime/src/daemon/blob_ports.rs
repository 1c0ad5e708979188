//! What the uploader (`daemon::backup_upload`) and the remote restore
//! (`daemon::restore`) need of the node's backup vault and of the master's blob service,
//! as two traits: [`VaultPort`] (blocking: call it off the event loop) and
//! [`BlobPort`] (async). `runtime::backup::Vault` and the client of
//! `runtime::backup::remote` implement them (`daemon::blob_impls`); the drivers' tests
//! use fakes.
//!
//! Contract: every failure is a [`PortError`] that says whether retrying can help
//! ([`PortError::Net`]: the link or the master's listener; anything else: the answer or
//! the data is wrong until something changes), and names the damaged snapshot and chunk
//! when a chunk failed its check ([`PortError::Damaged`]).

use std::future::Future;
use std::path::Path;

use hedge_wire::backup::{RestoreGrant, SnapshotHeader};
use hedge_wire::{Name, SnapshotId};

/// A chunk id: SHA-256 of the chunk's ciphertext.
pub(crate) type ChunkId = [u8; 32];

/// Why a vault or blob-service call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PortError {
    /// The network, TLS, or the master's listener: try again later.
    #[error("{0}")]
    Net(String),
    /// The master answered no (a refused grant, a quota, a bad request): retrying the
    /// same thing fails the same way until the master's state changes.
    #[error("{0}")]
    Refused(String),
    /// A chunk failed its check (hash or authentication): the snapshot is damaged.
    #[error("{}", damaged_text(*snapshot, chunk.as_ref()))]
    Damaged {
        /// The snapshot, when known.
        snapshot: Option<SnapshotId>,
        /// The chunk, when known.
        chunk: Option<ChunkId>,
    },
    /// The local vault failed (I/O, a corrupt catalog).
    #[error("{0}")]
    Vault(String),
}

fn damaged_text(snapshot: Option<SnapshotId>, chunk: Option<&ChunkId>) -> String {
    let what = match snapshot {
        Some(id) => format!("snapshot {id} is damaged"),
        None => "damaged".to_owned(),
    };
    match chunk {
        Some(c) => format!(
            "{what}: chunk {} does not match its id or key",
            hedge_common::hex::encode(c)
        ),
        None => what,
    }
}

impl PortError {
    /// Whether the failure is the link's (retry soon, say nothing to the master).
    pub(crate) fn transient(&self) -> bool {
        matches!(self, PortError::Net(_))
    }

    /// The same error, naming `snapshot` when it was damaged and did not say which.
    pub(crate) fn in_snapshot(self, id: SnapshotId) -> PortError {
        match self {
            PortError::Damaged {
                snapshot: None,
                chunk,
            } => PortError::Damaged {
                snapshot: Some(id),
                chunk,
            },
            other => other,
        }
    }
}

/// The local vault, as the uploader and the restore use it. Blocking.
pub(crate) trait VaultPort: Send + Sync + 'static {
    /// The ids of a snapshot's chunks, streamed from disk.
    type Ids: Iterator<Item = Result<ChunkId, PortError>> + Send + 'static;

    /// Snapshots taken here and not yet uploaded, oldest first.
    fn pending_uploads(&self) -> Result<Vec<(Name, SnapshotId)>, PortError>;
    /// The fleet's recovery public key, once fetched.
    fn recovery_key(&self) -> Result<Option<[u8; 32]>, PortError>;
    /// Keeps the fleet's recovery public key.
    fn set_recovery_key(&self, public: [u8; 32]) -> Result<(), PortError>;
    /// The header to upload for a snapshot (its key sealed to `recovery`).
    fn header(
        &self,
        instance: &Name,
        id: SnapshotId,
        recovery: &[u8; 32],
    ) -> Result<SnapshotHeader, PortError>;
    /// The snapshot's chunk ids.
    fn chunk_ids(&self, instance: &Name, id: SnapshotId) -> Result<Self::Ids, PortError>;
    /// A chunk's ciphertext.
    fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>, PortError>;
    /// The snapshot is in the master's blob store.
    fn mark_uploaded(&self, instance: &Name, id: SnapshotId) -> Result<(), PortError>;
    /// A snapshot of another node into the catalog.
    fn import(&self, grant: &RestoreGrant) -> Result<(), PortError>;
    /// Chunks the snapshot needs that the vault lacks (manifest first, then files).
    fn missing_chunks(&self, instance: &Name, id: SnapshotId) -> Result<Vec<ChunkId>, PortError>;
    /// Stores a fetched chunk after checking its hash ([`PortError::Damaged`] if not).
    fn put_chunk(&self, id: &ChunkId, ciphertext: &[u8]) -> Result<(), PortError>;
    /// Rebuilds the snapshot's paths in `partition` (staged, checked, swapped in).
    fn restore(
        &self,
        instance: &Name,
        id: SnapshotId,
        partition: &Path,
        uid: Option<(u32, u32)>,
    ) -> Result<(), PortError>;
}

/// The master's blob service, as this node's client reaches it. Async.
pub(crate) trait BlobPort: Send + Sync + 'static {
    /// `GET /backup/v1/recovery-key`.
    fn recovery_key(&self) -> impl Future<Output = Result<[u8; 32], PortError>> + Send;
    /// `POST /backup/v1/have`: one answer per id (at most 4096 ids).
    fn have(&self, ids: &[ChunkId]) -> impl Future<Output = Result<Vec<bool>, PortError>> + Send;
    /// `PUT /backup/v1/chunk/<id>`.
    fn put_chunk(
        &self,
        id: &ChunkId,
        ciphertext: &[u8],
    ) -> impl Future<Output = Result<(), PortError>> + Send;
    /// `PUT /backup/v1/snapshot`.
    fn put_snapshot(
        &self,
        header: &SnapshotHeader,
        ids: &[ChunkId],
    ) -> impl Future<Output = Result<(), PortError>> + Send;
    /// `GET /backup/v1/restore/<instance>/<snapshot>`.
    fn grant(
        &self,
        instance: &Name,
        id: SnapshotId,
    ) -> impl Future<Output = Result<RestoreGrant, PortError>> + Send;
    /// `GET /backup/v1/chunk/<source>/<id>`.
    fn get_chunk(
        &self,
        source: &Name,
        id: &ChunkId,
    ) -> impl Future<Output = Result<Vec<u8>, PortError>> + Send;
}

/// Runs a blocking vault call on tokio's blocking pool.
pub(crate) async fn blocking<V, T>(
    vault: &std::sync::Arc<V>,
    f: impl FnOnce(&V) -> Result<T, PortError> + Send + 'static,
) -> Result<T, PortError>
where
    V: VaultPort,
    T: Send + 'static,
{
    let v = vault.clone();
    tokio::task::spawn_blocking(move || f(&v))
        .await
        .map_err(|e| PortError::Vault(format!("vault task: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_chunk_names_its_snapshot_and_chunk() {
        let e = PortError::Damaged {
            snapshot: None,
            chunk: Some([0xab; 32]),
        }
        .in_snapshot(SnapshotId(0x12));
        let text = e.to_string();
        assert!(text.contains("snapshot 0000000000000012"), "{text}");
        assert!(text.contains(&"ab".repeat(32)), "{text}");
        assert!(!e.transient());
        assert!(PortError::Net("reset".into()).transient());
    }
}

#[cfg(test)]
pub(crate) mod fake;
