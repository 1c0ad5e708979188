//! The node's durable state in one sled database.
//!
//! Contract:
//! - Trees: `meta` (schema version, next outbox sequence), `desired` (the master's last
//!   accepted [`DesiredState`]), `local` (requests made on the node, by name), `observed`
//!   (what the supervisor last ran per instance: process group, start time, restarts),
//!   `outbox` (key = big-endian u64 sequence → postcard [`Record`]), `conn` (connection
//!   parameters published per instance).
//! - Every mutating call is flushed before it returns: a change is durable before the
//!   caller acts on it or reports it.
//! - Outbox sequence numbers start at 1, grow by one per record, and are never reused,
//!   not even after every record was acknowledged and deleted, nor across restarts: the
//!   next number is stored in `meta` in the same transaction as the record.
//! - Values are postcard; a value that no longer decodes is a typed error, never a panic.
//!
//! Driven by the daemon (single owner); cheap to clone.

mod migrate;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use hedge_wire::{DesiredState, ExitStatus, InstanceRequest, Name, Record, RecordKind};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

pub use migrate::SCHEMA_VERSION;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed (I/O error, corruption, full disk).
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    /// A stored value did not decode.
    #[error("store: value under {tree}/{key} does not decode: {source}")]
    Decode {
        /// Tree name.
        tree: &'static str,
        /// Key, printable.
        key: String,
        /// postcard's error.
        source: postcard::Error,
    },
    /// A value did not encode (too large, etc.).
    #[error("store: cannot encode value: {0}")]
    Encode(postcard::Error),
    /// The store was written by a newer hedge.
    #[error("store schema version {found} is newer than this hedge supports ({supported}); refusing to touch it")]
    TooNew {
        /// Version on disk.
        found: u32,
        /// Highest known.
        supported: u32,
    },
}

