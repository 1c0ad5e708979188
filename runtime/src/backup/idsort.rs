//! Sorted lists of chunk ids on disk: a snapshot's id list (32 bytes an id, ascending,
//! each once) made with bounded memory, read back as a stream, and merged.
//!
//! Contract and bounds:
//! - [`IdSorter`] takes ids in any order, with repeats, and writes them sorted and
//!   deduplicated. It holds at most [`RUN`] ids (1 MiB) in memory; beyond that it
//!   spills sorted runs to files and merges them, holding one small read buffer per run
//!   ([`MERGE_BUF`]). A 1 GiB partition (~16k chunks of 64 KiB) fits one run; 1 TiB
//!   (~16M chunks) makes 512 runs: 1 MiB + 512 × 4 KiB.
//! - [`IdReader`] streams a list; [`Merge`] streams the union of several sorted lists,
//!   each id once, with one [`MERGE_BUF`] buffer per list (the prune sweep's bound:
//!   the number of snapshots in the catalog × 4 KiB).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::fsx;
use super::ChunkId;

/// Most ids an [`IdSorter`] holds in memory.
pub const RUN: usize = 32 * 1024;
/// Read buffer of one list in a merge.
pub const MERGE_BUF: usize = 4096;

/// Collects ids and writes them sorted, each once (see the module doc).
pub struct IdSorter {
    run: Vec<ChunkId>,
    runs: Vec<PathBuf>,
    tmpdir: PathBuf,
}

impl IdSorter {
    /// A sorter that spills its runs into `tmpdir`.
    pub fn new(tmpdir: &Path) -> IdSorter {
        IdSorter {
            run: Vec::new(),
            runs: Vec::new(),
            tmpdir: tmpdir.to_owned(),
        }
    }

    /// Adds `id`.
    ///
    /// # Errors
    ///
    /// I/O spilling a run.
    pub fn push(&mut self, id: ChunkId) -> io::Result<()> {
        self.run.push(id);
        if self.run.len() >= RUN {
            self.spill()?;
        }
        Ok(())
    }

    fn spill(&mut self) -> io::Result<()> {
        self.run.sort_unstable();
        self.run.dedup();
        let path = self.tmpdir.join(fsx::tmp_name("run"));
        self.runs.push(path.clone());
        let mut w = BufWriter::new(File::create(&path)?);
        for id in &self.run {
            w.write_all(id)?;
        }
        w.flush()?;
        self.run.clear();
        Ok(())
    }

