//! Directory-relative file operations that never follow a symlink at the last component.
//!
//! Contract: every function takes an open directory (a [`File`] opened with
//! [`open_dir`] or [`open_dir_at`]) and a single path component `name` (no `/`, not
//! `.` or `..`, else `InvalidInput`). The directory is named by its descriptor, so an
//! instance that swaps one of its directories for a symlink between a check and a use
//! cannot redirect the operation out of its partition. Files are opened through
//! `/proc/self/fd/<fd>/<name>` (the safe way to `openat(2)` into a `std::fs::File`
//! without `unsafe`); a node always has `/proc` mounted.
//!
//! Used by [`crate::partition`] and [`crate::logfile`].

use std::ffi::OsStr;
use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Uid, UnlinkatFlags};

/// `open(2)` flags of a directory handle: never follow a symlink at the last component.
fn dir_flags() -> i32 {
    (OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW).bits()
}

fn check_name(name: &OsStr) -> io::Result<()> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a single path component",
        ));
    }
    Ok(())
}

/// The `/proc` path that names `name` inside the directory open as `dir`.
fn proc_path(dir: &File, name: &OsStr) -> io::Result<PathBuf> {
    check_name(name)?;
    Ok(PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name))
}

/// Opens the directory at `path`; fails with `ENOTDIR` if its last component is a
/// symlink or not a directory (earlier components are followed).
pub(crate) fn open_dir(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(dir_flags())
        .open(path)
}

/// Opens the directory `name` inside `dir`, never following a symlink.
pub(crate) fn open_dir_at(dir: &File, name: &OsStr) -> io::Result<File> {
    open_dir(&proc_path(dir, name)?)
}

/// `lstat(2)` of `name` inside `dir`.
pub(crate) fn lstat_at(dir: &File, name: &OsStr) -> io::Result<Metadata> {
    std::fs::symlink_metadata(proc_path(dir, name)?)
}

/// Creates the directory `name` inside `dir` (mode before umask).
pub(crate) fn mkdir_at(dir: &File, name: &OsStr, mode: u32) -> io::Result<()> {
    check_name(name)?;
    nix::sys::stat::mkdirat(Some(dir.as_raw_fd()), name, Mode::from_bits_truncate(mode))
        .map_err(io::Error::from)
}

/// Opens the file `name` inside `dir` with `opts`, never following a symlink.
pub(crate) fn open_file_at(dir: &File, name: &OsStr, opts: &mut OpenOptions) -> io::Result<File> {
    opts.custom_flags(OFlag::O_NOFOLLOW.bits())
        .open(proc_path(dir, name)?)
}

/// Renames `from` to `to`, both inside `dir`; `to` is replaced (a symlink is replaced, not followed).
pub(crate) fn rename_at(dir: &File, from: &OsStr, to: &OsStr) -> io::Result<()> {
    check_name(from)?;
    check_name(to)?;
    let fd = dir.as_raw_fd();
    nix::fcntl::renameat(Some(fd), from, Some(fd), to).map_err(io::Error::from)
}

/// Removes the non-directory `name` inside `dir`.
pub(crate) fn unlink_at(dir: &File, name: &OsStr) -> io::Result<()> {
    check_name(name)?;
    nix::unistd::unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir)
        .map_err(io::Error::from)
}

/// Changes the owner of `name` inside `dir`; a symlink itself is changed, not its target.
pub(crate) fn lchown_at(dir: &File, name: &OsStr, uid: u32, gid: u32) -> io::Result<()> {
    check_name(name)?;
    nix::unistd::fchownat(
        Some(dir.as_raw_fd()),
        name,
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(io::Error::from)
}

/// The entries of `dir` (without `.` and `..`).
pub(crate) fn read_dir(dir: &File) -> io::Result<std::fs::ReadDir> {
    std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))
}

/// Whether `e` is this errno.
pub(crate) fn is_errno(e: &io::Error, errno: Errno) -> bool {
    e.raw_os_error() == Some(errno as i32)
}
