//! The master's durable store, behind the [`FleetStore`] trait: records, coverage, fleet
//! registry, desired states and supplied artifacts.
//!
//! Contract: the contract is the trait's (see [`FleetStore`]); every backend keeps it
//! and passes the one conformance suite (`store::conformance`, run against each
//! backend). Callers (the ingest [`crate::worker`], [`crate::run`], [`crate::sign`],
//! the CLI) are written against the trait; [`MasterStore`] names the backend `hedge
//! master` opens (SQLite today, [`SqliteStore`]).
//!
//! Parts: [`views`] (the view types and the pure folds of decoded records into them),
//! [`ingest`] (the pure checks and index columns of an `Up` batch), `blob` (postcard
//! blobs as every backend stores them), `error` ([`StoreError`]) and the SQLite backend
//! `sqlite` (schema, ingest, fleet, desired states, placement, artifacts, backups,
//! backup policies, restores and the master's epoch).

use std::collections::BTreeMap;

use hedge_wire::backup::{BackupPolicy, Consistency, SnapshotHeader, SnapshotId};
use hedge_wire::{DesiredState, InstanceRequest, Name, Record, Up};
use serde::{Deserialize, Serialize};

use crate::alloc::Placement;
use crate::coverage::Coverage;
use crate::moves::{Decision, Handover, InstancePlacement, MoveRequest, Moved};
use crate::node_state::{NodeOp, NodeState};
use crate::restore::{RestoreRequest, Restoring};

mod blob;
mod error;
pub mod ingest;
mod sqlite;
pub mod stale;
pub mod views;

#[cfg(test)]
pub(crate) mod conformance;

pub use error::StoreError;
pub use sqlite::{Recovered, SqliteStore, BUSY_TIMEOUT, SCHEMA_VERSION};
pub use views::{
    Health, IncidentTransition, IncidentView, InstanceSources, InstanceView, NodeSummary, Owner,
};

/// The store `hedge master` opens: the SQLite backend.
pub type MasterStore = SqliteStore;

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// One batch of [`FleetStore::ingest_many`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The node the transport (the MQTT topic) or the origin's verified signature names.
    pub node: Name,
    /// The batch.
    pub up: Up,
    /// Its arrival time, ms since the epoch.
    pub now_ms: u64,
    /// The node's byte quota.
    pub max_bytes: u64,
    /// The relays it came through, the one that reached the broker first
    /// ([`crate::relay::Layer::via`]); empty: it came directly.
    pub via: Vec<Name>,
    /// The seqs of its `Relayed` records whose batch the master refused as forged
    /// ([`crate::relay::Refused`], [`crate::relay::RelayRefusal::forged`]).
    pub refused_relayed: Vec<u64>,
}

impl Batch {
    /// A batch that came directly on `node`'s topic.
    pub fn direct(node: Name, up: Up, now_ms: u64, max_bytes: u64) -> Batch {
        Batch {
            node,
            up,
            now_ms,
            max_bytes,
            via: Vec::new(),
            refused_relayed: Vec::new(),
        }
    }
}

