//! Restoring a snapshot into a partition: stage, verify, then swap.
//!
//! Contract (see [`super::Vault::restore`]):
//! 1. Stage: the manifest is read chunk by chunk (each checked, [`super::store::read_verified`])
//!    and every entry is built under `partition/.restore-<id>/new-<n>` (a directory
//!    the daemon makes 0700, so the instance cannot interfere), through directory
//!    handles only, files with their modes and, given a uid, their owner. Every file
//!    chunk is checked the same way as it is written. Directory modes are applied once
//!    a directory is complete (a 0555 directory can still be filled).
//! 2. Swap, only when everything staged: for each policy path, missing parent
//!    directories are made (0755, owned by the uid), the old path is renamed aside
//!    into the staging directory, the new one renamed in. A failure undoes the swaps
//!    done so far, in reverse.
//! 3. The staging directory (with the old trees) is removed, on success or failure.
//!
//! A parent on the way to a policy path that is a symlink or a file is an error
//! ([`BackupError::NotADirectory`]): a restore never follows one. For a path the
//! snapshot holds as absent, such a parent (or a missing one) means it is absent
//! already: nothing is made or removed. A crash between the
//! swaps of two paths leaves some paths restored and the old trees in the staging
//! directory; the next restore of that snapshot removes the leftover and starts over.
//! Memory: one chunk at a time, a handle per directory level being staged.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use hedge_wire::backup::{ChunkRef, SnapshotId};
use hedge_wire::Name;
use nix::errno::Errno;

use super::catalog::{self, CatalogEntry};
use super::manifest::{self, Decoder, Entry, ManifestError};
use super::{fsx, store, walk, BackupError, RestoreSummary, Vault};
use crate::partition::at;

/// A snapshot's manifest as a byte stream, each chunk checked as it is read.
pub(crate) struct ManifestReader<'a> {
    dir: &'a Path,
    root: &'a [ChunkRef],
    snapshot: SnapshotId,
    next: usize,
    buf: Vec<u8>,
    pos: usize,
}

impl<'a> ManifestReader<'a> {
    pub(crate) fn new(dir: &'a Path, entry: &'a CatalogEntry) -> ManifestReader<'a> {
        ManifestReader {
            dir,
            root: &entry.root,
            snapshot: entry.id,
            next: 0,
            buf: Vec::new(),
            pos: 0,
        }
    }
}

impl Read for ManifestReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            let Some(r) = self.root.get(self.next) else {
                return Ok(0);
            };
            self.next += 1;
            // The engine's own error rides inside the io::Error ([`next_entry`] unwraps it).
            self.buf =
                store::read_verified(self.dir, r, self.snapshot).map_err(io::Error::other)?;
            self.pos = 0;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The next manifest entry; a damaged or missing chunk as the engine's error.
pub(crate) fn next_entry(
    d: &mut Decoder<ManifestReader<'_>>,
    snapshot: SnapshotId,
) -> Result<Option<Entry>, BackupError> {
    d.next_entry().map_err(|e| match e {
        ManifestError::Io(io) => match io.into_inner().map(|b| b.downcast::<BackupError>()) {
            Some(Ok(be)) => *be,
            Some(Err(other)) => BackupError::Corrupt(format!("snapshot {snapshot}: {other}")),
            None => BackupError::Corrupt(format!("snapshot {snapshot}: reading its manifest")),
        },
        other => BackupError::Corrupt(format!("snapshot {snapshot}: {other}")),
    })
}

/// A policy path staged as `new-<n>`.
struct Staged {
    comps: Vec<String>,
    present: bool,
}

/// A directory being staged: its handle, mode to apply when complete, path below its root.
struct OpenDir {
    dir: File,
    mode: u32,
    rel: Vec<u8>,
}

fn staged_name(kind: &str, n: usize) -> OsString {
    OsString::from(format!("{kind}-{n}"))
}

fn close_dir(d: OpenDir) -> io::Result<()> {
    d.dir
        .set_permissions(std::fs::Permissions::from_mode(d.mode))
}

fn chown(f: &File, uid: Option<(u32, u32)>) -> io::Result<()> {
    match uid {
        Some((u, g)) => std::os::unix::fs::fchown(f, Some(u), Some(g)),
        None => Ok(()),
    }
}

/// The directory an entry goes in: an open one, or the staging directory (a root).
fn parent_in<'a>(stage: &'a File, dirs: &'a [OpenDir], i: Option<usize>) -> &'a File {
    i.and_then(|i| dirs.get(i)).map_or(stage, |d| &d.dir)
}

