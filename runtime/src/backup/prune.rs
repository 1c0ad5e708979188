//! Retention and the chunk sweep.
//!
//! Contract (see [`super::Vault::prune`]): of `instance`'s snapshots (taken here or
//! imported), the newest `retain` by time and every one in `keep` stay; the others'
//! catalog entries are removed first, then their id lists and markers. The sweep then
//! removes every chunk file that no remaining snapshot of any instance references, and
//! every temporary in `tmp/` (the vault holds its lock exclusively meanwhile, so no
//! snapshot or fetch is writing). Which chunks are referenced is the merge of the
//! remaining snapshots' sorted id lists ([`super::idsort::Merge`]; an import whose
//! id list is not made yet counts its manifest's chunks, all it can have fetched),
//! compared with each of the 256 chunk directories in turn, sorted: memory is one
//! 4 KiB buffer per snapshot plus one chunk directory's names. If any entry or id
//! list cannot be read, nothing is swept.

use std::io;
use std::path::Path;

use hedge_wire::backup::SnapshotId;
use hedge_wire::Name;

use super::catalog::{self, CatalogEntry};
use super::idsort::{IdReader, Merge, MERGE_BUF};
use super::{fsx, store, BackupError, ChunkId, PruneSummary};

/// Applies retention to `instance`, then sweeps.
pub(crate) fn run(
    dir: &Path,
    instance: &Name,
    retain: u16,
    keep: &[SnapshotId],
) -> Result<PruneSummary, BackupError> {
    let mut mine = catalog::entries(dir, Some(instance))?;
    // Newest first.
    mine.sort_by_key(|e| std::cmp::Reverse((e.taken_ms, e.id)));
    let mut summary = PruneSummary::default();
    for (i, e) in mine.iter().enumerate() {
        if i < usize::from(retain) || keep.contains(&e.id) {
            summary.kept += 1;
            continue;
        }
        remove_snapshot(dir, e)?;
        summary.deleted.push(e.id);
    }
    sweep(dir, &mut summary)?;
    Ok(summary)
}

fn remove_snapshot(dir: &Path, e: &CatalogEntry) -> Result<(), BackupError> {
    let entry = catalog::file(dir, &e.instance, e.id, "");
    let ioe = |p: &Path| {
        let p = p.display().to_string();
        move |err| BackupError::io(p, err)
    };
    std::fs::remove_file(&entry).map_err(ioe(&entry))?;
    let d = catalog::instance_dir(dir, &e.instance);
    fsx::sync_dir(&d).map_err(ioe(&d))?;
    for suffix in [".ids", ".uploaded", ".sealed"] {
        let p = catalog::file(dir, &e.instance, e.id, suffix);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(ioe(&p)(err)),
        }
    }
    Ok(())
}

/// Removes chunks no catalog entry references, stray files of removed snapshots, and
/// temporaries.
fn sweep(dir: &Path, summary: &mut PruneSummary) -> Result<(), BackupError> {
    let all = catalog::entries(dir, None)?;
    let mut readers = Vec::with_capacity(all.len());
    for e in &all {
        let p = catalog::file(dir, &e.instance, e.id, ".ids");
        match IdReader::open_with(&p, MERGE_BUF) {
            Ok(r) => readers.push(r),
            Err(err) if err.kind() == io::ErrorKind::NotFound && e.imported.is_some() => {
                let mut ids: Vec<ChunkId> = e.root.iter().map(|r| r.id).collect();
                ids.sort_unstable();
                ids.dedup();
                readers.push(IdReader::from_ids(ids));
            }
            Err(err) => return Err(BackupError::io(p.display().to_string(), err)),
        }
    }
    let lists_err = |e| BackupError::io("reading the snapshots' id lists", e);
    let mut live = Merge::new(readers).map_err(lists_err)?.peekable();
    let chunks = store::chunks_dir(dir);
    for prefix in 0..=255u8 {
        let d = chunks.join(format!("{prefix:02x}"));
        let listing = match std::fs::read_dir(&d) {
            Ok(l) => l,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(BackupError::io(d.display().to_string(), e)),
        };
        let mut here: Vec<(ChunkId, u64)> = Vec::new();
        for f in listing {
            let f = f.map_err(|e| BackupError::io(d.display().to_string(), e))?;
            let id = f
                .file_name()
                .to_str()
                .and_then(hedge_common::hex::decode_array::<32>);
            match id {
                Some(id) if id[0] == prefix => {
                    let len = f.metadata().map_or(0, |m| m.len());
                    here.push((id, len));
                }
                // Not a chunk file: a stray, removed too.
                _ => {
                    let _ = std::fs::remove_file(f.path());
                }
            }
        }
        here.sort_unstable();
        let mut removed = false;
        for (id, len) in here {
            // Skip referenced ids below this one.
            while let Some(next) = live.peek() {
                match next {
                    Ok(l) if *l < id => {
                        live.next();
                    }
                    Ok(_) => break,
                    Err(_) => {
                        return Err(live
                            .next()
                            .and_then(Result::err)
                            .map_or_else(|| BackupError::Corrupt("id lists".into()), lists_err));
                    }
                }
            }
            if matches!(live.peek(), Some(Ok(l)) if *l == id) {
                continue;
            }
            let p = store::path(dir, &id);
            std::fs::remove_file(&p).map_err(|e| BackupError::io(p.display().to_string(), e))?;
            summary.chunks_removed += 1;
            summary.bytes_removed += len;
            removed = true;
        }
        if removed {
            fsx::sync_dir(&d).map_err(|e| BackupError::io(d.display().to_string(), e))?;
        }
    }
    remove_strays(dir, &all)?;
    Ok(())
}

/// Temporaries, and id lists or markers whose entry is gone (a crash between steps).
fn remove_strays(dir: &Path, all: &[CatalogEntry]) -> Result<(), BackupError> {
    let tmp = dir.join("tmp");
    if let Ok(listing) = std::fs::read_dir(&tmp) {
        for f in listing.flatten() {
            let _ = std::fs::remove_file(f.path());
        }
    }
    let snaps = dir.join("snapshots");
    let Ok(instances) = std::fs::read_dir(&snaps) else {
        return Ok(());
    };
    for inst in instances.flatten() {
        let Ok(files) = std::fs::read_dir(inst.path()) else {
            continue;
        };
        for f in files.flatten() {
            let name = f.file_name();
            let Some(name) = name.to_str() else {
                continue;
            };
            if fsx::is_tmp_name(f.file_name().as_os_str()) {
                let _ = std::fs::remove_file(f.path());
                continue;
            }
            let Some((id, _suffix)) = name.split_once('.') else {
                continue;
            };
            let Ok(id) = id.parse::<SnapshotId>() else {
                continue;
            };
            let inst_name = inst.file_name();
            let listed = all
                .iter()
                .any(|e| e.id == id && inst_name.to_str() == Some(e.instance.as_str()));
            if !listed {
                let _ = std::fs::remove_file(f.path());
            }
        }
    }
    Ok(())
}
