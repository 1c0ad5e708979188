//! The node's backup engine: snapshots of an instance's paths as content-defined,
//! encrypted, hash-addressed chunks in `BACKUPDIR` (`state_dir/backup`), and restores
//! from them (`docs/architecture.md`, "Backups").
//!
//! Contract. [`Vault`] owns `BACKUPDIR`; every method is blocking (the daemon calls it
//! off its event loop, one backup at a time) and safe to call from several threads.
//! - [`Vault::snapshot`] reads the request's paths within a partition through directory
//!   handles, never following a symlink (one is stored as its target), and stores each
//!   new chunk once (`chunks/<2 hex>/<64 hex>`, ciphertext). Only when every chunk, the
//!   snapshot's sorted id list and then its catalog entry (`snapshots/<instance>/<id>`)
//!   are durable (tmp, fsync, rename) is it listed: a crash leaves no entry, only orphan
//!   chunks, which [`Vault::prune`] sweeps.
//! - Memory is bounded whatever the partition's size: files are chunked as a stream
//!   (one chunk of at most [`chunker::MAX`] bytes in RAM), the manifest and the id list
//!   are written to files as they grow, never collected ([`idsort`] for the bounds).
//! - [`Vault::restore`] stages everything under `partition/.restore-<id>`, verifies
//!   every chunk it reads (SHA-256 of the ciphertext against its id, then the AEAD tag)
//!   and only then swaps each path in; on any error the partition is left as it was and
//!   the error names the snapshot and the chunk ([`BackupError::Damaged`]).
//! - [`Vault::prune`] never deletes a chunk that a remaining snapshot (any instance,
//!   local or imported) or a snapshot in `keep` needs.
//!
//! Keys (the design in `docs/architecture.md`): the node's secret S (`BACKUPDIR/secret`,
//! 0600, made at the first [`Vault::open`]) derives each chunk's key from its plaintext
//! ([`crypto`]); a snapshot's manifest is listed by the ChunkRefs in its catalog entry,
//! with the snapshot's own random key M, which [`Vault::header`] seals to the fleet's
//! recovery key for the master. Nothing leaves the node but ciphertext.
//!
//! Modules: [`chunker`] (FastCDC and why its sizes), [`crypto`] (keys and ids),
//! [`store`] (the chunk files), [`manifest`] (the entry stream), [`catalog`] (catalog
//! entries and markers), [`idsort`] (sorted id lists on disk), [`walk`] and
//! [`snapshot`] (taking one), [`restore`], [`prune`], [`fsx`] (durable and
//! no-follow file helpers); [`remote`]: the client of the master's blob service.

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use hedge_wire::backup::{Consistency, RestoreGrant, SnapshotHeader, SnapshotId};
use hedge_wire::Name;

pub mod catalog;
pub mod chunker;
pub mod crypto;
mod error;
pub mod fsx;
pub mod idsort;
pub mod manifest;
pub mod prune;
pub mod remote;
pub mod restore;
pub mod schedule;
pub mod snapshot;
pub mod store;
pub mod walk;

pub use error::BackupError;

/// A 32-byte chunk id (SHA-256 of the chunk's ciphertext).
pub type ChunkId = [u8; 32];

/// Most ids [`Vault::missing_chunks`] returns in one call (as many as one `have` query).
pub const MISSING_BATCH: usize = 4096;

/// What [`Vault::snapshot`] reads.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotRequest<'a> {
    /// The instance.
    pub instance: &'a Name,
    /// Its partition's directory.
    pub partition: &'a Path,
    /// The policy's paths, relative to the partition (`srv`, `var/db`); one that does
    /// not exist is stored as absent (a restore removes it), not an error.
    pub paths: &'a [String],
    /// How the caller made it consistent (recorded as is).
    pub consistency: Consistency,
    /// Wall clock, ms since the Unix epoch (`hedge_common::clock`).
    pub now_ms: u64,
}

/// A snapshot in the node's catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalSnapshot {
    /// The instance.
    pub instance: Name,
    /// Its id.
    pub id: SnapshotId,
    /// When its paths were read, ms since the Unix epoch.
    pub taken_ms: u64,
    /// Bytes of the files it holds.
    pub bytes: u64,
    /// Bytes of chunk ciphertext it added to the store (chunks no earlier snapshot of
    /// this node had, manifest included).
    pub new_bytes: u64,
    /// Distinct chunks it references (manifest and files).
    pub chunks: u64,
    /// How it was made consistent.
    pub consistency: Consistency,
    /// Whether the master has it ([`Vault::mark_uploaded`]); always false for an imported one.
    pub uploaded: bool,
    /// `None`: taken here; `Some(node)`: imported from a restore grant of that node's.
    pub source: Option<Name>,
}

