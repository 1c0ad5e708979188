//! A size-rotated log file for an instance's stdout and stderr, in its partition's
//! `var/log/`.
//!
//! Contract: [`RotatingLog::write_all`] appends (`O_APPEND`). A write that would make
//! the file exceed `max_bytes` first rotates `x.log` → `x.log.1` → … → `x.log.<keep>`
//! (the oldest is dropped) and continues in a fresh `x.log`; a single write larger than
//! `max_bytes` is split, so no file ever exceeds `max_bytes`. A full disk is the typed
//! [`LogError::NoSpace`]: the caller drops the bytes and rate-limits its own logging;
//! nothing here panics. The directory is opened one component at a time (see
//! [`at::open_dir_walk`]: no symlink the instance could have planted, in its partition
//! or its `var/` or `var/log/`, is followed), held open, and every name in it is opened
//! without following symlinks, because the instance owns `var/log/` and may plant them.
//! [`open_for_reading`] opens a log the same way for `hedge node logs`.
//!
//! Driven by the supervisor's output-pumping task, one `RotatingLog` per instance.

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use crate::partition::at;

/// Most rotated files kept.
pub const KEEP_MAX: usize = 100;

/// Why a log could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The filesystem is full (or the quota is reached); the bytes were dropped.
    #[error("no space left for the log")]
    NoSpace,
    /// A system call failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// The system call (`open`, `write`, `rename`, …).
        op: &'static str,
        /// The path it was made on.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// `open` was given arguments it cannot work with.
    #[error("bad log settings: {0}")]
    BadConfig(&'static str),
}

/// An append-only log file rotated by size.
#[derive(Debug)]
pub struct RotatingLog {
    path: PathBuf,
    dir: File,
    name: OsString,
    max_bytes: u64,
    keep: usize,
    file: Option<File>,
    size: u64,
}

impl RotatingLog {
    /// Opens (or creates, mode 0640) `path` for appending. `max_bytes` must be > 0 and
    /// `keep` (rotated files kept, 0 = none) at most [`KEEP_MAX`]. No component of the
    /// path that someone other than root or this user could have planted may be a
    /// symlink (see [`at::open_dir_walk`]), nor may the file itself.
    pub fn open(path: PathBuf, max_bytes: u64, keep: usize) -> Result<Self, LogError> {
        if max_bytes == 0 {
            return Err(LogError::BadConfig("max_bytes is 0"));
        }
        if keep > KEEP_MAX {
            return Err(LogError::BadConfig("keep is more than 100"));
        }
        let name = path
            .file_name()
            .ok_or(LogError::BadConfig("the path has no file name"))?
            .to_owned();
        let parent = parent_of(&path);
        let dir = at::open_dir_walk(parent).map_err(|e| io_err("open", parent, e))?;
        let mut log = RotatingLog {
            path,
            dir,
            name,
            max_bytes,
            keep,
            file: None,
            size: 0,
        };
        log.reopen()?;
        Ok(log)
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes in the current file, as far as this writer knows.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends `buf`, rotating first whenever the current file would exceed `max_bytes`.
    /// On [`LogError::NoSpace`] the rest of `buf` is dropped.
    pub fn write_all(&mut self, buf: &[u8]) -> Result<(), LogError> {
        let mut rest = buf;
        while !rest.is_empty() {
            let room = self.max_bytes.saturating_sub(self.size);
            if (rest.len() as u64) > room && self.size > 0 {
                self.rotate()?;
                continue;
            }
            // Here either all of `rest` fits, or the file is empty and `room == max_bytes`.
            let n = usize::try_from(room).map_or(rest.len(), |r| r.min(rest.len()));
            let (chunk, tail) = rest.split_at(n);
            self.append(chunk)?;
            rest = tail;
        }
        Ok(())
    }

    fn append(&mut self, chunk: &[u8]) -> Result<(), LogError> {
        if self.file.is_none() {
            self.reopen()?;
        }
        let Some(file) = self.file.as_mut() else {
            return Err(LogError::BadConfig("log file not open"));
        };
        match file.write_all(chunk) {
            Ok(()) => {
                self.size += chunk.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Part may have been written: learn the true size again.
                if let Ok(m) = file.metadata() {
                    self.size = m.len();
                }
                Err(io_err("write", &self.path, e))
            }
        }
    }

    /// Shifts `x.log.<i>` to `x.log.<i+1>` (dropping the oldest), `x.log` to `x.log.1`,
    /// and opens a fresh `x.log`.
    fn rotate(&mut self) -> Result<(), LogError> {
        self.file = None;
        for i in (1..self.keep).rev() {
            self.rename(&self.numbered(i), &self.numbered(i + 1))?;
        }
        if self.keep > 0 {
            self.rename(&self.name, &self.numbered(1))?;
        } else {
            match at::unlink_at(&self.dir, &self.name) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove", &self.path, e)),
            }
        }
        self.reopen()
    }

