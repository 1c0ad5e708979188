//! Taking a snapshot: walk the policy paths, chunk and store every file, write the
//! manifest, chunk it too, then the id list and, last, the catalog entry.
//!
//! Contract: see [`super::Vault::snapshot`] and the module doc of [`super`]. Memory:
//! the chunker's buffer and one chunk (≤ 256 KiB each, plus its ciphertext), the
//! manifest's write buffer, the id sorter's run (≤ 1 MiB, [`super::idsort`]), the
//! walk's stack ([`super::walk`]) and the manifest's root list (one ChunkRef per
//! 64 KiB of manifest, i.e. per ~60 MiB of files). Nothing grows with a file's size.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use hedge_wire::backup::{ChunkRef, SnapshotId, MAX_ROOT};
use rand_core::{OsRng, RngCore};

use super::catalog::{self, CatalogEntry};
use super::idsort::IdSorter;
use super::manifest::{self, Entry};
use super::walk::{self, Visit};
use super::{chunker, crypto, fsx, store, BackupError, LocalSnapshot, SnapshotRequest, Vault};
use crate::partition::at;

/// Writes a snapshot's chunks, manifest records and ids as the walk finds files.
struct Writer<'a> {
    dir: &'a Path,
    secret: &'a crypto::Secret,
    manifest: BufWriter<File>,
    ids: IdSorter,
    touched: store::Touched,
    bytes: u64,
    new_bytes: u64,
}

fn manifest_err(e: std::io::Error) -> BackupError {
    BackupError::io("writing a snapshot's manifest", e)
}

impl Writer<'_> {
    fn record(&mut self, e: &Entry) -> Result<(), BackupError> {
        manifest::write(&mut self.manifest, e).map_err(manifest_err)
    }

    /// Chunks `source`, stores the new chunks, records their ids; calls `each` per chunk.
    fn chunks(
        &mut self,
        source: impl Read,
        what: &str,
        mut each: impl FnMut(&mut Self, ChunkRef) -> Result<(), BackupError>,
    ) -> Result<u64, BackupError> {
        let mut total = 0u64;
        for data in chunker::chunks(source, self.secret.gear_seed()) {
            let data = data.map_err(|e| BackupError::io(format!("reading {what}"), e))?;
            let (r, ciphertext) = self.secret.seal(&data);
            if store::write_new(self.dir, &r.id, &ciphertext, &mut self.touched)? {
                self.new_bytes += ciphertext.len() as u64;
            }
            self.ids
                .push(r.id)
                .map_err(|e| BackupError::io("sorting a snapshot's ids", e))?;
            total += u64::from(r.len);
            each(self, r)?;
        }
        Ok(total)
    }
}

impl Visit for Writer<'_> {
    fn dir(&mut self, rel: &[u8], mode: u32) -> Result<(), BackupError> {
        self.record(&Entry::Dir {
            rel: rel.to_vec(),
            mode,
        })
    }

    fn file(&mut self, rel: &[u8], mode: u32, file: File, len: u64) -> Result<(), BackupError> {
        self.record(&Entry::File {
            rel: rel.to_vec(),
            mode,
        })?;
        let what = String::from_utf8_lossy(rel).into_owned();
        let n = self.chunks(file.take(len), &what, |w, r| w.record(&Entry::Chunk(r)))?;
        self.bytes += n;
        Ok(())
    }

    fn symlink(&mut self, rel: &[u8], target: &[u8]) -> Result<(), BackupError> {
        self.record(&Entry::Symlink {
            rel: rel.to_vec(),
            target: target.to_vec(),
        })
    }
}

/// Removes a temporary file when dropped.
struct TmpFile(PathBuf);

impl Drop for TmpFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Takes the snapshot `req` asks for.
pub(crate) fn take(v: &Vault, req: &SnapshotRequest<'_>) -> Result<LocalSnapshot, BackupError> {
    let roots = req
        .paths
        .iter()
        .map(|p| walk::policy_components(p))
        .collect::<Result<Vec<_>, _>>()?;
    let partition = at::open_dir_walk(req.partition)
        .map_err(|e| BackupError::io(format!("opening {}", req.partition.display()), e))?;
    let dir = v.dir.as_path();
    let id = loop {
        let id = SnapshotId(OsRng.next_u64());
        if !catalog::file(dir, req.instance, id, "").exists() {
            break id;
        }
    };
    let tmpdir = dir.join("tmp");
    let manifest_tmp = TmpFile(tmpdir.join(fsx::tmp_name("manifest")));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&manifest_tmp.0)
        .map_err(manifest_err)?;
    let mut w = Writer {
        dir,
        secret: &v.secret,
        manifest: BufWriter::with_capacity(64 * 1024, file),
        ids: IdSorter::new(&tmpdir),
        touched: store::Touched::default(),
        bytes: 0,
        new_bytes: 0,
    };
    for comps in &roots {
        w.record(&Entry::Root {
            path: comps.join("/"),
        })?;
        if !walk::walk_root(&partition, comps, &mut w)? {
            w.record(&Entry::Absent)?;
        }
    }
    w.record(&Entry::End)?;
    w.manifest.flush().map_err(manifest_err)?;
    // The manifest, chunked like a file; its refs are the root.
    let manifest = File::open(&manifest_tmp.0).map_err(manifest_err)?;
    let mut root: Vec<ChunkRef> = Vec::new();
    w.chunks(manifest, "the manifest", |_, r| {
        root.push(r);
        Ok(())
    })?;
    let root_len = postcard::to_stdvec(&root).map_or(usize::MAX, |b| b.len());
    if root_len + hedge_common::aead::TAG_LEN > MAX_ROOT {
        return Err(BackupError::RootTooLarge(root.len()));
    }
    w.touched.sync(dir)?;
    let ids_path = catalog::file(dir, req.instance, id, ".ids");
    let inst_dir = catalog::instance_dir(dir, req.instance);
    fsx::make_dir(&inst_dir, 0o700)
        .map_err(|e| BackupError::io(inst_dir.display().to_string(), e))?;
    let chunks = w
        .ids
        .finish(&ids_path)
        .map_err(|e| BackupError::io(ids_path.display().to_string(), e))?;
    let mut key = [0u8; 32];
    OsRng.fill_bytes(&mut key);
    let entry = CatalogEntry {
        instance: req.instance.clone(),
        id,
        taken_ms: req.now_ms,
        consistency: req.consistency,
        bytes: w.bytes,
        new_bytes: w.new_bytes,
        chunks,
        key,
        root,
        imported: None,
    };
    if let Err(e) = catalog::save(dir, &entry) {
        let _ = std::fs::remove_file(&ids_path);
        return Err(e);
    }
    Ok(LocalSnapshot {
        instance: entry.instance,
        id,
        taken_ms: entry.taken_ms,
        bytes: entry.bytes,
        new_bytes: entry.new_bytes,
        chunks,
        consistency: entry.consistency,
        uploaded: false,
        source: None,
    })
}
