//! The local API's backup answers: a snapshot as `hedge node backup` and
//! `hedge node backups` show it ([`SnapshotView`]), the list ([`BackupList`]), a local
//! restore's outcome ([`Restored`]), and the last snapshot `status` shows per instance
//! ([`LastSnapshot`]).
//!
//! Contract: these structs ARE the JSON of `hedge node backups --json` (keys are field
//! names; `id` is the snapshot id's 16 hex digits, `consistency` a lower-case word);
//! tests read them by these types. Pure: no I/O here.

use hedge_wire::Consistency;
use serde::{Deserialize, Serialize};

/// One snapshot in the node's catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotView {
    /// The instance.
    pub instance: String,
    /// The snapshot id (16 hex digits).
    pub id: String,
    /// When its paths were read, ms since the Unix epoch.
    pub taken_ms: u64,
    /// Bytes of the files it holds.
    pub bytes: u64,
    /// Bytes of chunks no earlier snapshot of this node had.
    pub new_bytes: u64,
    /// Distinct chunks it references.
    pub chunks: u64,
    /// `frozen`, `command` or `live`.
    #[serde(with = "ConsistencyWord")]
    pub consistency: Consistency,
    /// Whether the master has it.
    pub uploaded: bool,
    /// `None`: taken here; else the node that took it (imported for a restore).
    pub source: Option<String>,
}

/// The answer to `backups`: snapshots oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupList {
    /// The catalog's snapshots (of one instance when asked).
    pub snapshots: Vec<SnapshotView>,
}

/// The answer to `backup`: the snapshot just taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshotted {
    /// It.
    pub snapshot: SnapshotView,
}

/// The answer to `restore`: the instance's paths were rebuilt from a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restored {
    /// The instance.
    pub name: String,
    /// The snapshot id.
    pub snapshot: String,
    /// Regular files written.
    pub files: u64,
    /// Bytes of file content written.
    pub bytes: u64,
}

/// The newest snapshot of an instance, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastSnapshot {
    /// The snapshot id.
    pub id: String,
    /// When it was taken, ms since the Unix epoch.
    pub taken_ms: u64,
    /// Whether the master has it.
    pub uploaded: bool,
}

/// The word for a consistency (`frozen`, `command`, `live`).
pub fn consistency_word(c: Consistency) -> &'static str {
    match c {
        Consistency::Frozen => "frozen",
        Consistency::Command => "command",
        Consistency::Live => "live",
    }
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "Consistency", rename_all = "lowercase")]
enum ConsistencyWord {
    Frozen,
    Command,
    Live,
}
