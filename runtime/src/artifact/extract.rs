//! Safe extraction of a `.tar.gz` artifact into a fresh directory.
//!
//! Contract: [`Checker`] is the pure judge. It sees every archive entry in order
//! ([`Checker::admit`]) and, at the end, the whole tree ([`Checker::finish`]); it refuses
//! absolute paths, any `..` component, paths that are not UTF-8, entries written through
//! a symlink or a file of the archive, duplicates, device, FIFO and other special entries,
//! hard links to anything but a regular file extracted before, symlinks whose target is
//! absolute or, resolved through every symlink of the archive, leaves the tree, and more
//! than [`Limits`] entries or bytes. [`extract`] drives it over a real archive: it creates
//! `dest` (which must not exist) and writes each admitted entry without following any
//! link and without replacing anything; on any refusal or error it removes `dest`
//! (never following symlinks) and writes nothing elsewhere.
//!
//! Modes: directories 0755, files 0644, or 0755 when the archive gave the file any
//! execute bit; never setuid, setgid or sticky. Files belong to whoever runs the node
//! (root when it runs as root), so partitions can read and run them but not change them.
//! Ownership and times from the archive are ignored. Everything written is flushed to
//! disk (`syncfs`) before [`extract`] returns.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Bounds on one archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most entries (of any kind).
    pub max_entries: u64,
    /// Most bytes of file contents, all files together.
    pub max_bytes: u64,
}

impl Default for Limits {
    /// 100 000 entries, 1 GiB.
    fn default() -> Self {
        Limits {
            max_entries: 100_000,
            max_bytes: 1 << 30,
        }
    }
}

/// Longest path in an archive, bytes.
const PATH_MAX: usize = 4096;
/// Longest path component, bytes.
const COMPONENT_MAX: usize = 255;
/// Most symlinks followed while resolving one (as the kernel's 40).
const MAX_HOPS: u32 = 40;

/// Why an archive was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// An entry's path is absolute.
    #[error("absolute path {0:?}")]
    Absolute(String),
    /// An entry's path has a `..` component.
    #[error("path {0:?} has a `..` component")]
    DotDot(String),
    /// An entry's path is not UTF-8, too long, or names the archive root as a non-directory.
    #[error("bad path {0:?}: {1}")]
    BadPath(String, &'static str),
    /// A symlink's target is absolute or leaves the tree.
    #[error("link {path:?} -> {target:?} leaves the tree")]
    LinkEscapes {
        /// The link's path in the archive.
        path: String,
        /// Where it points, as written in the archive.
        target: String,
    },
    /// Resolving a symlink took more than 40 hops.
    #[error("link {0:?}: too many levels of symbolic links")]
    LinkLoop(String),
    /// A hard link to something other than a regular file extracted before it.
    #[error("hard link {path:?} -> {target:?}: not a regular file earlier in the archive")]
    HardLink {
        /// The hard link's path in the archive.
        path: String,
        /// The path it names, which must be a regular file extracted earlier.
        target: String,
    },
    /// An entry under a symlink or a regular file of the archive.
    #[error("{0:?} would be written through a link or below a file")]
    Through(String),
    /// Two entries with one path (directories excepted).
    #[error("{0:?} appears twice")]
    Duplicate(String),
    /// A device, FIFO or other special entry.
    #[error("{path:?} is a {kind}: refused")]
    Special {
        /// The entry's path in the archive.
        path: String,
        /// What it is.
        kind: &'static str,
    },
    /// More entries than [`Limits::max_entries`].
    #[error("more than {0} entries")]
    TooManyEntries(u64),
    /// More bytes than [`Limits::max_bytes`].
    #[error("more than {0} bytes of contents")]
    TooLarge(u64),
    /// The archive does not decode (gzip or tar framing).
    #[error("malformed archive: {0}")]
    Malformed(String),
}

/// An entry's kind as read from its header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawKind<'a> {
    /// A regular file.
    File {
        /// Contents length, bytes.
        size: u64,
        /// Mode bits from the header.
        mode: u32,
    },
    /// A directory (created 0755).
    Dir,
    /// A symbolic link.
    Symlink {
        /// Its target, as stored.
        target: &'a [u8],
    },
    /// A hard link.
    HardLink {
        /// The archive path it links to.
        target: &'a [u8],
    },
    /// A header that describes nothing to write (a PAX global header).
    Meta,
    /// Anything else: character or block device, FIFO, sparse file, unknown type.
    Special(&'static str),
}

