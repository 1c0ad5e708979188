//! The disk space an instance's partition really uses, measured off the daemon's loop.
//!
//! Contract: [`walk`] counts allocated blocks (`st_blocks × 512`: a sparse file costs
//! what it occupies, not its apparent size) of every entry under a partition —
//! directories, files, symlinks — and a file with several hard links once. It goes by
//! directory handle and never follows a symlink (at.rs helpers), with an explicit stack,
//! so depth is not limited by recursion; and it bounds its resources whatever the
//! instance puts there:
//! - open descriptors: at most [`WalkLimits::max_open_dirs`] directories are held open;
//!   deeper walks close the shallower ones and reopen them by name when they come back
//!   to them, checking they are still the same directory (device and inode);
//! - memory: subdirectory names waiting to be visited take at most
//!   [`WalkLimits::max_pending_bytes`];
//! - work: at most [`WalkLimits::max_ops`] entries listed plus directories (re)opened.
//!
//! A walk that hits a bound, or meets an error other than an entry vanishing meanwhile,
//! is reported as incomplete ([`DiskUsage::complete`] false) with what it counted: a
//! lower bound. The daemon then logs (rate-limited) and counts it
//! (`disk_walks_incomplete`); it never passes a silent 0 for a tree it could not finish.
//! [`walk`] blocks: the daemon runs it on a blocking thread, one walk at a time, and
//! gets the result back as an event. `cancelled` is polled at every step: a daemon that
//! exits stops its walk at once (incomplete) instead of waiting for it.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::partition::at;

/// Bounds of one walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WalkLimits {
    /// Entries listed plus directories opened or reopened.
    pub max_ops: u64,
    /// Directory handles held open at once (each is also one `ReadDir` while listed).
    pub max_open_dirs: usize,
    /// Bytes of subdirectory names waiting to be visited.
    pub max_pending_bytes: usize,
    /// Hard-linked files remembered so they count once (beyond: counted each time).
    pub max_links: usize,
}

impl Default for WalkLimits {
    fn default() -> Self {
        WalkLimits {
            max_ops: 2_000_000,
            max_open_dirs: 64,
            max_pending_bytes: 4 << 20,
            max_links: 100_000,
        }
    }
}

/// What a walk found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DiskUsage {
    /// Allocated bytes counted.
    pub bytes: u64,
    /// True when every entry was counted; false: `bytes` is a lower bound.
    pub complete: bool,
    /// Why it is incomplete (the first reason met).
    pub reason: Option<String>,
}

struct Frame {
    /// Open while it is near the top of the stack (or the root).
    file: Option<File>,
    /// Its name in its parent (empty for the root).
    name: OsString,
    /// Device and inode, to recognise it when reopened.
    id: (u64, u64),
    /// Subdirectories still to visit.
    pending: Vec<OsString>,
}

struct Walker<'a> {
    limits: WalkLimits,
    cancelled: &'a dyn Fn() -> bool,
    bytes: u64,
    ops: u64,
    pending_bytes: usize,
    links: HashSet<(u64, u64)>,
    reason: Option<String>,
    /// Set once a bound is hit: stop.
    stop: bool,
}