/// The master's store, whatever holds it. Every backend keeps this contract, which the
/// conformance suite checks:
///
/// - **Idempotent ingest.** Records are keyed by `(node, epoch, seq)`: a node's epoch is
///   one life of its store (a wiped or restored node starts a new one and counts its
///   seqs from 1 again), so lives never collide. [`FleetStore::ingest`] of the same `Up`
///   twice stores nothing new and returns the same ack. The ack is the [`Coverage`]
///   prefix of the batch's `(node, epoch)`, which only `covers` ranges extend (express
///   batches are stored but extend nothing), and names that epoch. Coverage and acks
///   are per `(node, epoch)`. A batch naming another node than `node` (the transport's)
///   is refused ([`StoreError::NodeMismatch`]), and so is one breaking a wire rule; a
///   refused batch stores nothing. Sequence numbers and covered ranges above `i64::MAX`
///   are refused ([`StoreError::SeqOutOfRange`]).
/// - **Serialized writers.** Several master processes may share one store; each write
///   is one transaction and writers serialize, so each `(node, epoch, seq)` is stored
///   exactly once across them, a node's capacity is never over-filled by concurrent
///   placements, and the ingest quota holds across processes. An acknowledgement may be
///   published once [`FleetStore::ingest`] (or [`FleetStore::ingest_many`]) returned:
///   what it acks is durable.
/// - **Carried batches** (the mesh, [`crate::relay`]). A batch relays carried
///   ([`Batch::via`] not empty) is ingested exactly like a direct one, under its own
///   node; the path of the last batch of a node stored is its [`NodeSummary::path`]. A
///   `Relayed` record is stored as its summary ([`crate::relay::stored_kind`]), never
///   with the bytes it carried; each one listed in [`Batch::refused_relayed`] counts
///   once, when first stored, in its node's [`NodeSummary::forged_relayed`].
/// - **Quota.** [`FleetStore::ingest_within`] refuses a batch of a node that already has
///   the given number of record bytes stored ([`StoreError::QuotaExceeded`]), checked
///   in the ingest transaction (overshot by at most one batch).
/// - **Lives.** Every view (fleet, instances, incidents, usage and so invoices) holds
///   every life of a node. Lives are numbered per node in the order the store first saw
///   them (from 1; 0 is the life of records stored before epochs existed), and "latest"
///   means highest (life, seq).
/// - **Integrity counters** per node: `repeats` counts records stored under a new key
///   whose event (time and content) is already stored under another seq or epoch (the
///   same event twice: what a bill must never hold); `conflicts` counts deliveries of a
///   stored `(node, epoch, seq)` with other content (the first stored wins).
/// - **Generation high-water mark.** A desired state is stored only with a generation
///   above the stored one ([`StoreError::StaleGeneration`]), and a generation handed
///   out by [`FleetStore::next_generation`], [`FleetStore::update_desired`] or
///   [`FleetStore::place`] is never handed out again, across processes. Every
///   generation handed out is in the master's epoch ([`FleetStore::epoch`],
///   [`crate::epoch::next_generation`]): at least `epoch << 32 | 1`; a store starts in
///   epoch 0 and only a recovery from a backup raises it ([`SqliteStore::recover`]).
/// - **Deliverable states.** A desired state is stored only if it passes the wire's
///   validation and, signed and framed, fits the frame limit a node decodes with
///   ([`StoreError::TooLarge`]): what is stored can be delivered.
/// - **Placement** ([`FleetStore::place`]) allocates, moves an instance between nodes
///   and prunes destroyed instances in the transaction that writes the state(s); see
///   [`crate::placement`] for the rules.
/// - **Moves** ([`FleetStore::move_instance`], [`FleetStore::complete_handovers`]):
///   fences, the two-phase handover and the decision log; see [`crate::moves`].
/// - **Registry.** The facts of a node (board, arch, cores, memory, capacity, and the
///   labels and region it reports) come from its newest `NodeInfo` record or from
///   [`FleetStore::register_node`], whichever was written last; the newest `NodeHealth`
///   record is kept for the fleet view and updates the memory size. What a node says
///   about itself is shown, never trusted for placement: [`NodeSummary::labels`] and
///   [`NodeSummary::region`] are only those the operator assigned
///   ([`FleetStore::update_assignment`]); its reported capacity counts, capped by an
///   assigned `max_instances`.
/// - **Stale copies.** A record about an instance from a copy that is not its current
///   placement (another node's, or this node's under an older fence, as its `Fence`
///   records say) is stored and counted ([`Ingested::stale`], [`NodeSummary::stale`])
///   but never folded into the instance view; see [`stale`] for the rule.
/// - **Node states.** What the operator set ([`NodeState`]: schedulable, draining,
///   retiring, retired) is stored per node, changes only by [`NodeState::apply`] (retired
///   is final) and shows in [`NodeSummary::state`]; allocation never places on a node
///   that is not schedulable ([`crate::alloc`]). Lost is derived from `last_seen_ms`,
///   never stored ([`crate::node_state::lost`]).
/// - **Backups** (the blob service, [`crate::blobs`]). A snapshot is stored once per
///   `(node, instance, id)` ([`FleetStore::put_snapshot`]: a second put changes
///   nothing) with its header; its chunk ids stay a file of the blob directory, which
///   [`StoredSnapshot::ids`] names. Blob counters per node only grow, except the stored
///   bytes a sweep sets. One open restore per `(target, instance)`, with its unsealed
///   key, which only [`FleetStore::open_restore_for`] gives out; closing it erases it.
/// - A store is `Send + Sync`: one value is shared by the threads of one process.
///
/// The methods that take closures (the signing step, the edit of an assignment or of a
/// state, run inside the write transaction) are generic, so the trait is used
/// statically: callers are generic over `S: FleetStore` or name [`MasterStore`].
pub trait FleetStore: Send + Sync {
    /// Stores a batch from `node` and returns the ack to publish. `node` is who the
    /// transport says sent it (the MQTT topic); `now_ms` is the arrival time.
    fn ingest(&self, node: &Name, up: &Up, now_ms: u64) -> Result<Ingested> {
        self.ingest_within(node, up, now_ms, u64::MAX)
    }

