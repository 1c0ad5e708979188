//! The catalog: what snapshots the node holds, and the small files beside the store.
//!
//! Layout of `BACKUPDIR` (0700): `secret` (S, 32 bytes, 0600), `node` (the node's
//! name), `recovery.pub` (the fleet's recovery public key, 32 bytes), `chunks/`
//! ([`super::store`]), `tmp/` (temporaries; swept by prune), and per snapshot in
//! `snapshots/<instance>/`: `<id>` (its [`CatalogEntry`], postcard), `<id>.ids` (its
//! sorted chunk ids, [`super::idsort`]), `<id>.uploaded` (an empty marker),
//! `<id>.sealed` (its key sealed to a recovery key, so a retried upload sends the same
//! header).
//!
//! Contract: every file here is written whole ([`super::fsx::write_durable`]); an
//! entry is written only after everything it needs is durable, so a listed snapshot
//! is complete (an imported one once [`super::Vault::missing_chunks`] returns nothing). Entries are read
//! with a bound and a malformed one is an error, never skipped silently. Markers and
//! the id list of a snapshot are removed after its entry ([`super::prune`]).

use std::ffi::OsStr;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use hedge_common::keyfile;
use hedge_wire::backup::{
    ChunkRef, Consistency, RestoreGrant, SnapshotHeader, SnapshotId, MAX_ROOT,
};
use hedge_wire::Name;
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};

use super::idsort::{IdReader, IdSorter};
use super::manifest::{Decoder, Entry};
use super::{
    crypto, fsx, restore, store, BackupError, ChunkId, ChunkIds, LocalSnapshot, Vault,
    MISSING_BATCH,
};

/// Largest catalog entry file (its root list is bounded by the header's `MAX_ROOT`).
const MAX_ENTRY: u64 = 2 * MAX_ROOT as u64 + 4096;

/// One snapshot in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogEntry {
    /// The instance.
    pub instance: Name,
    /// Its id.
    pub id: SnapshotId,
    /// When taken, ms since the Unix epoch.
    pub taken_ms: u64,
    /// How it was made consistent.
    pub consistency: Consistency,
    /// Bytes of files.
    pub bytes: u64,
    /// Bytes of ciphertext it added to the store where it was taken.
    pub new_bytes: u64,
    /// Distinct chunks it references.
    pub chunks: u64,
    /// The snapshot key M (seals the root for the header).
    pub key: [u8; 32],
    /// The manifest's chunks, in order.
    pub root: Vec<ChunkRef>,
    /// For an imported snapshot: the header it came with (its node is the source).
    pub imported: Option<SnapshotHeader>,
}

impl CatalogEntry {
    /// The node that took it (`None`: this one).
    pub fn source(&self) -> Option<&Name> {
        self.imported.as_ref().map(|h| &h.node)
    }
}

fn io_err(p: &Path) -> impl FnOnce(io::Error) -> BackupError + '_ {
    move |e| BackupError::io(p.display().to_string(), e)
}

/// `snapshots/<instance>` in `dir`.
pub fn instance_dir(dir: &Path, instance: &Name) -> PathBuf {
    dir.join("snapshots").join(instance.as_str())
}

/// The file of snapshot `id` of `instance`, with `suffix` (`""`, `".ids"`, ...).
pub fn file(dir: &Path, instance: &Name, id: SnapshotId, suffix: &str) -> PathBuf {
    instance_dir(dir, instance).join(format!("{id}{suffix}"))
}