impl Walker<'_> {
    fn incomplete(&mut self, why: String) {
        self.reason.get_or_insert(why);
    }

    fn op(&mut self) -> bool {
        if (self.cancelled)() {
            self.incomplete("cancelled".to_string());
            self.stop = true;
            return false;
        }
        if self.ops >= self.limits.max_ops {
            self.incomplete(format!("more than {} entries", self.limits.max_ops));
            self.stop = true;
            return false;
        }
        self.ops += 1;
        true
    }

    fn count(&mut self, m: &std::fs::Metadata) {
        if !m.is_dir() && m.nlink() > 1 {
            let key = (m.dev(), m.ino());
            if self.links.contains(&key) {
                return;
            }
            if self.links.len() < self.limits.max_links {
                self.links.insert(key);
            }
        }
        self.bytes = self.bytes.saturating_add(m.blocks().saturating_mul(512));
    }

    /// Lists `dir`: counts its non-directory entries, returns its subdirectories.
    fn list(&mut self, dir: &File) -> Vec<OsString> {
        let mut subdirs = Vec::new();
        let rd = match at::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) => {
                self.incomplete(format!("cannot list a directory ({e})"));
                return subdirs;
            }
        };
        for e in rd {
            if !self.op() {
                break;
            }
            let e = match e {
                Ok(e) => e,
                Err(err) => {
                    self.incomplete(format!("cannot list a directory ({err})"));
                    break;
                }
            };
            let name = e.file_name();
            match e.file_type() {
                Ok(t) if t.is_dir() => {
                    let len = name.as_bytes().len();
                    if self.pending_bytes + len > self.limits.max_pending_bytes {
                        self.incomplete(format!(
                            "more than {} bytes of directory names to visit",
                            self.limits.max_pending_bytes
                        ));
                        self.stop = true;
                        break;
                    }
                    self.pending_bytes += len;
                    subdirs.push(name);
                }
                _ => match at::lstat_at(dir, &name) {
                    Ok(m) => self.count(&m),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => self.incomplete(format!("cannot stat an entry ({e})")),
                },
            }
        }
        subdirs
    }

    /// Opens `name` inside `parent` as a directory and counts it; `None` when it
    /// vanished or is no longer a directory (not an error: the instance changes its
    /// files while we walk) or cannot be opened (an error).
    fn open(&mut self, parent: &File, name: &OsString) -> Option<(File, (u64, u64))> {
        if !self.op() {
            return None;
        }
        let dir = match at::open_dir_at(parent, name) {
            Ok(d) => d,
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(nix::libc::ENOTDIR)
                    || e.raw_os_error() == Some(nix::libc::ELOOP) =>
            {
                return None
            }
            Err(e) => {
                self.incomplete(format!("cannot open a directory ({e})"));
                return None;
            }
        };
        match dir.metadata() {
            Ok(m) => Some((dir, (m.dev(), m.ino()))),
            Err(e) => {
                self.incomplete(format!("cannot stat a directory ({e})"));
                None
            }
        }
    }
}

/// Counts the space used under `dir` (see the module doc). Blocks.
pub(crate) fn walk(dir: &Path, limits: WalkLimits, cancelled: &dyn Fn() -> bool) -> DiskUsage {
    let mut w = Walker {
        limits,
        cancelled,
        bytes: 0,
        ops: 0,
        pending_bytes: 0,
        links: HashSet::new(),
        reason: None,
        stop: false,
    };
    let root = match at::open_dir(dir) {
        Ok(d) => d,
        // No partition (yet): nothing used.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return DiskUsage {
                bytes: 0,
                complete: true,
                reason: None,
            }
        }
        Err(e) => {
            return DiskUsage {
                bytes: 0,
                complete: false,
                reason: Some(format!("cannot open the partition ({e})")),
            }
        }
    };
    let id = match root.metadata() {
        Ok(m) => {
            w.count(&m);
            (m.dev(), m.ino())
        }
        Err(e) => {
            w.incomplete(format!("cannot stat the partition ({e})"));
            (0, 0)
        }
    };
    let pending = w.list(&root);
    let mut stack = vec![Frame {
        file: Some(root),
        name: OsString::new(),
        id,
        pending,
    }];
    let max_open = limits.max_open_dirs.max(2);
    let mut open = 1usize;
    while !w.stop {
        let Some(top) = stack.last_mut() else { break };
        let Some(name) = top.pending.pop() else {
            if top.file.is_some() {
                open -= 1;
            }
            stack.pop();
            continue;
        };
        w.pending_bytes = w.pending_bytes.saturating_sub(name.as_bytes().len());
        if top.file.is_none() && !reopen(&mut w, &mut stack, &mut open, max_open) {
            continue;
        }
        let Some(parent) = stack.last().and_then(|f| f.file.as_ref()) else {
            break;
        };
        let Some((sub, id)) = w.open(parent, &name) else {
            continue;
        };
        match sub.metadata() {
            Ok(m) => w.count(&m),
            Err(e) => w.incomplete(format!("cannot stat a directory ({e})")),
        }
        let pending = w.list(&sub);
        stack.push(Frame {
            file: Some(sub),
            name,
            id,
            pending,
        });
        open += 1;
        if open > max_open {
            // Keep the root and the deepest half open; close the rest (reopened by name
            // when the walk comes back up to them).
            let keep_from = stack.len().saturating_sub(max_open / 2);
            for f in stack.iter_mut().take(keep_from).skip(1) {
                if f.file.take().is_some() {
                    open -= 1;
                }
            }
        }
    }
    DiskUsage {
        bytes: w.bytes,
        complete: w.reason.is_none(),
        reason: w.reason,
    }
}