impl StoreError {
    /// True when the error is (or wraps) a full disk.
    pub fn is_no_space(&self) -> bool {
        matches!(self, StoreError::Sled(sled::Error::Io(e)) if e.raw_os_error() == Some(28))
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
}

const META_NEXT_SEQ: &[u8] = b"next_seq";

/// The node's store. Cloning shares the same database.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    meta: sled::Tree,
    desired: sled::Tree,
    local: sled::Tree,
    observed: sled::Tree,
    outbox: sled::Tree,
    conn: sled::Tree,
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
        std::fs::create_dir_all(dir).map_err(sled::Error::Io)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(sled::Error::Io)?;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::LowSpace)
            .open()?;
        let store = Store {
            meta: db.open_tree("meta")?,
            desired: db.open_tree("desired")?,
            local: db.open_tree("local")?,
            observed: db.open_tree("observed")?,
            outbox: db.open_tree("outbox")?,
            conn: db.open_tree("conn")?,
            db,
        };
        migrate::run(&store.meta)?;
        store.db.flush()?;
        Ok(store)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    // ---- outbox -------------------------------------------------------------------

    /// Appends a record and returns it with its sequence number. Durable on return.
    pub fn append(&self, time_ms: u64, kind: RecordKind) -> Result<Record, StoreError> {
        let result = (&self.meta, &self.outbox).transaction(|(meta, outbox)| {
            let seq = meta.get(META_NEXT_SEQ)?.map(|v| be_u64(&v)).unwrap_or(1);
            let record = Record {
                seq,
                time_ms,
                kind: kind.clone(),
            };
            let bytes = postcard::to_stdvec(&record)
                .map_err(|e| ConflictableTransactionError::Abort(StoreError::Encode(e)))?;
            outbox.insert(&seq.to_be_bytes(), bytes)?;
            meta.insert(META_NEXT_SEQ, &(seq + 1).to_be_bytes())?;
            Ok(record)
        });
        let record = match result {
            Ok(record) => record,
            Err(TransactionError::Abort(e)) => return Err(e),
            Err(TransactionError::Storage(e)) => return Err(e.into()),
        };
        self.flush()?;
        Ok(record)
    }

    /// The sequence number the next record will get.
    pub fn next_seq(&self) -> Result<u64, StoreError> {
        Ok(self
            .meta
            .get(META_NEXT_SEQ)?
            .map(|v| be_u64(&v))
            .unwrap_or(1))
    }

    /// Records waiting for an acknowledgement.
    pub fn outbox_depth(&self) -> usize {
        self.outbox.len()
    }

    /// Up to `limit` records with `seq >= from`, in order.
    pub fn outbox_from(&self, from: u64, limit: usize) -> Result<Vec<Record>, StoreError> {
        self.outbox
            .range(from.to_be_bytes()..)
            .take(limit)
            .map(|kv| {
                let (k, v) = kv?;
                dec("outbox", &k, &v)
            })
            .collect()
    }

    /// Deletes every record with `seq <= upto` (the master has stored them).
    pub fn ack(&self, upto: u64) -> Result<usize, StoreError> {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for kv in self.outbox.range(..=upto.to_be_bytes()) {
            let (k, _) = kv?;
            batch.remove(k);
            n += 1;
        }
        self.outbox.apply_batch(batch)?;
        self.flush()?;
        Ok(n)
    }

    // ---- desired state ---------------------------------------------------------------

    /// Stores the master's desired state (already verified by the caller).
    pub fn put_desired(&self, d: &DesiredState) -> Result<(), StoreError> {
        self.desired.insert(b"current", enc(d)?)?;
        self.flush()
    }

    /// The master's last accepted desired state.
    pub fn desired(&self) -> Result<Option<DesiredState>, StoreError> {
        self.desired
            .get(b"current")?
            .map(|v| dec("desired", b"current", &v))
            .transpose()
    }

    // ---- local requests --------------------------------------------------------------

    /// Stores (or replaces) a request made on the node.
    pub fn put_local(&self, r: &InstanceRequest) -> Result<(), StoreError> {
        self.local.insert(r.name.as_str(), enc(r)?)?;
        self.flush()
    }

    /// Forgets a local request.
    pub fn remove_local(&self, name: &Name) -> Result<(), StoreError> {
        self.local.remove(name.as_str())?;
        self.flush()
    }

    /// One local request.
    pub fn local(&self, name: &Name) -> Result<Option<InstanceRequest>, StoreError> {
        self.local
            .get(name.as_str())?
            .map(|v| dec("local", name.as_str().as_bytes(), &v))
            .transpose()
    }

    /// Every local request, by name.
    pub fn locals(&self) -> Result<Vec<InstanceRequest>, StoreError> {
        self.local
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                dec("local", &k, &v)
            })
            .collect()
    }

    // ---- observed state --------------------------------------------------------------

    /// Records what the supervisor runs for `name`.
    pub fn put_observed(&self, name: &Name, o: &ObservedInstance) -> Result<(), StoreError> {
        self.observed.insert(name.as_str(), enc(o)?)?;
        self.flush()
    }

    /// Forgets `name`'s observed state.
    pub fn remove_observed(&self, name: &Name) -> Result<(), StoreError> {
        self.observed.remove(name.as_str())?;
        self.flush()
    }

    /// Every observed instance.
    pub fn observed(&self) -> Result<BTreeMap<String, ObservedInstance>, StoreError> {
        self.observed
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                Ok((
                    String::from_utf8_lossy(&k).into_owned(),
                    dec("observed", &k, &v)?,
                ))
            })
            .collect()
    }

    // ---- connection parameters --------------------------------------------------------

    /// Stores the connection parameters `name` published.
    pub fn put_conn(&self, name: &Name, p: &BTreeMap<String, String>) -> Result<(), StoreError> {
        self.conn.insert(name.as_str(), enc(p)?)?;
        self.flush()
    }

    /// Forgets `name`'s connection parameters.
    pub fn remove_conn(&self, name: &Name) -> Result<(), StoreError> {
        self.conn.remove(name.as_str())?;
        self.flush()
    }

    /// Every instance's connection parameters.
    pub fn conns(&self) -> Result<BTreeMap<String, BTreeMap<String, String>>, StoreError> {
        self.conn
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
}

#[cfg(test)]
mod tests;
