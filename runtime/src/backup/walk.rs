//! Walking a policy path inside a partition, without ever leaving it.
//!
//! Contract: [`walk_root`] visits the path's tree depth first, each directory before
//! what it holds, in directory order. Every step goes through a directory handle with
//! `O_NOFOLLOW` (`partition::at`): a symlink is reported as a symlink with its
//! target and never followed, even one an instance swaps in for a directory or a file
//! between the `lstat` and the `open` (the open then fails, and the entry is skipped as
//! changed). Only regular files, directories and symlinks are visited; FIFOs, devices
//! and sockets are skipped. A file is read up to the length it had when opened, so one
//! that keeps growing cannot keep the walk going. Permission bits only (`& 0o777`).
//! A path that does not exist, or goes through something that is not a directory, is
//! absent (`Ok(false)`), not an error.
//!
//! Not kept (by design): owners (a restore gives everything to the instance's uid),
//! timestamps, extended attributes, and hard links (each name is its own file; their
//! content deduplicates, so the store holds it once).
//!
//! Bounds: the walk holds one handle and one directory stream per level, at most
//! [`MAX_DEPTH`] levels (deeper is [`BackupError::TooDeep`]), and the current path.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use nix::errno::Errno;

use super::{fsx, BackupError};
use crate::partition::at;

/// Deepest directory nesting a snapshot walks.
pub const MAX_DEPTH: usize = 64;

/// What a walk reports.
pub trait Visit {
    /// A directory (its contents follow).
    ///
    /// # Errors
    ///
    /// Ends the walk.
    fn dir(&mut self, rel: &[u8], mode: u32) -> Result<(), BackupError>;
    /// A regular file, open for reading, `len` bytes to read.
    ///
    /// # Errors
    ///
    /// Ends the walk.
    fn file(&mut self, rel: &[u8], mode: u32, file: File, len: u64) -> Result<(), BackupError>;
    /// A symlink and its target.
    ///
    /// # Errors
    ///
    /// Ends the walk.
    fn symlink(&mut self, rel: &[u8], target: &[u8]) -> Result<(), BackupError>;
}

/// The components of a policy path (`srv`, `var/db`, `./srv/`): plain names.
///
/// # Errors
///
/// [`BackupError::BadPath`] for an absolute path, a `..`, or one that names the
/// partition itself.
pub fn policy_components(path: &str) -> Result<Vec<&str>, BackupError> {
    let bad = || BackupError::BadPath(path.to_owned());
    if path.starts_with('/') || path.contains('\0') {
        return Err(bad());
    }
    let comps: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if comps.is_empty() || comps.contains(&"..") {
        return Err(bad());
    }
    Ok(comps)
}

enum Found {
    Dir(File, u32),
    File(File, u32, u64),
    Symlink(Vec<u8>),
    Skip,
}

/// Opens what `name` in `dir` is, without following it; `Skip` if it vanished,
/// changed type under us, or is not a file, directory or symlink.
fn found(dir: &File, name: &OsStr) -> Result<Found, io::Error> {
    let meta = match at::lstat_at(dir, name) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Found::Skip),
        Err(e) => return Err(e),
    };
    let changed = |e: &io::Error| {
        e.kind() == io::ErrorKind::NotFound
            || at::is_errno(e, Errno::ELOOP)
            || at::is_errno(e, Errno::ENOTDIR)
            || at::is_errno(e, Errno::EINVAL)
            || e.kind() == io::ErrorKind::InvalidData
    };
    let ft = meta.file_type();
    if ft.is_symlink() {
        return match fsx::readlink_at(dir, name) {
            Ok(t) => Ok(Found::Symlink(t)),
            Err(e) if changed(&e) => Ok(Found::Skip),
            Err(e) => Err(e),
        };
    }
    if ft.is_dir() {
        return match at::open_dir_at(dir, name) {
            Ok(d) => {
                let mode = d.metadata()?.permissions().mode() & 0o777;
                Ok(Found::Dir(d, mode))
            }
            Err(e) if changed(&e) => Ok(Found::Skip),
            Err(e) => Err(e),
        };
    }
    if ft.is_file() {
        return match at::open_regular_at(dir, name) {
            Ok(f) => {
                let m = f.metadata()?;
                Ok(Found::File(f, m.mode() & 0o777, m.len()))
            }
            Err(e) if changed(&e) => Ok(Found::Skip),
            Err(e) => Err(e),
        };
    }
    Ok(Found::Skip)
}

struct Frame {
    dir: File,
    entries: std::fs::ReadDir,
    rel_len: usize,
}

/// Walks the policy path `comps` in `partition`; whether it exists.
///
/// # Errors
///
/// I/O on the partition; [`BackupError::TooDeep`]; the visitor's.
pub fn walk_root(
    partition: &File,
    comps: &[&str],
    v: &mut impl Visit,
) -> Result<bool, BackupError> {
    let path = comps.join("/");
    let err = |e| BackupError::io(format!("reading {path}"), e);
    let Some((last, parents)) = comps.split_last() else {
        return Err(BackupError::BadPath(path));
    };
    let mut parent = partition.try_clone().map_err(err)?;
    for c in parents {
        match found(&parent, OsStr::new(c)).map_err(err)? {
            Found::Dir(d, _) => parent = d,
            _ => return Ok(false),
        }
    }
    let (dir, mode) = match found(&parent, OsStr::new(last)).map_err(err)? {
        Found::Skip => return Ok(false),
        Found::Symlink(t) => {
            v.symlink(b"", &t)?;
            return Ok(true);
        }
        Found::File(f, mode, len) => {
            v.file(b"", mode, f, len)?;
            return Ok(true);
        }
        Found::Dir(d, mode) => (d, mode),
    };
    v.dir(b"", mode)?;
    let mut rel: Vec<u8> = Vec::new();
    let entries = at::read_dir(&dir).map_err(err)?;
    let mut stack = vec![Frame {
        dir,
        entries,
        rel_len: 0,
    }];
    while let Some(top) = stack.last_mut() {
        let Some(entry) = top.entries.next() else {
            stack.pop();
            continue;
        };
        let name = entry.map_err(err)?.file_name();
        rel.truncate(top.rel_len);
        if top.rel_len > 0 {
            rel.push(b'/');
        }
        rel.extend_from_slice(name.as_bytes());
        match found(&top.dir, &name).map_err(err)? {
            Found::Skip => {}
            Found::Symlink(t) => v.symlink(&rel, &t)?,
            Found::File(f, mode, len) => v.file(&rel, mode, f, len)?,
            Found::Dir(d, mode) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(BackupError::TooDeep(format!(
                        "{path}/{}",
                        String::from_utf8_lossy(&rel)
                    )));
                }
                v.dir(&rel, mode)?;
                let entries = at::read_dir(&d).map_err(err)?;
                stack.push(Frame {
                    dir: d,
                    entries,
                    rel_len: rel.len(),
                });
            }
        }
    }
    Ok(true)
}
