//! The real sides of `daemon::blob_ports`: the node's [`Vault`] as a [`VaultPort`],
//! and the daemon's accessor that opens it once (shared by snapshots, uploads and
//! restores: its lock keeps a prune off chunks being written).
//!
//! Contract: errors keep the engine's text (which names the snapshot and chunk); a
//! damaged chunk stays [`PortError::Damaged`].

use std::sync::Arc;

use hedge_wire::backup::{RestoreGrant, SnapshotHeader};
use hedge_wire::{Name, SnapshotId};

use super::blob_ports::{ChunkId, PortError, VaultPort};
use super::Daemon;
use crate::backup::{BackupError, ChunkIds, Vault};

fn port(e: BackupError) -> PortError {
    match e {
        BackupError::Damaged { snapshot, chunk } => PortError::Damaged {
            snapshot,
            chunk: Some(chunk),
        },
        other => PortError::Vault(other.to_string()),
    }
}

/// A snapshot's ids with the port's error.
pub(crate) struct Ids(ChunkIds);

impl Iterator for Ids {
    type Item = Result<ChunkId, PortError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(|r| r.map_err(port))
    }
}

impl VaultPort for Vault {
    type Ids = Ids;

    fn pending_uploads(&self) -> Result<Vec<(Name, SnapshotId)>, PortError> {
        Vault::pending_uploads(self).map_err(port)
    }
    fn recovery_key(&self) -> Result<Option<[u8; 32]>, PortError> {
        Vault::recovery_key(self).map_err(port)
    }
    fn set_recovery_key(&self, public: [u8; 32]) -> Result<(), PortError> {
        Vault::set_recovery_key(self, public).map_err(port)
    }
    fn header(
        &self,
        instance: &Name,
        id: SnapshotId,
        recovery: &[u8; 32],
    ) -> Result<SnapshotHeader, PortError> {
        Vault::header(self, instance, id, recovery).map_err(port)
    }
    fn chunk_ids(&self, instance: &Name, id: SnapshotId) -> Result<Ids, PortError> {
        Vault::chunk_ids(self, instance, id).map(Ids).map_err(port)
    }
    fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>, PortError> {
        Vault::read_chunk(self, id).map_err(port)
    }
    fn mark_uploaded(&self, instance: &Name, id: SnapshotId) -> Result<(), PortError> {
        Vault::mark_uploaded(self, instance, id).map_err(port)
    }
    fn import(&self, grant: &RestoreGrant) -> Result<(), PortError> {
        Vault::import(self, grant).map_err(port)
    }
    fn missing_chunks(&self, instance: &Name, id: SnapshotId) -> Result<Vec<ChunkId>, PortError> {
        Vault::missing_chunks(self, instance, id).map_err(port)
    }
    fn put_chunk(&self, id: &ChunkId, ciphertext: &[u8]) -> Result<(), PortError> {
        Vault::put_chunk(self, id, ciphertext).map_err(port)
    }
    fn restore(
        &self,
        instance: &Name,
        id: SnapshotId,
        partition: &std::path::Path,
        uid: Option<(u32, u32)>,
    ) -> Result<(), PortError> {
        Vault::restore(self, instance, id, partition, uid)
            .map(|_| ())
            .map_err(port)
    }
}

impl Daemon {
    /// The node's vault (`[backup] dir`), opened on first use and kept.
    pub(crate) fn backup_vault(&mut self) -> Result<Arc<Vault>, String> {
        if let Some(v) = &self.uploads.vault {
            return Ok(v.clone());
        }
        let dir = self.cfg.backup_dir();
        let v = Vault::open_as(&dir, self.cfg.node_id())
            .map(Arc::new)
            .map_err(|e| format!("backup directory {}: {e}", dir.display()))?;
        self.uploads.vault = Some(v.clone());
        Ok(v)
    }
}
