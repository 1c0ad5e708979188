//! The blob service: nodes' encrypted backups at the master, on the artifact endpoint's
//! HTTPS listener (mutual TLS; the client certificate's CN is the node).
//!
//! Contract (the requests, [`request`]):
//! - `GET /backup/v1/recovery-key` → `200`, the fleet's recovery public key (32 bytes).
//! - `POST /backup/v1/have` (N × 32-byte ids, N ≤ 4096) → `200`, N bytes: 1 where the
//!   chunk is stored under the caller.
//! - `PUT /backup/v1/chunk/<64 hex>` (≤ `MAX_CHUNK` + 16 bytes) → `409` unless the body
//!   hashes (SHA-256) to its name, `507` when a new chunk would take the node past its
//!   quota, else stored under the caller ([`disk`]) → `201`, or `200` when it already
//!   was (counted as a duplicate put).
//! - `PUT /backup/v1/snapshot` (u32 big-endian header length, postcard
//!   `SnapshotHeader`, then the snapshot's chunk ids) → `403` unless the header names
//!   the caller, `409` listing the ids not stored (at most [`MAX_MISSING`]), else stored
//!   (idempotently) → `201`. The id list is streamed to disk, never held in memory.
//!   Each stored snapshot then runs retention for its (node, instance): the newest
//!   `retain` of the instance's policy in the node's desired state
//!   ([`DEFAULT_RETAIN`] without one) are kept, and every snapshot an open restore
//!   names; then the node's chunks no kept snapshot references are swept (those
//!   younger than the grace are left: they may belong to a snapshot being uploaded).
//! - `GET /backup/v1/restore/<instance>/<16 hex>` → `200` postcard `RestoreGrant` (the
//!   header and the unsealed key) only to the target of an open restore of that
//!   snapshot onto that instance, else `403`.
//! - `GET /backup/v1/chunk/<node>/<64 hex>` → `200`, the ciphertext as stored, to that
//!   node or the target of an open restore from it, else `403` (`404`: not stored).
//!
//! A revoked node gets `403` for everything. Refusals (403, 409 mismatch, 507) are
//! counted per node in the store ([`crate::store::BlobCounters`]) beside chunks stored
//! and duplicate puts. Parts: [`request`], [`decide`] and [`listing`] (pure), [`disk`] (files),
//! [`recovery`] (the recovery key files), `serve` (the async answer).

use std::sync::Arc;

use hedge_wire::backup::{RestoreGrant, SnapshotHeader, SnapshotId};
use hedge_wire::Name;
use sha2::{Digest, Sha256};

use crate::store::{FleetStore, MasterStore, StoreError, StoredSnapshot};

pub mod decide;
pub mod disk;
pub mod listing;
pub mod recovery;
pub mod request;
pub(crate) mod serve;

pub use decide::Refusal;
pub use disk::{BlobDir, Swept};

/// The recovery secret's file name in the master directory.
pub const RECOVERY_KEY: &str = "recovery.key";
/// Snapshots kept per (node, instance) when the instance has no policy at the master.
pub const DEFAULT_RETAIN: u16 = 24;
/// Most missing ids one `409` lists (the node uploads them and tries again).
pub const MAX_MISSING: usize = 65_536;
/// Chunks younger than this are never swept (default of [`Blobs::sweep_grace_ms`]).
pub const SWEEP_GRACE_MS: u64 = 3_600_000;

/// Why a blob request failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// Refused (see [`Refusal::status`]).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The store failed (`500`).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The blob directory failed (`500`).
    #[error("blob directory: {0}")]
    Io(#[from] std::io::Error),
}

impl BlobError {
    /// The HTTP status that answers it.
    pub fn status(&self) -> u16 {
        match self {
            BlobError::Refused(r) => r.status(),
            _ => 500,
        }
    }
}

type Result<T, E = BlobError> = std::result::Result<T, E>;

/// The blob service: its store handle, directory, quota and keys. Its methods block
/// (SQLite, files): the listener runs them off the event loop.
pub struct Blobs {
    /// The store (snapshots, counters, open restores, desired states).
    pub store: MasterStore,
    /// Where chunks and id lists live.
    pub dir: BlobDir,
    /// Bytes of chunks one node may store.
    pub quota: u64,
    /// The fleet's recovery public key, served to nodes.
    pub recovery: [u8; 32],
    /// Chunks younger than this are not swept, ms.
    pub sweep_grace_ms: u64,
    /// Revoked nodes get nothing.
    pub revoked: Option<Arc<crate::revocation::Revoked>>,
    log: crate::log_limit::LogLimit,
}

