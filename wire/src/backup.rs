//! Backups on the wire: an instance's backup policy and a restore directive (both in the
//! master's signed [`crate::DesiredState`]), the [`crate::RecordKind::Backup`] record's
//! events, and the bodies node and master exchange over the blob service (HTTPS, mutual
//! TLS): a snapshot's [`SnapshotHeader`] and a restore's [`RestoreGrant`].
//!
//! Contract: every type here is bounded while decoding and checked by
//! [`crate::Validate`]. The master can read a header's plain fields (node, instance, id,
//! time, sizes, consistency) but not what it stores: a snapshot's `root` (the list of
//! the chunks of its manifest, with their keys) is sealed with the snapshot's own key,
//! and that key travels only sealed to the fleet's recovery key (`sealed_key`). Chunks
//! are named by the SHA-256 of their ciphertext ([`ChunkRef::id`]), so whoever stores
//! one can check it and a restore detects one altered at rest.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::types::Name;

/// Most backup policies or restore directives in one desired state: one per instance.
pub const MAX_BACKUP_ENTRIES: usize = crate::limits::MAX_INSTANCES;
/// Most paths one policy backs up.
pub const MAX_BACKUP_PATHS: usize = 16;
/// Longest sealed root of a snapshot (the encrypted list of its manifest's chunks).
pub const MAX_ROOT: usize = 256 * 1024;
/// Length of a snapshot key sealed to the recovery key: an ephemeral X25519 public key
/// (32), the key encrypted with ChaCha20-Poly1305 (32) and its tag (16).
pub const SEALED_KEY_LEN: usize = 80;
/// Largest plaintext of one chunk; the chunker's maximum is below it.
pub const MAX_CHUNK: u32 = 1024 * 1024;

/// Names one snapshot of one instance: 16 hex digits, made at random by the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SnapshotId(pub u64);

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A snapshot id that is not 16 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotIdError;

impl fmt::Display for SnapshotIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a snapshot id is 16 hex digits")
    }
}

impl FromStr for SnapshotId {
    type Err = SnapshotIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(SnapshotIdError);
        }
        u64::from_str_radix(s, 16)
            .map(SnapshotId)
            .map_err(|_| SnapshotIdError)
    }
}

/// How a snapshot was made consistent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Consistency {
    /// The instance's cgroup was frozen (`cgroup.freeze`) while its paths were read.
    Frozen,
    /// The policy's command ran in the partition and exited 0 first (e.g. a database
    /// dump); the paths were read while the instance ran.
    Command,
    /// Neither was possible (no cgroup v2 on this node, no command): files were read
    /// while the instance ran, each file as it was when read.
    Live,
}

/// An instance's backup policy (`[backup]` in its request), carried in the signed
/// desired state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupPolicy {
    /// The instance, one of the state's `instances`.
    pub instance: Name,
    /// Time between snapshots, seconds (at least 1).
    pub interval_s: u32,
    /// Snapshots kept, on the node and at the master (at least 1).
    pub retain: u16,
    /// Paths within the partition, relative, no `..` (default `srv`).
    #[serde(deserialize_with = "crate::bounded::backup_paths")]
    pub paths: Vec<String>,
    /// Run in the partition before each snapshot (e.g. a database dump); empty: none,
    /// the instance is frozen instead where the node can.
    #[serde(deserialize_with = "crate::bounded::args")]
    pub command: Vec<String>,
}

/// Restore `instance` from `snapshot`, taken on node `source`, before starting it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreDirective {
    /// The instance, one of the state's `instances`.
    pub instance: Name,
    /// The node that took the snapshot (its chunks are stored under that node).
    pub source: Name,
    /// Which snapshot.
    pub snapshot: SnapshotId,
}

/// What a [`crate::RecordKind::Backup`] record reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackupEvent {
    /// A snapshot was taken and is stored on the node.
    Taken {
        /// When its paths were read, ms since the Unix epoch.
        taken_ms: u64,
        /// Bytes of the files it holds.
        bytes: u64,
        /// Bytes of chunks that no earlier snapshot of this node had.
        new_bytes: u64,
        /// How it was made consistent.
        consistency: Consistency,
    },
    /// The snapshot and every chunk it needs are in the master's blob store.
    Uploaded,
    /// A snapshot could not be taken or uploaded (the record's message says why).
    Failed,
    /// The instance's paths were rebuilt from the snapshot before it started.
    Restored {
        /// The node that took the snapshot.
        source: Name,
    },
    /// A restore was refused (a chunk missing or damaged, a key not granted): the
    /// instance was not started. The message names what failed.
    RestoreFailed {
        /// The node that took the snapshot.
        source: Name,
    },
}

/// One chunk of a snapshot, as the snapshot's (sealed) manifest lists it. A chunk's
/// ciphertext is ChaCha20-Poly1305 under `key` (nonce 0: a key encrypts one plaintext
/// only) and `id` is the SHA-256 of that ciphertext.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// SHA-256 of the ciphertext: the chunk's name in every store.
    pub id: [u8; 32],
    /// The chunk's own key, derived on the node from its plaintext and the node's
    /// backup secret (equal chunks of one node dedupe; nobody else can derive it).
    pub key: [u8; 32],
    /// Plaintext length, at most [`MAX_CHUNK`].
    pub len: u32,
}

/// A snapshot as the node uploads it after all its chunks (blob service) and as the
/// master lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotHeader {
    /// The node that took it.
    pub node: Name,
    /// The instance.
    pub instance: Name,
    /// Its id.
    pub id: SnapshotId,
    /// When its paths were read, ms since the Unix epoch.
    pub taken_ms: u64,
    /// How it was made consistent.
    pub consistency: Consistency,
    /// Bytes of the files it holds.
    pub bytes: u64,
    /// Bytes of chunks no earlier snapshot of this node had.
    pub new_bytes: u64,
    /// Chunks it references (manifest and files), duplicates counted once.
    pub chunks: u64,
    /// The [`ChunkRef`]s of its manifest, postcard, sealed with ChaCha20-Poly1305 under
    /// the snapshot key (nonce 0).
    #[serde(deserialize_with = "crate::bounded::root")]
    pub root: Vec<u8>,
    /// The snapshot key, sealed to the fleet's recovery key ([`SEALED_KEY_LEN`] bytes).
    pub sealed_key: heapless::Vec<u8, SEALED_KEY_LEN>,
}

/// The master's answer to a node that restores a snapshot its desired state names:
/// the header and the snapshot key, unsealed by the master (sent only over mutual TLS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreGrant {
    /// The snapshot.
    pub header: SnapshotHeader,
    /// Its key.
    pub key: [u8; 32],
}
