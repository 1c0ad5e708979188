//! The mesh as `status` shows it: this node's path to the master, its peers and the
//! custody it holds for each origin.

use serde::{Deserialize, Serialize};

/// The mesh part of `status` (all defaults when `[mesh]` is off).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshView {
    /// Whether `[mesh]` is enabled (and its link runs).
    pub enabled: bool,
    /// Whether the mesh link is up (records leave through a peer).
    pub connected: bool,
    /// This node's hops to the master: 0 with the direct uplink, a peer's + 1 otherwise,
    /// `null` without a path.
    pub hops: Option<u8>,
    /// Peers with a session up, then origins this node holds custody for, by name.
    pub peers: Vec<PeerView>,
    /// Custody totals of this run.
    pub relay: RelayView,
}

/// One peer (or origin) as `status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerView {
    /// Its node id (its certificate's CN).
    pub node: String,
    /// Its address while a session is up.
    pub address: Option<String>,
    /// `up` while a session is up, `down` otherwise.
    pub link: String,
    /// Its hops to the master, from its latest `Hello`; `null` without a path or session.
    pub hops: Option<u8>,
    /// Batches of its records held in custody here now.
    pub custody_batches: u64,
    /// Bytes of them.
    pub custody_bytes: u64,
    /// Bytes of its batches taken in custody here (this run; absent from older daemons).
    #[serde(default)]
    pub taken_bytes: u64,
    /// Its batches shed here to keep it under `custody_bytes_per_origin` (this run).
    pub shed: u64,
    /// Bytes of them (absent from older daemons).
    #[serde(default)]
    pub shed_bytes: u64,
    /// Its batches refused for want of room (this run).
    pub refused: u64,
}

/// Custody taken for others during this run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayView {
    /// Batches taken in custody.
    pub batches: u64,
    /// Records in them (every depth).
    pub records: u64,
    /// Bytes appended for them.
    pub bytes: u64,
    /// Batches refused (full, malformed, too deep, not the peer's).
    pub refused: u64,
    /// Batches shed under the per-origin bound.
    pub shed: u64,
    /// Newer connection parameters of peers' instances stored.
    pub peer_params: u64,
}
