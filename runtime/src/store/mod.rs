//! The node's durable state: one sled database, and the outbox log beside it.
//!
//! Contract:
//! - Trees: `meta` (schema version, the outbox sequence floor, the acknowledged floor,
//!   the clock floor: the newest wall-clock time the node persisted, see
//!   `crate::desired`), `desired` (the master's last accepted [`DesiredState`] under
//!   `current`, and the instances it holds over, see `crate::holdover`, under
//!   `held_over`: both written in one batch), `local`
//!   (requests made on the node, by name), `observed` (what the supervisor last ran per
//!   instance: process group, start time, restarts), `conn` (connection parameters
//!   published per instance), `peer_conn` (connection parameters of peers' instances,
//!   verified by the mesh, by `node/instance`), `usage` (a checkpoint of the accountants' states, see
//!   `outbox.rs`), `local_backup` (backup policies of local requests, by instance),
//!   and `outbox`, which only a store written before the outbox log has:
//!   its records move into the log at the first open (`migrate_outbox`), nothing lost.
//! - The outbox's records are in `DIR/outbox/`, an append-only log of checksummed
//!   frames in segment files (`frame.rs`, `segments.rs`, `outbox.rs`): a record is one
//!   frame (a usage record with its accountant's state after it), a shedding pass
//!   frames of whole merges; acknowledged records are dropped by a floor and their
//!   segments deleted whole.
//!   After a crash the log is read up to its first torn or corrupt frame and cut there.
//! - A change is durable before it is acted on or reported. Requests, desired state,
//!   observed state, incidents and acknowledgements are flushed before the call
//!   returns. Outbox records are *reports*, committed in groups: [`Store::append`] only
//!   buffers its frame (a write per record would cost a 4 KiB page each, and wear an SD
//!   card out); the owner calls [`Store::flush_records`] before anything shows records
//!   (the local API) and [`Store::flush_to_send`] before records leave (the uplink),
//!   which flush only when the rule of `pending.rs` says a write they reveal is not on
//!   disk yet, and [`Store::flush_if_due`] at [`Store::flush_deadline`] (`flush_every_ms`
//!   after the first record not on disk). A flush is one write and one `fdatasync` of the
//!   log, then sled's flush. A crash can therefore lose only records nobody has seen,
//!   and their sequence numbers with them: a number that was ever shown or sent is
//!   never reused.
//! - Outbox sequence numbers start at 1 and grow by one per record. The next one is
//!   max(highest seq the log names + 1, the floor in `meta`, the acknowledged floor +
//!   1); the floor is raised and flushed before records are deleted (acknowledged or
//!   shed), so a number that was ever shown, sent or acknowledged is never issued
//!   again, not even after the outbox emptied, nor across restarts.
//! - `meta` also keeps the highest seq ever handed to a link ([`Store::hand_over`]),
//!   raised before the records leave the node: shedding never touches a record at or
//!   below it, in this run or after a restart (the link may have sent it, or hold it).
//! - `meta` keeps the store's epoch, the node's life its records belong to (see
//!   `epoch.rs` for the rule: a new store, a pre-epoch store and a store restored from a
//!   backup each start a new one). Sequence numbers are unique within an epoch.
//! - Values are postcard; a value that no longer decodes is a typed error, never a panic.
//!
//! Driven by the daemon (single owner); cheap to clone.

mod epoch;
mod frame;
mod migrate;
mod outbox;
pub mod pending;
mod restored;
mod segments;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hedge_wire::{DesiredState, ExitStatus, InstanceRequest, Name, Record, RecordKind};

use crate::monitor::incident::Incident;
use crate::monitor::shed::{self, OutboxEntry, RecordClass, ShedPlan};
use crate::monitor::usage::AccountantState;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use migrate::SCHEMA_VERSION;
use pending::{Pending, Reveal};

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed (I/O error, corruption, full disk).
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    /// A stored value did not decode.
    #[error("store: value under {tree}/{key} does not decode: {source}")]
    Decode {
        /// The sled tree (`outbox`, `desired`, …).
        tree: &'static str,
        /// Key, printable.
        key: String,
        /// postcard's error.
        source: postcard::Error,
    },
    /// A usage record's accountant state belongs to another instance.
    #[error("store: the accountant state of {of} cannot be filed under {name}")]
    StateOfAnother {
        /// The instance named by the caller.
        name: String,
        /// The instance the state accounts.
        of: String,
    },
    /// The outbox log's files failed (I/O error, full disk).
    #[error("store: outbox log: {0}")]
    Io(#[from] std::io::Error),
    /// A value did not encode (too large, etc.).
    #[error("store: cannot encode value: {0}")]
    Encode(postcard::Error),
    /// The store is being reopened after an I/O error.
    #[error("store: closed for reopening")]
    Closed,
    /// The store was written by a newer hedge.
    #[error("store schema version {found} is newer than this hedge supports ({supported}); refusing to touch it")]
    TooNew {
        /// Schema version on disk.
        found: u32,
        /// The newest schema version this hedge reads.
        supported: u32,
    },
}

