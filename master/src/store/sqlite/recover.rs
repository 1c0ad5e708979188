//! The master's own backup and recovery: a consistent copy of the store while masters
//! write to it, and installing such a copy as the store.
//!
//! Contract:
//! - Every [`super::SqliteStore`] holds a shared `flock` on `STORE.lock` (beside the
//!   store, mode 0600) while it is open; [`recover`] takes it exclusively, without
//!   waiting, so it refuses while any master process (`run`, `request`, …) has the store
//!   open ([`StoreError::InUse`]), and a store cannot be opened while a recover runs
//!   ([`StoreError::Recovering`]).
//! - [`backup_to`] copies the store with SQLite's online backup API in one step: one
//!   read transaction, so the copy is the store as of one commit, while writers go on
//!   (WAL). It is written beside `out` (mode 0600: it holds everything the store holds,
//!   open restores' keys included), synced, then renamed to `out`.
//! - [`recover`] copies the backup beside the store, upgrades its schema if older
//!   (refusing a newer one), raises its epoch to [`crate::epoch::recovered_epoch`] of the
//!   highest epoch the backup or the replaced store held, folds it into one file (no
//!   WAL), syncs it, removes the replaced store's `-wal`/`-shm` and renames it over the
//!   store. Every generation handed out afterwards is in the new epoch
//!   ([`crate::epoch::next_generation`]), above every generation the old lives issued.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use rusqlite::{Connection, OpenFlags};

use super::super::{Result, StoreError};
use super::{meta, schema, SCHEMA_VERSION};

/// What [`super::SqliteStore::recover`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    /// The highest epoch the backup or the replaced store held.
    pub previous_epoch: u32,
    /// The store's epoch now.
    pub epoch: u32,
    /// The first generation a node can get now (`epoch << 32 | 1`).
    pub first_generation: u64,
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The lock file of the store at `path`.
pub(super) fn lock_path(path: &Path) -> PathBuf {
    with_suffix(path, ".lock")
}

fn open_lock(path: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let lock = lock_path(path);
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock)
        .map_err(|source| StoreError::Create { path: lock, source })
}

/// Takes the shared lock an open store holds (see the module doc).
pub(super) fn lock_shared(path: &Path) -> Result<Flock<File>> {
    Flock::lock(open_lock(path)?, FlockArg::LockSharedNonblock)
        .map_err(|_| StoreError::Recovering(path.to_owned()))
}

fn lock_exclusive(path: &Path) -> Result<Flock<File>> {
    Flock::lock(open_lock(path)?, FlockArg::LockExclusiveNonblock)
        .map_err(|_| StoreError::InUse(path.to_owned()))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Create {
        path: path.to_owned(),
        source,
    }
}

fn sync_dir_of(path: &Path) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Writes a consistent copy of the database `conn` holds to `out` (see the module doc).
pub(super) fn backup_to(conn: &Connection, out: &Path) -> Result<()> {
    let tmp = with_suffix(out, ".tmp");
    let _ = std::fs::remove_file(&tmp);
    schema::create_private(&tmp).map_err(io(&tmp))?;
    {
        let mut dst = Connection::open(&tmp).map_err(|source| StoreError::Open {
            path: tmp.clone(),
            source,
        })?;
        let backup = rusqlite::backup::Backup::new(conn, &mut dst)?;
        // One step copies every page inside one read transaction: a consistent copy,
        // while writers go on in the WAL. Busy only while another connection holds an
        // exclusive lock (a checkpoint's truncation): retried, bounded.
        let mut tries = 0u32;
        loop {
            match backup.step(-1)? {
                rusqlite::backup::StepResult::Done => break,
                _ if tries < 300 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                _ => {
                    return Err(StoreError::Sqlite(rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                        Some("the store stayed locked during the backup".into()),
                    )))
                }
            }
        }
        drop(backup);
        dst.pragma_update(None, "journal_mode", "DELETE")?;
    }
    File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io(&tmp))?;
    std::fs::rename(&tmp, out).map_err(io(out))?;
    sync_dir_of(out)
}

/// The epoch stored in the database at `path`, if it is a store (0 without one).
fn epoch_of_file(path: &Path) -> Result<u32> {
    let conn =
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(|source| {
            StoreError::Open {
                path: path.to_owned(),
                source,
            }
        })?;
    let has_meta: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta')",
        [],
        |r| r.get(0),
    )?;
    if has_meta {
        meta::epoch(&conn)
    } else {
        Ok(0)
    }
}

/// Installs the backup `from` as the store at `path` and raises its epoch (see the
/// module doc); `now_s` is the wall clock, seconds since the Unix epoch.
pub(super) fn recover(path: &Path, from: &Path, now_s: u32) -> Result<Recovered> {
    let _lock = lock_exclusive(path)?;
    let replaced_epoch = if path.exists() {
        epoch_of_file(path)?
    } else {
        0
    };
    let tmp = with_suffix(path, ".recover");
    let _ = std::fs::remove_file(&tmp);
    for stale in [with_suffix(&tmp, "-wal"), with_suffix(&tmp, "-shm")] {
        let _ = std::fs::remove_file(stale);
    }
    schema::create_private(&tmp).map_err(io(&tmp))?;
    std::fs::copy(from, &tmp).map_err(io(from))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(io(&tmp))?;
    }
    let recovered = {
        let mut conn = Connection::open(&tmp).map_err(|source| StoreError::Open {
            path: from.to_owned(),
            source,
        })?;
        let version = schema::set_up(&mut conn).map_err(|source| StoreError::Open {
            path: from.to_owned(),
            source,
        })?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew(version));
        }
        let previous_epoch = meta::epoch(&conn)?.max(replaced_epoch);
        let epoch = crate::epoch::recovered_epoch(previous_epoch, now_s);
        meta::set_epoch(&conn, epoch)?;
        // Fold the WAL into the file: what is renamed is the whole store.
        conn.pragma_update_and_check(None, "journal_mode", "DELETE", |r| r.get::<_, String>(0))?;
        Recovered {
            previous_epoch,
            epoch,
            first_generation: crate::epoch::first_of(epoch),
        }
    };
    File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io(&tmp))?;
    // No process has the store open (the lock): its WAL belongs to the replaced file.
    for old in [with_suffix(path, "-wal"), with_suffix(path, "-shm")] {
        match std::fs::remove_file(&old) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&old)(e)),
        }
    }
    std::fs::rename(&tmp, path).map_err(io(path))?;
    sync_dir_of(path)?;
    Ok(recovered)
}
