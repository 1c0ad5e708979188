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
//! The mesh link (the daemon's second link, `LinkId::Mesh`) and its pure cores live in
//! their own modules, declared below.

mod beacon;
pub mod config;
pub mod frame;
pub mod net;
pub mod routes;
mod session;
pub mod stats;
pub mod tls;

pub use config::MeshConfig;
pub use net::{start, NetError, NetHandle, PeerEvent, PeerEventKind, PeerInfo};
pub use tls::NetTls;