/// Makes the layout if missing; the secret (made at first use) and the recorded name.
pub(crate) fn open_dir(dir: &Path) -> Result<(crypto::Secret, Option<Name>), BackupError> {
    fsx::make_dir(dir, 0o700).map_err(io_err(dir))?;
    for sub in ["chunks", "snapshots", "tmp"] {
        let d = dir.join(sub);
        fsx::make_dir(&d, 0o700).map_err(io_err(&d))?;
    }
    // Whatever made it, BACKUPDIR is the node's alone.
    let meta = std::fs::metadata(dir).map_err(io_err(dir))?;
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err(dir))?;
    }
    let path = dir.join("secret");
    if !path.exists() {
        // Written whole under a temporary name, then linked in (never over another): a
        // crash leaves no secret or the whole one, never a torn file.
        let mut s = zeroize::Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(&mut s[..]);
        let tmp = dir.join("tmp").join(fsx::tmp_name("secret"));
        keyfile::write_new(&tmp, &s[..], 0o600).map_err(io_err(&tmp))?;
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => fsx::sync_dir(dir).map_err(io_err(dir))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
    }
    let bytes = keyfile::read_private(&path)
        .map_err(|e| BackupError::Corrupt(format!("backup secret: {e}")))?;
    let s: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| BackupError::Corrupt(format!("{}: not 32 bytes", path.display())))?;
    let secret = crypto::Secret::new(&s);
    let node_path = dir.join("node");
    let node = match fsx::read_at_most(&node_path, 256) {
        Ok(b) => Some(
            std::str::from_utf8(&b)
                .ok()
                .and_then(|s| Name::new(s.trim()).ok())
                .ok_or_else(|| {
                    BackupError::Corrupt(format!("{}: not a node name", node_path.display()))
                })?,
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err(&node_path)(e)),
    };
    Ok((secret, node))
}

/// Records the node's name.
pub(crate) fn save_node(dir: &Path, node: &Name) -> Result<(), BackupError> {
    let p = dir.join("node");
    fsx::write_durable(&p, node.as_str().as_bytes()).map_err(io_err(&p))
}

/// Records the recovery public key.
pub(crate) fn save_recovery_key(dir: &Path, key: &[u8; 32]) -> Result<(), BackupError> {
    let p = dir.join("recovery.pub");
    fsx::write_durable(&p, key).map_err(io_err(&p))
}

/// The recovery public key, if recorded.
pub(crate) fn load_recovery_key(dir: &Path) -> Result<Option<[u8; 32]>, BackupError> {
    let p = dir.join("recovery.pub");
    match fsx::read_at_most(&p, 32) {
        Ok(b) => b
            .try_into()
            .map(Some)
            .map_err(|_| BackupError::Corrupt(format!("{}: not 32 bytes", p.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(&p)(e)),
    }
}

/// Writes `entry` durably (the last step of taking or importing a snapshot).
pub fn save(dir: &Path, entry: &CatalogEntry) -> Result<(), BackupError> {
    let d = instance_dir(dir, &entry.instance);
    fsx::make_dir(&d, 0o700).map_err(io_err(&d))?;
    let bytes = postcard::to_stdvec(entry)
        .map_err(|e| BackupError::Corrupt(format!("encoding a catalog entry: {e}")))?;
    let p = file(dir, &entry.instance, entry.id, "");
    fsx::write_durable(&p, &bytes).map_err(io_err(&p))
}

/// The entry of snapshot `id` of `instance`.
///
/// # Errors
///
/// [`BackupError::NotFound`]; I/O; [`BackupError::Corrupt`].
pub fn load(dir: &Path, instance: &Name, id: SnapshotId) -> Result<CatalogEntry, BackupError> {
    let p = file(dir, instance, id, "");
    let bytes = fsx::read_at_most(&p, MAX_ENTRY).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            BackupError::NotFound {
                instance: instance.clone(),
                snapshot: id,
            }
        } else {
            io_err(&p)(e)
        }
    })?;
    let entry: CatalogEntry = postcard::from_bytes(&bytes)
        .map_err(|e| BackupError::Corrupt(format!("{}: {e}", p.display())))?;
    if entry.instance != *instance || entry.id != id {
        return Err(BackupError::Corrupt(format!(
            "{}: names another snapshot",
            p.display()
        )));
    }
    Ok(entry)
}