    fn rename(&self, from: &OsStr, to: &OsStr) -> Result<(), LogError> {
        match at::rename_at(&self.dir, from, to) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("rotate", &self.path.with_file_name(from), e)),
        }
    }

    fn numbered(&self, i: usize) -> OsString {
        let mut n = self.name.clone();
        n.push(format!(".{i}"));
        n
    }

    fn reopen(&mut self) -> Result<(), LogError> {
        let file = at::open_file_at(
            &self.dir,
            &self.name,
            OpenOptions::new().append(true).create(true).mode(0o640),
        )
        .map_err(|e| io_err("open", &self.path, e))?;
        self.size = file
            .metadata()
            .map_err(|e| io_err("stat", &self.path, e))?
            .len();
        self.file = Some(file);
        Ok(())
    }
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Opens the log at `path` for reading, as [`RotatingLog::open`] walks it: no planted
/// symlink is followed, and only a regular file is opened (never blocking on a FIFO).
pub fn open_for_reading(path: &Path) -> io::Result<File> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"))?;
    let dir = at::open_dir_walk(parent_of(path))?;
    let file = at::open_regular_at(&dir, name)?;
    // Reads of a regular file do not block; keep the descriptor in blocking mode anyway.
    let flags = nix::fcntl::fcntl(file.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) & !nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(file.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))?;
    Ok(file)
}