impl StoreError {
    /// True when the error is (or wraps) a full disk.
    pub fn is_no_space(&self) -> bool {
        let full = |e: &std::io::Error| {
            e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(28)
        };
        match self {
            StoreError::Sled(sled::Error::Io(e)) | StoreError::Io(e) => full(e),
            _ => false,
        }
    }
}

/// What the supervisor last knew of an instance's process, kept so that a restarted
/// daemon can clean up leftovers and keep counting restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedInstance {
    /// Process group of the running process (== its pid), if one was running.
    pub pgid: Option<u32>,
    /// Its start time in clock ticks since boot (`/proc/PID/stat` field 22), to tell it
    /// apart from an unrelated process that reused the pid.
    pub start_ticks: Option<u64>,
    /// Restarts so far.
    pub restarts: u32,
    /// How the last run ended.
    pub last_exit: Option<ExitStatus>,
    /// The boot (`/proc/sys/kernel/random/boot_id`) `pgid` and `start_ticks` belong to:
    /// after a reboot they name nothing of ours. Records written before this field
    /// existed decode with `None` ("unknown boot"), which is never killed.
    pub boot_id: Option<String>,
}

/// [`ObservedInstance`] as written before it had a boot id (postcard: the same fields,
/// without the last one). Read-time migration: such a record decodes as this.
#[derive(Deserialize)]
struct ObservedV1 {
    pgid: Option<u32>,
    start_ticks: Option<u64>,
    restarts: u32,
    last_exit: Option<ExitStatus>,
}

impl From<ObservedV1> for ObservedInstance {
    fn from(o: ObservedV1) -> Self {
        ObservedInstance {
            pgid: o.pgid,
            start_ticks: o.start_ticks,
            restarts: o.restarts,
            last_exit: o.last_exit,
            boot_id: None,
        }
    }
}

/// Decodes an observed record, current or older layout.
fn dec_observed(key: &[u8], v: &[u8]) -> Result<ObservedInstance, StoreError> {
    dec("observed", key, v).or_else(|e| match postcard::from_bytes::<ObservedV1>(v) {
        Ok(old) => Ok(old.into()),
        Err(_) => Err(e),
    })
}

/// A usage record staged in its accountant's state (see [`Store::append_usage`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Staged {
    /// The seq it gets: the next one when it was staged.
    seq: u64,
    time_ms: u64,
    kind: RecordKind,
}

/// What the `usage` tree holds per instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StoredUsage {
    state: AccountantState,
    staged: Option<Staged>,
}

impl StoredUsage {
    /// Decodes a value; one written before staging existed is a bare state.
    fn decode(key: &[u8], v: &[u8]) -> Result<StoredUsage, StoreError> {
        dec::<StoredUsage>("usage", key, v).or_else(|e| {
            dec::<AccountantState>("usage", key, v)
                .map(|state| StoredUsage {
                    state,
                    staged: None,
                })
                .map_err(|_| e)
        })
    }
}

const META_NEXT_SEQ: &[u8] = b"next_seq";
const META_HANDED_UPTO: &[u8] = b"handed_upto";
/// The acknowledged floor: records at or below it are gone from the outbox log.
const META_ACKED: &[u8] = b"acked_upto";
/// The outbox log position the `usage` tree's checkpoint covers.
const META_USAGE_FROM: &[u8] = b"usage_from";

/// A peer instance's stored parameters: their generation and values.
pub type PeerParams = (u64, BTreeMap<String, String>);

/// How long opening waits for a lock still held by a handle being dropped.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Opens sled as `cfg` says, retrying for up to `wait` while its directory's lock is
/// held: after a handle in this process is dropped (a reopen), sled's flusher thread may
/// hold it a moment longer.
#[allow(clippy::disallowed_methods)] // I/O: a real deadline for sled's file lock
pub(crate) fn open_waiting(
    cfg: &sled::Config,
    wait: std::time::Duration,
) -> sled::Result<sled::Db> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        match cfg.open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// The node's store.
pub struct Store {
    /// `None` only between the two halves of [`Store::reopen`].
    trees: Option<Trees>,
    dir: std::path::PathBuf,
    cache_bytes: u64,
    flush_every_ms: u64,
    /// The next sequence number: max(highest seq the outbox log names + 1, the
    /// persisted floors).
    next_seq: Arc<AtomicU64>,
    /// The highest seq ever handed to a link (persisted in `meta`).
    handed_upto: Arc<AtomicU64>,
    /// The store's epoch (persisted in `meta`), settled at every open.
    epoch: Arc<AtomicU64>,
    /// The writes not flushed yet (group commit).
    pending: Arc<Mutex<Pending>>,
    /// When a due flush last failed (the next try waits an interval).
    flush_failed_at: Mutex<Option<std::time::Instant>>,
}