/// Every catalog entry (of `instance`, or all), in no particular order.
///
/// # Errors
///
/// I/O; an entry that does not decode.
pub fn entries(dir: &Path, instance: Option<&Name>) -> Result<Vec<CatalogEntry>, BackupError> {
    let instances = match instance {
        Some(i) => vec![i.clone()],
        None => {
            let root = dir.join("snapshots");
            let mut names = Vec::new();
            for e in std::fs::read_dir(&root).map_err(io_err(&root))? {
                let e = e.map_err(io_err(&root))?;
                // Only directories named as instances are ours.
                if let Some(n) = e.file_name().to_str().and_then(|s| Name::new(s).ok()) {
                    names.push(n);
                }
            }
            names
        }
    };
    let mut out = Vec::new();
    for inst in instances {
        let d = instance_dir(dir, &inst);
        let listing = match std::fs::read_dir(&d) {
            Ok(l) => l,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&d)(e)),
        };
        for e in listing {
            let e = e.map_err(io_err(&d))?;
            if let Some(id) = snapshot_name(&e.file_name()) {
                out.push(load(dir, &inst, id)?);
            }
        }
    }
    Ok(out)
}

/// The id a catalog file name spells (16 hex digits, nothing else).
fn snapshot_name(name: &OsStr) -> Option<SnapshotId> {
    name.to_str()?.parse().ok()
}

/// The catalog as [`LocalSnapshot`]s, oldest first.
pub(crate) fn list(dir: &Path, instance: Option<&Name>) -> Result<Vec<LocalSnapshot>, BackupError> {
    let mut out: Vec<LocalSnapshot> = entries(dir, instance)?
        .into_iter()
        .map(|e| {
            let uploaded =
                e.imported.is_none() && file(dir, &e.instance, e.id, ".uploaded").exists();
            LocalSnapshot {
                source: e.source().cloned(),
                instance: e.instance,
                id: e.id,
                taken_ms: e.taken_ms,
                bytes: e.bytes,
                new_bytes: e.new_bytes,
                chunks: e.chunks,
                consistency: e.consistency,
                uploaded,
            }
        })
        .collect();
    out.sort_by(|a, b| {
        (a.taken_ms, a.instance.as_str(), a.id).cmp(&(b.taken_ms, b.instance.as_str(), b.id))
    });
    Ok(out)
}

/// The header of a snapshot (see [`Vault::header`]).
pub(crate) fn header(
    v: &Vault,
    instance: &Name,
    id: SnapshotId,
    recovery: &[u8; 32],
) -> Result<SnapshotHeader, BackupError> {
    let dir = &v.dir;
    let e = load(dir, instance, id)?;
    if let Some(h) = e.imported {
        return Ok(h);
    }
    let node = v.node.clone().ok_or(BackupError::NoNode)?;
    let root_plain = postcard::to_stdvec(&e.root)
        .map_err(|err| BackupError::Corrupt(format!("encoding a root: {err}")))?;
    let root = hedge_common::aead::seal_chunk(&e.key, &root_plain);
    if root.len() > MAX_ROOT {
        return Err(BackupError::RootTooLarge(e.root.len()));
    }
    // The key sealed to this recovery key, made once.
    let sealed_path = file(dir, instance, id, ".sealed");
    let sealed = match fsx::read_at_most(&sealed_path, 32 + 80) {
        Ok(b) if b.len() == 32 + 80 && b[..32] == recovery[..] => b[32..].to_vec(),
        Ok(_) => reseal(&sealed_path, &e.key, recovery)?,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            reseal(&sealed_path, &e.key, recovery)?
        }
        Err(err) => return Err(io_err(&sealed_path)(err)),
    };
    let sealed_key = heapless::Vec::from_slice(&sealed)
        .map_err(|()| BackupError::Corrupt("a sealed key of the wrong length".into()))?;
    Ok(SnapshotHeader {
        node,
        instance: e.instance,
        id: e.id,
        taken_ms: e.taken_ms,
        consistency: e.consistency,
        bytes: e.bytes,
        new_bytes: e.new_bytes,
        chunks: e.chunks,
        root,
        sealed_key,
    })
}

fn reseal(path: &Path, key: &[u8; 32], recovery: &[u8; 32]) -> Result<Vec<u8>, BackupError> {
    let sealed = hedge_common::seal::seal(key, recovery);
    let mut file = recovery.to_vec();
    file.extend_from_slice(&sealed);
    fsx::write_durable(path, &file).map_err(io_err(path))?;
    Ok(sealed.to_vec())
}

