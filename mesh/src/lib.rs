//! Swarm peers: nodes that reach the master through each other (issue #13; the design is
//! `docs/architecture.md`, section "Mesh").
//!
//! Transport (owned here, no sync logic):
//! - [`config`]: `MeshConfig`, the `[mesh]` section of node.toml.
//!
//! The mesh link (the daemon's second link, `LinkId::Mesh`) and its pure cores live in
//! their own modules, declared below.

pub mod config;

pub use config::MeshConfig;
