//! The hedge master: ingest, fleet registry, allocation, signing, usage, invoices,
//! incidents.
//!
//! Pure cores ([`coverage`], [`alloc`], [`billing`]) beside the SQLite [`store`] and
//! the desired-state signature ([`sign`]). The MQTT driver and the CLI call these;
//! [`artifacts`] stores supplied software and serves it to nodes over HTTPS.

pub mod admission;
pub mod alloc;
pub mod artifacts;
pub mod billing;
pub mod config;
pub mod coverage;
pub mod placement;
pub mod sign;
pub mod store;
pub mod worker;

// The fleet PKI and the broker's config (`hedge master init`/`enroll`).
pub mod enrollment;
pub mod log_limit;
pub mod mosquitto;
pub mod pki;
pub mod revocation;
pub mod run;