/// What [`extract`] must write for an admitted entry; paths are normalised (relative,
/// `/`-separated, no `.`, `..` or empty component).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admitted {
    /// Nothing (the root directory, a meta header).
    Skip,
    /// A directory (with any missing parents).
    Dir(String),
    /// A regular file of `size` bytes, created with `mode`.
    File {
        /// Where, normalised.
        path: String,
        /// Contents length, bytes.
        size: u64,
        /// 0644 or 0755.
        mode: u32,
    },
    /// A symbolic link, checked to stay inside the tree.
    Symlink {
        /// Where, normalised.
        path: String,
        /// Target, as stored (relative).
        target: String,
    },
    /// A hard link to `target`, an earlier regular file.
    HardLink {
        /// Where, normalised.
        path: String,
        /// Normalised target.
        target: String,
    },
}

/// Normalises an archive path: refuses absolute paths, `..`, non-UTF-8 and over-long
/// paths; drops `.` and empty components. The empty string is the archive root.
pub fn normalize(raw: &[u8]) -> Result<String, Refusal> {
    let shown = || String::from_utf8_lossy(&raw[..raw.len().min(256)]).into_owned();
    let s = std::str::from_utf8(raw).map_err(|_| Refusal::BadPath(shown(), "not UTF-8"))?;
    if s.starts_with('/') {
        return Err(Refusal::Absolute(shown()));
    }
    if s.len() > PATH_MAX {
        return Err(Refusal::BadPath(shown(), "longer than 4096 bytes"));
    }
    let mut parts = Vec::new();
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(Refusal::DotDot(shown())),
            c if c.len() > COMPONENT_MAX => {
                return Err(Refusal::BadPath(shown(), "component longer than 255 bytes"))
            }
            c => parts.push(c),
        }
    }
    Ok(parts.join("/"))
}

/// The pure judge of one archive. See the module doc.
#[derive(Debug, Clone)]
pub struct Checker {
    limits: Limits,
    entries: u64,
    bytes: u64,
    dirs: BTreeSet<String>,
    files: BTreeSet<String>,
    links: BTreeMap<String, String>,
}

impl Checker {
    /// A judge for one archive.
    pub fn new(limits: Limits) -> Self {
        Checker {
            limits,
            entries: 0,
            bytes: 0,
            dirs: BTreeSet::new(),
            files: BTreeSet::new(),
            links: BTreeMap::new(),
        }
    }

