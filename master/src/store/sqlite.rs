//! The SQLite backend of the [`FleetStore`]: one file shared by the master processes of
//! one box.
//!
//! Contract: keeps the [`FleetStore`] contract. Several master processes may open the
//! same file; every write runs in one `BEGIN IMMEDIATE` transaction (WAL journal,
//! `synchronous = FULL` so a commit survives a power cut, a [`BUSY_TIMEOUT`]), so
//! concurrent writers serialize. A [`SqliteStore`] is one connection behind a mutex,
//! cheap to share in one process. The file is created with mode 0600, and so are
//! SQLite's `-wal`/`-shm` beside it. Sequence numbers and covered ranges travel as
//! SQLite's signed integers (hence the `i64::MAX` bound); other u64 fields travel
//! exactly in the postcard blobs (index columns are clamped). The tables and their
//! migrations are in `schema`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use hedge_wire::backup::BackupPolicy;
use hedge_wire::{DesiredState, InstanceRequest, Name, Record, Up};
use rusqlite::{Connection, TransactionBehavior};

use hedge_wire::backup::{SnapshotHeader, SnapshotId};

use super::{
    Assignment, Batch, BlobCounters, FleetStore, Ingested, InstanceSources, NodeInfo, NodeSummary,
    OpenRestore, Placed, Result, StoreError, StoredSnapshot, SuppliedArtifact,
};
use crate::alloc::Placement;
use crate::coverage::Coverage;
use crate::moves::{Decision, Handover, InstancePlacement, MoveRequest, Moved};
use crate::node_state::{NodeOp, NodeState};
use crate::restore::{RestoreRequest, Restoring};

mod artifacts;
mod backups;
mod bulk;
mod carry;
mod desired;
mod fleet;
mod imports;
mod ingest;
mod leases;
mod meta;
mod moves;
mod node_states;
mod place;
mod policies;
mod records;
mod recover;
mod restores;
mod schema;
mod sql;
mod stale;

pub use recover::Recovered;
pub use schema::SCHEMA_VERSION;

/// Prepared statements kept per connection (see [`SqliteStore::open`]).
const STATEMENT_CACHE: usize = 96;

/// How long a writer waits for another process's transaction before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// The SQLite store. See the module doc.
pub struct SqliteStore {
    conn: Mutex<Connection>,
    path: PathBuf,
    /// The shared lock an open store holds (`recover`): released on drop, after `conn`.
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed, mode 0600) the store at `path`, migrating an older
    /// schema; refuses a newer one ([`StoreError::SchemaTooNew`]).
    pub fn open(path: &Path) -> Result<Self> {
        let open_err = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let lock = recover::lock_shared(path)?;
        schema::create_private(path).map_err(|e| StoreError::Create {
            path: path.to_owned(),
            source: e,
        })?;
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        // An ingest alone runs about twenty distinct statements (per batch, and per
        // instance for the stale judge), and up to sixteen multi-row inserts of
        // different lengths (`bulk`): they stay prepared rather than being parsed again
        // for every batch (rusqlite keeps 16 by default).
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        // Switching a fresh file to WAL while another process does the same can fail
        // with SQLITE_BUSY without waiting on the busy handler: retry until the timeout.
        // An I/O driver: the retry deadline is wall time by nature.
        #[allow(clippy::disallowed_methods)]
        let deadline = Instant::now() + BUSY_TIMEOUT;
        let mut pause = Duration::from_millis(1);
        let version = loop {
            match schema::set_up(&mut conn) {
                #[allow(clippy::disallowed_methods)]
                Err(e) if schema::is_busy(&e) && Instant::now() < deadline => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                other => break other.map_err(open_err)?,
            }
        };
        if version > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew(version));
        }
        // Deletes overwrite what they delete: a closed restore's key leaves the pages.
        conn.pragma_update(None, "secure_delete", true)
            .map_err(open_err)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            path: path.to_owned(),
            _lock: lock,
        })
    }

    /// Writes a consistent copy of the store to `out`, while other connections and
    /// processes write to it (SQLite's online backup API; see `recover`).
    pub fn backup_to(&self, out: &Path) -> Result<()> {
        recover::backup_to(&self.conn(), out)
    }

    /// Installs the backup `from` as the store at `path` and raises the master's epoch
    /// ([`crate::epoch`]); refuses while a process has the store open
    /// ([`StoreError::InUse`]). `now_s`: the wall clock, seconds since the Unix epoch.
    pub fn recover(path: &Path, from: &Path, now_s: u32) -> Result<Recovered> {
        recover::recover(path, from, now_s)
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock dropped its transaction, which rolled back:
        // the connection is still usable.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction and commits what it returns `Ok`.
    fn write<T>(&self, f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }
}

