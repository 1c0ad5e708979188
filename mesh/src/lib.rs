//! Swarm peers: nodes that reach the master through each other (issue #13; the design is
//! `docs/architecture.md`, section "Mesh").
//!
//! Transport (no sync logic):
//! - [`config`]: `MeshConfig`, the `[mesh]` section of node.toml.
//! - [`frame`]: length-prefixed peer frames and keepalives.
//! - [`routes`]: the pure routes core (peers' hops, best next hop, whom to dial).
//! - [`stats`]: the transport's counters.
//!
//! The mesh link (the daemon's second link, `LinkId::Mesh`) and its pure cores live in
//! their own modules, declared below.

pub mod config;
pub mod frame;
pub mod routes;
pub mod stats;

pub use config::MeshConfig;
