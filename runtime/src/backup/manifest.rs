//! A snapshot's manifest: the stream of entries that says what its paths held.
//!
//! Contract. A manifest is a sequence of records, each a little-endian `u32` length
//! then a postcard [`Entry`] of at most [`MAX_RECORD`] bytes, ending with
//! [`Entry::End`]. For each policy path, in order: [`Entry::Root`], then either
//! [`Entry::Absent`] or the path's tree depth first, every directory before what it
//! holds, each [`Entry::File`] followed by its content's [`Entry::Chunk`]s in order.
//! An entry's `rel` is its path below the root, components joined by `/` (empty: the
//! root itself), as raw bytes (file names need not be UTF-8). The manifest is chunked
//! and encrypted like file content, so unchanged stretches of it deduplicate too.
//! [`Decoder`] refuses a record over the bound and any path component that is empty,
//! `.`, `..` or holds `/` or NUL ([`components`]): a restore never writes outside
//! its staging directory whatever a manifest says. Pure: no I/O beyond the `Read` and
//! `Write` it is given.

use std::io::{self, Read, Write};

use hedge_wire::backup::ChunkRef;
use serde::{Deserialize, Serialize};

/// Largest encoded entry (a path 64 directories deep of 255-byte names fits twice).
pub const MAX_RECORD: usize = 64 * 1024;

/// One manifest entry (see the module doc for their order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Entry {
    /// Begins a policy path, normalised (`srv`, `var/db`).
    Root {
        /// The path within the partition.
        path: String,
    },
    /// The root did not exist when the snapshot was taken.
    Absent,
    /// A directory.
    Dir {
        /// Path below the root.
        rel: Vec<u8>,
        /// Permission bits (`& 0o777`).
        mode: u32,
    },
    /// A regular file; its chunks follow.
    File {
        /// Path below the root.
        rel: Vec<u8>,
        /// Permission bits (`& 0o777`).
        mode: u32,
    },
    /// The next chunk of the last file's content.
    Chunk(ChunkRef),
    /// A symlink (never followed: its target is stored as is).
    Symlink {
        /// Path below the root.
        rel: Vec<u8>,
        /// Its target.
        target: Vec<u8>,
    },
    /// The end of the manifest.
    End,
}

/// A manifest that does not decode.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Reading it.
    #[error("reading the manifest: {0}")]
    Io(#[from] io::Error),
    /// A record over [`MAX_RECORD`].
    #[error("a manifest record of {0} bytes (at most {MAX_RECORD})")]
    TooLong(usize),
    /// A record that is not an entry.
    #[error("a manifest record does not decode: {0}")]
    Decode(#[from] postcard::Error),
    /// The stream ends before [`Entry::End`].
    #[error("the manifest ends early")]
    Truncated,
    /// A path that could leave its root, or entries out of order.
    #[error("the manifest is malformed: {0}")]
    Malformed(&'static str),
}

/// Appends `entry`'s record to `out`.
///
/// # Errors
///
/// I/O writing; an entry over [`MAX_RECORD`] (`InvalidInput`).
pub fn write(out: &mut impl Write, entry: &Entry) -> io::Result<()> {
    let bytes = postcard::to_stdvec(entry).map_err(io::Error::other)?;
    if bytes.len() > MAX_RECORD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a manifest entry of {} bytes", bytes.len()),
        ));
    }
    let len = u32::try_from(bytes.len()).map_err(io::Error::other)?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(&bytes)
}

/// Reads entries back.
pub struct Decoder<R> {
    input: R,
    buf: Vec<u8>,
    ended: bool,
}

impl<R: Read> Decoder<R> {
    /// Decodes the records of `input`.
    pub fn new(input: R) -> Decoder<R> {
        Decoder {
            input,
            buf: Vec::new(),
            ended: false,
        }
    }

    /// The next entry; `None` after [`Entry::End`].
    ///
    /// # Errors
    ///
    /// See [`ManifestError`].
    pub fn next_entry(&mut self) -> Result<Option<Entry>, ManifestError> {
        if self.ended {
            return Ok(None);
        }
        let mut len = [0u8; 4];
        read_exact_or_truncated(&mut self.input, &mut len)?;
        let len = usize::try_from(u32::from_le_bytes(len)).unwrap_or(usize::MAX);
        if len > MAX_RECORD {
            return Err(ManifestError::TooLong(len));
        }
        self.buf.resize(len, 0);
        read_exact_or_truncated(&mut self.input, &mut self.buf)?;
        let entry: Entry = postcard::from_bytes(&self.buf)?;
        match &entry {
            Entry::Root { path } => {
                if components(path.as_bytes())?.is_empty() {
                    return Err(ManifestError::Malformed("an empty root path"));
                }
            }
            Entry::Dir { rel, .. } | Entry::File { rel, .. } | Entry::Symlink { rel, .. } => {
                components(rel)?;
            }
            Entry::End => self.ended = true,
            Entry::Absent | Entry::Chunk(_) => {}
        }
        Ok(Some(entry))
    }
}

