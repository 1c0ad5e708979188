//! The real sides of `daemon::blob_ports`: the node's [`Vault`] as a [`VaultPort`], the
//! blob service client ([`Remote`]) as a [`BlobPort`], the daemon's accessor to the one vault
//! (`daemon::backup`'s, shared by snapshots, uploads and restores: its lock keeps a
//! prune off chunks being written), and the start of the uploader and of the restores.
//!
//! Contract: errors keep the engine's and the client's text (which names the snapshot
//! and chunk); a damaged chunk stays [`PortError::Damaged`]; a transport failure or a
//! 5xx other than 507 is [`PortError::Net`] (retried quietly), every other answer of
//! the master [`PortError::Refused`]. Without `[uplink] artifacts` (no master's HTTPS
//! endpoint) nothing starts: snapshots stay pending and restores wait.

use std::sync::Arc;

use hedge_wire::backup::{RestoreGrant, SnapshotHeader};
use hedge_wire::{Name, SnapshotId};

use super::backup_upload::Uploader;
use super::blob_ports::{BlobPort, ChunkId, PortError, VaultPort};
use super::restore::{self, Restorer};
use super::{Daemon, Event};
use crate::backup::remote::{Remote, RemoteError};
use crate::backup::{BackupError, ChunkIds, Vault};

fn remote(e: RemoteError) -> PortError {
    match e {
        RemoteError::Fetch(e) => PortError::Net(e.to_string()),
        RemoteError::Status(s) if s >= 500 && s != 507 => {
            PortError::Net(format!("HTTP status {s}"))
        }
        other => PortError::Refused(other.to_string()),
    }
}

impl BlobPort for Remote {
    async fn recovery_key(&self) -> Result<[u8; 32], PortError> {
        Remote::recovery_key(self).await.map_err(remote)
    }
    async fn have(&self, ids: &[ChunkId]) -> Result<Vec<bool>, PortError> {
        Remote::have(self, ids).await.map_err(remote)
    }
    async fn put_chunk(&self, id: &ChunkId, ciphertext: &[u8]) -> Result<(), PortError> {
        Remote::put_chunk(self, id, ciphertext)
            .await
            .map(|_| ())
            .map_err(remote)
    }
    async fn put_snapshot(
        &self,
        header: &SnapshotHeader,
        ids: &[ChunkId],
    ) -> Result<(), PortError> {
        let count = u64::try_from(ids.len()).unwrap_or(u64::MAX);
        let ids = ids
            .iter()
            .copied()
            .map(Ok::<ChunkId, std::convert::Infallible>);
        Remote::put_snapshot(self, header, count, ids)
            .await
            .map_err(remote)
    }
    async fn grant(&self, instance: &Name, id: SnapshotId) -> Result<RestoreGrant, PortError> {
        Remote::grant(self, instance, id).await.map_err(remote)
    }
    async fn get_chunk(&self, source: &Name, id: &ChunkId) -> Result<Vec<u8>, PortError> {
        Remote::get_chunk(self, source, id).await.map_err(remote)
    }
}

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
    /// The node's vault: the one `daemon::backup` opened (its lock keeps a prune off
    /// chunks being written, so there is one per node).
    pub(crate) fn backup_vault(&self) -> Result<Arc<Vault>, String> {
        self.backups
            .vault()
            .ok_or_else(|| format!("backups unavailable: {}", self.backups.unavailable()))
    }
}

impl Daemon {
    /// Starts (or restarts, with new credentials) the uploader and sets up the restore
    /// tasks, when the master's HTTPS endpoint and the vault are usable.
    pub(super) fn start_backup_sync(&mut self) {
        if !self.cfg.uplink.enabled {
            return;
        }
        let (source, vault) = match (self.artifact_source(), self.backup_vault()) {
            (Ok(s), Ok(v)) => (s, v),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "backups cannot reach the master: snapshots stay on the node, restores wait");
                return;
            }
        };
        let blob = Remote::new(source);
        let down = self.links.uplink_down_since.clone();
        let events = self.events_tx.clone();
        let uploader = Uploader {
            blob: blob.clone(),
            vault: vault.clone(),
            rate: self.cfg.backup.upload_bytes_per_s,
            uplink_up: Box::new(move || down.lock().unwrap_or_else(|p| p.into_inner()).is_none()),
            wake: self.uploads.waker(),
            report: Box::new(move |r| events.send(Event::Upload(r)).is_ok()),
        };
        self.uploads.start(uploader);
        let events = self.events_tx.clone();
        let restorer = Restorer {
            blob: Arc::new(blob),
            vault,
            report: Arc::new(move |r| events.send(Event::Restore(r)).is_ok()),
        };
        self.restores.spawner = Some(Box::new(move |d| {
            tokio::spawn(restore::run(restorer.clone(), d))
        }));
    }
}