/// The open database and its trees.
struct Trees {
    db: sled::Db,
    meta: sled::Tree,
    desired: sled::Tree,
    local: sled::Tree,
    observed: sled::Tree,
    outbox: sled::Tree,
    /// The `conn` tree: connection parameters published per instance.
    published: sled::Tree,
    /// The `peer_conn` tree: verified connection parameters of peers' instances.
    peer_params: sled::Tree,
    incidents: sled::Tree,
    usage: sled::Tree,
    /// Backup policies of local requests, by instance.
    local_backup: sled::Tree,
    /// The outbox's records (`outbox.rs`); the `outbox` tree only migrates into it.
    log: Mutex<outbox::OutboxLog>,
}

fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_stdvec(v).map_err(StoreError::Encode)
}

fn dec<T: DeserializeOwned>(tree: &'static str, key: &[u8], v: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(v).map_err(|source| StoreError::Decode {
        tree,
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    })
}

fn be_u64(v: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = v.len().min(8);
    b[..n].copy_from_slice(&v[..n]);
    u64::from_be_bytes(b)
}

impl Store {
    /// Opens (or creates) the store in `dir`, migrating it to [`SCHEMA_VERSION`].
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Store, StoreError> {
        Store::open_tuned(dir, cache_bytes, 500)
    }

