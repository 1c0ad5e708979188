//! The outbox log's files: append-only segments of frames, committed in groups.
//!
//! Contract (I/O driver; the layout of a frame is `frame.rs`):
//! - `DIR/outbox/` holds segment files `{id:016x}.seg`, ids rising; frames are only ever
//!   added to the newest one (the active segment). A position ([`Pos`]) is a segment id
//!   and an offset in it; positions order the log.
//! - [`Segments::push`] only buffers a frame in memory. [`Segments::sync`] writes the
//!   buffer at the end of what the file holds (`pwrite` at a known offset, never
//!   `O_APPEND`: a write that failed half-way is retried over its own torn bytes) and
//!   `fdatasync`s: every frame pushed before a sync that returned `Ok` is durable. A
//!   buffer past [`WRITE_AT`] is written out (not synced) so memory stays bounded.
//! - A failed `fdatasync` poisons the log (the kernel may have dropped the pages it
//!   could not write): every later call fails until the store is opened again.
//! - [`Segments::open`] replays every segment's valid frames in order. The active
//!   segment is cut back to its valid prefix and synced before anything is written, so
//!   the bytes of a torn write are never read as frames behind newer ones. An older
//!   segment with an invalid frame (it was complete when the log moved past it) is
//!   read up to that frame and left as it is, with a warning.
//! - A new segment is started once the active one holds [`SEGMENT_BYTES`]: the active
//!   one is synced first and the directory after the new file is created. Segments are
//!   deleted oldest first ([`Segments::delete_before`]), never the active one.

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::frame;

/// A segment grows to about this size before the next one starts.
pub const SEGMENT_BYTES: u64 = 1 << 20;

/// Buffered frames are written out (not synced) past this size.
const WRITE_AT: usize = 64 << 10;

/// A place in the log: segment id, then offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    /// The segment's id.
    pub seg: u64,
    /// Offset of a frame in it.
    pub off: u64,
}

impl Pos {
    /// As stored (16 bytes, big-endian).
    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0; 16];
        b[..8].copy_from_slice(&self.seg.to_be_bytes());
        b[8..].copy_from_slice(&self.off.to_be_bytes());
        b
    }

    /// From [`Pos::to_bytes`]; anything else reads as the start of the log.
    pub fn from_bytes(b: &[u8]) -> Pos {
        Pos {
            seg: super::be_u64(b.get(..8).unwrap_or(&[])),
            off: super::be_u64(b.get(8..16).unwrap_or(&[])),
        }
    }
}

/// The segment files of one log.
#[derive(Debug)]
pub struct Segments {
    dir: PathBuf,
    /// Every segment on disk, the active one last.
    ids: BTreeSet<u64>,
    active: File,
    active_id: u64,
    /// Bytes of the active segment on file (written, synced or not).
    file_len: u64,
    /// Frames pushed and not written yet; they follow `file_len`.
    buf: Vec<u8>,
    /// Frames were pushed or written since the last sync, since this instant.
    unsynced_since: Option<Instant>,
    poisoned: bool,
}

fn seg_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.seg"))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn poisoned() -> io::Error {
    io::Error::other("outbox log: an earlier sync failed; reopen the store")
}