    /// [`FleetStore::ingest`], refused with [`StoreError::QuotaExceeded`] when `node`
    /// already has `max_bytes` or more of records stored.
    fn ingest_within(&self, node: &Name, up: &Up, now_ms: u64, max_bytes: u64) -> Result<Ingested>;

    /// Several batches committed together (one durable commit): each judged as
    /// [`FleetStore::ingest_within`] on its own, so a refused batch leaves the others
    /// stored. The results are in order and hold only once this returns: a failed
    /// commit fails every batch ([`StoreError::Batch`]).
    fn ingest_many(&self, batches: &[Batch]) -> Vec<Result<Ingested>>;

    /// Bytes of encoded records stored for `node` (what the ingest quota counts).
    fn stored_bytes(&self, node: &Name) -> Result<u64>;

    /// The acknowledged prefix and pending ranges of `node`'s life `epoch`.
    fn coverage(&self, node: &Name, epoch: u64) -> Result<Coverage>;

    /// Adds or updates a node's registry facts (an operator's: its labels and region
    /// become the node's [`Assignment`], keeping an assigned `max_instances`); its
    /// counters and health are kept, and a `mem_bytes` of `None` keeps the reported one.
    fn register_node(&self, info: &NodeInfo) -> Result<()>;

    /// What the operator assigned to `node` (empty when nothing).
    fn assignment(&self, node: &Name) -> Result<Assignment>;

    /// In one transaction: reads `node`'s [`Assignment`], lets `f` change it, stores it,
    /// and makes the node known to the fleet (it shows in [`FleetStore::nodes`] before
    /// its first batch, with no capacity until it reports some).
    fn update_assignment(&self, node: &Name, f: impl FnOnce(&mut Assignment))
        -> Result<Assignment>;

    /// Every known node, by name.
    fn nodes(&self) -> Result<Vec<NodeSummary>>;

    /// In one transaction: applies `op` to `node`'s operator state
    /// ([`NodeState::apply`]) and returns the new one. An unknown node is
    /// [`StoreError::NoSuchNode`], a refused change (retired is final)
    /// [`StoreError::NodeState`]; either stores nothing.
    fn update_node_state(&self, node: &Name, op: NodeOp, now_ms: u64) -> Result<NodeState>;

    /// Every instance's lease (its `--on-lost move` policy, [`crate::failover`]), as
    /// the last [`FleetStore::place`] that gave one ([`Placement::lease_ms`]) set it;
    /// instances without one (policy `wait`) are absent.
    fn leases(&self) -> Result<BTreeMap<Name, u32>>;

    /// Up to `limit` records of `node` with `seq >= from_seq`, in (life, seq) order:
    /// every life of the node.
    fn records(&self, node: &Name, from_seq: u64, limit: u32) -> Result<Vec<Record>>;

    /// How many records of `node` are stored.
    fn count(&self, node: &Name) -> Result<u64>;

