//! The chunk store: `BACKUPDIR/chunks/<2 hex>/<64 hex>`, one file of ciphertext per
//! chunk, named by its id. The directory is the index: whether a chunk is stored is
//! one `lstat`, and nothing about the store is ever held in memory.
//!
//! Contract: a chunk file appears only whole (written to `BACKUPDIR/tmp`, fsynced,
//! renamed in) and is never rewritten: [`write_new`] writes only an absent chunk
//! (that absence is what makes a snapshot's `new_bytes`). [`put_checked`] stores a
//! chunk fetched from elsewhere only if SHA-256 of it is its name; [`read_verified`]
//! returns a chunk's plaintext only if it passes [`super::crypto::open`]. An existing
//! chunk is trusted when deduplicating (not re-read): damage at rest is found by the
//! restore, which checks every chunk it reads.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use hedge_wire::backup::{ChunkRef, SnapshotId, MAX_CHUNK};

use super::{crypto, fsx, BackupError, ChunkId};

/// Largest chunk file: a plaintext of the wire's `MAX_CHUNK` and its tag.
pub const MAX_CIPHERTEXT: u64 = MAX_CHUNK as u64 + hedge_common::aead::TAG_LEN as u64;

/// The chunk store's directory in `BACKUPDIR`.
pub fn chunks_dir(dir: &Path) -> PathBuf {
    dir.join("chunks")
}

/// The file of chunk `id`.
pub fn path(dir: &Path, id: &ChunkId) -> PathBuf {
    let hex = hedge_common::hex::encode(id);
    chunks_dir(dir).join(&hex[..2]).join(hex)
}

/// Whether chunk `id` is stored.
///
/// # Errors
///
/// I/O other than its absence.
pub fn exists(dir: &Path, id: &ChunkId) -> Result<bool, BackupError> {
    let p = path(dir, id);
    match std::fs::symlink_metadata(&p) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(BackupError::io(format!("{}", p.display()), e)),
    }
}

/// The prefix directories a batch of writes touched, to fsync once at its end.
pub struct Touched([bool; 256]);

impl Default for Touched {
    fn default() -> Self {
        Touched([false; 256])
    }
}

impl Touched {
    /// fsyncs every prefix directory written since the last call.
    ///
    /// # Errors
    ///
    /// I/O.
    pub fn sync(&mut self, dir: &Path) -> Result<(), BackupError> {
        for (i, t) in self.0.iter_mut().enumerate() {
            if std::mem::take(t) {
                let d = chunks_dir(dir).join(format!("{i:02x}"));
                fsx::sync_dir(&d).map_err(|e| BackupError::io(format!("{}", d.display()), e))?;
            }
        }
        Ok(())
    }
}

/// Stores `ciphertext` as chunk `id` unless it is there already; whether it wrote it.
/// The file is fsynced; its directory is marked in `touched` for the caller to sync.
///
/// # Errors
///
/// I/O.
pub fn write_new(
    dir: &Path,
    id: &ChunkId,
    ciphertext: &[u8],
    touched: &mut Touched,
) -> Result<bool, BackupError> {
    if exists(dir, id)? {
        return Ok(false);
    }
    let dest = path(dir, id);
    let err = |what: &Path| {
        let what = what.display().to_string();
        move |e| BackupError::io(what, e)
    };
    if let Some(prefix) = dest.parent() {
        fsx::make_dir(prefix, 0o700).map_err(err(prefix))?;
    }
    let tmp = dir.join("tmp").join(fsx::tmp_name("chunk"));
    let result = (|| {
        let mut f: File = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(ciphertext)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &dest)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err(&dest))?;
    touched.0[usize::from(id[0])] = true;
    Ok(true)
}

/// Stores a chunk fetched from elsewhere after checking it is what its name says,
/// durably (directory fsynced).
///
/// # Errors
///
/// [`BackupError::Damaged`] (no snapshot) if SHA-256(`ciphertext`) is not `id` or it
/// is larger than any chunk; I/O.
pub fn put_checked(dir: &Path, id: &ChunkId, ciphertext: &[u8]) -> Result<(), BackupError> {
    if ciphertext.len() as u64 > MAX_CIPHERTEXT || crypto::id_of(ciphertext) != *id {
        return Err(BackupError::Damaged {
            snapshot: None,
            chunk: *id,
        });
    }
    let mut touched = Touched::default();
    write_new(dir, id, ciphertext, &mut touched)?;
    touched.sync(dir)
}

/// Chunk `id`'s ciphertext as stored.
///
/// # Errors
///
/// [`BackupError::NoChunk`]; I/O (a file larger than any chunk is `InvalidData`).
pub fn read(dir: &Path, id: &ChunkId) -> Result<Vec<u8>, BackupError> {
    let p = path(dir, id);
    fsx::read_at_most(&p, MAX_CIPHERTEXT).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            BackupError::NoChunk(*id)
        } else {
            BackupError::io(p.display().to_string(), e)
        }
    })
}

/// The plaintext of chunk `r` of `snapshot`, checked against its id, key and length.
///
/// # Errors
///
/// [`BackupError::Missing`] if absent, [`BackupError::Damaged`] if a check fails
/// (a file larger than any chunk included); I/O.
pub fn read_verified(
    dir: &Path,
    r: &ChunkRef,
    snapshot: SnapshotId,
) -> Result<Vec<u8>, BackupError> {
    let damaged = || BackupError::Damaged {
        snapshot: Some(snapshot),
        chunk: r.id,
    };
    let ciphertext = match read(dir, &r.id) {
        Ok(c) => c,
        Err(BackupError::NoChunk(_)) => {
            return Err(BackupError::Missing {
                snapshot,
                chunk: r.id,
            })
        }
        Err(BackupError::Io { source, .. }) if source.kind() == io::ErrorKind::InvalidData => {
            return Err(damaged())
        }
        Err(e) => return Err(e),
    };
    crypto::open(r, &ciphertext).map_err(|_| damaged())
}
