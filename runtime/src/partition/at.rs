//! Directory-relative file operations that never follow a symlink at the last component.
//!
//! Contract: every function takes an open directory (a [`File`] opened with
//! [`open_dir`] or [`open_dir_at`]) and a single path component `name` (no `/`, not
//! `.` or `..`, else `InvalidInput`). The directory is named by its descriptor, so an
//! instance that swaps one of its directories for a symlink between a check and a use
//! cannot redirect the operation out of its partition. Directories (and files read by
//! [`open_regular_at`]) are opened by `openat(2)` on the descriptor; files opened with
//! caller-given [`OpenOptions`] through `/proc/self/fd/<fd>/<name>` (the safe way to
//! `openat(2)` into a `std::fs::File` with them); a node always has `/proc` mounted.
//!
//! [`open_dir_walk`] opens a whole path one component at a time and follows a symlink
//! only where nobody but root (or the daemon's own user) could have planted it; and
//! [`open_regular_at`] opens a file for reading only if it is a regular file, without
//! blocking on a FIFO.
//!
//! Used by [`crate::partition`], [`crate::logfile`] and the daemon's connection files.

use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Component, Path, PathBuf};

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

/// `openat(2)` of the single component `name` inside `dir`, close-on-exec.
fn openat(dir: &File, name: &OsStr, flags: OFlag) -> io::Result<File> {
    use std::os::unix::io::FromRawFd;
    check_name(name)?;
    let fd = nix::fcntl::openat(
        Some(dir.as_raw_fd()),
        name,
        flags | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)?;
    // SAFETY: `openat` returned a fresh descriptor that nothing else owns.
    #[allow(unsafe_code)]
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Opens the directory `name` inside `dir`, never following a symlink. By `openat(2)`
/// on the descriptor: a partition's start opens a dozen directories, and a path
/// through `/proc/self/fd` costs a procfs lookup each.
pub(crate) fn open_dir_at(dir: &File, name: &OsStr) -> io::Result<File> {
    openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
    )
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

/// Opens `name` inside `dir` read-only, never following a symlink and never blocking
/// (`O_NONBLOCK`: a FIFO opens at once), and returns it only if the opened file is a
/// regular file (checked on the descriptor, so it cannot be swapped after the check).
pub(crate) fn open_regular_at(dir: &File, name: &OsStr) -> io::Result<File> {
    let file = openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK,
    )?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    Ok(file)
}

/// Reads at most `max` bytes of `file`; `Ok(None)` if it holds more (at most `max + 1`
/// bytes are ever read, however the file grows meanwhile).
pub(crate) fn read_bounded(file: &File, max: u64) -> io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let mut buf = Vec::new();
    file.take(max.saturating_add(1)).read_to_end(&mut buf)?;
    Ok((buf.len() as u64 <= max).then_some(buf))
}

/// Most symlinks [`open_dir_walk`] follows in one path (as the kernel's `MAXSYMLINKS`).
const MAX_LINKS: usize = 40;

/// Whether a symlink found in the directory `dir` may be followed: only if nobody but
/// root or this process's user can have put it there (the directory is owned by one of
/// them and not writable by its group or others).
fn links_trusted_in(dir: &File) -> io::Result<bool> {
    let m = dir.metadata()?;
    let me = nix::unistd::geteuid().as_raw();
    Ok((m.uid() == 0 || m.uid() == me) && m.mode() & 0o022 == 0)
}