fn read_exact_or_truncated(input: &mut impl Read, buf: &mut [u8]) -> Result<(), ManifestError> {
    input.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            ManifestError::Truncated
        } else {
            ManifestError::Io(e)
        }
    })
}

/// The components of a `/`-joined relative path (empty for the empty path), each a
/// plain name.
///
/// # Errors
///
/// [`ManifestError::Malformed`] for an empty, `.` or `..` component, or a NUL byte.
pub fn components(rel: &[u8]) -> Result<Vec<&[u8]>, ManifestError> {
    if rel.is_empty() {
        return Ok(Vec::new());
    }
    rel.split(|b| *b == b'/')
        .map(|c| {
            if c.is_empty() || c == b"." || c == b".." || c.contains(&0) {
                Err(ManifestError::Malformed(
                    "a path component that is not a plain name",
                ))
            } else {
                Ok(c)
            }
        })
        .collect()
}

/// `rel`'s parent (`None` for the root itself) and last component.
pub fn split_last(rel: &[u8]) -> Option<(&[u8], &[u8])> {
    if rel.is_empty() {
        return None;
    }
    match rel.iter().rposition(|b| *b == b'/') {
        Some(i) => Some((&rel[..i], &rel[i + 1..])),
        None => Some((&[], rel)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn all(bytes: &[u8]) -> Result<Vec<Entry>, ManifestError> {
        let mut d = Decoder::new(bytes);
        let mut out = Vec::new();
        while let Some(e) = d.next_entry()? {
            out.push(e);
        }
        Ok(out)
    }

    #[test]
    fn entries_round_trip_and_end_at_end() {
        let entries = vec![
            Entry::Root { path: "srv".into() },
            Entry::Dir {
                rel: vec![],
                mode: 0o755,
            },
            Entry::File {
                rel: b"a/\xffb".to_vec(),
                mode: 0o640,
            },
            Entry::Chunk(ChunkRef {
                id: [1; 32],
                key: [2; 32],
                len: 3,
            }),
            Entry::Symlink {
                rel: b"l".to_vec(),
                target: b"/etc/passwd".to_vec(),
            },
            Entry::Root {
                path: "var/db".into(),
            },
            Entry::Absent,
            Entry::End,
        ];
        let mut buf = Vec::new();
        for e in &entries {
            write(&mut buf, e).unwrap();
        }
        assert_eq!(all(&buf).unwrap(), entries);
        // Anything after End is not read; a stream without End is truncated.
        let n = buf.len();
        buf.extend_from_slice(b"junk");
        assert_eq!(all(&buf).unwrap().len(), entries.len());
        assert!(matches!(all(&buf[..n - 3]), Err(ManifestError::Truncated)));
    }

    #[test]
    fn paths_that_could_escape_and_oversized_records_are_refused() {
        for rel in [&b"../x"[..], b"a//b", b"./a", b"a/..", b"/a", b"a\0"] {
            let mut buf = Vec::new();
            write(
                &mut buf,
                &Entry::File {
                    rel: rel.to_vec(),
                    mode: 0,
                },
            )
            .unwrap();
            assert!(
                matches!(all(&buf), Err(ManifestError::Malformed(_))),
                "{rel:?}"
            );
        }
        let mut buf = Vec::new();
        write(&mut buf, &Entry::Root { path: "/".into() }).unwrap();
        assert!(all(&buf).is_err());
        let mut buf = u32::try_from(MAX_RECORD + 1)
            .unwrap()
            .to_le_bytes()
            .to_vec();
        buf.extend(vec![0; 16]);
        assert!(matches!(all(&buf), Err(ManifestError::TooLong(_))));
        assert_eq!(split_last(b"a/b/c"), Some((&b"a/b"[..], &b"c"[..])));
        assert_eq!(split_last(b"c"), Some((&b""[..], &b"c"[..])));
        assert_eq!(split_last(b""), None);
    }
}