    /// Usage records whose interval `[from_ms, to_ms)` overlaps
    /// `[period_start_ms, period_end_ms)` (an empty interval counts if it lies inside),
    /// by node then life then seq (every life of a node).
    fn usage(&self, period_start_ms: u64, period_end_ms: u64) -> Result<Vec<(Name, Record)>>;

    /// Every incident record as `(node, life, record)`, by node, life then seq.
    fn incident_records(&self) -> Result<Vec<(Name, u32, Record)>>;

    /// Every incident, by node, life then id, with its latest state and timeline; the
    /// master's decisions about it are entries of its timeline
    /// ([`crate::moves::with_decisions`]).
    fn incidents(&self) -> Result<Vec<IncidentView>> {
        Ok(crate::moves::with_decisions(
            views::incidents(self.incident_records()?),
            &self.decisions(0)?,
        ))
    }

    /// What [`FleetStore::instances`] is folded from.
    fn instance_sources(&self) -> Result<InstanceSources>;

    /// Every instance requested by the master, requested on a node, or reported by a
    /// node, by node then name.
    fn instances(&self) -> Result<Vec<InstanceView>> {
        Ok(views::instances(self.instance_sources()?))
    }

    /// Every node's stored desired generation (the run loop publishes what is newer
    /// than what it published).
    fn desired_generations(&self) -> Result<Vec<(Name, u64)>>;

    /// `node`'s stored desired generation, if it has a state (what an ack to it waits
    /// for: one indexed read per batch, not the whole fleet's list).
    fn desired_generation(&self, node: &Name) -> Result<Option<u64>>;

    /// The stored desired state of `node`.
    fn desired(&self, node: &Name) -> Result<Option<DesiredState>>;

    /// Stores `d` if its generation is above the stored one, else
    /// [`StoreError::StaleGeneration`]. `d` must pass the wire's validation and fit the
    /// frame limit signed and framed ([`StoreError::TooLarge`]).
    fn put_desired(&self, d: &DesiredState) -> Result<()>;

    /// Reserves and returns a new generation for `node`: above every generation handed
    /// out or stored before, by any process.
    fn next_generation(&self, node: &Name) -> Result<u64>;

    /// In one transaction: reads `node`'s instances (none if no desired state) less the
    /// destroyed ones it reported destroyed (see [`crate::placement`]), maps them with
    /// `f`, takes a new generation, lets `sign` sign the result, validates and stores it
    /// (refusing one too large to deliver, [`StoreError::TooLarge`]), and returns it.
    /// Other writers wait meanwhile, so keep `f` and `sign` quick; an error stores
    /// nothing.
    fn update_desired<F, S>(&self, node: &Name, f: F, sign: S) -> Result<DesiredState>
    where
        F: FnOnce(Vec<InstanceRequest>) -> Vec<InstanceRequest>,
        S: FnOnce(&mut DesiredState);

    /// Re-signs (with `sign`) and stores, with a new generation, the state of every node
    /// whose imports (see [`crate::imports`]: the latest connection parameters that the
    /// owners of the instances it references on other nodes published) differ from its
    /// stored state's; returns `(node, new generation)` of each. Each node is its own
    /// transaction; a node whose state is unchanged gets no new generation, and one
    /// whose new state cannot be stored (too large) is logged and kept. Every state
    /// write ([`FleetStore::update_desired`], [`FleetStore::place`]) fills the imports
    /// the same way.
    fn refresh_imports<S>(&self, sign: S) -> Result<Vec<(Name, u64)>>
    where
        S: Fn(&mut DesiredState);

    /// In one transaction: finds where `request.name` lives, picks the node
    /// ([`crate::placement::target`]; [`crate::alloc::pick`] over the fleet as this
    /// transaction sees it when it must allocate), writes that node's new state,
    /// destroys the instance on every other node that holds it live, and signs each
    /// state with `sign`. A `destroyed` request must name the node the instance is on
    /// (or none), else [`StoreError::NotPlaced`].
    fn place<S>(
        &self,
        request: InstanceRequest,
        placement: &Placement,
        now_ms: u64,
        stale_after_ms: u64,
        sign: S,
    ) -> Result<Placed>
    where
        S: Fn(&mut DesiredState);