    /// Judges the next entry.
    pub fn admit(&mut self, raw_path: &[u8], kind: RawKind<'_>) -> Result<Admitted, Refusal> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(Refusal::TooManyEntries(self.limits.max_entries));
        }
        if kind == RawKind::Meta {
            return Ok(Admitted::Skip);
        }
        let path = normalize(raw_path)?;
        if let RawKind::Special(what) = kind {
            return Err(Refusal::Special { path, kind: what });
        }
        if path.is_empty() {
            return match kind {
                RawKind::Dir => Ok(Admitted::Skip),
                _ => Err(Refusal::BadPath(
                    path,
                    "the archive root is not a directory",
                )),
            };
        }
        // Every ancestor must be (or become) a plain directory of the archive.
        let mut ancestor = String::new();
        let comps: Vec<&str> = path.split('/').collect();
        for c in &comps[..comps.len() - 1] {
            if !ancestor.is_empty() {
                ancestor.push('/');
            }
            ancestor.push_str(c);
            if self.links.contains_key(&ancestor) || self.files.contains(&ancestor) {
                return Err(Refusal::Through(path));
            }
        }
        if self.links.contains_key(&path) || self.files.contains(&path) {
            return Err(Refusal::Duplicate(path));
        }
        if self.dirs.contains(&path) && kind != RawKind::Dir {
            return Err(Refusal::Duplicate(path));
        }
        let admitted = match kind {
            RawKind::Dir => Admitted::Dir(path.clone()),
            RawKind::File { size, mode } => {
                self.bytes = self.bytes.saturating_add(size);
                if self.bytes > self.limits.max_bytes {
                    return Err(Refusal::TooLarge(self.limits.max_bytes));
                }
                self.files.insert(path.clone());
                Admitted::File {
                    path: path.clone(),
                    size,
                    mode: if mode & 0o111 != 0 { 0o755 } else { 0o644 },
                }
            }
            RawKind::Symlink { target } => {
                let t = std::str::from_utf8(target)
                    .map_err(|_| Refusal::BadPath(path.clone(), "link target not UTF-8"))?;
                if t.is_empty() || t.len() > PATH_MAX {
                    return Err(Refusal::BadPath(path, "empty or over-long link target"));
                }
                if t.starts_with('/') || lexical_escape(&path, t) {
                    return Err(Refusal::LinkEscapes {
                        path,
                        target: t.to_owned(),
                    });
                }
                self.links.insert(path.clone(), t.to_owned());
                Admitted::Symlink {
                    path: path.clone(),
                    target: t.to_owned(),
                }
            }
            RawKind::HardLink { target } => {
                let t = normalize(target)?;
                if !self.files.contains(&t) {
                    return Err(Refusal::HardLink { path, target: t });
                }
                self.files.insert(path.clone());
                Admitted::HardLink {
                    path: path.clone(),
                    target: t,
                }
            }
            // Returned early above.
            RawKind::Meta | RawKind::Special(_) => return Ok(Admitted::Skip),
        };
        // Parents are created implicitly: they are directories from now on.
        let mut ancestor = String::new();
        for c in &comps[..comps.len() - 1] {
            if !ancestor.is_empty() {
                ancestor.push('/');
            }
            ancestor.push_str(c);
            self.dirs.insert(ancestor.clone());
        }
        if matches!(admitted, Admitted::Dir(_)) {
            self.dirs.insert(path);
        }
        Ok(admitted)
    }

    /// Judges the whole tree once every entry was admitted: each symlink, resolved the way
    /// the kernel would through every symlink of the archive, must stay inside the tree.
    pub fn finish(&self) -> Result<(), Refusal> {
        for (path, target) in &self.links {
            self.resolve(path, target)?;
        }
        Ok(())
    }

    fn resolve(&self, link: &str, target: &str) -> Result<(), Refusal> {
        let escapes = || Refusal::LinkEscapes {
            path: link.to_owned(),
            target: target.to_owned(),
        };
        let mut pos: Vec<&str> = link.split('/').collect();
        pos.pop();
        let mut todo: VecDeque<&str> = target.split('/').collect();
        let mut hops = 0u32;
        while let Some(c) = todo.pop_front() {
            match c {
                "" | "." => {}
                ".." => {
                    pos.pop().ok_or_else(escapes)?;
                }
                c => {
                    pos.push(c);
                    if let Some(t) = self.links.get(&pos.join("/")) {
                        hops += 1;
                        if hops > MAX_HOPS {
                            return Err(Refusal::LinkLoop(link.to_owned()));
                        }
                        if t.starts_with('/') {
                            return Err(escapes());
                        }
                        pos.pop();
                        for part in t.split('/').rev() {
                            todo.push_front(part);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// Whether `target`, taken lexically from the directory of `link`, climbs above the root.
fn lexical_escape(link: &str, target: &str) -> bool {
    // A count of a `&str`'s parts is at most `isize::MAX`: it always fits.
    let mut depth = i64::try_from(link.split('/').count()).unwrap_or(i64::MAX) - 1;
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            _ => depth += 1,
        }
    }
    false
}

/// Why [`extract`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// The archive is unsafe or malformed: nothing was kept.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The node could not write (disk full, permissions): nothing was kept.
    #[error("{op} {path}: {source}")]
    Io {
        /// The system call (`create`, `write`, `symlink`, …).
        op: &'static str,
        /// The path it was made on.
        path: String,
        /// The operating system's error.
        source: io::Error,
    },
}

/// What [`extract`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Entries read from the archive, admitted or skipped.
    pub entries: u64,
    /// Bytes of file contents written.
    pub bytes: u64,
}

/// Counts what the decompressor produces and fails past `max`: bounds the work a gzip
/// bomb can cause, headers and long names included.
struct Bounded<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self
            .left
            .checked_sub(n as u64)
            .ok_or_else(|| io::Error::other(BOUND_EXCEEDED))?;
        Ok(n)
    }
}

const BOUND_EXCEEDED: &str = "decompressed archive exceeds its bound";

/// Extracts the gzip-compressed tar `archive` into `dest`, which must not exist. See the
/// module doc. On error `dest` is gone.
pub fn extract(archive: impl Read, dest: &Path, limits: Limits) -> Result<Summary, ExtractError> {
    std::fs::create_dir(dest).map_err(io_err("create", dest))?;
    let result = extract_into(archive, dest, limits);
    if result.is_err() {
        // remove_dir_all removes symlinks, never follows them.
        if let Err(e) = std::fs::remove_dir_all(dest) {
            tracing::warn!(dir = %dest.display(), error = %e, "cannot remove a refused extraction");
        }
    }
    result
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ExtractError + 'a {
    move |source| ExtractError::Io {
        op,
        path: path.display().to_string(),
        source,
    }
}