/// Opens the directory at `path` one component at a time, each with `O_NOFOLLOW`. A
/// symlink is followed only in a directory whose entries only root or this process's
/// user can change (see [`links_trusted_in`]), so the state directory may sit behind a
/// symlink the operator made, while a symlink planted anywhere inside a partition (owned
/// by the partition's uid) fails with `ELOOP`. Relative paths start at the working
/// directory.
pub(crate) fn open_dir_walk(path: &Path) -> io::Result<File> {
    let mut dir = if path.is_absolute() {
        open_root()?
    } else {
        open_dir(Path::new("."))?
    };
    // Components still to walk, the next one last.
    let mut todo: Vec<OsString> = Vec::new();
    push_components(&mut todo, path);
    let mut links = 0;
    while let Some(c) = todo.pop() {
        if c == ".." {
            // The physical parent, as `openat(fd, "..")`; `..` is never a symlink.
            dir = open_dir(&PathBuf::from(format!(
                "/proc/self/fd/{}/..",
                dir.as_raw_fd()
            )))?;
            continue;
        }
        match open_dir_at(&dir, &c) {
            Ok(d) => {
                dir = d;
                continue;
            }
            Err(e) if is_errno(&e, Errno::ELOOP) || is_errno(&e, Errno::ENOTDIR) => {
                if !lstat_at(&dir, &c)?.file_type().is_symlink() {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
        // A symlink: follow it only when it was planted by someone trusted.
        links += 1;
        if links > MAX_LINKS || !links_trusted_in(&dir)? {
            return Err(io::Error::from_raw_os_error(Errno::ELOOP as i32));
        }
        let target = std::fs::read_link(proc_path(&dir, &c)?)?;
        if target.is_absolute() {
            dir = open_root()?;
        }
        push_components(&mut todo, &target);
    }
    Ok(dir)
}

/// The process's root directory, through `/proc/self/root` (the kernel's own link to
/// it), else `/`. On a board both are the same directory; under qemu-user with a
/// sysroot (`-L`, how the ARM tests run) a plain `/` is rewritten to the sysroot, and a
/// walk from it would never find the real path.
fn open_root() -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(OFlag::O_DIRECTORY.bits())
        .open("/proc/self/root")
        .or_else(|_| open_dir(Path::new("/")))
}

/// Pushes the normal and `..` components of `path` on `todo`, first component last.
fn push_components(todo: &mut Vec<OsString>, path: &Path) {
    let parts: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect();
    todo.extend(parts.into_iter().rev());
}

/// Whether `e` is this errno.
pub(crate) fn is_errno(e: &io::Error, errno: Errno) -> bool {
    e.raw_os_error() == Some(errno as i32)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::fs::{symlink, PermissionsExt};

    use super::*;

    fn is_eloop(e: &io::Error) -> bool {
        is_errno(e, Errno::ELOOP)
    }

    #[test]
    fn open_regular_at_refuses_fifos_links_and_devices_without_blocking() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = open_dir(tmp.path()).unwrap();
        std::fs::write(tmp.path().join("ok"), b"{}").unwrap();
        let f = open_regular_at(&dir, OsStr::new("ok")).unwrap();
        assert_eq!(read_bounded(&f, 2).unwrap().unwrap(), b"{}");

        // A FIFO with no writer: a blocking open would hang this test forever.
        nix::unistd::mkfifo(&tmp.path().join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        let e = open_regular_at(&dir, OsStr::new("fifo")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");

        symlink("/dev/zero", tmp.path().join("zero")).unwrap();
        assert!(is_eloop(
            &open_regular_at(&dir, OsStr::new("zero")).unwrap_err()
        ));
        symlink(tmp.path().join("ok"), tmp.path().join("link")).unwrap();
        assert!(is_eloop(
            &open_regular_at(&dir, OsStr::new("link")).unwrap_err()
        ));

        let dev = open_dir(Path::new("/dev")).unwrap();
        let e = open_regular_at(&dev, OsStr::new("zero")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        assert!(open_regular_at(&dir, OsStr::new("missing")).is_err());
        assert!(open_regular_at(&dir, OsStr::new("../ok")).is_err());
    }

    #[test]
    fn read_bounded_reads_at_most_one_byte_over_the_limit() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("f");
        std::fs::write(&p, vec![b'x'; 10]).unwrap();
        let f = File::open(&p).unwrap();
        assert_eq!(read_bounded(&f, 10).unwrap().unwrap().len(), 10);
        let f = File::open(&p).unwrap();
        assert!(read_bounded(&f, 9).unwrap().is_none());
        // An endless file (as one that keeps growing) ends the read at the bound.
        let zero = File::open("/dev/zero").unwrap();
        assert!(read_bounded(&zero, 64 * 1024).unwrap().is_none());
    }

    #[test]
    fn open_dir_walk_follows_only_links_nobody_else_could_plant() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        std::fs::create_dir_all(base.join("real/log")).unwrap();
        std::fs::create_dir_all(base.join("outside/log")).unwrap();
        std::fs::write(base.join("outside/log/marker"), b"").unwrap();
        // A directory others may write: its links were possibly planted by them.
        let part = base.join("part");
        std::fs::create_dir(&part).unwrap();
        std::fs::set_permissions(&part, std::fs::Permissions::from_mode(0o777)).unwrap();
        symlink(base.join("outside"), part.join("var")).unwrap();
        symlink("../outside", part.join("rel")).unwrap();
        std::fs::create_dir(part.join("plain")).unwrap();

        let walked = |p: &Path| open_dir_walk(p).map(|d| d.metadata().unwrap().ino());
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        assert!(is_eloop(&walked(&part.join("var/log")).unwrap_err()));
        assert!(is_eloop(&walked(&part.join("rel/log")).unwrap_err()));
        assert!(is_eloop(&walked(&part.join("var")).unwrap_err()));
        assert_eq!(
            walked(&part.join("plain")).unwrap(),
            ino(&part.join("plain"))
        );
        assert_eq!(
            walked(&part.join("plain/../plain")).unwrap(),
            ino(&part.join("plain"))
        );
        // A link in a directory only we can write is the operator's: followed.
        symlink(base.join("real"), base.join("state")).unwrap();
        symlink("real", base.join("rstate")).unwrap();
        assert_eq!(
            walked(&base.join("state/log")).unwrap(),
            ino(&base.join("real/log"))
        );
        assert_eq!(
            walked(&base.join("rstate/log")).unwrap(),
            ino(&base.join("real/log"))
        );
        // A file where a directory is expected.
        std::fs::write(base.join("file"), b"").unwrap();
        assert!(is_errno(
            &walked(&base.join("file")).unwrap_err(),
            Errno::ENOTDIR
        ));
        // A loop ends.
        symlink("loop", base.join("loop")).unwrap();
        assert!(is_eloop(&walked(&base.join("loop")).unwrap_err()));
    }
}