    /// `(node, instance)` of every instance pruned from a desired state after its node
    /// reported it destroyed (and not requested there again since).
    fn pruned(&self) -> Result<Vec<(Name, Name)>>;

    /// In one transaction: moves `mv.instance` from `mv.from` (its owner's node) to
    /// `mv.to` (or a node allocation picks), under the next fence, and logs the move
    /// (see [`crate::moves`] for the rules: owner, fit and free slot, one move per
    /// incident, the budget). The target's state gains the instance at once; a fenced
    /// move also requests it `destroyed` on `from`, else that waits for
    /// [`FleetStore::complete_handovers`]. Each state written is signed with `sign`.
    /// A broken rule is [`StoreError::Move`] or [`StoreError::Alloc`], nothing stored.
    fn move_instance<S>(
        &self,
        mv: &MoveRequest,
        now_ms: u64,
        stale_after_ms: u64,
        sign: S,
    ) -> Result<Moved>
    where
        S: Fn(&mut DesiredState);

    /// In one transaction: for every instance with stale copies whose owner's node
    /// reported it `Running` after accepting the state carrying its fence, requests the
    /// stale copies `destroyed` (states signed with `sign`) and logs each handover.
    fn complete_handovers<S>(&self, now_ms: u64, sign: S) -> Result<Vec<Handover>>
    where
        S: Fn(&mut DesiredState);

    /// Every instance a desired state holds: its holders (node, fence, live), by node,
    /// and the criteria it was allocated with; by instance.
    fn placements(&self) -> Result<Vec<InstancePlacement>>;

    /// Logs a decision that is not a move (a refusal) and returns it numbered (the
    /// `id` given is ignored). A refusal the log already ends with for its incident
    /// (the same line, logged by another master) is returned instead of logged again.
    fn record_decision(&self, d: &Decision) -> Result<Decision>;

    /// The decision log from `since_ms` on (0: all), in order.
    fn decisions(&self, since_ms: u64) -> Result<Vec<Decision>>;

    /// Records a supplied artifact: for a named release it replaces the release's
    /// variant for `target`; an unnamed one is recorded once per (sha256, target).
    fn supply_artifact(
        &self,
        release: Option<&Name>,
        target: &str,
        sha256: &[u8; 32],
        size: u64,
        now_ms: u64,
    ) -> Result<()>;

    /// Every supplied artifact, by release (unnamed first), target, then sha256.
    fn artifacts(&self) -> Result<Vec<SuppliedArtifact>>;

    /// The variants of release `release`, by target; empty when never supplied.
    fn release_variants(&self, release: &Name) -> Result<Vec<hedge_wire::ArtifactVariant>>;

    // Backups: the blob service's snapshots and counters ([`crate::blobs`]).

    /// Stores a snapshot a node uploaded (its listing, its header, where its id list
    /// is); `false`, changing nothing, when `(node, instance, id)` is already stored.
    fn put_snapshot(&self, s: &StoredSnapshot, header: &SnapshotHeader) -> Result<bool>;

    /// Every `Backup` record nodes sent, as `(node, record)`, by node, life then seq.
    fn backup_records(&self) -> Result<Vec<(Name, Record)>>;

    /// Every stored snapshot, by node, instance, then time taken (oldest first) and id.
    fn snapshots(&self) -> Result<Vec<StoredSnapshot>>;

    /// The header of a stored snapshot.
    fn snapshot_header(
        &self,
        node: &Name,
        instance: &Name,
        id: SnapshotId,
    ) -> Result<Option<SnapshotHeader>>;

    /// Forgets these snapshots of `node` (retention); unknown ones are ignored.
    fn forget_snapshots(&self, node: &Name, which: &[(Name, SnapshotId)]) -> Result<()>;

    /// Counts one chunk `node` put: `added` bytes newly stored, or a duplicate put (the
    /// chunk was already stored).
    fn count_chunk_put(&self, node: &Name, added: u64, duplicate: bool) -> Result<()>;