/// Errors reading the archive (our bound included): the archive is refused.
fn read_err(e: io::Error) -> ExtractError {
    ExtractError::Refused(Refusal::Malformed(e.to_string()))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), ExtractError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_err("chmod", path))
}

/// Creates the missing directories of `rel` (all of them when `all`, else its parents).
/// The checker guarantees no component is a symlink or a file of the archive.
fn make_dirs(dest: &Path, rel: &str, all: bool) -> Result<(), ExtractError> {
    let comps: Vec<&str> = rel.split('/').collect();
    let n = if all { comps.len() } else { comps.len() - 1 };
    let mut p = dest.to_path_buf();
    for c in &comps[..n] {
        p.push(c);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => continue,
            Ok(_) => {
                return Err(ExtractError::Refused(Refusal::Through(rel.to_owned())));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("stat", &p)(e)),
        }
        std::fs::create_dir(&p).map_err(io_err("create", &p))?;
        set_mode(&p, 0o755)?;
    }
    Ok(())
}

fn extract_into(archive: impl Read, dest: &Path, limits: Limits) -> Result<Summary, ExtractError> {
    set_mode(dest, 0o755)?;
    let bound = limits
        .max_bytes
        .saturating_add(limits.max_entries.saturating_mul(3 * 512))
        .saturating_add(1 << 20);
    let gz = flate2::read::GzDecoder::new(archive);
    let mut ar = tar::Archive::new(Bounded {
        inner: gz,
        left: bound,
    });
    let mut checker = Checker::new(limits);
    let mut summary = Summary::default();
    for entry in ar.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        summary.entries += 1;
        let path = entry.path_bytes().into_owned();
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        let header = entry.header();
        let et = header.entry_type();
        let mode = header.mode().unwrap_or(0o644);
        let kind = if et.is_file() || et == tar::EntryType::Continuous {
            RawKind::File {
                size: entry.size(),
                mode,
            }
        } else if et.is_dir() {
            RawKind::Dir
        } else if et.is_symlink() {
            RawKind::Symlink {
                target: link.as_deref().unwrap_or_default(),
            }
        } else if et.is_hard_link() {
            RawKind::HardLink {
                target: link.as_deref().unwrap_or_default(),
            }
        } else if et.is_pax_global_extensions() {
            RawKind::Meta
        } else if et.is_character_special() {
            RawKind::Special("character device")
        } else if et.is_block_special() {
            RawKind::Special("block device")
        } else if et.is_fifo() {
            RawKind::Special("FIFO")
        } else if et.is_gnu_sparse() {
            RawKind::Special("sparse file")
        } else {
            RawKind::Special("entry of an unknown type")
        };
        match checker.admit(&path, kind)? {
            Admitted::Skip => {}
            Admitted::Dir(rel) => make_dirs(dest, &rel, true)?,
            Admitted::File { path, size, mode } => {
                make_dirs(dest, &path, false)?;
                let p = dest.join(&path);
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .custom_flags(nix::libc::O_NOFOLLOW)
                    .open(&p)
                    .map_err(io_err("create", &p))?;
                let mut buf = [0u8; 16 * 1024];
                let mut n = 0u64;
                loop {
                    let k = entry.read(&mut buf).map_err(read_err)?;
                    if k == 0 {
                        break;
                    }
                    f.write_all(&buf[..k]).map_err(io_err("write", &p))?;
                    n += k as u64;
                }
                if n != size {
                    return Err(Refusal::Malformed(format!("{path:?}: truncated")).into());
                }
                // The umask may have narrowed the mode.
                f.set_permissions(std::fs::Permissions::from_mode(mode))
                    .map_err(io_err("chmod", &p))?;
                summary.bytes += n;
            }
            Admitted::Symlink { path, target } => {
                make_dirs(dest, &path, false)?;
                let p = dest.join(&path);
                std::os::unix::fs::symlink(&target, &p).map_err(io_err("symlink", &p))?;
            }
            Admitted::HardLink { path, target } => {
                make_dirs(dest, &path, false)?;
                let p = dest.join(&path);
                std::fs::hard_link(dest.join(&target), &p).map_err(io_err("link", &p))?;
            }
        }
    }
    checker.finish()?;
    let d = std::fs::File::open(dest).map_err(io_err("open", dest))?;
    use std::os::fd::AsRawFd;
    nix::unistd::syncfs(d.as_raw_fd())
        .map_err(|e| io_err("sync", dest)(io::Error::from_raw_os_error(e as i32)))?;
    Ok(summary)
}

#[cfg(test)]
mod tests;