impl Segments {
    /// Opens (or creates) the log in `dir` and hands every valid frame to `replay`, in
    /// log order.
    pub fn open(
        dir: &Path,
        mut replay: impl FnMut(Pos, &[u8]) -> Result<(), super::StoreError>,
    ) -> Result<Segments, super::StoreError> {
        std::fs::create_dir_all(dir)?;
        let mut ids = BTreeSet::new();
        for e in std::fs::read_dir(dir)? {
            let name = e?.file_name();
            let id = name
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| u64::from_str_radix(n, 16).ok());
            if let Some(id) = id {
                ids.insert(id);
            }
        }
        if ids.is_empty() {
            File::create(seg_path(dir, 1))?.sync_all()?;
            sync_dir(dir)?;
            ids.insert(1);
        }
        let active_id = ids.last().copied().unwrap_or(1);
        let mut file_len = 0;
        for &id in &ids {
            let bytes = std::fs::read(seg_path(dir, id))?;
            let mut frames = frame::Frames::new(&bytes);
            for (off, payload) in frames.by_ref() {
                replay(
                    Pos {
                        seg: id,
                        off: off as u64,
                    },
                    payload,
                )?;
            }
            let valid = frames.end();
            if valid < bytes.len() {
                tracing::warn!(
                    segment = id,
                    dropped_bytes = bytes.len() - valid,
                    active = id == active_id,
                    "outbox log: torn or corrupt frames dropped (records nobody saw)"
                );
            }
            if id == active_id {
                file_len = valid as u64;
                if valid < bytes.len() {
                    let f = std::fs::OpenOptions::new()
                        .write(true)
                        .open(seg_path(dir, id))?;
                    f.set_len(file_len)?;
                    f.sync_all()?;
                }
            }
        }
        let active = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(seg_path(dir, active_id))?;
        Ok(Segments {
            dir: dir.to_path_buf(),
            ids,
            active,
            active_id,
            file_len,
            buf: Vec::new(),
            unsynced_since: None,
            poisoned: false,
        })
    }

    /// Where the next frame goes.
    pub fn end(&self) -> Pos {
        Pos {
            seg: self.active_id,
            off: self.file_len + self.buf.len() as u64,
        }
    }

    /// Buffers one frame (starting a new segment first when the active one is full);
    /// returns where it is and its length on disk.
    #[allow(clippy::disallowed_methods)] // I/O driver: when the group commit began
    pub fn push(&mut self, payload: &[u8]) -> io::Result<(Pos, u32)> {
        if self.poisoned {
            return Err(poisoned());
        }
        if self.end().off >= SEGMENT_BYTES {
            self.roll()?;
        }
        let at = self.end();
        let len = frame::put(&mut self.buf, payload)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| io::Error::other("outbox log: entry too large"))?;
        self.unsynced_since.get_or_insert_with(Instant::now);
        if self.buf.len() >= WRITE_AT {
            self.write_out()?;
        }
        Ok((at, len))
    }

    /// Writes the buffer at the end of the active file (no sync). On failure the file
    /// is cut back to what it held and the buffer kept, for the next attempt.
    fn write_out(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.active.write_all_at(&self.buf, self.file_len) {
            if self.active.set_len(self.file_len).is_err() {
                self.poisoned = true;
            }
            return Err(e);
        }
        self.file_len += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Whether frames were pushed since the last sync, and since when.
    pub fn unsynced_since(&self) -> Option<Instant> {
        self.unsynced_since
    }

    /// Makes every frame pushed so far durable (nothing to do when none is pending).
    pub fn sync(&mut self) -> io::Result<()> {
        if self.poisoned {
            return Err(poisoned());
        }
        if self.unsynced_since.is_none() {
            return Ok(());
        }
        self.write_out()?;
        if let Err(e) = self.active.sync_data() {
            self.poisoned = true;
            return Err(e);
        }
        self.unsynced_since = None;
        Ok(())
    }

    /// Syncs the active segment and starts the next one.
    pub fn roll(&mut self) -> io::Result<()> {
        self.sync()?;
        let id = self.active_id + 1;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(seg_path(&self.dir, id))?;
        sync_dir(&self.dir)?;
        self.active = f;
        self.active_id = id;
        self.file_len = 0;
        self.ids.insert(id);
        Ok(())
    }

    /// The segments on disk, oldest first (the active one last).
    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.ids.iter().copied()
    }

    /// The active segment's id.
    pub fn active_id(&self) -> u64 {
        self.active_id
    }

    /// Deletes every segment older than `id` (never the active one).
    pub fn delete_before(&mut self, id: u64) -> io::Result<()> {
        let id = id.min(self.active_id);
        let old: Vec<u64> = self.ids.range(..id).copied().collect();
        for seg in old {
            match std::fs::remove_file(seg_path(&self.dir, seg)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            self.ids.remove(&seg);
        }
        Ok(())
    }

    /// Reads `len` bytes at `at` (frames still buffered included).
    pub fn read(&self, at: Pos, len: usize) -> io::Result<Vec<u8>> {
        if self.poisoned {
            return Err(poisoned());
        }
        let mut out = vec![0; len];
        if at.seg == self.active_id {
            let end = at.off + len as u64;
            if end <= self.file_len {
                self.active.read_exact_at(&mut out, at.off)?;
            } else {
                // Buffered frames: (part of) the span is still in memory.
                let on_file = usize::try_from(self.file_len.saturating_sub(at.off))
                    .map_err(io::Error::other)?;
                self.active.read_exact_at(&mut out[..on_file], at.off)?;
                let from = usize::try_from(at.off + on_file as u64 - self.file_len)
                    .map_err(io::Error::other)?;
                let rest = self
                    .buf
                    .get(from..from + len - on_file)
                    .ok_or_else(|| io::Error::other("outbox log: read past its end"))?;
                out[on_file..].copy_from_slice(rest);
            }
        } else {
            File::open(seg_path(&self.dir, at.seg))?.read_exact_at(&mut out, at.off)?;
        }
        Ok(out)
    }
}
