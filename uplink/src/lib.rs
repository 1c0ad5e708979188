//! Node <-> master sync. Its place in the data flow: `docs/architecture.md`.
//!
//! The link-agnostic core (always built; no rumqttc, rustls or tokio, so a second driver
//! such as a mesh link can depend on it alone):
//! - [`sync`]: the pure sync state machine that moves the node's outbox to the master
//!   (no I/O, no clock), driven by a link driver.
//! - [`link`]: the messages between the node daemon and a link driver.
//! - [`topic`]: the MQTT topic names, built and parsed here for both node and master.
//! - [`bundle`]: the enrollment bundle a node joins a fleet with.
//!
//! Behind features (all on by default):
//! - `origin` (feature `origin`): mesh origin crypto: signing and checking batches with
//!   node keys, the master's signed acks, cross-peer parameters (no rustls or tokio).
//! - `tls` (feature `tls`): rustls client configuration from the fleet CA and a client
//!   certificate.
//! - `mqtt` (feature `mqtt`, implies `tls`): the node's MQTT driver (rumqttc, tokio,
//!   mutual TLS) around the core.

pub mod bundle;
pub mod link;
#[cfg(feature = "mqtt")]
pub mod mqtt;
#[cfg(feature = "origin")]
pub mod origin;
pub mod sync;
#[cfg(feature = "tls")]
pub mod tls;
pub mod topic;

pub use sync::{Config, ConfigError, Input, Output, Stats, SyncMachine};