/// The snapshot's id list.
pub(crate) fn chunk_ids(
    dir: &Path,
    instance: &Name,
    id: SnapshotId,
) -> Result<ChunkIds, BackupError> {
    load(dir, instance, id)?;
    let p = file(dir, instance, id, ".ids");
    match IdReader::open(&p) {
        Ok(inner) => Ok(ChunkIds { inner }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(BackupError::Incomplete {
            instance: instance.clone(),
            snapshot: id,
        }),
        Err(e) => Err(io_err(&p)(e)),
    }
}

/// Writes the uploaded marker.
pub(crate) fn mark_uploaded(
    dir: &Path,
    instance: &Name,
    id: SnapshotId,
) -> Result<(), BackupError> {
    load(dir, instance, id)?;
    let p = file(dir, instance, id, ".uploaded");
    fsx::write_durable(&p, b"").map_err(io_err(&p))
}

/// Enters a granted snapshot.
pub(crate) fn import(dir: &Path, grant: &RestoreGrant) -> Result<(), BackupError> {
    let h = &grant.header;
    let bad = |why| BackupError::BadGrant {
        snapshot: h.id,
        why,
    };
    let plain = hedge_common::aead::open_chunk(&grant.key, &h.root)
        .map_err(|_| bad("its root does not open under the granted key"))?;
    let root: Vec<ChunkRef> =
        postcard::from_bytes(&plain).map_err(|_| bad("its root is not a list of chunks"))?;
    match load(dir, &h.instance, h.id) {
        Ok(existing) if existing.imported.as_ref() == Some(h) => return Ok(()),
        // Granted back to the node that took it (and still has it): nothing to import.
        Ok(existing) if existing.key == grant.key && existing.root == root => return Ok(()),
        Ok(_) => return Err(bad("another snapshot with this id is in the catalog")),
        Err(BackupError::NotFound { .. }) => {}
        Err(e) => return Err(e),
    }
    save(
        dir,
        &CatalogEntry {
            instance: h.instance.clone(),
            id: h.id,
            taken_ms: h.taken_ms,
            consistency: h.consistency,
            bytes: h.bytes,
            new_bytes: h.new_bytes,
            chunks: h.chunks,
            key: grant.key,
            root,
            imported: Some(h.clone()),
        },
    )
}

/// The chunks the snapshot lacks (see [`Vault::missing_chunks`]).
pub(crate) fn missing(
    v: &Vault,
    instance: &Name,
    id: SnapshotId,
) -> Result<Vec<ChunkId>, BackupError> {
    let dir = &v.dir;
    let e = load(dir, instance, id)?;
    let ids_path = file(dir, instance, id, ".ids");
    if !ids_path.exists() {
        // The manifest first: the file chunks are known only from it.
        let mut out = Vec::new();
        for r in &e.root {
            if !store::exists(dir, &r.id)? && !out.contains(&r.id) {
                out.push(r.id);
                if out.len() == MISSING_BATCH {
                    break;
                }
            }
        }
        if !out.is_empty() {
            return Ok(out);
        }
        write_id_list(dir, &e, &ids_path)?;
    }
    let mut out = Vec::new();
    for chunk in IdReader::open(&ids_path).map_err(io_err(&ids_path))? {
        let chunk = chunk.map_err(io_err(&ids_path))?;
        if !store::exists(dir, &chunk)? {
            out.push(chunk);
            if out.len() == MISSING_BATCH {
                break;
            }
        }
    }
    Ok(out)
}

/// Writes an imported snapshot's id list from its manifest (all of whose chunks are here).
fn write_id_list(dir: &Path, e: &CatalogEntry, out: &Path) -> Result<(), BackupError> {
    let mut ids = IdSorter::new(&dir.join("tmp"));
    let tmp_err = |err| BackupError::io("sorting a snapshot's ids", err);
    for r in &e.root {
        ids.push(r.id).map_err(tmp_err)?;
    }
    let mut manifest = Decoder::new(restore::ManifestReader::new(dir, e));
    while let Some(entry) = restore::next_entry(&mut manifest, e.id)? {
        if let Entry::Chunk(r) = entry {
            ids.push(r.id).map_err(tmp_err)?;
        }
    }
    ids.finish(out).map_err(io_err(out))?;
    Ok(())
}