fn io_err(op: &'static str, path: &Path, source: io::Error) -> LogError {
    if at::is_errno(&source, Errno::ENOSPC) || at::is_errno(&source, Errno::EDQUOT) {
        return LogError::NoSpace;
    }
    LogError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::fs::symlink;

    use super::*;

    fn sizes(dir: &Path) -> Vec<(String, u64)> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().into_string().unwrap(),
                    e.metadata().unwrap().len(),
                )
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn appends_and_reopens_without_rotating() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("app.log");
        let mut log = RotatingLog::open(p.clone(), 100, 3).unwrap();
        log.write_all(b"hello\n").unwrap();
        drop(log);
        let mut log = RotatingLog::open(p.clone(), 100, 3).unwrap();
        assert_eq!(log.size(), 6);
        log.write_all(b"world\n").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"hello\nworld\n");
        assert_eq!(sizes(tmp.path()), vec![("app.log".into(), 12)]);
    }

    #[test]
    fn rotates_keeping_at_most_keep_files() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("app.log");
        let mut log = RotatingLog::open(p.clone(), 100, 3).unwrap();
        // 40-byte lines: two fit in a file, the third rotates.
        for i in 0..11u8 {
            log.write_all(&[b'a' + i; 40]).unwrap();
        }
        assert_eq!(
            sizes(tmp.path()),
            vec![
                ("app.log".into(), 40),
                ("app.log.1".into(), 80),
                ("app.log.2".into(), 80),
                ("app.log.3".into(), 80),
            ]
        );
        // Newest in app.log, the next older in app.log.1, …; the oldest two files dropped.
        assert_eq!(std::fs::read(&p).unwrap(), vec![b'k'; 40]);
        let one = std::fs::read(tmp.path().join("app.log.1")).unwrap();
        assert_eq!(&one[..40], &[b'i'; 40]);
        let three = std::fs::read(tmp.path().join("app.log.3")).unwrap();
        assert_eq!(&three[..40], &[b'e'; 40]);
    }

    #[test]
    fn large_write_is_split_and_no_file_exceeds_max() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = RotatingLog::open(tmp.path().join("x.log"), 100, 5).unwrap();
        log.write_all(&[b'z'; 10]).unwrap();
        log.write_all(&[b'y'; 250]).unwrap();
        assert_eq!(
            sizes(tmp.path()),
            vec![
                ("x.log".into(), 50),
                ("x.log.1".into(), 100),
                ("x.log.2".into(), 100),
                ("x.log.3".into(), 10),
            ]
        );
    }

    #[test]
    fn keep_zero_truncates() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = RotatingLog::open(tmp.path().join("x.log"), 10, 0).unwrap();
        log.write_all(b"12345678").unwrap();
        log.write_all(b"abc").unwrap();
        assert_eq!(sizes(tmp.path()), vec![("x.log".into(), 3)]);
    }

    #[test]
    fn refuses_bad_settings_and_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("x.log");
        assert!(matches!(
            RotatingLog::open(p.clone(), 0, 1),
            Err(LogError::BadConfig(_))
        ));
        assert!(matches!(
            RotatingLog::open(p.clone(), 1, 1000),
            Err(LogError::BadConfig(_))
        ));
        assert!(matches!(
            RotatingLog::open(PathBuf::from("/"), 1, 1),
            Err(LogError::BadConfig(_))
        ));
        let target = tmp.path().join("target");
        symlink(&target, &p).unwrap();
        assert!(matches!(
            RotatingLog::open(p, 10, 1),
            Err(LogError::Io { .. })
        ));
        assert!(!target.exists());
    }

    #[test]
    fn full_disk_is_no_space() {
        // /dev/full fails every write with ENOSPC.
        let Ok(mut log) = RotatingLog::open(PathBuf::from("/dev/full"), 1 << 20, 1) else {
            return;
        };
        assert!(matches!(log.write_all(b"x"), Err(LogError::NoSpace)));
        assert!(matches!(log.write_all(b"y"), Err(LogError::NoSpace)));
    }

    #[test]
    fn no_planted_directory_link_is_followed() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        // A partition its instance can write (here: anyone), with `var -> outside`.
        let part = tmp.path().join("part");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(outside.join("log")).unwrap();
        std::fs::create_dir(&part).unwrap();
        std::fs::set_permissions(&part, std::fs::Permissions::from_mode(0o777)).unwrap();
        symlink(&outside, part.join("var")).unwrap();
        let log = part.join("var/log/x.log");
        assert!(matches!(
            RotatingLog::open(log.clone(), 10, 1),
            Err(LogError::Io { .. })
        ));
        assert!(!outside.join("log/x.log").exists());
        std::fs::write(outside.join("log/x.log"), b"secret").unwrap();
        assert!(open_for_reading(&log).is_err());

        // The same tree without the link works, for writing and for reading.
        std::fs::remove_file(part.join("var")).unwrap();
        std::fs::create_dir_all(part.join("var/log")).unwrap();
        let mut w = RotatingLog::open(log.clone(), 100, 1).unwrap();
        w.write_all(b"hello").unwrap();
        let mut text = String::new();
        io::Read::read_to_string(&mut open_for_reading(&log).unwrap(), &mut text).unwrap();
        assert_eq!(text, "hello");

        // The log file itself a link, or a FIFO: not opened for reading.
        std::fs::remove_file(&log).unwrap();
        symlink(outside.join("log/x.log"), &log).unwrap();
        assert!(open_for_reading(&log).is_err());
        std::fs::remove_file(&log).unwrap();
        nix::unistd::mkfifo(&log, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(open_for_reading(&log).is_err());
    }
}