impl std::fmt::Debug for Blobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blobs")
            .field("dir", &self.dir)
            .field("quota", &self.quota)
            .finish_non_exhaustive()
    }
}

impl Blobs {
    /// A service over `store` and `dir` with `quota` bytes per node, serving `recovery`.
    pub fn new(store: MasterStore, dir: BlobDir, quota: u64, recovery: [u8; 32]) -> Blobs {
        Blobs {
            store,
            dir,
            quota,
            recovery,
            sweep_grace_ms: SWEEP_GRACE_MS,
            revoked: None,
            log: crate::log_limit::LogLimit::default(),
        }
    }

    fn refused(&self, node: &Name, r: Refusal, what: &str) -> BlobError {
        if matches!(r, Refusal::Forbidden | Refusal::Mismatch | Refusal::Quota) {
            if let Err(e) = self.store.count_blob_refused(node) {
                tracing::warn!(error = %e, "cannot count a refused blob request");
            }
            if self.log.allow("blobs") {
                tracing::warn!(node = %node, what, refusal = %r, "blob request refused");
            }
        }
        BlobError::Refused(r)
    }

    /// Whether `node` is revoked (then it gets nothing).
    pub fn is_revoked(&self, node: &Name) -> bool {
        self.revoked.as_ref().is_some_and(|r| {
            let yes = r.contains(node.as_str());
            if yes {
                r.refused("backup request", node.as_str());
            }
            yes
        })
    }

    /// `have`: one byte per 32-byte id of `ids`, 1 where stored under `node`.
    pub fn have(&self, node: &Name, ids: &[u8]) -> Vec<u8> {
        ids.chunks_exact(32)
            .map(|c| {
                let mut id = [0u8; 32];
                id.copy_from_slice(c);
                u8::from(self.dir.has(node, &id))
            })
            .collect()
    }

    /// Stores chunk `id` of `node`: `true` newly stored, `false` already stored.
    pub fn put_chunk(&self, node: &Name, id: &[u8; 32], body: &[u8]) -> Result<bool> {
        let hash: [u8; 32] = Sha256::digest(body).into();
        if &hash != id {
            return Err(self.refused(node, Refusal::Mismatch, "chunk"));
        }
        if self.dir.has(node, id) {
            self.store.count_chunk_put(node, 0, true)?;
            return Ok(false);
        }
        let used = self
            .store
            .blob_counters()?
            .into_iter()
            .find(|c| &c.node == node)
            .map_or(0, |c| c.bytes);
        if !decide::fits_quota(used, body.len() as u64, self.quota) {
            return Err(self.refused(node, Refusal::Quota, "chunk"));
        }
        let new = self.dir.put_chunk(node, id, body)?;
        self.store
            .count_chunk_put(node, if new { body.len() as u64 } else { 0 }, !new)?;
        Ok(new)
    }

    /// The grant of `caller`'s open restore of `snapshot` onto `instance`, postcard.
    pub fn grant(&self, caller: &Name, instance: &Name, snapshot: SnapshotId) -> Result<Vec<u8>> {
        let Some((source, key)) = self.store.open_restore_for(caller, instance, snapshot)? else {
            return Err(self.refused(caller, Refusal::Forbidden, "restore grant"));
        };
        // The snapshot of `source`, whatever instance it was taken of.
        let header = self
            .store
            .snapshots()?
            .into_iter()
            .find(|s| s.node == source && s.id == snapshot)
            .map(|s| self.store.snapshot_header(&s.node, &s.instance, s.id))
            .transpose()?
            .flatten()
            .ok_or(Refusal::NotFound)?;
        let grant = RestoreGrant { header, key };
        postcard::to_allocvec(&grant).map_err(|e| BlobError::Io(std::io::Error::other(e)))
    }