    /// Counts one blob request of `node` refused (forbidden, over quota, hash mismatch).
    fn count_blob_refused(&self, node: &Name) -> Result<()>;

    /// Sets the bytes of chunks stored for `node` (what a sweep found on disk).
    fn set_blob_bytes(&self, node: &Name, bytes: u64) -> Result<()>;

    /// The blob counters of every node that used the blob service, by node.
    fn blob_counters(&self) -> Result<Vec<BlobCounters>>;

    /// The open restore of `snapshot` onto `target`'s `instance`: its source node and
    /// the unsealed snapshot key.
    fn open_restore_for(
        &self,
        target: &Name,
        instance: &Name,
        snapshot: SnapshotId,
    ) -> Result<Option<(Name, [u8; 32])>>;

    /// Every open restore of a snapshot taken on `source` (keys left out).
    fn open_restores_from(&self, source: &Name) -> Result<Vec<OpenRestore>>;

    /// Opens a restore (replacing an open one of the same target and instance), with the
    /// unsealed snapshot key, until [`FleetStore::close_restore`].
    fn open_restore(&self, r: &OpenRestore, key: &[u8; 32], now_ms: u64) -> Result<()>;

    /// Closes the open restore of `target`'s `instance`, if any (its key is erased).
    fn close_restore(&self, target: &Name, instance: &Name) -> Result<()>;

    // Backup policies, restores placed by `hedge master restore`, the master's epoch.

    /// [`FleetStore::place`] that also sets `request.name`'s backup policy (`Some`) or
    /// removes it (`None`), in the same transaction: `hedge master request` gives the
    /// whole request, so a request without `[backup]` removes the policy. Every state
    /// written carries the policy of each instance it holds live
    /// ([`DesiredState::backups`]); the policy follows the instance when it moves.
    /// A policy breaking a wire rule is refused ([`StoreError::Invalid`]).
    fn place_with_backup<S>(
        &self,
        request: InstanceRequest,
        backup: Option<&BackupPolicy>,
        placement: &Placement,
        now_ms: u64,
        stale_after_ms: u64,
        sign: S,
    ) -> Result<Placed>
    where
        S: Fn(&mut DesiredState);

    /// `instance`'s backup policy, as its last request gave it.
    fn backup_policy(&self, instance: &Name) -> Result<Option<BackupPolicy>>;

    /// Every backup policy, by instance.
    fn backup_policies(&self) -> Result<Vec<BackupPolicy>>;

    /// In one transaction ([`crate::restore`]): opens the restore (closing any open
    /// restore of the same instance, onto any node), places `r.instance` on `r.target`
    /// (a fenced move from its owner's node if it lives elsewhere, under the next fence;
    /// kept where it is when it is on the target) and writes the target's state carrying
    /// the restore directive, signed with `sign`. An instance no state holds live is
    /// [`StoreError::NotPlaced`]; a move breaking a rule of [`crate::moves`]
    /// [`StoreError::Move`] or [`StoreError::Alloc`]; nothing is stored then. Every
    /// state written carries the directive of each open restore whose target it is and
    /// whose instance it holds live ([`DesiredState::restores`]); one whose instance the
    /// target's state no longer holds live is closed by that write. The restore also
    /// closes (row and key deleted) when the target's `Backup { event: Restored {
    /// source } }` record for `r.snapshot` is ingested.
    fn place_restore<S>(
        &self,
        r: &RestoreRequest,
        now_ms: u64,
        stale_after_ms: u64,
        sign: S,
    ) -> Result<Restoring>
    where
        S: Fn(&mut DesiredState);

    /// Every open restore, by target then instance (without keys).
    fn open_restores(&self) -> Result<Vec<OpenRestore>>;

    /// The master's epoch ([`crate::epoch`]): the high 32 bits of every generation it
    /// hands out from now on; 0 until the store is first recovered from a backup.
    fn epoch(&self) -> Result<u32>;
}