/// Builds every entry of the snapshot under `stage`.
fn stage_all(
    dir: &Path,
    entry: &CatalogEntry,
    stage: &File,
    uid: Option<(u32, u32)>,
    summary: &mut RestoreSummary,
) -> Result<Vec<Staged>, BackupError> {
    let id = entry.id;
    let corrupt = |why: &str| BackupError::Corrupt(format!("snapshot {id}: manifest: {why}"));
    let ioe = |e| BackupError::io(format!("restoring snapshot {id}"), e);
    let mut dec = Decoder::new(ManifestReader::new(dir, entry));
    let mut roots: Vec<Staged> = Vec::new();
    let mut dirs: Vec<OpenDir> = Vec::new();
    let mut file: Option<(File, u32)> = None;
    // Whether the current root's own entry (Absent or rel "") is still to come.
    let mut want_root = false;
    loop {
        let e = next_entry(&mut dec, id)?.ok_or_else(|| corrupt("no end"))?;
        if !matches!(e, Entry::Chunk(_)) {
            if let Some((f, mode)) = file.take() {
                f.set_permissions(std::fs::Permissions::from_mode(mode))
                    .and_then(|()| chown(&f, uid))
                    .map_err(ioe)?;
            }
        }
        let rel = match &e {
            Entry::Dir { rel, .. } | Entry::File { rel, .. } | Entry::Symlink { rel, .. } => {
                Some(rel.clone())
            }
            _ => None,
        };
        // Where a Dir, File or Symlink goes: its parent directory and name.
        let mut place: Option<(Option<usize>, OsString)> = None;
        if let Some(rel) = &rel {
            match manifest::split_last(rel) {
                None => {
                    if !want_root || !dirs.is_empty() {
                        return Err(corrupt("a root entry out of place"));
                    }
                    want_root = false;
                    if let Some(r) = roots.last_mut() {
                        r.present = true;
                    }
                    place = Some((None, staged_name("new", roots.len())));
                }
                Some((parent, name)) => {
                    if want_root {
                        return Err(corrupt("an entry before its root"));
                    }
                    while dirs.last().is_some_and(|d| d.rel != parent) {
                        if let Some(d) = dirs.pop() {
                            close_dir(d).map_err(ioe)?;
                        }
                    }
                    if dirs.is_empty() {
                        return Err(corrupt("an entry outside its directory"));
                    }
                    place = Some((Some(dirs.len() - 1), OsStr::from_bytes(name).to_owned()));
                }
            }
        }
        match e {
            Entry::Root { path } => {
                if want_root {
                    return Err(corrupt("a root without entries"));
                }
                while let Some(d) = dirs.pop() {
                    close_dir(d).map_err(ioe)?;
                }
                let comps =
                    walk::policy_components(&path).map_err(|_| corrupt("a bad root path"))?;
                roots.push(Staged {
                    comps: comps.into_iter().map(str::to_owned).collect(),
                    present: false,
                });
                want_root = true;
            }
            Entry::Absent => {
                if !want_root {
                    return Err(corrupt("absent out of place"));
                }
                want_root = false;
            }
            Entry::Dir { rel, mode } => {
                let (i, name) = place.ok_or_else(|| corrupt("a directory"))?;
                let parent = parent_in(stage, &dirs, i);
                at::mkdir_at(parent, &name, 0o700).map_err(ioe)?;
                let d = at::open_dir_at(parent, &name).map_err(ioe)?;
                chown(&d, uid).map_err(ioe)?;
                dirs.push(OpenDir {
                    dir: d,
                    mode: mode & 0o777,
                    rel,
                });
                summary.dirs += 1;
            }
            Entry::File { mode, .. } => {
                let (i, name) = place.ok_or_else(|| corrupt("a file"))?;
                let f = fsx::create_at(parent_in(stage, &dirs, i), &name, 0o600).map_err(ioe)?;
                file = Some((f, mode & 0o777));
                summary.files += 1;
            }
            Entry::Chunk(r) => {
                let Some((f, _)) = file.as_mut() else {
                    return Err(corrupt("a chunk outside a file"));
                };
                let data = store::read_verified(dir, &r, id)?;
                f.write_all(&data).map_err(ioe)?;
                summary.bytes += data.len() as u64;
            }
            Entry::Symlink { target, .. } => {
                let (i, name) = place.ok_or_else(|| corrupt("a symlink"))?;
                let parent = parent_in(stage, &dirs, i);
                fsx::symlink_at(&target, parent, &name).map_err(ioe)?;
                if let Some((u, g)) = uid {
                    at::lchown_at(parent, &name, u, g).map_err(ioe)?;
                }
                summary.symlinks += 1;
            }
            Entry::End => {
                if want_root {
                    return Err(corrupt("a root without entries"));
                }
                while let Some(d) = dirs.pop() {
                    close_dir(d).map_err(ioe)?;
                }
                return Ok(roots);
            }
        }
    }
}

/// A step of the swap, to undo on failure.
enum Undo {
    /// A parent directory made.
    Made(File, OsString),
    /// The old path moved into the staging directory as `old-<n>`.
    Old(File, OsString, OsString),
    /// The new path moved in from `new-<n>`.
    New(File, OsString, OsString),
}