    /// Chunk `id` stored under `source`, for `caller`.
    pub fn get_chunk(&self, caller: &Name, source: &Name, id: &[u8; 32]) -> Result<Vec<u8>> {
        let restores = if caller == source {
            Vec::new()
        } else {
            self.store.open_restores_from(source)?
        };
        if !decide::may_get_chunk(caller, source, &restores) {
            return Err(self.refused(caller, Refusal::Forbidden, "chunk read"));
        }
        match self.dir.read_chunk(source, id) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Refusal::NotFound.into()),
            Err(e) => Err(e.into()),
        }
    }

    /// Accepts a snapshot whose id list `caller` sent into the temporary file `tmp`:
    /// refuses it with the missing ids, or stores it (idempotently), then runs retention
    /// and the sweep for its node. `now_ms`: the wall clock.
    pub fn put_snapshot(
        &self,
        caller: &Name,
        header: &SnapshotHeader,
        file: &std::fs::File,
        tmp: &std::path::Path,
        now_ms: u64,
    ) -> Result<bool> {
        let r = self.put_snapshot_in(caller, header, file, tmp, now_ms);
        let _ = std::fs::remove_file(tmp);
        r
    }

    fn put_snapshot_in(
        &self,
        caller: &Name,
        header: &SnapshotHeader,
        file: &std::fs::File,
        tmp: &std::path::Path,
        now_ms: u64,
    ) -> Result<bool> {
        if &header.node != caller {
            return Err(self.refused(caller, Refusal::Forbidden, "snapshot"));
        }
        if self
            .store
            .snapshot_header(caller, &header.instance, header.id)?
            .is_some()
        {
            return Ok(false);
        }
        let missing = self.dir.missing(caller, tmp, MAX_MISSING)?;
        if !missing.is_empty() {
            return Err(Refusal::Missing(missing).into());
        }
        let rel = BlobDir::ids_rel(caller, &header.instance, header.id);
        self.dir.install_ids(file, tmp, &rel)?;
        let stored = StoredSnapshot {
            node: caller.clone(),
            instance: header.instance.clone(),
            id: header.id,
            taken_ms: header.taken_ms,
            consistency: header.consistency,
            bytes: header.bytes,
            new_bytes: header.new_bytes,
            chunks: header.chunks,
            stored_ms: now_ms,
            ids: rel,
        };
        let new = self.store.put_snapshot(&stored, header)?;
        tracing::info!(node = %caller, instance = %header.instance, snapshot = %header.id, chunks = header.chunks, "snapshot stored");
        self.retain(caller, &header.instance, now_ms)?;
        Ok(new)
    }

    /// Retention for `node`'s `instance`, then the sweep of `node`'s chunks.
    pub fn retain(&self, node: &Name, instance: &Name, now_ms: u64) -> Result<Swept> {
        let retain = self
            .store
            .desired(node)?
            .and_then(|d| d.backup_of(instance).map(|p| p.retain))
            .unwrap_or(DEFAULT_RETAIN);
        let protected: Vec<SnapshotId> = self
            .store
            .open_restores_from(node)?
            .into_iter()
            .map(|r| r.snapshot)
            .collect();
        let all = self.store.snapshots()?;
        let mine: Vec<(SnapshotId, u64)> = all
            .iter()
            .filter(|s| &s.node == node && &s.instance == instance)
            .map(|s| (s.id, s.taken_ms))
            .collect();
        let drop = decide::to_drop(&mine, retain, &protected);
        if !drop.is_empty() {
            let which: Vec<(Name, SnapshotId)> =
                drop.iter().map(|id| (instance.clone(), *id)).collect();
            self.store.forget_snapshots(node, &which)?;
            for id in &drop {
                self.dir
                    .remove_ids(&BlobDir::ids_rel(node, instance, *id))?;
            }
            tracing::info!(node = %node, instance = %instance, dropped = drop.len(), retain, "old snapshots dropped");
        }
        let kept: Vec<String> = all
            .into_iter()
            .filter(|s| &s.node == node && !(&s.instance == instance && drop.contains(&s.id)))
            .map(|s| s.ids)
            .collect();
        let keep = self.dir.referenced(&kept)?;
        let swept = self
            .dir
            .sweep(node, &keep, now_ms.saturating_sub(self.sweep_grace_ms))?;
        self.store.set_blob_bytes(node, swept.kept_bytes)?;
        if swept.removed > 0 {
            tracing::info!(node = %node, chunks = swept.removed, bytes = swept.removed_bytes, "unreferenced chunks swept");
        }
        Ok(swept)
    }
}
