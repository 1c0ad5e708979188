//! The node's local API as typed values: what a client asks ([`ApiRequest`]), what
//! the daemon answers ([`Answer`], [`NodeStatus`] and its views) and why it refuses
//! ([`Refusal`]).
//!
//! Contract: the daemon (`daemon::api`, the answering side) serializes exactly these
//! types and every reader (the CLI, the sandbox, the tests) deserializes them; nobody
//! indexes the JSON by string. One answer is one JSON object: [`Accepted`] —
//! `{"ok":true, ...the answer's fields}` — or [`Refused`] — `{"ok":false,"error":...}`.
//! Answers are written through `serde_json::Value`, so keys come out sorted, as they
//! always have. Pure: no I/O here.

mod backup;
mod mesh;
mod refusal;
mod views;

use std::path::PathBuf;

use hedge_wire::{InstanceRequest, Record};
use serde::{Deserialize, Serialize};

pub use backup::{consistency_word, BackupList, LastSnapshot, Restored, SnapshotView, Snapshotted};
pub use mesh::{MeshView, PeerView, RelayView};
pub use refusal::Refusal;
pub use views::{
    requested_word, severity_word, state_word, word, Counters, DesiredView, HealthView,
    IncidentStatus, IncidentView, InstanceView, LinkProgress, NodeStatus, OutboxView, PromiseView,
    RefusedArtifact, SoftwareView, UplinkView,
};

/// What a client asks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ApiRequest {
    /// Everything `hedge node status` shows: answered by [`NodeStatus`].
    Status,
    /// The Prometheus text exposition (used by the metrics endpoint): [`MetricsText`].
    Metrics,
    /// Store and apply a local request: [`Requested`].
    Request {
        /// The request, already checked by the client (the daemon checks again).
        request: Box<InstanceRequest>,
        /// Its backup policy (`[backup]` in a request file); `None`: no backups (an
        /// earlier policy of this instance is dropped).
        #[serde(default)]
        backup: Option<hedge_wire::BackupPolicy>,
    },
    /// Start a local instance: [`Requested`].
    Start {
        /// The local request to set to `started`.
        name: String,
    },
    /// Stop a local instance: [`Requested`].
    Stop {
        /// The local request to set to `stopped`.
        name: String,
    },
    /// Destroy a local instance (stop, remove its partition): [`Requested`].
    Destroy {
        /// The local request to set to `destroyed`.
        name: String,
    },
    /// Records waiting in the outbox, oldest first: [`OutboxPage`].
    Outbox {
        /// First sequence number wanted.
        #[serde(default)]
        from: u64,
        /// At most this many (capped at 1000).
        #[serde(default = "default_limit")]
        limit: usize,
    },
    /// Take a snapshot of an instance now: [`Snapshotted`] once it is in the catalog.
    Backup {
        /// Any supervised instance (its policy's paths and command, else `srv`).
        name: String,
    },
    /// The node's snapshots, oldest first: [`BackupList`].
    Backups {
        /// Only this instance's.
        #[serde(default)]
        name: Option<String>,
    },
    /// Rebuild an instance's paths from a local snapshot, offline: stop it, restore,
    /// start it again as requested: [`Restored`].
    Restore {
        /// The instance.
        name: String,
        /// The snapshot id (16 hex digits), one in this node's catalog.
        snapshot: String,
    },
    /// Where an instance's log file is: [`LogPath`].
    LogPath {
        /// Any supervised instance, local or the master's.
        name: String,
    },
}

fn default_limit() -> usize {
    100
}

/// The answer to `metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsText {
    /// The Prometheus text exposition.
    pub text: String,
}

/// The answer to `request`, `start`, `stop` and `destroy`: the request was stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requested {
    /// The instance's name.
    pub name: String,
}

/// The answer to `outbox`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxPage {
    /// Waiting records, oldest first.
    pub records: Vec<Record>,
}

/// The answer to `log_path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPath {
    /// The instance's log file.
    pub path: PathBuf,
}

/// Any answer the daemon gives; on the wire, the fields of the one it holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Answer {
    /// To `status`.
    Status(Box<NodeStatus>),
    /// To `metrics`.
    Metrics(MetricsText),
    /// To `request`, `start`, `stop`, `destroy`.
    Requested(Requested),
    /// To `outbox`.
    Outbox(OutboxPage),
    /// To `log_path`.
    LogPath(LogPath),
    /// To `backup`.
    Snapshotted(Snapshotted),
    /// To `backups`.
    Backups(BackupList),
    /// To `restore`.
    Restored(Restored),
}

impl ApiRequest {
    /// Whether the answer may take long (a snapshot, a restore): the API server then
    /// waits [`crate::daemon::api::LONG_REQUEST_TIMEOUT`] for it instead of the usual.
    pub fn is_long(&self) -> bool {
        matches!(self, ApiRequest::Backup { .. } | ApiRequest::Restore { .. })
    }
}

/// An accepted answer as it travels: `{"ok":true, ...answer}`.
#[derive(Debug, Serialize)]
pub struct Accepted<'a, T> {
    /// Always `true`.
    pub ok: bool,
    /// The answer, its fields beside `ok`.
    #[serde(flatten)]
    pub answer: &'a T,
}

impl<'a, T: Serialize> Accepted<'a, T> {
    /// `answer`, accepted.
    pub fn new(answer: &'a T) -> Self {
        Accepted { ok: true, answer }
    }

    /// The JSON object, keys sorted.
    pub fn to_value(&self) -> serde_json::Result<serde_json::Value> {
        serde_json::to_value(self)
    }
}

/// A refusal as it travels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    /// Always `false`.
    pub ok: bool,
    /// The refusal in words.
    pub error: String,
    /// Set when the peer itself was refused.
    #[serde(default, skip_serializing_if = "is_false")]
    pub refused: bool,
    /// The refusal, typed.
    pub refusal: Refusal,
}

fn is_false(b: &bool) -> bool {
    !b
}

impl From<Refusal> for Refused {
    fn from(refusal: Refusal) -> Self {
        Refused {
            ok: false,
            error: refusal.to_string(),
            refused: refusal.of_peer(),
            refusal,
        }
    }
}

#[cfg(test)]
mod tests;