/// What [`Vault::restore`] rebuilt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreSummary {
    /// Policy paths swapped in (an absent one counts: it was removed).
    pub paths: u64,
    /// Regular files written.
    pub files: u64,
    /// Directories made.
    pub dirs: u64,
    /// Symlinks made.
    pub symlinks: u64,
    /// Bytes of file content written.
    pub bytes: u64,
}

/// What [`Vault::prune`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneSummary {
    /// The instance's snapshots whose catalog entries were deleted.
    pub deleted: Vec<SnapshotId>,
    /// The instance's snapshots still in the catalog.
    pub kept: u64,
    /// Chunk files no remaining snapshot referenced, removed.
    pub chunks_removed: u64,
    /// Their bytes (ciphertext).
    pub bytes_removed: u64,
}

/// The chunk ids of one snapshot (manifest and files, each once, ascending), streamed
/// from its id list file.
pub struct ChunkIds {
    inner: idsort::IdReader,
}

impl Iterator for ChunkIds {
    type Item = Result<ChunkId, BackupError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.inner
            .next()
            .map(|r| r.map_err(|e| BackupError::io("reading a snapshot's id list", e)))
    }
}

/// The node's backup directory: secret, recovery key, chunk store and catalog.
pub struct Vault {
    dir: PathBuf,
    secret: crypto::Secret,
    node: Option<Name>,
    /// Chunk writers (snapshot, put_chunk, import) hold it shared; the sweep of
    /// [`Vault::prune`] holds it exclusively, so it never deletes a chunk that a snapshot
    /// in progress wrote but has not listed yet.
    lock: RwLock<()>,
}

impl Vault {
    /// Opens (and on first use makes, mode 0700) the backup directory `dir`, with its
    /// secret. The node's name is the one an earlier [`Vault::open_as`] recorded, if
    /// any ([`Vault::header`] needs it).
    ///
    /// # Errors
    ///
    /// I/O on the directory; a secret that is not private or not 32 bytes.
    pub fn open(dir: &Path) -> Result<Vault, BackupError> {
        let (secret, node) = catalog::open_dir(dir)?;
        Ok(Vault {
            dir: dir.to_owned(),
            secret,
            node,
            lock: RwLock::new(()),
        })
    }

    /// [`Vault::open`], recording `node` as the name its headers carry.
    ///
    /// # Errors
    ///
    /// As [`Vault::open`]; I/O writing the name.
    pub fn open_as(dir: &Path, node: &Name) -> Result<Vault, BackupError> {
        let mut vault = Vault::open(dir)?;
        if vault.node.as_ref() != Some(node) {
            catalog::save_node(dir, node)?;
            vault.node = Some(node.clone());
        }
        Ok(vault)
    }

    /// The directory it owns.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes a snapshot of `req.paths` in `req.partition`.
    ///
    /// # Errors
    ///
    /// A bad path (absolute, `..`, the partition itself), a tree deeper than
    /// [`walk::MAX_DEPTH`], I/O on the partition or the store.
    pub fn snapshot(&self, req: &SnapshotRequest<'_>) -> Result<LocalSnapshot, BackupError> {
        let _shared = self.lock.read().unwrap_or_else(|p| p.into_inner());
        snapshot::take(self, req)
    }

    /// The catalog's snapshots of `instance` (all instances with `None`), oldest first.
    ///
    /// # Errors
    ///
    /// I/O on the catalog; an entry that does not decode.
    pub fn snapshots(&self, instance: Option<&Name>) -> Result<Vec<LocalSnapshot>, BackupError> {
        catalog::list(&self.dir, instance)
    }

    /// Records the fleet's recovery public key (`recovery.pub`).
    ///
    /// # Errors
    ///
    /// I/O writing it.
    pub fn set_recovery_key(&self, public: [u8; 32]) -> Result<(), BackupError> {
        catalog::save_recovery_key(&self.dir, &public)
    }

    /// The recovery public key recorded, if any.
    ///
    /// # Errors
    ///
    /// I/O reading it; a file that is not 32 bytes.
    pub fn recovery_key(&self) -> Result<Option<[u8; 32]>, BackupError> {
        catalog::load_recovery_key(&self.dir)
    }

    /// The header the master stores for a snapshot: its plain fields, the root sealed
    /// under the snapshot key, and that key sealed to `recovery` (the same sealing for
    /// the same recovery key, so an upload retried is the same header). An imported
    /// snapshot's header is the one it came with.
    ///
    /// # Errors
    ///
    /// [`BackupError::NotFound`]; [`BackupError::NoNode`] if the vault was never opened
    /// with [`Vault::open_as`]; I/O.
    pub fn header(
        &self,
        instance: &Name,
        id: SnapshotId,
        recovery: &[u8; 32],
    ) -> Result<SnapshotHeader, BackupError> {
        catalog::header(self, instance, id, recovery)
    }