/// Swaps every staged root into the partition, or none.
fn swap_all(
    part: &File,
    stage: &File,
    roots: &[Staged],
    uid: Option<(u32, u32)>,
) -> Result<(), BackupError> {
    let mut done: Vec<Undo> = Vec::new();
    let result = swap_each(part, stage, roots, uid, &mut done);
    if result.is_err() {
        for u in done.into_iter().rev() {
            let undone = match &u {
                Undo::New(parent, name, staged) => fsx::rename_between(parent, name, stage, staged),
                Undo::Old(parent, name, staged) => fsx::rename_between(stage, staged, parent, name),
                Undo::Made(parent, name) => fsx::rmdir_at(parent, name),
            };
            if let Err(e) = undone {
                tracing::error!(error = %e, "restore: undoing a swap failed");
            }
        }
    }
    result
}

fn swap_each(
    part: &File,
    stage: &File,
    roots: &[Staged],
    uid: Option<(u32, u32)>,
    done: &mut Vec<Undo>,
) -> Result<(), BackupError> {
    for (n, root) in roots.iter().enumerate() {
        let path = root.comps.join("/");
        let ioe = |e| BackupError::io(format!("restoring {path}"), e);
        let Some((last, parents)) = root.comps.split_last() else {
            return Err(BackupError::BadPath(path));
        };
        let mut parent = part.try_clone().map_err(ioe)?;
        let mut reached = 0;
        for (k, c) in parents.iter().enumerate() {
            let c = OsStr::new(c);
            let d = match at::open_dir_at(&parent, c) {
                Ok(d) => d,
                // An absent root whose parent is missing, or not a directory, is
                // absent already: nothing to make, nothing to remove.
                Err(_) if !root.present => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    at::mkdir_at(&parent, c, 0o755).map_err(ioe)?;
                    done.push(Undo::Made(parent.try_clone().map_err(ioe)?, c.to_owned()));
                    if let Some((u, g)) = uid {
                        at::lchown_at(&parent, c, u, g).map_err(ioe)?;
                    }
                    at::open_dir_at(&parent, c).map_err(ioe)?
                }
                Err(e) if at::is_errno(&e, Errno::ELOOP) || at::is_errno(&e, Errno::ENOTDIR) => {
                    return Err(BackupError::NotADirectory(parents[..=k].join("/")));
                }
                Err(e) => return Err(ioe(e)),
            };
            parent = d;
            reached += 1;
        }
        if reached < parents.len() {
            continue;
        }
        let name = OsStr::new(last);
        match at::lstat_at(&parent, name) {
            Ok(_) => {
                let old = staged_name("old", n + 1);
                fsx::rename_between(&parent, name, stage, &old).map_err(ioe)?;
                done.push(Undo::Old(
                    parent.try_clone().map_err(ioe)?,
                    name.to_owned(),
                    old,
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(ioe(e)),
        }
        if root.present {
            let new = staged_name("new", n + 1);
            fsx::rename_between(stage, &new, &parent, name).map_err(ioe)?;
            done.push(Undo::New(parent, name.to_owned(), new));
        }
    }
    Ok(())
}

/// Restores snapshot `id` of `instance` into `partition` (see the module doc).
pub(crate) fn run(
    v: &Vault,
    instance: &Name,
    id: SnapshotId,
    partition: &Path,
    uid: Option<(u32, u32)>,
) -> Result<RestoreSummary, BackupError> {
    let entry = catalog::load(&v.dir, instance, id)?;
    let part = at::open_dir_walk(partition)
        .map_err(|e| BackupError::io(format!("opening {}", partition.display()), e))?;
    let ioe = |e| {
        BackupError::io(
            format!("staging the restore of {id} in {}", partition.display()),
            e,
        )
    };
    let stage_name = OsString::from(format!(".restore-{id}"));
    fsx::remove_tree_at(&part, &stage_name).map_err(ioe)?;
    at::mkdir_at(&part, &stage_name, 0o700).map_err(ioe)?;
    let result = at::open_dir_at(&part, &stage_name)
        .map_err(ioe)
        .and_then(|stage| {
            let mut summary = RestoreSummary::default();
            let roots = stage_all(&v.dir, &entry, &stage, uid, &mut summary)?;
            // Everything staged is on disk before anything is swapped in.
            nix::unistd::syncfs(stage.as_raw_fd()).map_err(|e| ioe(io::Error::from(e)))?;
            swap_all(&part, &stage, &roots, uid)?;
            summary.paths = roots.len() as u64;
            Ok(summary)
        });
    if let Err(e) = fsx::remove_tree_at(&part, &stage_name) {
        tracing::warn!(error = %e, staging = ?stage_name, "restore: removing the staging directory failed");
    }
    if result.is_ok() {
        let _ = nix::unistd::syncfs(part.as_raw_fd());
    }
    result
}
