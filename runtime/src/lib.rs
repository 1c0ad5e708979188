//! The hedge node runtime: everything `hedge node` runs. The design (data flow, the
//! cores' contracts): `docs/architecture.md`.
//!
//! Pure cores (no I/O, no clock; time is passed in):
//! - [`reconcile`]: the diff between what is requested and what the supervisor holds.
//! - [`desired`]: accepting the master's signed desired state (generation, signature,
//!   expiry judged against a persisted clock floor).
//! - [`render`]: an instance request into program, arguments, environment and config
//!   files, `{{ key }}` replaced.
//! - [`monitor`]: promises, incidents and self-repair, usage accounting (and when its
//!   state is saved), outbox shedding; with their thin readers of checks and `/proc`.
//! - [`supervisor`]: the per-instance `lifecycle` machine, beside the process side
//!   (spawning, process identity, reaping a uid).
//! - [`lease`]: leases and fences (which leased copies may run, fence reports,
//!   heartbeats).
//! - [`local_api`]: the local API's typed requests, answers, status views and refusals.
//! - [`relay`]: custody held for other nodes (mesh): the per-origin bound and shedding.
//!
//! State and configuration:
//! - [`config`]: the config file, `node.toml`.
//! - [`store`]: the sled store (desired, local and observed state, the outbox, the epoch).
//! - [`request_file`]: request files and the equivalent CLI flags.
//! - [`identity`]: the node's ed25519 key; [`credentials`]: its TLS key, enrollment by
//!   CSR and certificate renewal.
//!
//! An instance's home and software:
//! - [`partition`]: partitions (directories, uids, cgroups, limits, uid quarantine).
//! - [`logfile`]: size-rotated instance logs.
//! - [`artifact`]: the cache of extracted artifacts, their download and safe extraction.
//! - [`backup`]: snapshots of instances' paths (chunked, deduplicated, encrypted) and restores.
//!
//! The driver:
//! - [`daemon`]: the event loop and the parts it owns (instances, monitoring, outbox,
//!   links), the local API socket, the metrics endpoint.
pub mod artifact;
pub mod backup;
pub mod config;
pub mod credentials;
pub mod daemon;
pub mod desired;
pub mod holdover;
pub mod identity;
pub mod lease;
pub mod local_api;
pub mod logfile;
pub mod monitor;
pub mod partition;
pub mod reconcile;
pub mod relay;
pub mod render;
pub mod request_file;
pub mod store;
pub mod supervisor;
#[cfg(test)]
mod test_host;