    /// The snapshot's chunk ids, streamed from its id list (each once, ascending).
    ///
    /// # Errors
    ///
    /// [`BackupError::NotFound`]; [`BackupError::Incomplete`] for an import whose
    /// manifest is not all here yet.
    pub fn chunk_ids(&self, instance: &Name, id: SnapshotId) -> Result<ChunkIds, BackupError> {
        catalog::chunk_ids(&self.dir, instance, id)
    }

    /// A stored chunk's ciphertext, as stored (not checked: the receiver checks it).
    ///
    /// # Errors
    ///
    /// [`BackupError::NoChunk`] if absent; I/O.
    pub fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>, BackupError> {
        store::read(&self.dir, id)
    }

    /// Stores a chunk fetched from elsewhere, after checking SHA-256(`ciphertext`) == `id`.
    ///
    /// # Errors
    ///
    /// [`BackupError::Damaged`] (snapshot `None`) if it does not match; a chunk larger
    /// than the wire's `MAX_CHUNK` plus tag; I/O.
    pub fn put_chunk(&self, id: &ChunkId, ciphertext: &[u8]) -> Result<(), BackupError> {
        let _shared = self.lock.read().unwrap_or_else(|p| p.into_inner());
        store::put_checked(&self.dir, id, ciphertext)
    }

    /// Records that the master has the snapshot and all its chunks (a marker file).
    ///
    /// # Errors
    ///
    /// [`BackupError::NotFound`]; I/O.
    pub fn mark_uploaded(&self, instance: &Name, id: SnapshotId) -> Result<(), BackupError> {
        catalog::mark_uploaded(&self.dir, instance, id)
    }

    /// Snapshots taken here and not yet uploaded, oldest first.
    ///
    /// # Errors
    ///
    /// As [`Vault::snapshots`].
    pub fn pending_uploads(&self) -> Result<Vec<(Name, SnapshotId)>, BackupError> {
        Ok(self
            .snapshots(None)?
            .into_iter()
            .filter(|s| s.source.is_none() && !s.uploaded)
            .map(|s| (s.instance, s.id))
            .collect())
    }

    /// Enters another node's snapshot (a restore grant) in the catalog, source
    /// `grant.header.node`; its chunks come next ([`Vault::missing_chunks`]). Importing
    /// the same grant again, or a grant of a snapshot this vault took and still holds,
    /// is a no-op.
    ///
    /// # Errors
    ///
    /// [`BackupError::BadGrant`] if the root does not open under the granted key; a
    /// different snapshot with the same instance and id already here; I/O.
    pub fn import(&self, grant: &RestoreGrant) -> Result<(), BackupError> {
        let _shared = self.lock.read().unwrap_or_else(|p| p.into_inner());
        catalog::import(&self.dir, grant)
    }

    /// Chunks the snapshot needs that the store lacks, at most [`MISSING_BATCH`]: first
    /// its manifest's, then (once the manifest is all here) its files'. Fetch them,
    /// [`Vault::put_chunk`] them, and call again until it returns none.
    ///
    /// # Errors
    ///
    /// [`BackupError::NotFound`]; a stored manifest chunk that is damaged; I/O.
    pub fn missing_chunks(
        &self,
        instance: &Name,
        id: SnapshotId,
    ) -> Result<Vec<ChunkId>, BackupError> {
        let _shared = self.lock.read().unwrap_or_else(|p| p.into_inner());
        catalog::missing(self, instance, id)
    }

    /// Rebuilds the snapshot's paths in `partition` (see the module doc), owned by
    /// `uid` (uid, gid) when given (the daemon runs as root), else by the caller.
    ///
    /// # Errors
    ///
    /// [`BackupError::Damaged`] / [`BackupError::Missing`] naming the snapshot and the
    /// chunk; a path in the partition that is not a directory where one is needed; I/O.
    /// The partition is as it was.
    pub fn restore(
        &self,
        instance: &Name,
        id: SnapshotId,
        partition: &Path,
        uid: Option<(u32, u32)>,
    ) -> Result<RestoreSummary, BackupError> {
        // Shared: a prune waits until the chunks being read are no longer needed.
        let _shared = self.lock.read().unwrap_or_else(|p| p.into_inner());
        restore::run(self, instance, id, partition, uid)
    }

    /// Keeps the newest `retain` snapshots of `instance` and those in `keep`, deletes
    /// the others' catalog entries, then removes every chunk no remaining snapshot needs.
    ///
    /// # Errors
    ///
    /// I/O; a catalog entry that does not decode (then nothing is swept).
    pub fn prune(
        &self,
        instance: &Name,
        retain: u16,
        keep: &[SnapshotId],
    ) -> Result<PruneSummary, BackupError> {
        let _exclusive = self.lock.write().unwrap_or_else(|p| p.into_inner());
        prune::run(&self.dir, instance, retain, keep)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_vault_can_be_shared_between_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<super::Vault>();
    }
}