    /// Opens the store with sled's background flush every `flush_every_ms` (explicit
    /// flushes still make every acted-on change durable first).
    pub fn open_tuned(
        dir: &Path,
        cache_bytes: u64,
        flush_every_ms: u64,
    ) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(sled::Error::Io)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(sled::Error::Io)?;
        let mut store = Store {
            trees: None,
            dir: dir.to_path_buf(),
            cache_bytes,
            flush_every_ms: flush_every_ms.max(1),
            next_seq: Arc::new(AtomicU64::new(1)),
            handed_upto: Arc::new(AtomicU64::new(0)),
            epoch: Arc::new(AtomicU64::new(0)),
            pending: Arc::default(),
            flush_failed_at: Mutex::new(None),
        };
        store.open_trees()?;
        Ok(store)
    }

    fn open_trees(&mut self) -> Result<(), StoreError> {
        let db = self.open_db()?;
        let meta = db.open_tree("meta")?;
        migrate::run(&meta)?;
        let epoch = epoch::settle(&meta, &self.dir.join("db"))?;
        self.epoch.store(epoch, Ordering::Relaxed);
        let acked = meta.get(META_ACKED)?.map_or(0, |v| be_u64(&v));
        let usage_from = meta
            .get(META_USAGE_FROM)?
            .map(|v| segments::Pos::from_bytes(&v))
            .unwrap_or_default();
        let log = outbox::OutboxLog::open(&self.dir.join("outbox"), acked, usage_from)?;
        let t = Trees {
            desired: db.open_tree("desired")?,
            local: db.open_tree("local")?,
            observed: db.open_tree("observed")?,
            outbox: db.open_tree("outbox")?,
            published: db.open_tree("conn")?,
            peer_params: db.open_tree("peer_conn")?,
            incidents: db.open_tree("incidents")?,
            usage: db.open_tree("usage")?,
            local_backup: db.open_tree("local_backup")?,
            log: Mutex::new(log),
            meta,
            db,
        };
        t.db.flush()?;
        self.pending().flushed();
        let floor = t.meta.get(META_NEXT_SEQ)?.map(|v| be_u64(&v)).unwrap_or(1);
        let logged = t.log.lock().unwrap_or_else(|p| p.into_inner()).max_seq();
        self.next_seq
            .store((logged + 1).max(floor).max(acked + 1), Ordering::Relaxed);
        let handed = t.meta.get(META_HANDED_UPTO)?.map_or(0, |v| be_u64(&v));
        self.handed_upto.store(handed, Ordering::Relaxed);
        self.trees = Some(t);
        self.migrate_outbox()?;
        if self.append_staged()? > 0 {
            self.flush()?;
        }
        Ok(())
    }

    /// Moves the records of a store written before the outbox log (its `outbox` tree)
    /// into the log, seqs unchanged: each is put unless the log holds it already, the
    /// log is synced, and only then is the tree emptied. A crash anywhere in between
    /// leaves every record in the tree, the log, or both; the next open finishes.
    fn migrate_outbox(&self) -> Result<(), StoreError> {
        let t = self.t()?;
        if t.outbox.is_empty() {
            return Ok(());
        }
        let mut moved = 0u64;
        {
            let mut log = self.log()?;
            for kv in t.outbox.iter() {
                let (k, v) = kv?;
                let r: Record = dec("outbox", &k, &v)?;
                if r.seq > log.acked() && !log.has(r.seq) {
                    log.put(&r, None)?;
                    moved += 1;
                }
            }
            log.sync()?;
            self.next_seq
                .fetch_max(log.max_seq() + 1, Ordering::Relaxed);
        }
        t.outbox.clear()?;
        t.db.flush()?;
        tracing::info!(
            moved,
            "store: outbox records moved from sled into the outbox log"
        );
        Ok(())
    }

    /// Opens sled, waiting up to [`LOCK_WAIT`] for its file lock ([`open_waiting`]).
    fn open_db(&self) -> Result<sled::Db, StoreError> {
        let cfg = sled::Config::new()
            .path(&self.dir)
            .cache_capacity(self.cache_bytes)
            .flush_every_ms(Some(self.flush_every_ms))
            .mode(sled::Mode::LowSpace);
        Ok(open_waiting(&cfg, LOCK_WAIT)?)
    }

    /// Closes and reopens the database. sled refuses every write after an I/O error
    /// such as a full disk, even once space returns; reopening recovers from its log
    /// (everything acknowledged before the error is kept).
    pub fn reopen(&mut self) -> Result<(), StoreError> {
        // sled holds an exclusive lock per directory: the old handles must go first.
        self.trees = None;
        self.open_trees()
    }

    /// The store's epoch: the node life its records belong to (never 0).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }

    /// Leaves the store as a [`Store::reopen`] that failed leaves it: closed, every
    /// call an error.
    #[cfg(test)]
    pub(crate) fn close(&mut self) {
        self.trees = None;
    }

    fn t(&self) -> Result<&Trees, StoreError> {
        self.trees.as_ref().ok_or(StoreError::Closed)
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes every appended record durable, flushing only when one is not yet: call
    /// before the outbox (its records, depth or next seq) is shown.
    pub fn flush_records(&self) -> Result<(), StoreError> {
        self.flush_if_owed(Reveal::Show)
    }

    /// Makes records up to `upto` and the hand-over mark durable, flushing only when one
    /// is not yet: call before those records leave the node.
    pub fn flush_to_send(&self, upto: u64) -> Result<(), StoreError> {
        self.flush_if_owed(Reveal::Send { upto })
    }

    fn flush_if_owed(&self, reveal: Reveal) -> Result<(), StoreError> {
        if self.pending().owed(reveal) {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        let t = self.t()?;
        t.log.lock().unwrap_or_else(|p| p.into_inner()).sync()?;
        t.db.flush()?;
        self.pending().flushed();
        Ok(())
    }

    /// When the records appended since the last flush are due on disk even if nobody
    /// reveals them (`flush_every_ms` after the first of them): the owner calls
    /// [`Store::flush_if_due`] then. `None` when nothing waits.
    pub fn flush_deadline(&self) -> Option<std::time::Instant> {
        let since = self.log().ok()?.unsynced_since()?;
        let failed = *self
            .flush_failed_at
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let every = std::time::Duration::from_millis(self.flush_every_ms);
        Some(since.max(failed.unwrap_or(since)) + every)
    }

    /// Flushes when [`Store::flush_deadline`] has passed at `now`; after a failure the
    /// next try waits an interval.
    pub fn flush_if_due(&self, now: std::time::Instant) -> Result<(), StoreError> {
        if self.flush_deadline().is_some_and(|d| d <= now) {
            let done = self.flush();
            *self
                .flush_failed_at
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = done.is_err().then_some(now);
            done?;
        }
        Ok(())
    }

    fn log(&self) -> Result<std::sync::MutexGuard<'_, outbox::OutboxLog>, StoreError> {
        Ok(self.t()?.log.lock().unwrap_or_else(|p| p.into_inner()))
    }

    // ---- outbox -------------------------------------------------------------------

    /// Appends a record and returns it with its sequence number (durable once
    /// [`Store::flush_records`], [`Store::flush_to_send`] or [`Store::flush_if_due`]
    /// ran).
    ///
    /// One frame buffered in the outbox log: the records of one loop turn reach the disk
    /// together, in one write and one `fdatasync` (sled rewrote a whole leaf page about
    /// every ten inserts: ~600 bytes written per record).
    pub fn append(&self, time_ms: u64, kind: RecordKind) -> Result<Record, StoreError> {
        self.append_with(time_ms, kind, None)
    }

    fn append_with(
        &self,
        time_ms: u64,
        kind: RecordKind,
        state: Option<&AccountantState>,
    ) -> Result<Record, StoreError> {
        let mut log = self.log()?;
        let seq = self.next_seq.load(Ordering::Relaxed);
        let record = Record { seq, time_ms, kind };
        log.put(&record, state)?;
        self.pending().appended(seq);
        self.next_seq.store(seq + 1, Ordering::Relaxed);
        Ok(record)
    }

    /// Appends a usage record and the accountant state of `name` after it, as one:
    /// both are in one frame of the outbox log, so a crash keeps both or neither: an
    /// interval is never lost and never counted twice. The state is filed under its own
    /// `instance` (the accountant's), which must be `name`.
    pub fn append_usage(
        &self,
        time_ms: u64,
        kind: RecordKind,
        name: &Name,
        state: &AccountantState,
    ) -> Result<Record, StoreError> {
        if state.instance != *name {
            return Err(StoreError::StateOfAnother {
                name: name.as_str().to_owned(),
                of: state.instance.as_str().to_owned(),
            });
        }
        self.append_with(time_ms, kind, Some(state))
    }

    /// A store written before the outbox log staged each usage record in its
    /// accountant's state before appending it. Appends every staged record that a crash
    /// kept from the outbox (its seq was never issued), makes it durable, and only then
    /// clears the staging. Returns how many were appended.
    fn append_staged(&self) -> Result<u64, StoreError> {
        let mut staged_keys = Vec::new();
        let mut appended = 0;
        for kv in self.t()?.usage.iter() {
            let (k, v) = kv?;
            let stored = StoredUsage::decode(&k, &v)?;
            let Some(staged) = stored.staged else {
                continue;
            };
            if staged.seq >= self.next_seq.load(Ordering::Relaxed) {
                self.append(staged.time_ms, staged.kind)?;
                appended += 1;
            }
            staged_keys.push((k, stored.state));
        }
        if staged_keys.is_empty() {
            return Ok(0);
        }
        self.log()?.sync()?;
        for (k, state) in staged_keys {
            let cleared = StoredUsage {
                state,
                staged: None,
            };
            self.t()?.usage.insert(k, enc(&cleared)?)?;
        }
        if appended > 0 {
            tracing::warn!(appended, "usage records staged before a crash appended");
        }
        Ok(appended)
    }

    /// The sequence number the next record will get.
    pub fn next_seq(&self) -> Result<u64, StoreError> {
        Ok(self.next_seq.load(Ordering::Relaxed))
    }

    /// Raises the persisted floor below which no sequence number is issued again, to
    /// cover every record that exists now (before records are deleted), and flushes.
    ///
    /// The log is synced first: a floor past a record a crash can still lose would make
    /// its seq skipped, a gap the master could not tell from a lost record.
    fn raise_floor(&self) -> Result<(), StoreError> {
        let t = self.t()?;
        let next = {
            let mut log = self.log()?;
            log.sync()?;
            self.next_seq.load(Ordering::Relaxed)
        };
        let floor = t.meta.get(META_NEXT_SEQ)?.map(|v| be_u64(&v)).unwrap_or(1);
        if next > floor {
            t.meta.insert(META_NEXT_SEQ, &next.to_be_bytes())?;
        }
        self.flush()
    }

    /// Records up to `upto` are being handed to a link: raise the persisted mark that
    /// keeps shedding off them (durable with [`Store::flush_to_send`], which must come
    /// before the records leave the node).
    pub fn hand_over(&self, upto: u64) -> Result<(), StoreError> {
        if upto > self.handed_upto() {
            self.t()?
                .meta
                .insert(META_HANDED_UPTO, &upto.to_be_bytes())?;
            self.pending().marked();
            self.handed_upto.store(upto, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The highest seq ever handed to a link: shedding keeps off it and everything below.
    pub fn handed_upto(&self) -> u64 {
        self.handed_upto.load(Ordering::Relaxed)
    }

    /// Records waiting for an acknowledgement.
    pub fn outbox_depth(&self) -> usize {
        self.log().map_or(0, |l| l.count())
    }

    /// Up to `limit` records with `seq >= from`, in order.
    pub fn outbox_from(&self, from: u64, limit: usize) -> Result<Vec<Record>, StoreError> {
        Ok(self
            .log()?
            .records_from(from, limit)?
            .into_iter()
            .map(|(r, _)| r)
            .collect())
    }

    /// Deletes every record with `seq <= upto` (the master has stored them): the
    /// sequence floor (to `upto + 1`, never past a record not on disk yet: a crash must
    /// not skip a seq) and the acknowledged floor are raised in one flush of sled (the
    /// floor first: sled recovers a prefix of its writes, so a store that forgot the
    /// records also keeps their seqs from being issued again); then the segments of the
    /// outbox log that hold nothing else are deleted, after the accountant states they
    /// may hold are checkpointed into the `usage` tree in that same flush.
    pub fn ack(&self, upto: u64) -> Result<usize, StoreError> {
        let t = self.t()?;
        let mut log = self.log()?;
        // The deleted seqs must never be issued again, even if the outbox empties; the
        // ones after them are covered by the log itself once they are on disk.
        let next = upto
            .saturating_add(1)
            .min(self.next_seq.load(Ordering::Relaxed));
        let floor = t.meta.get(META_NEXT_SEQ)?.map(|v| be_u64(&v)).unwrap_or(1);
        if next > floor {
            t.meta.insert(META_NEXT_SEQ, &next.to_be_bytes())?;
        }
        let n = log.ack(upto);
        t.meta.insert(META_ACKED, &log.acked().to_be_bytes())?;
        let first = log.first_kept()?;
        if log.deletes_any(first) {
            // Segments about to go may hold the latest state of an instance: write every
            // state newer than the checkpoint into it (the log is synced: these states
            // are all on disk) and move the checkpoint to the log's end.
            log.sync()?;
            let (states, at) = log.checkpoint();
            for (name, state) in states {
                match state {
                    Some(state) => {
                        let stored = StoredUsage {
                            state,
                            staged: None,
                        };
                        t.usage.insert(name.as_bytes(), enc(&stored)?)?;
                    }
                    None => {
                        t.usage.remove(name.as_bytes())?;
                    }
                }
            }
            t.meta.insert(META_USAGE_FROM, &at.to_bytes())?;
        }
        t.db.flush()?;
        log.delete_before(first)?;
        Ok(n)
    }

    /// Bytes the outbox's records take (encoded records only).
    pub fn outbox_bytes(&self) -> u64 {
        self.log().map_or(0, |l| l.bytes())
    }

    /// False only when the outbox holds no relayed batch (known without reading it:
    /// its open replayed every entry, and puts since are watched).
    pub fn may_hold_relayed(&self) -> bool {
        self.log().map_or(true, |l| l.may_hold_relayed())
    }

    /// What the shedding policy needs to know of every outbox record (read in steps,
    /// so a large outbox is never all in memory at once).
    pub fn outbox_entries(&self) -> Result<Vec<OutboxEntry>, StoreError> {
        const STEP: usize = 4096;
        let log = self.log()?;
        let mut entries = Vec::with_capacity(log.count());
        let mut from = 0;
        loop {
            let records = log.records_from(from, STEP)?;
            let Some(last) = records.last().map(|(r, _)| r.seq) else {
                break;
            };
            entries.extend(records.into_iter().map(|(r, bytes)| OutboxEntry {
                seq: r.seq,
                class: RecordClass::of(&r.kind),
                bytes,
            }));
            from = last + 1;
        }
        Ok(entries)
    }

    /// Applies a shed plan: each merge group's usage records are folded into one record
    /// kept at the group's `keep` seq, the rest of the group and every `drop` seq are
    /// deleted (replacement records and one list of dropped seqs in the outbox log,
    /// synced). Returns the outbox bytes afterwards.
    pub fn apply_shed(&self, plan: &ShedPlan) -> Result<u64, StoreError> {
        self.raise_floor()?;
        let mut log = self.log()?;
        // Units of the pass: a record rewritten (or none) and the seqs it absorbs or
        // drops, each applied whole.
        let mut units: Vec<(Option<Record>, Vec<u64>)> = Vec::new();
        for g in &plan.merge {
            let mut merged: Option<Record> = None;
            let mut absorbed = Vec::new();
            for seq in &g.seqs {
                let Some(r) = log.get(*seq)? else {
                    continue;
                };
                merged = Some(match merged {
                    None => r,
                    Some(m) => Record {
                        kind: shed::merge_usage(&m.kind, &r.kind).unwrap_or(m.kind),
                        ..m
                    },
                });
                if *seq != g.keep {
                    absorbed.push(*seq);
                }
            }
            if let Some(mut m) = merged {
                m.seq = g.keep;
                units.push((Some(m), absorbed));
            }
        }
        let mut folded: Option<Record> = None;
        let mut absorbed = Vec::new();
        for seq in &plan.fold_reports {
            let Some(r) = log.get(*seq)? else {
                continue;
            };
            folded = Some(match folded {
                None => r,
                Some(f) => {
                    absorbed.push(*seq);
                    Record {
                        kind: shed::fold_reports(&f.kind, &r.kind).unwrap_or(f.kind),
                        ..f
                    }
                }
            });
        }
        if folded.is_some() {
            units.push((folded, absorbed));
        }
        let dropped: Vec<u64> = plan.drop.iter().copied().filter(|s| log.has(*s)).collect();
        units.push((None, dropped));
        log.shed(&units)?;
        log.sync()?;
        Ok(log.bytes())
    }

    // ---- incidents and usage accounting -----------------------------------------------

    /// Stores an open incident (replacing its earlier version).
    pub fn put_incident(&self, i: &Incident) -> Result<(), StoreError> {
        self.t()?.incidents.insert(i.id.to_be_bytes(), enc(i)?)?;
        self.t()?.meta.insert(
            b"next_incident",
            &(i.id + 1).max(self.next_incident_id()?).to_be_bytes(),
        )?;
        self.flush()
    }

    /// Forgets a resolved incident.
    pub fn remove_incident(&self, id: u64) -> Result<(), StoreError> {
        self.t()?.incidents.remove(id.to_be_bytes())?;
        self.flush()
    }

    /// Every open incident.
    pub fn incidents(&self) -> Result<Vec<Incident>, StoreError> {
        self.t()?
            .incidents
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                dec("incidents", &k, &v)
            })
            .collect()
    }

    /// The next incident id (ids are never reused).
    pub fn next_incident_id(&self) -> Result<u64, StoreError> {
        Ok(self
            .t()?
            .meta
            .get(b"next_incident")?
            .map(|v| be_u64(&v))
            .unwrap_or(1))
    }

    /// Stores an instance's accounting state (an entry of the outbox log, not flushed:
    /// the next flush carries it; a crash loses at most one sample interval).
    pub fn put_usage(&self, name: &Name, s: &AccountantState) -> Result<(), StoreError> {
        self.log()?.put_usage(name, Some(s))
    }

    /// An instance's accounting state: the newest in the outbox log, else the `usage`
    /// tree's checkpoint.
    pub fn usage_state(&self, name: &Name) -> Result<Option<AccountantState>, StoreError> {
        if let Some(logged) = self.log()?.usage(name) {
            return Ok(logged);
        }
        self.t()?
            .usage
            .get(name.as_str())?
            .map(|v| StoredUsage::decode(name.as_str().as_bytes(), &v).map(|s| s.state))
            .transpose()
    }

    /// Forgets an instance's accounting state.
    pub fn remove_usage(&self, name: &Name) -> Result<(), StoreError> {
        self.log()?.put_usage(name, None)
    }

    // ---- desired state ---------------------------------------------------------------

    /// The clock floor: the newest wall-clock time (ms since the epoch) the node
    /// persisted; 0 when it never did.
    pub fn clock_floor(&self) -> Result<u64, StoreError> {
        Ok(self
            .t()?
            .meta
            .get(b"clock_floor")?
            .map(|v| be_u64(&v))
            .unwrap_or(0))
    }

    /// Raises the clock floor to `ms` (never lowers it) and flushes.
    pub fn raise_clock_floor(&self, ms: u64) -> Result<(), StoreError> {
        if ms > self.clock_floor()? {
            self.t()?.meta.insert(b"clock_floor", &ms.to_be_bytes())?;
            self.flush()?;
        }
        Ok(())
    }

    /// Stores the master's desired state (already verified by the caller).
    pub fn put_desired(&self, d: &DesiredState) -> Result<(), StoreError> {
        self.t()?.desired.insert(b"current", enc(d)?)?;
        self.flush()
    }

    /// The master's last accepted desired state. One stored by an older hedge reads as
    /// [`DesiredState::from_stored`] says (no terms or imports; expiry 0 from wire
    /// version 1); any other value that does not decode is an error.
    pub fn desired(&self) -> Result<Option<DesiredState>, StoreError> {
        let Some(v) = self.t()?.desired.get(b"current")? else {
            return Ok(None);
        };
        DesiredState::from_stored(&v)
            .map(Some)
            .map_err(|source| StoreError::Decode {
                tree: "desired",
                key: "current".to_owned(),
                source,
            })
    }

    /// Stores the master's desired state (already verified by the caller) and the
    /// held-over set that goes with it (`crate::holdover`) in one atomic batch: a crash
    /// leaves both old or both new.
    pub fn put_desired_holding(
        &self,
        d: &DesiredState,
        held: &[InstanceRequest],
    ) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        batch.insert(&b"current"[..], enc(d)?);
        if held.is_empty() {
            batch.remove(&b"held_over"[..]);
        } else {
            batch.insert(&b"held_over"[..], enc(&held)?);
        }
        self.t()?.desired.apply_batch(batch)?;
        self.flush()
    }

    /// Replaces the held-over set (a local request took one over).
    pub fn put_held_over(&self, held: &[InstanceRequest]) -> Result<(), StoreError> {
        let t = self.t()?;
        if held.is_empty() {
            t.desired.remove(b"held_over")?;
        } else {
            t.desired.insert(b"held_over", enc(&held)?)?;
        }
        self.flush()
    }

    /// The instances held over from an earlier master epoch (`crate::holdover`);
    /// empty when none. A value that does not decode is an error, never "none".
    pub fn held_over(&self) -> Result<Vec<InstanceRequest>, StoreError> {
        match self.t()?.desired.get(b"held_over")? {
            Some(v) => dec("desired", b"held_over", &v),
            None => Ok(Vec::new()),
        }
    }

    /// Writes raw bytes as the stored desired state (tests of what a corrupt store does).
    #[cfg(test)]
    pub(crate) fn put_desired_raw(&self, bytes: &[u8]) -> Result<(), StoreError> {
        self.t()?.desired.insert(b"current", bytes)?;
        self.flush()
    }

    // ---- local requests --------------------------------------------------------------

    /// Stores (or replaces) a request made on the node.
    pub fn put_local(&self, r: &InstanceRequest) -> Result<(), StoreError> {
        self.t()?.local.insert(r.name.as_str(), enc(r)?)?;
        self.flush()
    }

    /// Forgets a local request.
    pub fn remove_local(&self, name: &Name) -> Result<(), StoreError> {
        self.t()?.local.remove(name.as_str())?;
        self.flush()
    }

    /// One local request.
    pub fn local(&self, name: &Name) -> Result<Option<InstanceRequest>, StoreError> {
        self.t()?
            .local
            .get(name.as_str())?
            .map(|v| dec("local", name.as_str().as_bytes(), &v))
            .transpose()
    }

    /// Every local request, by name.
    pub fn locals(&self) -> Result<Vec<InstanceRequest>, StoreError> {
        self.t()?
            .local
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                dec("local", &k, &v)
            })
            .collect()
    }

    /// Stores (or replaces) the backup policy of a local request.
    pub fn put_local_backup(&self, p: &hedge_wire::BackupPolicy) -> Result<(), StoreError> {
        self.t()?
            .local_backup
            .insert(p.instance.as_str(), enc(p)?)?;
        self.flush()
    }

    /// Forgets the backup policy of a local request (its snapshots stay in the vault).
    pub fn remove_local_backup(&self, name: &Name) -> Result<(), StoreError> {
        self.t()?.local_backup.remove(name.as_str())?;
        self.flush()
    }

    /// Every local backup policy, by instance.
    pub fn local_backups(&self) -> Result<Vec<hedge_wire::BackupPolicy>, StoreError> {
        self.t()?
            .local_backup
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                dec("local_backup", &k, &v)
            })
            .collect()
    }

    // ---- observed state --------------------------------------------------------------

    /// Records what the supervisor runs for `name`.
    pub fn put_observed(&self, name: &Name, o: &ObservedInstance) -> Result<(), StoreError> {
        self.t()?.observed.insert(name.as_str(), enc(o)?)?;
        self.flush()
    }

    /// Records what the supervisor runs for `name` without flushing: durable with the
    /// next flush ([`Store::flush_records`]), in the order of the calls (sled recovers a
    /// prefix of its log). For a burst of changes (a restart, a boot) that the caller
    /// flushes once, before it reports them.
    pub fn put_observed_deferred(
        &self,
        name: &Name,
        o: &ObservedInstance,
    ) -> Result<(), StoreError> {
        self.t()?.observed.insert(name.as_str(), enc(o)?)?;
        self.pending().deferred();
        Ok(())
    }

    /// Forgets `name`'s observed state.
    pub fn remove_observed(&self, name: &Name) -> Result<(), StoreError> {
        self.t()?.observed.remove(name.as_str())?;
        self.flush()
    }

    /// The observed state of `name`, if any (one lookup, where [`Store::observed`]
    /// reads them all).
    pub fn observed_of(&self, name: &Name) -> Result<Option<ObservedInstance>, StoreError> {
        let key = name.as_str().as_bytes();
        match self.t()?.observed.get(key)? {
            Some(v) => Ok(Some(dec_observed(key, &v)?)),
            None => Ok(None),
        }
    }

    /// Every observed instance.
    pub fn observed(&self) -> Result<BTreeMap<String, ObservedInstance>, StoreError> {
        self.t()?
            .observed
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                Ok((
                    String::from_utf8_lossy(&k).into_owned(),
                    dec_observed(&k, &v)?,
                ))
            })
            .collect()
    }

    // ---- connection parameters --------------------------------------------------------

    /// Stores the connection parameters `name` published.
    pub fn put_published(
        &self,
        name: &Name,
        p: &BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        self.t()?.published.insert(name.as_str(), enc(p)?)?;
        self.flush()
    }

    /// Forgets `name`'s connection parameters.
    pub fn remove_published(&self, name: &Name) -> Result<(), StoreError> {
        self.t()?.published.remove(name.as_str())?;
        self.flush()
    }

    /// Every instance's connection parameters.
    pub fn published(&self) -> Result<BTreeMap<String, BTreeMap<String, String>>, StoreError> {
        self.t()?
            .published
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                Ok((
                    String::from_utf8_lossy(&k).into_owned(),
                    dec("conn", &k, &v)?,
                ))
            })
            .collect()
    }

    // ---- peers' connection parameters (mesh) ---------------------------------------------

    /// Stores `parameters` of `instance` on the peer `node` at `generation`, if newer
    /// than what is stored (flushed); returns whether it was.
    pub fn put_peer_params(
        &self,
        node: &Name,
        instance: &Name,
        generation: u64,
        parameters: &BTreeMap<String, String>,
    ) -> Result<bool, StoreError> {
        let key = format!("{node}/{instance}");
        let t = self.t()?;
        if let Some(old) = t.peer_params.get(key.as_bytes())? {
            let (g, _): (u64, BTreeMap<String, String>) = dec("peer_conn", key.as_bytes(), &old)?;
            if g >= generation {
                return Ok(false);
            }
        }
        t.peer_params
            .insert(key.as_bytes(), enc(&(generation, parameters))?)?;
        self.flush()?;
        Ok(true)
    }

    /// Every peer instance's stored parameters, by `node/instance`, with their
    /// generation.
    pub fn peer_params(&self) -> Result<BTreeMap<String, PeerParams>, StoreError> {
        self.t()?
            .peer_params
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                Ok((
                    String::from_utf8_lossy(&k).into_owned(),
                    dec("peer_conn", &k, &v)?,
                ))
            })
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests;