/// Reopens the closed frames above the deepest open one, by name, checking each is the
/// directory it was. Frames that cannot be reopened as themselves are dropped (with
/// what they still had to visit): the walk is then incomplete. Returns whether the top
/// frame is open.
fn reopen(w: &mut Walker<'_>, stack: &mut Vec<Frame>, open: &mut usize, max_open: usize) -> bool {
    let Some(base) = stack.iter().rposition(|f| f.file.is_some()) else {
        return false;
    };
    let top = stack.len() - 1;
    // Reopen all of them, keeping open only the deepest `max_open / 2`.
    let keep_from = (top + 1).saturating_sub(max_open / 2).max(base + 1);
    let mut current: Option<File> = None;
    for k in base + 1..=top {
        let parent = match (&current, &stack[k - 1].file) {
            (Some(c), _) => c,
            (None, Some(f)) => f,
            (None, None) => break,
        };
        let name = stack[k].name.clone();
        let reopened = match w.open(parent, &name) {
            Some((f, id)) if id == stack[k].id => Some(f),
            Some(_) => {
                w.incomplete("a directory was replaced during the walk".to_string());
                None
            }
            None => {
                if !w.stop {
                    w.incomplete("a directory vanished during the walk".to_string());
                }
                None
            }
        };
        let Some(f) = reopened else {
            for gone in stack.drain(k..) {
                let names: usize = gone.pending.iter().map(|n| n.as_bytes().len()).sum();
                w.pending_bytes = w.pending_bytes.saturating_sub(names);
                if gone.file.is_some() {
                    *open -= 1;
                }
            }
            return false;
        };
        if k >= keep_from {
            current = None;
            stack[k].file = Some(f);
            *open += 1;
        } else {
            current = Some(f);
        }
    }
    stack.last().is_some_and(|f| f.file.is_some())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::fs::symlink;

    use super::*;

    fn never() -> bool {
        false
    }

    fn used(dir: &Path) -> u64 {
        let u = walk(dir, WalkLimits::default(), &never);
        assert!(u.complete, "{u:?}");
        u.bytes
    }

    #[test]
    fn counts_allocated_blocks_follows_no_link() {
        let tmp = tempfile::tempdir().unwrap();
        let part = tmp.path().join("part");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(part.join("srv/deep")).unwrap();
        std::fs::create_dir(&outside).unwrap();
        let empty = used(&part);
        std::fs::write(outside.join("big"), vec![1u8; 1 << 20]).unwrap();
        std::fs::write(part.join("srv/a"), vec![1u8; 100_000]).unwrap();
        symlink(&outside, part.join("srv/link")).unwrap();
        symlink(outside.join("big"), part.join("srv/flink")).unwrap();
        let with = used(&part);
        // The 100 kB file is counted (in whole blocks); the 1 MiB outside is not.
        assert!(with - empty >= 100_000, "{empty} {with}");
        assert!(with - empty < 200_000, "{empty} {with}");
        // A hard link counts once.
        std::fs::hard_link(part.join("srv/a"), part.join("srv/deep/a2")).unwrap();
        assert!(used(&part) - with < 16_384, "hard link counted twice");
        // Absent: 0, complete. The partition itself a symlink: not walked, incomplete.
        assert_eq!(
            walk(&tmp.path().join("absent"), WalkLimits::default(), &never),
            DiskUsage {
                bytes: 0,
                complete: true,
                reason: None
            }
        );
        symlink(&outside, tmp.path().join("plink")).unwrap();
        let l = walk(&tmp.path().join("plink"), WalkLimits::default(), &never);
        assert_eq!(l.bytes, 0);
        assert!(!l.complete);
    }

    /// A sparse file of 1 GiB apparent size costs what it occupies: about nothing.
    #[test]
    fn a_sparse_file_bills_what_it_occupies() {
        let tmp = tempfile::tempdir().unwrap();
        let before = used(tmp.path());
        let f = File::create(tmp.path().join("sparse")).unwrap();
        f.set_len(1 << 30).unwrap();
        drop(f);
        let after = used(tmp.path());
        assert!(
            after - before < 64 << 10,
            "sparse file billed {}",
            after - before
        );
    }

    /// A file 40 directories deep is counted, also when only a few directories may be
    /// open at once (the walk closes and reopens them).
    #[test]
    fn deep_trees_are_counted_with_few_open_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let mut deep = tmp.path().to_path_buf();
        for i in 0..40 {
            deep.push(format!("d{i}"));
        }
        std::fs::create_dir_all(&deep).unwrap();
        // Siblings at several depths, so the walk comes back up through closed frames.
        let mut side = tmp.path().to_path_buf();
        for i in 0..40 {
            side.push(format!("d{i}"));
            if i % 7 == 0 {
                std::fs::create_dir(side.join("side")).unwrap();
                std::fs::write(side.join("side/s"), vec![1u8; 8192]).unwrap();
            }
        }
        let before = used(tmp.path());
        std::fs::write(deep.join("data"), vec![1u8; 1 << 20]).unwrap();
        let after = used(tmp.path());
        assert!(after - before >= 1 << 20, "{before} {after}");
        for max_open_dirs in [2, 3, 5, 64] {
            let u = walk(
                tmp.path(),
                WalkLimits {
                    max_open_dirs,
                    ..WalkLimits::default()
                },
                &never,
            );
            assert!(u.complete, "{max_open_dirs}: {u:?}");
            assert_eq!(u.bytes, after, "{max_open_dirs}");
        }
    }

    /// Past its budget a walk says it is incomplete and keeps what it counted.
    #[test]
    fn a_walk_past_its_budget_is_reported_incomplete() {
        let tmp = tempfile::tempdir().unwrap();
        for i in 0..20 {
            std::fs::write(tmp.path().join(format!("f{i}")), vec![1u8; 4096]).unwrap();
        }
        let full = used(tmp.path());
        let u = walk(
            tmp.path(),
            WalkLimits {
                max_ops: 10,
                ..WalkLimits::default()
            },
            &never,
        );
        assert!(!u.complete);
        assert!(u.reason.unwrap().contains("more than 10 entries"));
        assert!(u.bytes > 0 && u.bytes < full, "{} of {full}", u.bytes);
        let names = || {
            walk(
                tmp.path(),
                WalkLimits {
                    max_pending_bytes: 0,
                    ..WalkLimits::default()
                },
                &never,
            )
        };
        // No subdirectory here: the name budget is not touched.
        assert!(names().complete);
        std::fs::create_dir(tmp.path().join("sub")).unwrap();
        assert!(!names().complete);
        // A cancelled walk stops at once and says so.
        let c = walk(tmp.path(), WalkLimits::default(), &|| true);
        assert!(!c.complete);
        assert_eq!(c.reason.as_deref(), Some("cancelled"));
    }
}
