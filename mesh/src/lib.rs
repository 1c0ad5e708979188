//! Swarm peers: nodes that reach the master through each other (issue #13; the design is
//! `docs/architecture.md`, section "Mesh").
//!
//! Transport (no sync logic):
//! - [`config`]: `MeshConfig`, the `[mesh]` section of node.toml.
//! - [`net`]: the transport the mesh link codes against: [`net::start`], [`NetHandle`],
//!   [`PeerEvent`]s.
//! - [`tls`]: mutual TLS of peer sessions under the fleet CA (identity = certificate CN).
//! - [`frame`]: length-prefixed peer frames and keepalives.
//! - [`routes`]: the pure routes core (peers' hops, best next hop, whom to dial).
//! - [`stats`]: the transport's counters.
//! - `session`, `beacon`: the I/O of one session and of multicast beacons.
//!
//! The mesh link (the daemon's second link, `LinkId::Mesh`) and its pure cores:
//! - [`link`]: the mesh link task: one sync machine to the best next hop, and the relay.
//! - [`custody`]: whether a relay takes a peer's batch into its own outbox.
//! - [`epidemic`]: the newest signed desired state per node, and what to push to whom.
//! - [`trust`]: the keys the link signs and checks with (`hedge_uplink::origin`).
//! - [`params`]: the newest signed connection parameters per (node, instance).
//! - `newest`: the bounded newest-generation map `epidemic` and `params` share.

mod beacon;
pub mod config;
pub mod custody;
pub mod epidemic;
pub mod frame;
pub mod link;
pub mod net;
mod newest;
pub mod params;
pub mod routes;
mod session;
pub mod stats;
pub mod tls;
pub mod trust;

pub use config::MeshConfig;
pub use net::{start, NetError, NetHandle, PeerEvent, PeerEventKind, PeerInfo};
pub use newest::Kept;
pub use tls::NetTls;
