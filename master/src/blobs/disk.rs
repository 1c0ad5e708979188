//! The blob directory: each node's chunks and snapshot id lists on disk.
//!
//! Contract: a chunk lives at `DIR/<node>/<2 hex>/<64 hex>`, an id list at
//! `DIR/<node>/snapshots/<instance>/<16 hex>`; both are written into `DIR/<node>/tmp`,
//! flushed (`fsync`), renamed into place and their directory flushed, so a reader sees
//! a whole file or none. Reads are bounded; nothing follows a symlink into another
//! place (chunks are opened with `O_NOFOLLOW`, the tree is the master's own). A sweep
//! removes the chunks of a node that no kept id list references and that are older than
//! its cutoff (a chunk just uploaded for a snapshot not yet put is left alone), and
//! returns the bytes left.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use hedge_wire::backup::SnapshotId;
use hedge_wire::Name;

use super::request::MAX_CHUNK_BODY;

/// What a sweep removed and left.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Chunks removed.
    pub removed: u64,
    /// Their bytes.
    pub removed_bytes: u64,
    /// Bytes of the chunks left.
    pub kept_bytes: u64,
}

/// The blob directory (`[backup] dir`).
#[derive(Debug, Clone)]
pub struct BlobDir {
    root: PathBuf,
}

fn hex(id: &[u8; 32]) -> String {
    hedge_common::hex::encode(id)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

impl BlobDir {
    /// The blob directory at `root` (created on first write).
    pub fn new(root: PathBuf) -> BlobDir {
        BlobDir { root }
    }

    /// Its root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn node_dir(&self, node: &Name) -> PathBuf {
        self.root.join(node.as_str())
    }

    /// Where chunk `id` of `node` lives.
    pub fn chunk_path(&self, node: &Name, id: &[u8; 32]) -> PathBuf {
        let h = hex(id);
        self.node_dir(node).join(&h[..2]).join(h)
    }

    /// Whether chunk `id` is stored under `node`.
    pub fn has(&self, node: &Name, id: &[u8; 32]) -> bool {
        std::fs::symlink_metadata(self.chunk_path(node, id)).is_ok_and(|m| m.is_file())
    }

    /// A new temporary file of `node` (to be renamed into place).
    pub fn temp(&self, node: &Name) -> std::io::Result<(std::fs::File, PathBuf)> {
        let dir = self.node_dir(node).join("tmp");
        std::fs::create_dir_all(&dir)?;
        loop {
            let p = dir.join(format!(
                ".{}-{:016x}",
                std::process::id(),
                fastrand::u64(..)
            ));
            match std::fs::OpenOptions::new()
                .write(true)
                .read(true)
                .create_new(true)
                .mode(0o600)
                .open(&p)
            {
                Ok(f) => return Ok((f, p)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn install(tmp: &Path, dest: &Path) -> std::io::Result<()> {
        let parent = dest.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent)?;
        std::fs::rename(tmp, dest)?;
        sync_dir(parent)
    }

    /// Stores chunk `id` of `node` (already checked): `true` when newly stored, `false`
    /// when it already was.
    pub fn put_chunk(&self, node: &Name, id: &[u8; 32], body: &[u8]) -> std::io::Result<bool> {
        if self.has(node, id) {
            return Ok(false);
        }
        let (mut f, tmp) = self.temp(node)?;
        let r = (|| {
            f.write_all(body)?;
            f.sync_all()?;
            Self::install(&tmp, &self.chunk_path(node, id))
        })();
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        r.map(|()| true)
    }

    /// Chunk `id` of `node` as stored (`NotFound` when it is not).
    pub fn read_chunk(&self, node: &Name, id: &[u8; 32]) -> std::io::Result<Vec<u8>> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(self.chunk_path(node, id))?;
        let mut out = Vec::new();
        f.take(MAX_CHUNK_BODY + 1).read_to_end(&mut out)?;
        if out.len() as u64 > MAX_CHUNK_BODY {
            return Err(std::io::Error::other("stored chunk over the bound"));
        }
        Ok(out)
    }

    /// The id list's path of a snapshot, relative to the root.
    pub fn ids_rel(node: &Name, instance: &Name, id: SnapshotId) -> String {
        format!("{node}/snapshots/{instance}/{id}")
    }

    /// Moves the written temporary id list `tmp` to `rel` (flushed first).
    pub fn install_ids(&self, file: &std::fs::File, tmp: &Path, rel: &str) -> std::io::Result<()> {
        file.sync_all()?;
        Self::install(tmp, &self.root.join(rel))
    }

    /// Removes an id list (gone already is fine).
    pub fn remove_ids(&self, rel: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.root.join(rel)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Visits every id of the id list at `path`, in order.
    pub fn each_id(path: &Path, mut f: impl FnMut([u8; 32])) -> std::io::Result<()> {
        let mut r = std::io::BufReader::with_capacity(64 * 1024, std::fs::File::open(path)?);
        let mut id = [0u8; 32];
        loop {
            match r.read_exact(&mut id) {
                Ok(()) => f(id),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// The ids of the id list at `path` that `node` does not store, at most `limit`.
    pub fn missing(
        &self,
        node: &Name,
        path: &Path,
        limit: usize,
    ) -> std::io::Result<Vec<[u8; 32]>> {
        let mut out = Vec::new();
        Self::each_id(path, |id| {
            if out.len() < limit && !self.has(node, &id) {
                out.push(id);
            }
        })?;
        Ok(out)
    }

    /// Every id the id lists at `rels` (relative to the root) name.
    pub fn referenced(&self, rels: &[String]) -> std::io::Result<HashSet<[u8; 32]>> {
        let mut set = HashSet::new();
        for rel in rels {
            match Self::each_id(&self.root.join(rel), |id| {
                set.insert(id);
            }) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    tracing::warn!(ids = %rel, "a stored snapshot's id list is missing")
                }
                other => other?,
            }
        }
        Ok(set)
    }

    /// Removes `node`'s chunks not in `keep` last modified before `cutoff_ms` (ms since
    /// the Unix epoch), and stale temporary files; see the module doc.
    pub fn sweep(
        &self,
        node: &Name,
        keep: &HashSet<[u8; 32]>,
        cutoff_ms: u64,
    ) -> std::io::Result<Swept> {
        let mut out = Swept::default();
        let base = self.node_dir(node);
        let top = match std::fs::read_dir(&base) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        let old = |m: &std::fs::Metadata| {
            m.modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .is_some_and(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX) < cutoff_ms)
        };
        for sub in top {
            let sub = sub?;
            let name = sub.file_name();
            let Some(name) = name.to_str() else { continue };
            let is_shard = name.len() == 2 && name.bytes().all(|b| b.is_ascii_hexdigit());
            if !is_shard && name != "tmp" {
                continue;
            }
            if !sub.file_type()?.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(sub.path())? {
                let f = f?;
                let m = f.metadata()?;
                if !m.is_file() {
                    continue;
                }
                let id = f.file_name().to_str().and_then(super::request::chunk_id);
                let drop = match id {
                    Some(id) if is_shard => !keep.contains(&id) && old(&m),
                    // Temporary files left by a crash, once old.
                    _ => !is_shard && old(&m),
                };
                if drop {
                    std::fs::remove_file(f.path())?;
                    if is_shard {
                        out.removed += 1;
                        out.removed_bytes += m.len();
                    }
                } else if is_shard {
                    out.kept_bytes += m.len();
                }
            }
        }
        Ok(out)
    }
}