impl FleetStore for SqliteStore {
    fn ingest_within(&self, node: &Name, up: &Up, now_ms: u64, max_bytes: u64) -> Result<Ingested> {
        let batch = Batch::direct(node.clone(), up.clone(), now_ms, max_bytes);
        self.write(|tx| ingest::ingest_in(tx, &batch))
    }

    // Each batch in a savepoint of its own, all in one transaction and one commit (one
    // `fsync` under `synchronous = FULL`).
    fn ingest_many(&self, batches: &[Batch]) -> Vec<Result<Ingested>> {
        let failed = |e: &rusqlite::Error| -> Vec<Result<Ingested>> {
            batches
                .iter()
                .map(|_| Err(StoreError::Batch(e.to_string())))
                .collect()
        };
        let mut conn = self.conn();
        let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(e) => return failed(&e),
        };
        let mut results = Vec::with_capacity(batches.len());
        for batch in batches {
            let one = tx.savepoint().map_err(StoreError::from).and_then(|sp| {
                let ingested = ingest::ingest_in(&sp, batch)?;
                sp.commit()?;
                Ok(ingested)
            });
            results.push(one);
        }
        match tx.commit() {
            Ok(()) => results,
            Err(e) => failed(&e),
        }
    }

    fn stored_bytes(&self, node: &Name) -> Result<u64> {
        self.write(|tx| ingest::stored_bytes(tx, node))
    }

    fn coverage(&self, node: &Name, epoch: u64) -> Result<Coverage> {
        ingest::load_coverage(&self.conn(), node, epoch)
    }

    fn register_node(&self, info: &NodeInfo) -> Result<()> {
        self.update_assignment(&info.node, |a| {
            a.labels = info.labels.clone();
            a.region = info.region.clone();
        })?;
        fleet::register(&self.conn(), info)
    }

    fn assignment(&self, node: &Name) -> Result<Assignment> {
        fleet::load_assignment(&self.conn(), node)
    }

    fn update_assignment(
        &self,
        node: &Name,
        f: impl FnOnce(&mut Assignment),
    ) -> Result<Assignment> {
        self.write(|tx| fleet::update_assignment(tx, node, f))
    }

    fn nodes(&self) -> Result<Vec<NodeSummary>> {
        fleet::load_nodes(&self.conn())
    }

    fn update_node_state(&self, node: &Name, op: NodeOp, now_ms: u64) -> Result<NodeState> {
        self.write(|tx| node_states::update(tx, node, op, now_ms))
    }

    fn leases(&self) -> Result<BTreeMap<Name, u32>> {
        leases::all(&self.conn())
    }

    fn records(&self, node: &Name, from_seq: u64, limit: u32) -> Result<Vec<Record>> {
        records::records(&self.conn(), node, from_seq, limit)
    }

    fn count(&self, node: &Name) -> Result<u64> {
        records::count(&self.conn(), node)
    }

    fn usage(&self, period_start_ms: u64, period_end_ms: u64) -> Result<Vec<(Name, Record)>> {
        if period_end_ms <= period_start_ms {
            return Ok(Vec::new());
        }
        records::usage(&self.conn(), period_start_ms, period_end_ms)
    }

    fn incident_records(&self) -> Result<Vec<(Name, u32, Record)>> {
        records::incidents(&self.conn())
    }

    fn instance_sources(&self) -> Result<InstanceSources> {
        let mut sources = records::instance_sources(&self.conn())?;
        sources.pruned = self.pruned()?;
        Ok(sources)
    }

    fn desired_generations(&self) -> Result<Vec<(Name, u64)>> {
        desired::generations(&self.conn())
    }

    fn desired_generation(&self, node: &Name) -> Result<Option<u64>> {
        desired::generation(&self.conn(), node)
    }

    fn desired(&self, node: &Name) -> Result<Option<DesiredState>> {
        desired::stored_desired(&self.conn(), node)
    }

    fn put_desired(&self, d: &DesiredState) -> Result<()> {
        self.write(|tx| desired::store_desired(tx, d))
    }

    fn next_generation(&self, node: &Name) -> Result<u64> {
        self.write(|tx| desired::reserve_generation(tx, node))
    }

    fn update_desired<F, S>(&self, node: &Name, f: F, sign: S) -> Result<DesiredState>
    where
        F: FnOnce(Vec<InstanceRequest>) -> Vec<InstanceRequest>,
        S: FnOnce(&mut DesiredState),
    {
        self.write(|tx| Ok(place::write_desired(tx, node, f, sign)?.0))
    }

    fn refresh_imports<S>(&self, sign: S) -> Result<Vec<(Name, u64)>>
    where
        S: Fn(&mut DesiredState),
    {
        let stale = imports::stale(&self.conn())?;
        let mut written = Vec::new();
        for node in stale {
            // One node's state that cannot be written (too large with its imports) is
            // logged and kept as it is; the others still refresh.
            match self.write(|tx| imports::refresh_node(tx, &node, &sign)) {
                Ok(Some(g)) => written.push((node, g)),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(node = %node, error = %e, "cannot refresh imported connection parameters")
                }
            }
        }
        Ok(written)
    }

    fn place<S>(
        &self,
        request: InstanceRequest,
        placement: &Placement,
        now_ms: u64,
        stale_after_ms: u64,
        sign: S,
    ) -> Result<Placed>
    where
        S: Fn(&mut DesiredState),
    {
        self.write(|tx| place::place(tx, request, None, placement, now_ms, stale_after_ms, &sign))
    }

    fn place_with_backup<S>(
        &self,
        request: InstanceRequest,
        backup: Option<&BackupPolicy>,
        placement: &Placement,
        now_ms: u64,
        stale_after_ms: u64,
        sign: S,
    ) -> Result<Placed>
    where
        S: Fn(&mut DesiredState),
    {
        self.write(|tx| {
            place::place(
                tx,
                request,
                Some(backup),
                placement,
                now_ms,
                stale_after_ms,
                &sign,
            )
        })
    }

    fn backup_policy(&self, instance: &Name) -> Result<Option<BackupPolicy>> {
        policies::of(&self.conn(), instance)
    }

    fn backup_policies(&self) -> Result<Vec<BackupPolicy>> {
        policies::all(&self.conn())
    }

    fn place_restore<S>(
        &self,
        r: &RestoreRequest,
        now_ms: u64,
        stale_after_ms: u64,
        sign: S,
    ) -> Result<Restoring>
    where
        S: Fn(&mut DesiredState),
    {
        self.write(|tx| restores::place(tx, r, now_ms, stale_after_ms, &sign))
    }

    fn open_restores(&self) -> Result<Vec<OpenRestore>> {
        restores::all(&self.conn())
    }

    fn epoch(&self) -> Result<u32> {
        meta::epoch(&self.conn())
    }

    fn pruned(&self) -> Result<Vec<(Name, Name)>> {
        place::pruned(&self.conn())
    }

    fn move_instance<S>(
        &self,
        mv: &MoveRequest,
        now_ms: u64,
        stale_after_ms: u64,
        sign: S,
    ) -> Result<Moved>
    where
        S: Fn(&mut DesiredState),
    {
        self.write(|tx| moves::move_instance(tx, mv, now_ms, stale_after_ms, &sign))
    }

    fn complete_handovers<S>(&self, now_ms: u64, sign: S) -> Result<Vec<Handover>>
    where
        S: Fn(&mut DesiredState),
    {
        self.write(|tx| moves::complete_handovers(tx, now_ms, &sign))
    }

    fn placements(&self) -> Result<Vec<InstancePlacement>> {
        moves::placements(&self.conn())
    }

    fn record_decision(&self, d: &Decision) -> Result<Decision> {
        self.write(|tx| moves::record_refusal(tx, d))
    }

    fn decisions(&self, since_ms: u64) -> Result<Vec<Decision>> {
        moves::decisions_since(&self.conn(), since_ms)
    }

    fn supply_artifact(
        &self,
        release: Option<&Name>,
        target: &str,
        sha256: &[u8; 32],
        size: u64,
        now_ms: u64,
    ) -> Result<()> {
        self.write(|tx| artifacts::supply(tx, release, target, sha256, size, now_ms))
    }

    fn artifacts(&self) -> Result<Vec<SuppliedArtifact>> {
        artifacts::all(&self.conn())
    }

    fn release_variants(&self, release: &Name) -> Result<Vec<hedge_wire::ArtifactVariant>> {
        artifacts::release_variants(&self.conn(), release)
    }

    fn put_snapshot(&self, s: &StoredSnapshot, header: &SnapshotHeader) -> Result<bool> {
        self.write(|tx| backups::put(tx, s, header))
    }

    fn backup_records(&self) -> Result<Vec<(Name, Record)>> {
        records::backups(&self.conn())
    }

    fn snapshots(&self) -> Result<Vec<StoredSnapshot>> {
        backups::all(&self.conn())
    }

    fn snapshot_header(
        &self,
        node: &Name,
        instance: &Name,
        id: SnapshotId,
    ) -> Result<Option<SnapshotHeader>> {
        backups::header(&self.conn(), node, instance, id)
    }

    fn forget_snapshots(&self, node: &Name, which: &[(Name, SnapshotId)]) -> Result<()> {
        self.write(|tx| backups::forget(tx, node, which))
    }

    fn count_chunk_put(&self, node: &Name, added: u64, duplicate: bool) -> Result<()> {
        self.write(|tx| backups::count_put(tx, node, added, duplicate))
    }

    fn count_blob_refused(&self, node: &Name) -> Result<()> {
        self.write(|tx| backups::count_refused(tx, node))
    }

    fn set_blob_bytes(&self, node: &Name, bytes: u64) -> Result<()> {
        self.write(|tx| backups::set_bytes(tx, node, bytes))
    }

    fn blob_counters(&self) -> Result<Vec<BlobCounters>> {
        backups::counters(&self.conn())
    }

    fn open_restore_for(
        &self,
        target: &Name,
        instance: &Name,
        snapshot: SnapshotId,
    ) -> Result<Option<(Name, [u8; 32])>> {
        backups::restore_for(&self.conn(), target, instance, snapshot)
    }

    fn open_restores_from(&self, source: &Name) -> Result<Vec<OpenRestore>> {
        backups::restores_from(&self.conn(), source)
    }

    fn open_restore(&self, r: &OpenRestore, key: &[u8; 32], now_ms: u64) -> Result<()> {
        self.write(|tx| backups::open(tx, r, key, now_ms))
    }

    fn close_restore(&self, target: &Name, instance: &Name) -> Result<()> {
        self.write(|tx| backups::close(tx, target, instance))
    }
}

#[cfg(test)]
mod tests;
