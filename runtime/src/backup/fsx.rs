//! File helpers of the backup engine: durable writes in `BACKUPDIR`, and no-follow
//! operations inside a partition that extend `partition::at`.
//!
//! Contract:
//! - [`write_durable`] replaces a file whole: a uniquely named temporary beside it,
//!   written, fsynced, renamed over, then the directory fsynced. A crash leaves the old
//!   file or the new one, never a mix (a stray temporary at worst).
//! - The `*_at` functions take an open directory and one path component, like
//!   `partition::at`, and never follow a symlink at that component.
//! - [`remove_tree_at`] removes a whole tree holding one directory handle at a time
//!   (the way back up is the physical `..`), so neither its depth nor its width costs
//!   memory or descriptors beyond a stack of names.

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::unistd::UnlinkatFlags;

use crate::partition::at;

/// A name no other temporary of this process has: `.<stem>.<pid>.<n>.tmp`.
pub fn tmp_name(stem: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!(".{stem}.{}.{n}.tmp", std::process::id())
}

/// Whether `name` is one of [`tmp_name`]'s.
pub fn is_tmp_name(name: &OsStr) -> bool {
    let b = name.as_bytes();
    b.starts_with(b".") && b.ends_with(b".tmp")
}

/// Replaces `path` with `data` durably (see the module doc); mode 0600.
///
/// # Errors
///
/// I/O; the temporary is removed.
pub fn write_durable(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = parent(path);
    let stem = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(tmp_name(&stem));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    sync_dir(dir)
}

/// Renames the finished file `tmp` to `path` after fsyncing it, then fsyncs the directory.
///
/// # Errors
///
/// I/O.
pub fn commit_file(file: &File, tmp: &Path, path: &Path) -> io::Result<()> {
    file.sync_all()?;
    std::fs::rename(tmp, path)?;
    sync_dir(parent(path))
}

fn parent(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}

/// fsyncs the directory `dir` (its entries: names created, renamed, removed).
///
/// # Errors
///
/// I/O.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Makes `dir` (and its parents) if missing, with mode `mode` on the last.
///
/// # Errors
///
/// I/O.
pub fn make_dir(dir: &Path, mode: u32) -> io::Result<()> {
    match std::fs::create_dir(dir) {
        Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        }
        Err(e) => Err(e),
    }
}

/// Reads `path` whole if it holds at most `max` bytes (`InvalidData` if more).
///
/// # Errors
///
/// I/O (`NotFound` if absent); a file over `max`.
pub fn read_at_most(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let f = File::open(path)?;
    let mut buf = Vec::new();
    f.take(max.saturating_add(1)).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: larger than {max} bytes", path.display()),
        ));
    }
    Ok(buf)
}

/// The target of the symlink `name` in `dir`.
///
/// # Errors
///
/// I/O; `EINVAL` if it is not a symlink.
pub fn readlink_at(dir: &File, name: &OsStr) -> io::Result<Vec<u8>> {
    check(name)?;
    nix::fcntl::readlinkat(Some(dir.as_raw_fd()), name)
        .map(OsString::into_vec)
        .map_err(io::Error::from)
}

/// Makes the symlink `name` in `dir` pointing at `target`.
///
/// # Errors
///
/// I/O (`AlreadyExists`).
pub fn symlink_at(target: &[u8], dir: &File, name: &OsStr) -> io::Result<()> {
    check(name)?;
    nix::unistd::symlinkat(OsStr::from_bytes(target), Some(dir.as_raw_fd()), name)
        .map_err(io::Error::from)
}

/// Renames `from` in `from_dir` to `to` in `to_dir` (same file system).
///
/// # Errors
///
/// I/O.
pub fn rename_between(from_dir: &File, from: &OsStr, to_dir: &File, to: &OsStr) -> io::Result<()> {
    check(from)?;
    check(to)?;
    nix::fcntl::renameat(
        Some(from_dir.as_raw_fd()),
        from,
        Some(to_dir.as_raw_fd()),
        to,
    )
    .map_err(io::Error::from)
}

