//! The store's epoch: which life of the node its records belong to.
//!
//! Contract: `meta/epoch` holds a nonzero random u64 (big-endian) and `meta/home` the
//! identity of the database file it was made for (inode number and birth time). At
//! every open, [`settle`] keeps the epoch only when both are present and the file is
//! still the one the epoch was made for; otherwise it draws a new epoch and records the
//! file's identity, before anything is read out of the store:
//! - a new store (first start, wiped state, new SD card) gets a fresh epoch;
//! - a store from before epochs (schema 1) gets one, once, at its first open;
//! - a store copied back from a backup (its files are new files: new inode or birth
//!   time) cannot prove it is the latest copy of its life, so it starts a new one.
//!
//! Sequence numbers are unique only within an epoch; the master keys records by
//! `(node, epoch, seq)`, so a new life never collides with an old one. The price of a
//! new epoch on a store that still holds records is that records the master may
//! already hold under the old epoch are sent again under the new one: duplicates the
//! master counts (same event digest), never losses. What no local check can see is a
//! bit-for-bit image of the whole filesystem written back (same inode, same birth
//! time): such a clone keeps its epoch, and the master counts its colliding records as
//! conflicts.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rand_core::RngCore;

use super::StoreError;

const EPOCH: &[u8] = b"epoch";
const HOME: &[u8] = b"home";

/// Identity of a file: inode number, and birth time in ns where the filesystem keeps one.
fn identity(file: &Path) -> Result<Vec<u8>, StoreError> {
    let md = std::fs::metadata(file).map_err(sled::Error::Io)?;
    let born = md
        .created()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let mut id = md.ino().to_be_bytes().to_vec();
    id.extend_from_slice(&born.to_be_bytes());
    Ok(id)
}

/// A new nonzero random epoch.
fn draw() -> u64 {
    loop {
        let e = rand_core::OsRng.next_u64();
        if e != 0 {
            return e;
        }
    }
}

/// Returns the store's epoch, making a new one when the store cannot prove it is the
/// copy its epoch was made for (see the module doc). `db_file` is sled's `db` file.
pub(super) fn settle(meta: &sled::Tree, db_file: &Path) -> Result<u64, StoreError> {
    let here = identity(db_file)?;
    let stored = meta
        .get(EPOCH)?
        .map(|v| super::be_u64(&v))
        .filter(|e| *e != 0);
    let home = meta.get(HOME)?;
    if let (Some(epoch), Some(home)) = (stored, &home) {
        if home.as_ref() == here.as_slice() {
            return Ok(epoch);
        }
    }
    let epoch = draw();
    match stored {
        None => tracing::info!(epoch, "store: new epoch (new or pre-epoch store)"),
        Some(old) => tracing::warn!(
            old,
            epoch,
            "store: its files are not the ones its epoch was made for (restored from a \
             backup or copied): starting a new epoch"
        ),
    }
    meta.insert(EPOCH, &epoch.to_be_bytes())?;
    meta.insert(HOME, here)?;
    Ok(epoch)
}
