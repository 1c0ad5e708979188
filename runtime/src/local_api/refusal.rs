//! Why the local API said no: [`Refusal`], one typed enum for every refusal.
//!
//! Contract: on the wire a refusal is `{"ok":false,"error":"<message>","refusal":{"kind":...}}`
//! (see [`super::Refused`]); `error` is the refusal's `Display`, so people and scripts
//! that read `error` see the same words as before. Refusals of the peer itself
//! (before any request is read) also carry `"refused":true`.

use serde::{Deserialize, Serialize};

/// Why a request (or the peer that sent it) was turned away.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Refusal {
    /// The name is not a valid instance name.
    #[error("{name:?}: {reason}")]
    BadName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No instance has this name.
    #[error("no instance named {name:?}")]
    NotFound {
        /// The name given.
        name: String,
    },
    /// No local request has this name (start, stop and destroy change local requests).
    #[error("no local instance named {name:?}")]
    NoLocalInstance {
        /// The name given.
        name: String,
    },
    /// The master's desired state holds this name: only the master may change it.
    #[error("instance {name:?} is owned by the master; change it there")]
    OwnedByMaster {
        /// The name given.
        name: String,
    },
    /// A new instance would exceed `node.max_instances`.
    #[error("node is full: {max} instances (node.max_instances, board {board})")]
    NodeFull {
        /// `node.max_instances`.
        max: u32,
        /// The board profile id.
        board: String,
    },
    /// The desired state could not be read, so ownership cannot be judged.
    #[error("cannot read the desired state: {reason}")]
    DesiredUnreadable {
        /// The store's error.
        reason: String,
    },
    /// The request is out of bounds (too many files, too long a value, …).
    #[error("{reason}")]
    OutOfBounds {
        /// Which bound, and by how much.
        reason: String,
    },
    /// The store failed.
    #[error("{reason}")]
    Store {
        /// The store's error.
        reason: String,
    },
    /// The request line is not a request.
    #[error("malformed request: {reason}")]
    Malformed {
        /// The parser's error.
        reason: String,
    },
    /// The request line exceeds the limit.
    #[error("request line too long")]
    TooLong,
    /// The request line could not be read.
    #[error("cannot read request: {reason}")]
    Unreadable {
        /// The I/O error.
        reason: String,
    },
    /// The answer could not be written as JSON (e.g. a path that is not UTF-8).
    #[error("cannot write the answer: {reason}")]
    Unanswerable {
        /// The serializer's error.
        reason: String,
    },
    /// The daemon is stopping and answers nothing more.
    #[error("daemon is shutting down")]
    ShuttingDown,
    /// A partition's uid: instances never reach the API.
    #[error("uid {uid} is a partition uid; instances may not use the local API")]
    Partition {
        /// The peer's uid.
        uid: u32,
    },
    /// Neither root, the daemon's user, nor a member of the API group.
    #[error("uid {uid} (gid {gid}) may not use the local API (root or the [api] group only)")]
    NotAllowed {
        /// The peer's uid.
        uid: u32,
        /// The peer's gid.
        gid: u32,
    },
    /// The kernel gave no credentials.
    #[error("peer credentials unavailable")]
    NoCredentials,
    /// A snapshot could not be taken, or backups are unavailable on this node.
    #[error("backup of {name:?} failed: {reason}")]
    Backup {
        /// The instance.
        name: String,
        /// Why.
        reason: String,
    },
    /// A restore failed; the instance's paths are as they were.
    #[error("restore of {name:?} failed: {reason}")]
    Restore {
        /// The instance.
        name: String,
        /// Why.
        reason: String,
    },
    /// The snapshot is not in this node's catalog (`hedge node backups` lists them).
    #[error("no local snapshot {snapshot} of {name:?}")]
    NoSnapshot {
        /// The instance.
        name: String,
        /// The id given.
        snapshot: String,
    },
    /// A backup or a restore of this instance is already under way.
    #[error("{name:?} is being backed up or restored; try again")]
    BackupBusy {
        /// The instance.
        name: String,
    },
    /// Too many connections at once.
    #[error("too many local API connections; try again")]
    Busy,
}

impl Refusal {
    /// Whether the peer itself was refused (no request was read).
    pub fn of_peer(&self) -> bool {
        matches!(
            self,
            Refusal::Partition { .. }
                | Refusal::NotAllowed { .. }
                | Refusal::NoCredentials
                | Refusal::Busy
        )
    }
}