/// Removes the empty directory `name` in `dir`.
///
/// # Errors
///
/// I/O.
pub fn rmdir_at(dir: &File, name: &OsStr) -> io::Result<()> {
    check(name)?;
    nix::unistd::unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::RemoveDir)
        .map_err(io::Error::from)
}

/// Creates the regular file `name` in `dir` (must not exist), for writing, mode `mode`.
///
/// # Errors
///
/// I/O (`AlreadyExists`).
pub fn create_at(dir: &File, name: &OsStr, mode: u32) -> io::Result<File> {
    at::open_file_at(
        dir,
        name,
        OpenOptions::new().write(true).create_new(true).mode(mode),
    )
}

fn check(name: &OsStr) -> io::Result<()> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a single path component",
        ));
    }
    Ok(())
}

/// Removes `name` in `dir` and, if it is a directory, everything under it, never
/// following a symlink. Absent is not an error. Directories we own but may not write
/// (mode 0555) are opened up first.
///
/// # Errors
///
/// I/O.
pub fn remove_tree_at(dir: &File, name: &OsStr) -> io::Result<()> {
    let meta = match at::lstat_at(dir, name) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return at::unlink_at(dir, name);
    }
    // Names from `dir` down to the directory being emptied; one handle at a time.
    let mut names: Vec<OsString> = vec![name.to_owned()];
    let mut cur = open_writable_dir(dir, name)?;
    loop {
        let mut descended = false;
        for entry in at::read_dir(&cur)? {
            let entry = entry?;
            let n = entry.file_name();
            match at::lstat_at(&cur, &n) {
                Ok(m) if m.is_dir() => {
                    cur = open_writable_dir(&cur, &n)?;
                    names.push(n);
                    descended = true;
                    break;
                }
                Ok(_) => at::unlink_at(&cur, &n)?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        if descended {
            continue;
        }
        // `cur` is empty: go up and remove it.
        let Some(done) = names.pop() else {
            break;
        };
        if names.is_empty() {
            return rmdir_at(dir, &done);
        }
        cur = at::open_dir(&PathBuf::from(format!(
            "/proc/self/fd/{}/..",
            cur.as_raw_fd()
        )))?;
        rmdir_at(&cur, &done)?;
    }
    Ok(())
}

fn open_writable_dir(dir: &File, name: &OsStr) -> io::Result<File> {
    let d = at::open_dir_at(dir, name)?;
    let mode = d.metadata()?.permissions().mode();
    if mode & 0o700 != 0o700 {
        // Ours but closed to us (a restored 0555 directory); as root this is moot.
        let _ = d.set_permissions(std::fs::Permissions::from_mode(mode | 0o700));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn remove_tree_at_removes_deep_trees_and_never_follows_links() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), b"x").unwrap();
        let base = tmp.path().join("t");
        let mut deep = base.clone();
        for i in 0..100 {
            deep = deep.join(format!("d{i}"));
        }
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(deep.join("f"), b"x").unwrap();
        symlink(&outside, base.join("d0/link")).unwrap();
        std::fs::create_dir(base.join("ro")).unwrap();
        std::fs::write(base.join("ro/f"), b"x").unwrap();
        std::fs::set_permissions(base.join("ro"), std::fs::Permissions::from_mode(0o555)).unwrap();
        let d = at::open_dir(tmp.path()).unwrap();
        remove_tree_at(&d, OsStr::new("t")).unwrap();
        assert!(!base.exists());
        assert!(outside.join("keep").exists());
        remove_tree_at(&d, OsStr::new("t")).unwrap();
    }

    #[test]
    fn write_durable_replaces_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("f");
        write_durable(&p, b"one").unwrap();
        write_durable(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
        assert_eq!(read_at_most(&p, 3).unwrap(), b"two");
        assert!(read_at_most(&p, 2).is_err());
    }
}