    /// Writes the sorted, deduplicated ids to `out` (durably: temporary, fsync,
    /// rename) and returns how many there are.
    ///
    /// # Errors
    ///
    /// I/O.
    pub fn finish(mut self, out: &Path) -> io::Result<u64> {
        let tmp = self.tmpdir.join(fsx::tmp_name("ids"));
        let file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        let mut w = BufWriter::new(file);
        let mut count = 0u64;
        let result = (|| {
            if self.runs.is_empty() {
                self.run.sort_unstable();
                self.run.dedup();
                for id in &self.run {
                    w.write_all(id)?;
                    count += 1;
                }
            } else {
                self.spill()?;
                let readers = self
                    .runs
                    .iter()
                    .map(|p| IdReader::open_with(p, MERGE_BUF))
                    .collect::<io::Result<Vec<_>>>()?;
                for id in Merge::new(readers)? {
                    w.write_all(&id?)?;
                    count += 1;
                }
            }
            let file = w.into_inner().map_err(io::IntoInnerError::into_error)?;
            fsx::commit_file(&file, &tmp, out)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map(|()| count)
    }
}

impl Drop for IdSorter {
    fn drop(&mut self) {
        for p in &self.runs {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A stream of the ids in a list file.
pub struct IdReader {
    inner: Box<dyn Read + Send>,
}

impl IdReader {
    /// Reads the list at `path`.
    ///
    /// # Errors
    ///
    /// I/O opening it.
    pub fn open(path: &Path) -> io::Result<IdReader> {
        IdReader::open_with(path, 64 * 1024)
    }

    /// Reads the list at `path` through a buffer of `buf` bytes.
    ///
    /// # Errors
    ///
    /// I/O opening it.
    pub fn open_with(path: &Path, buf: usize) -> io::Result<IdReader> {
        Ok(IdReader {
            inner: Box::new(BufReader::with_capacity(buf, File::open(path)?)),
        })
    }

    /// A stream of ids already in memory (sorted by the caller).
    pub fn from_ids(ids: Vec<ChunkId>) -> IdReader {
        IdReader {
            inner: Box::new(io::Cursor::new(ids.concat())),
        }
    }
}

impl Iterator for IdReader {
    type Item = io::Result<ChunkId>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut id = [0u8; 32];
        let mut got = 0;
        while got < id.len() {
            match self.inner.read(&mut id[got..]) {
                Ok(0) if got == 0 => return None,
                Ok(0) => {
                    return Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "an id list ends within an id",
                    )))
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Some(Err(e)),
            }
        }
        Some(Ok(id))
    }
}

/// The union of sorted id streams, ascending, each id once.
pub struct Merge {
    readers: Vec<IdReader>,
    heap: BinaryHeap<Reverse<(ChunkId, usize)>>,
    last: Option<ChunkId>,
}

impl Merge {
    /// Merges `readers` (each sorted ascending).
    ///
    /// # Errors
    ///
    /// I/O reading the first id of one.
    pub fn new(mut readers: Vec<IdReader>) -> io::Result<Merge> {
        let mut heap = BinaryHeap::with_capacity(readers.len());
        for (i, r) in readers.iter_mut().enumerate() {
            if let Some(id) = r.next() {
                heap.push(Reverse((id?, i)));
            }
        }
        Ok(Merge {
            readers,
            heap,
            last: None,
        })
    }
}

impl Iterator for Merge {
    type Item = io::Result<ChunkId>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let Reverse((id, i)) = self.heap.pop()?;
            match self.readers[i].next() {
                Some(Ok(next)) => self.heap.push(Reverse((next, i))),
                Some(Err(e)) => return Some(Err(e)),
                None => {}
            }
            if self.last != Some(id) {
                self.last = Some(id);
                return Some(Ok(id));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn id(n: u32) -> ChunkId {
        let mut id = [0u8; 32];
        id[..4].copy_from_slice(&n.to_be_bytes());
        id[31] = 0x5a;
        id
    }

    fn sorted(n: u32, repeats: u32, tmp: &Path) -> Vec<ChunkId> {
        let mut s = IdSorter::new(tmp);
        for _ in 0..repeats {
            for i in 0..u64::from(n) {
                // A scrambled order: 7919 is prime and divides neither n.
                s.push(id(u32::try_from(i * 7919 % u64::from(n)).unwrap()))
                    .unwrap();
            }
        }
        let out = tmp.join("out");
        let count = s.finish(&out).unwrap();
        let ids: Vec<ChunkId> = IdReader::open(&out).unwrap().map(Result::unwrap).collect();
        assert_eq!(ids.len() as u64, count);
        ids
    }

    #[test]
    fn sorts_and_dedups_in_memory_and_through_spilled_runs() {
        let tmp = tempfile::tempdir().unwrap();
        let small = sorted(1000, 3, tmp.path());
        assert_eq!(small, (0..1000).map(id).collect::<Vec<_>>());
        let n = u32::try_from(RUN).unwrap() * 2 + 17;
        let big = sorted(n, 2, tmp.path());
        assert_eq!(big, (0..n).map(id).collect::<Vec<_>>());
        // The runs are gone; only the output stays.
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
    }

    #[test]
    fn merge_gives_the_union_once() {
        let a = IdReader::from_ids(vec![id(1), id(3), id(5)]);
        let b = IdReader::from_ids(vec![id(2), id(3), id(6)]);
        let c = IdReader::from_ids(vec![]);
        let got: Vec<ChunkId> = Merge::new(vec![a, b, c])
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(got, vec![id(1), id(2), id(3), id(5), id(6)]);
        let mut torn = IdReader {
            inner: Box::new(io::Cursor::new(vec![0u8; 40])),
        };
        assert!(torn.next().unwrap().is_ok());
        assert!(torn.next().unwrap().is_err());
    }
}
