//! Node <-> master sync.
//!
//! - [`sync`]: the pure sync state machine that moves the node's outbox to the master
//!   (no I/O, no clock); driven by the MQTT driver and, later, by a mesh link.
//! - [`mqtt`]: the node's MQTT driver (rumqttc, mutual TLS) around that core.
//! - [`bundle`]: the enrollment bundle a node joins a fleet with.
//! - [`tls`]: rustls client configuration from the fleet CA and a client certificate.
//! - [`topic`]: the MQTT topic names, built and parsed here for both node and master.

pub mod bundle;
pub mod mqtt;
pub mod sync;
pub mod tls;
pub mod topic;

pub use sync::{Config, ConfigError, Input, Output, Stats, SyncMachine};
