//! The hedge master: ingest, fleet registry, allocation, signing, usage, invoices,
//! incidents. The design: `docs/architecture.md`.
//!
//! Pure cores:
//! - [`coverage`]: the acknowledged prefix of a node's sequence numbers.
//! - [`alloc`]: which node gets a new instance.
//! - [`placement`]: where a request goes, moves and pruning, and `hedge master request`.
//! - [`moves`]: fences, the two-phase handover, the decision log and its budget.
//! - [`admission`]: how much one node may make the master process and store.
//! - [`billing`]: invoices from usage records and a price list.
//! - [`imports`]: which connection parameters of other nodes a node's state carries.
//! - [`act`]: what the master moves for the fleet and why (and its driver).
//! - [`failover`]: lost nodes' instances: the `move`/`wait` policy, leases, defaults.
//! - [`node_state`]: a node's state (schedulable, draining, retiring, retired; lost).
//! - [`epoch`]: the master's epoch, the high 32 bits of every generation, raised when
//!   the store is recovered from a backup (`hedge master backup --out`, `recover
//!   --from`) so nodes that applied later generations accept the recovered master's.
//! - [`restore`]: `hedge master restore`, an instance rebuilt on a node from a snapshot.
//!
//! Storage and keys:
//! - [`store`]: the [`store::FleetStore`] trait (its doc is the contract), the SQLite
//!   backend, the pure ingest checks and views, the conformance suite.
//! - [`sign`]: the master's ed25519 key and the signature of desired states and of
//!   acks carried through the mesh.
//! - [`origin`]: the nodes' enrolled keys and the check of a relayed batch's signature.
//! - [`relay`]: unwrapping relayed batches (pure).
//! - [`config`]: the config file, `master.toml`.
//!
//! Drivers:
//! - [`run`]: `hedge master run`, the MQTT driver; [`worker`]: the thread that owns the
//!   store for it.
//! - [`artifacts`]: supplied software, and the HTTPS endpoint nodes download it from and
//!   enroll at.
//! - [`blobs`]: the blob service nodes back up to, on the same endpoint.
//! - [`log_limit`]: the rate limit of the HTTPS endpoint's refusal logs.
//!
//! The fleet PKI (`hedge master init`, `enroll`, `revoke`):
//! - [`pki`]: the fleet CA, the master directory and enrollment bundles.
//! - [`enrollment`]: one-time tokens, first certificates and renewals by CSR.
//! - [`revocation`]: revoked nodes and the broker's CRL.
//! - [`mosquitto`]: the broker's config and ACL.

pub mod act;
pub mod admission;
pub mod alloc;
pub mod artifacts;
pub mod billing;
pub mod blobs;
pub mod config;
pub mod coverage;
pub mod enrollment;
pub mod epoch;
pub mod failover;
pub mod imports;
pub mod log_limit;
pub mod mosquitto;
pub mod moves;
pub mod node_state;
pub mod origin;
pub mod pki;
pub mod placement;
pub mod relay;
pub mod restore;
pub mod revocation;
pub mod run;
pub mod sign;
pub mod store;
pub mod worker;