/// A snapshot stored at the master ([`FleetStore::put_snapshot`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSnapshot {
    /// The node that took it.
    pub node: Name,
    /// The instance.
    pub instance: Name,
    /// Its id.
    pub id: SnapshotId,
    /// When its paths were read, ms since the Unix epoch.
    pub taken_ms: u64,
    /// How it was made consistent.
    pub consistency: Consistency,
    /// Bytes of the files it holds.
    pub bytes: u64,
    /// Bytes of chunks no earlier snapshot of its node had.
    pub new_bytes: u64,
    /// Chunks it references.
    pub chunks: u64,
    /// When the master stored it, ms since the Unix epoch.
    pub stored_ms: u64,
    /// Its id list (32-byte chunk ids), relative to the blob directory.
    pub ids: String,
}

/// What the blob service counted for one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobCounters {
    /// The node.
    pub node: Name,
    /// Bytes of chunks stored (the quota counts these).
    pub bytes: u64,
    /// Chunks newly stored.
    pub chunk_puts: u64,
    /// Puts of a chunk already stored (a node that sends no chunk twice has none).
    pub duplicate_puts: u64,
    /// Requests refused.
    pub refused: u64,
}

/// A restore the operator opened (`hedge master restore`): `target`'s `instance` is
/// rebuilt from `snapshot`, taken on `source`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenRestore {
    /// The node that restores.
    pub target: Name,
    /// The instance.
    pub instance: Name,
    /// The node that took the snapshot.
    pub source: Name,
    /// The snapshot.
    pub snapshot: SnapshotId,
}

/// What one [`FleetStore::ingest`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ingested {
    /// Records newly stored.
    pub stored: usize,
    /// Records already stored before (resent).
    pub duplicates: usize,
    /// Records newly stored whose event was already stored under another seq or epoch.
    pub repeats: usize,
    /// Records whose `(node, epoch, seq)` was stored with other content (kept as stored).
    pub conflicts: usize,
    /// The acknowledged prefix of the batch's `(node, epoch)` after this batch: publish
    /// `Ack { upto: ack_upto, epoch }`.
    pub ack_upto: u64,
    /// The epoch the ack is for (the batch's).
    pub epoch: u64,
    /// Records newly stored that came from a stale copy ([`stale`]): kept, counted, left
    /// out of the live instance view.
    #[serde(default)]
    pub stale: usize,
}

/// Registry facts about a node, given by an operator or enrolment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node these facts are about.
    pub node: Name,
    /// Board profile (e.g. `rpi4`).
    pub board: Option<String>,
    /// Architecture (target triple's first part, e.g. `aarch64`, `armv7`).
    pub arch: Option<String>,
    /// Free-form labels matched by allocation.
    pub labels: BTreeMap<String, String>,
    /// Region (technical or legal placement criterion).
    pub region: Option<String>,
    /// CPU count.
    pub cpus: Option<u32>,
    /// Memory, bytes. `None` keeps what node health reported.
    pub mem_bytes: Option<u64>,
    /// How many instances the master may allocate to it.
    pub capacity_instances: u32,
}

/// What the operator assigned to a node: the only labels and region allocation trusts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// Labels matched by allocation.
    pub labels: BTreeMap<String, String>,
    /// Region (technical or legal placement criterion).
    pub region: Option<String>,
    /// At most this many instances, whatever the node reports.
    pub max_instances: Option<u32>,
}

/// One supplied artifact variant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuppliedArtifact {
    /// The release it belongs to, if named.
    pub release: Option<Name>,
    /// Target triple, or `*`.
    pub target: String,
    /// sha256 of the archive, 64 hex digits.
    pub sha256: String,
    /// Size, bytes.
    pub size: u64,
    /// When it was supplied, ms since the epoch.
    pub supplied_ms: u64,
}

/// What [`FleetStore::place`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// The node the request went to, and its new signed state.
    pub state: DesiredState,
    /// Nodes that held the instance live and now have it `destroyed` (a move), with
    /// their new generation.
    pub destroyed_on: Vec<(Name, u64)>,
    /// Destroyed instances pruned from the states written.
    pub pruned: Vec<(Name, Name)>,
}
