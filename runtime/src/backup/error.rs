//! The backup engine's one error enum.

use hedge_wire::backup::SnapshotId;
use hedge_wire::Name;

use super::ChunkId;

/// Why a backup operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// I/O on the backup directory or the partition.
    #[error("{what}: {source}")]
    Io {
        /// What was being done (and on which path).
        what: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A chunk's ciphertext does not match its id, does not open under its key, or is
    /// not the length its reference says: altered at rest or in transit.
    #[error("{}", damaged(snapshot, chunk))]
    Damaged {
        /// The snapshot being read (`None` from [`super::Vault::put_chunk`], which does
        /// not know which snapshot the chunk is for: see [`BackupError::in_snapshot`]).
        snapshot: Option<SnapshotId>,
        /// The chunk.
        chunk: ChunkId,
    },
    /// A chunk the snapshot needs is not in the store.
    #[error("snapshot {snapshot}: chunk {} is missing", hex(chunk))]
    Missing {
        /// The snapshot.
        snapshot: SnapshotId,
        /// The chunk.
        chunk: ChunkId,
    },
    /// [`super::Vault::read_chunk`] of a chunk the store does not hold.
    #[error("chunk {} is not stored", hex(.0))]
    NoChunk(ChunkId),
    /// No such snapshot in the catalog.
    #[error("no snapshot {snapshot} of {instance}")]
    NotFound {
        /// The instance.
        instance: Name,
        /// The snapshot.
        snapshot: SnapshotId,
    },
    /// An imported snapshot whose manifest is not all in the store yet.
    #[error("snapshot {snapshot} of {instance} is incomplete: its manifest's chunks are missing")]
    Incomplete {
        /// The instance.
        instance: Name,
        /// The snapshot.
        snapshot: SnapshotId,
    },
    /// A restore grant whose root does not open under its key, or that names another
    /// snapshot than one already imported with the same id.
    #[error("snapshot {snapshot}: bad restore grant: {why}")]
    BadGrant {
        /// The snapshot.
        snapshot: SnapshotId,
        /// What is wrong.
        why: &'static str,
    },
    /// A backup path that is absolute, has `..`, or names the partition itself.
    #[error("backup path {0:?}: must name something inside the partition (relative, no '..')")]
    BadPath(String),
    /// A directory tree deeper than the walk's bound.
    #[error("{0}: more than {max} nested directories", max = super::walk::MAX_DEPTH)]
    TooDeep(String),
    /// A path a restore must go through is not a directory (a file or a symlink).
    #[error("{0}: not a directory (a restore never follows a symlink)")]
    NotADirectory(String),
    /// A snapshot's manifest is too large for its root to fit a header.
    #[error("the manifest is too large ({0} chunks)")]
    RootTooLarge(usize),
    /// A catalog entry, id list or manifest that does not decode.
    #[error("{0}")]
    Corrupt(String),
    /// [`super::Vault::header`] on a vault that does not know its node's name.
    #[error("the backup directory does not know the node's name (open it with Vault::open_as)")]
    NoNode,
}

impl BackupError {
    /// For `map_err`: I/O while doing `what`.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> BackupError {
        BackupError::Io {
            what: what.into(),
            source,
        }
    }

    /// A [`BackupError::Damaged`] without a snapshot, given the one it belongs to
    /// (e.g. after [`super::Vault::put_chunk`] refused a chunk fetched for a restore);
    /// any other error unchanged.
    pub fn in_snapshot(self, snapshot: SnapshotId) -> BackupError {
        match self {
            BackupError::Damaged {
                snapshot: None,
                chunk,
            } => BackupError::Damaged {
                snapshot: Some(snapshot),
                chunk,
            },
            other => other,
        }
    }
}

fn hex(id: &ChunkId) -> String {
    hedge_common::hex::encode(id)
}

fn damaged(snapshot: &Option<SnapshotId>, chunk: &ChunkId) -> String {
    match snapshot {
        Some(s) => format!(
            "snapshot {s} is damaged: chunk {} does not match its id or key",
            hex(chunk)
        ),
        None => format!(
            "chunk {} is damaged: its content does not match its id",
            hex(chunk)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damaged_names_the_snapshot_and_the_chunk_in_hex() {
        let e = BackupError::Damaged {
            snapshot: None,
            chunk: [0xab; 32],
        }
        .in_snapshot(SnapshotId(0x1234));
        let s = e.to_string();
        assert!(s.contains("0000000000001234"), "{s}");
        assert!(s.contains(&"ab".repeat(32)), "{s}");
    }
}
