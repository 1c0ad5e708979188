//! The master's durable store: records, coverage, fleet registry and desired states,
//! in one SQLite file.
//!
//! Contract: several master processes on one box may open the same file; every write
//! runs in one `BEGIN IMMEDIATE` transaction (WAL journal, `synchronous = FULL`, a
//! busy timeout), so concurrent writers serialize and each `(node, epoch, seq)` is stored
//! exactly once. Records are keyed by `(node, epoch, seq)`: a node's epoch is one
//! life of its store (a wiped or restored node starts a new one and counts its seqs
//! from 1 again), so lives never collide; coverage and acks are per `(node, epoch)`.
//! Driven by the master's ingest task ([`MasterStore::ingest`], after
//! which the returned `ack_upto` is published), by the allocation and request paths
//! ([`MasterStore::update_desired`]) and by the read-only views (fleet, usage,
//! incidents, instances). A [`MasterStore`] is `Send + Sync`: one connection behind a
//! mutex, cheap to share in one process.
//!
//! Guarantees:
//! - The file is created with mode 0600, and so are SQLite's `-wal`/`-shm` beside it.
//! - [`MasterStore::ingest`] is idempotent: the same `Up` twice stores nothing new and
//!   returns the same ack. The ack is the [`Coverage`] prefix of the batch's
//!   `(node, epoch)`, which only `covers` ranges extend (express batches are stored but
//!   extend nothing), and names that epoch.
//! - Every view (fleet, instances, incidents, usage and so invoices) holds every life
//!   of a node. Lives are numbered per node in the order the master first saw them
//!   (`epochs.life`, from 1; 0 is the life of records stored before epochs existed),
//!   and "latest" means highest (life, seq).
//! - Integrity counters per node: `repeats` counts records stored under a new key whose
//!   event (time and content, hashed into `records.digest`) is already stored under
//!   another seq or epoch (the same event twice: what a bill must never hold);
//!   `conflicts` counts deliveries of a stored `(node, epoch, seq)` with other content
//!   (two copies of one life, e.g. a cloned store; the first stored wins).
//! - A desired state is stored only with a generation above the stored one, and
//!   generations handed out by [`MasterStore::next_generation`] or
//!   [`MasterStore::update_desired`] are never handed out again, across processes.
//! - A desired state is stored only if, signed and framed, it fits the frame limit a node
//!   decodes with ([`StoreError::TooLarge`] otherwise): what is stored can be delivered.
//! - [`MasterStore::place`] allocates, moves an instance between nodes and prunes
//!   destroyed instances in the transaction that writes the state(s); see `store::place`.
//! - The registry facts of a node (board, arch, cores, memory, capacity, and the labels
//!   and region it reports) come from its newest `NodeInfo` record (sent at every boot)
//!   or from [`MasterStore::register_node`], whichever was written last; the newest
//!   `NodeHealth` record is kept for the fleet view and updates the memory size.
//! - What a node says about itself is shown, never trusted for placement: the labels and
//!   region in [`NodeSummary::labels`]/[`NodeSummary::region`] (what allocation matches)
//!   are only those the operator assigned ([`MasterStore::update_assignment`], `hedge
//!   master enroll --label/--region`, `hedge master label`); the node's own are in
//!   `reported_labels`/`reported_region`. Its reported capacity counts, capped by an
//!   operator's `max_instances` when one is assigned.
//! - [`MasterStore::ingest_within`] refuses a batch of a node that already has the given
//!   number of record bytes stored ([`StoreError::QuotaExceeded`]), in the same
//!   transaction, so the bound holds across processes (overshot by at most one batch).
//! - Sequence numbers and covered ranges above `i64::MAX` (SQLite's integer range)
//!   are refused with [`StoreError::SeqOutOfRange`]; other u64 fields travel exactly
//!   in the postcard blobs (index columns are clamped).
//!
//! Tables: `records` (postcard `RecordKind` plus the denormalised index columns
//! `kind_tag`, `instance`, `span_from`/`span_to` for usage intervals, and `digest`),
//! `coverage` (per node and epoch), `epochs` (each life of a node), `nodes`, `desired`, `generations` (high-water mark of handed-out generations),
//! `artifacts` (supplied software: release or NULL, target, sha256 hex, size; one row per
//! (release, target) of a named release, one per (sha256, target) of an unnamed one),
//! `assigned` (operator-assigned labels, region and instance cap per node),
//! `node_bytes` (bytes of encoded records stored per node, for the ingest quota; filled
//! from `records` the first time a node without a row ingests), `destroyed` (per node and
//! instance requested `destroyed`: the generation that destroyed it, and whether it was
//! pruned from the state since).
//! New tables are created by `CREATE ... IF NOT EXISTS` at every open, so adding one
//! keeps [`SCHEMA_VERSION`] (an older master simply ignores it). Version 2 keyed
//! records and coverage by epoch: a version 1 file is migrated in place at open (its
//! rows become life 0, epoch 0), in the same transaction that sets the version.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use hedge_wire::limits::DEFAULT_MAX_FRAME;
use hedge_wire::{
    DesiredState, ExitStatus, IncidentState, InstanceRequest, InstanceStatus, Name, Record,
    RecordKind, RequestedState, Severity, Up, Validate, WireError,
};
use rusqlite::{
    params, Connection, ErrorCode, OptionalExtension, Transaction, TransactionBehavior,
};
use serde::{Deserialize, Serialize};

use crate::coverage::Coverage;

mod place;
pub use place::Placed;

/// How long a writer waits for another process's transaction before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// The schema version this code writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 2;

/// The tables keyed by epoch (version 2), created fresh or by the migration.
const EPOCH_TABLES: &str = "
CREATE TABLE IF NOT EXISTS records (
    node      TEXT    NOT NULL,
    epoch     INTEGER NOT NULL,
    seq       INTEGER NOT NULL,
    time_ms   INTEGER NOT NULL,
    kind_tag  TEXT    NOT NULL,
    instance  TEXT,
    span_from INTEGER,
    span_to   INTEGER,
    kind      BLOB    NOT NULL,
    digest    BLOB,
    PRIMARY KEY (node, epoch, seq)
);
CREATE TABLE IF NOT EXISTS coverage (
    node    TEXT    NOT NULL,
    epoch   INTEGER NOT NULL,
    acked   INTEGER NOT NULL,
    pending BLOB    NOT NULL,
    PRIMARY KEY (node, epoch)
);
CREATE TABLE IF NOT EXISTS epochs (
    node          TEXT    NOT NULL,
    epoch         INTEGER NOT NULL,
    life          INTEGER NOT NULL,
    first_seen_ms INTEGER,
    PRIMARY KEY (node, epoch)
);
";

/// Version 1 → 2: records and coverage keyed by epoch; old rows are epoch 0, life 0.
const MIGRATE_V1: &str = "
DROP INDEX IF EXISTS records_by_tag;
DROP INDEX IF EXISTS records_by_span;
ALTER TABLE records RENAME TO records_v1;
ALTER TABLE coverage RENAME TO coverage_v1;
ALTER TABLE nodes ADD COLUMN epoch INTEGER;
ALTER TABLE nodes ADD COLUMN repeats INTEGER NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN conflicts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN health_life INTEGER NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN info_life INTEGER NOT NULL DEFAULT 0;
";

/// Version 1 → 2, after [`MIGRATE_V1`] and [`EPOCH_TABLES`]: copy the rows over.
const MIGRATE_V1_ROWS: &str = "
INSERT INTO records (node, epoch, seq, time_ms, kind_tag, instance, span_from, span_to, kind)
    SELECT node, 0, seq, time_ms, kind_tag, instance, span_from, span_to, kind FROM records_v1;
INSERT INTO coverage (node, epoch, acked, pending)
    SELECT node, 0, acked, pending FROM coverage_v1;
INSERT OR IGNORE INTO epochs (node, epoch, life, first_seen_ms)
    SELECT node, 0, 0, first_seen_ms FROM nodes;
UPDATE nodes SET epoch = 0;
DROP TABLE records_v1;
DROP TABLE coverage_v1;
";

const SCHEMA: &str = "
CREATE INDEX IF NOT EXISTS records_by_tag ON records (kind_tag, node, instance, seq);
CREATE INDEX IF NOT EXISTS records_by_span ON records (kind_tag, span_from);
CREATE INDEX IF NOT EXISTS records_by_digest ON records (node, digest);
CREATE TABLE IF NOT EXISTS nodes (
    node               TEXT PRIMARY KEY,
    first_seen_ms      INTEGER,
    last_seen_ms       INTEGER,
    board              TEXT,
    arch               TEXT,
    labels             TEXT    NOT NULL DEFAULT '{}',
    region             TEXT,
    cpus               INTEGER,
    mem_bytes          INTEGER,
    capacity_instances INTEGER NOT NULL DEFAULT 0,
    records            INTEGER NOT NULL DEFAULT 0,
    last_seq           INTEGER NOT NULL DEFAULT 0,
    health_seq         INTEGER,
    health             BLOB,
    info_seq           INTEGER,
    epoch              INTEGER,
    repeats            INTEGER NOT NULL DEFAULT 0,
    conflicts          INTEGER NOT NULL DEFAULT 0,
    health_life        INTEGER NOT NULL DEFAULT 0,
    info_life          INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS desired (
    node       TEXT PRIMARY KEY,
    generation INTEGER NOT NULL,
    allocated  INTEGER NOT NULL,
    state      BLOB    NOT NULL
);
CREATE TABLE IF NOT EXISTS generations (
    node TEXT PRIMARY KEY,
    last INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS artifacts (
    release     TEXT,
    target      TEXT    NOT NULL,
    sha256      TEXT    NOT NULL,
    size        INTEGER NOT NULL,
    supplied_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS artifacts_by_release ON artifacts (release, target);
CREATE TABLE IF NOT EXISTS assigned (
    node          TEXT PRIMARY KEY,
    labels        TEXT NOT NULL DEFAULT '{}',
    region        TEXT,
    max_instances INTEGER
);
CREATE TABLE IF NOT EXISTS node_bytes (
    node  TEXT PRIMARY KEY,
    bytes INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS destroyed (
    node       TEXT    NOT NULL,
    instance   TEXT    NOT NULL,
    generation INTEGER NOT NULL,
    pruned     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (node, instance)
);
";

/// Errors of the master store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be opened or set up.
    #[error("{path}: cannot open the master store: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: rusqlite::Error,
    },
    /// The database file could not be created with mode 0600.
    #[error("{path}: cannot create the master store: {source}")]
    Create {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The database was written by a newer master.
    #[error("master store schema version {0} is newer than this master's {SCHEMA_VERSION}")]
    SchemaTooNew(i64),
    /// A SQLite operation failed.
    #[error("master store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored blob does not decode.
    #[error("master store: stored {what} of node {node} does not decode: {source}")]
    Corrupt {
        /// What it was (record, coverage, desired state, health).
        what: &'static str,
        /// Whose.
        node: String,
        /// Why.
        source: postcard::Error,
    },
    /// A stored node name is not a valid name.
    #[error("master store: stored node name {0:?} is invalid")]
    BadName(String),
    /// A value could not be encoded.
    #[error("cannot encode {what}: {source}")]
    Encode {
        /// What it was.
        what: &'static str,
        /// Why.
        source: postcard::Error,
    },
    /// Labels could not be encoded or decoded as JSON.
    #[error("node labels: {0}")]
    Labels(#[from] serde_json::Error),
    /// A batch arrived for one node but names another.
    #[error("batch names node {sent} but arrived for node {topic}")]
    NodeMismatch {
        /// The node the transport says it is from.
        topic: String,
        /// The node the batch names.
        sent: String,
    },
    /// A message broke a wire rule.
    #[error("refused: {0}")]
    Invalid(#[from] WireError),
    /// The node already has its quota of record bytes stored.
    #[error("node {node} has {stored} bytes of records stored, limit {limit}: refused")]
    QuotaExceeded {
        /// The node.
        node: Name,
        /// Bytes stored.
        stored: u64,
        /// The limit.
        limit: u64,
    },
    /// A sequence number is beyond what the store can index.
    #[error("sequence number {0} is above 2^63-1")]
    SeqOutOfRange(u64),
    /// A desired state's generation is not above the stored one.
    #[error("desired state for {node}: generation {given} is not above the stored {current}")]
    StaleGeneration {
        /// The node.
        node: Name,
        /// Stored generation.
        current: u64,
        /// Refused generation.
        given: u64,
    },
    /// No generation is left for a node.
    #[error("desired state for {0}: no generation left")]
    GenerationExhausted(Name),
    /// The signing step of [`MasterStore::update_desired`] changed the node or the
    /// generation it was given.
    #[error("desired state for {0}: signing changed the node or the generation")]
    SignerChangedState(Name),
    /// The signed desired state, framed for the wire, is larger than a node accepts: it
    /// could never be delivered, so it is not stored.
    #[error(
        "desired state for {node} would be {len} bytes signed and framed, more than the \
         frame limit of {max} bytes: refused, nothing stored"
    )]
    TooLarge {
        /// The node.
        node: Name,
        /// Encoded size of the whole signed state in its envelope.
        len: usize,
        /// The frame limit ([`hedge_wire::limits::DEFAULT_MAX_FRAME`]).
        max: usize,
    },
    /// Allocation found no node for a request.
    #[error(transparent)]
    Alloc(#[from] crate::alloc::AllocError),
    /// The transaction of several batches failed to begin or commit.
    #[error("master store: batch transaction: {0}")]
    Batch(String),
    /// A request to destroy an instance that is not placed where it names.
    #[error("{instance} is not placed on {}: nothing to destroy", .node.as_ref().map_or("any node".into(), |n| n.to_string()))]
    NotPlaced {
        /// The instance.
        instance: Name,
        /// The node the request named, if one (boxed: keeps the error small).
        node: Option<Box<Name>>,
    },
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What one [`MasterStore::ingest`] did.
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
}

/// Registry facts about a node, given by an operator or enrolment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node.
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

/// The latest node health a node reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Its record's seq.
    pub seq: u64,
    /// When it was measured, ms since the epoch.
    pub time_ms: u64,
    /// 1-minute load average × 1000.
    pub load1_milli: u32,
    /// Total memory, bytes.
    pub mem_total: u64,
    /// Available memory, bytes.
    pub mem_available: u64,
    /// Free bytes of the state filesystem.
    pub disk_free: u64,
    /// Temperature, milli-°C.
    pub temp_milli_c: Option<i32>,
    /// Uplink connected.
    pub uplink_up: bool,
    /// Records waiting in the outbox.
    pub outbox_depth: u64,
}

/// One node of the fleet as the master knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSummary {
    /// The node.
    pub node: Name,
    /// First batch received, ms since the epoch.
    pub first_seen_ms: Option<u64>,
    /// Last batch received.
    pub last_seen_ms: Option<u64>,
    /// Records stored.
    pub records: u64,
    /// Highest stored seq of its latest life.
    pub last_seq: u64,
    /// Acknowledged prefix of its latest life.
    pub acked_upto: u64,
    /// Lives (epochs) of the node the master holds records of.
    pub lives: u32,
    /// Records whose event was already stored under another seq or epoch.
    pub repeats: u64,
    /// Deliveries of a stored `(epoch, seq)` with other content.
    pub conflicts: u64,
    /// Board profile.
    pub board: Option<String>,
    /// Architecture.
    pub arch: Option<String>,
    /// Labels the operator assigned (what allocation matches).
    pub labels: BTreeMap<String, String>,
    /// Region the operator assigned (what allocation matches).
    pub region: Option<String>,
    /// Labels the node reports about itself (shown only).
    #[serde(default)]
    pub reported_labels: BTreeMap<String, String>,
    /// Region the node reports about itself (shown only).
    #[serde(default)]
    pub reported_region: Option<String>,
    /// CPU count.
    pub cpus: Option<u32>,
    /// Memory, bytes (registered, or the latest health's total).
    pub mem_bytes: Option<u64>,
    /// Instances the master may allocate to it: the reported capacity, capped by the
    /// operator's `max_instances` if assigned.
    pub capacity_instances: u32,
    /// Instances in its desired state that are not destroyed.
    pub allocated_instances: u32,
    /// Latest reported health.
    pub health: Option<Health>,
}

/// One transition of an incident.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncidentTransition {
    /// The record's seq.
    pub seq: u64,
    /// The record's time, ms since the epoch.
    pub time_ms: u64,
    /// State after the transition.
    pub state: IncidentState,
    /// Severity after the transition.
    pub severity: Severity,
    /// Message of the transition.
    pub message: String,
}

/// An incident: its latest state and its timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncidentView {
    /// The node.
    pub node: Name,
    /// The node's life the incident belongs to (incident ids are per life).
    pub life: u32,
    /// The node-local incident id.
    pub id: u64,
    /// Which instance.
    pub instance: Name,
    /// Which promise, if one.
    pub promise: Option<Name>,
    /// Latest severity.
    pub severity: Severity,
    /// Latest state.
    pub state: IncidentState,
    /// First seen, ms since the epoch.
    pub first_seen_ms: u64,
    /// Last seen.
    pub last_seen_ms: u64,
    /// Latest message.
    pub message: String,
    /// Every transition stored, in seq order.
    pub timeline: Vec<IncidentTransition>,
}

/// Who requested an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Owner {
    /// In the node's desired state.
    Master,
    /// Requested on the node itself (a `LocalRequest` record).
    Node,
    /// Reported by the node but requested by nobody the master knows of.
    Unknown,
}

/// One instance: what was requested and what the node last reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceView {
    /// The node.
    pub node: Name,
    /// The instance.
    pub name: Name,
    /// Who requested it.
    pub owner: Owner,
    /// Requested state, if requested.
    pub requested: Option<RequestedState>,
    /// Last reported lifecycle state.
    pub status: Option<InstanceStatus>,
    /// Last reported pid.
    pub pid: Option<u32>,
    /// Last reported restart count.
    pub restarts: u32,
    /// How its last run ended.
    pub last_exit: Option<ExitStatus>,
    /// Time of the last state record, ms since the epoch.
    pub last_seen_ms: Option<u64>,
}

/// The master's store. See the module doc.
pub struct MasterStore {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl std::fmt::Debug for MasterStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// An epoch as stored: its 64 bits as SQLite's signed integer (only compared for
/// equality, never by order).
fn epoch_sql(e: u64) -> i64 {
    i64::from_ne_bytes(e.to_ne_bytes())
}

/// The event identity of a record: its time and content, hashed (16 bytes of sha256).
fn digest(time_ms: u64, kind_blob: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(time_ms.to_be_bytes());
    h.update(kind_blob);
    h.finalize()[..16].to_vec()
}

/// Checks that `v` fits SQLite's signed 64-bit integers.
fn seq_sql(v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| StoreError::SeqOutOfRange(v))
}

/// Clamps `v` into SQLite's range, for index columns whose exact value lives elsewhere.
fn clamp_sql(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A stored non-negative integer back to u64 (negative values, never written, read as 0).
fn from_sql(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn name(s: String) -> Result<Name> {
    Name::new(&s).map_err(|_| StoreError::BadName(s))
}

fn encode<T: Serialize>(what: &'static str, v: &T) -> Result<Vec<u8>> {
    postcard::to_allocvec(v).map_err(|source| StoreError::Encode { what, source })
}

fn decode<'a, T: Deserialize<'a>>(what: &'static str, node: &str, bytes: &'a [u8]) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|source| StoreError::Corrupt {
        what,
        node: node.to_owned(),
        source,
    })
}

/// The denormalised index columns of a record: tag, instance, usage interval.
fn index_of(kind: &RecordKind) -> (&'static str, Option<&str>, Option<(u64, u64)>) {
    match kind {
        RecordKind::InstanceState { instance, .. } => {
            ("instance_state", Some(instance.as_str()), None)
        }
        RecordKind::PromiseResult { instance, .. } => {
            ("promise_result", Some(instance.as_str()), None)
        }
        RecordKind::Usage {
            instance,
            from_ms,
            to_ms,
            ..
        } => ("usage", Some(instance.as_str()), Some((*from_ms, *to_ms))),
        RecordKind::Incident { instance, .. } => ("incident", Some(instance.as_str()), None),
        RecordKind::NodeHealth { .. } => ("node_health", None, None),
        RecordKind::LocalRequest { request } => {
            ("local_request", Some(request.name.as_str()), None)
        }
        RecordKind::NodeInfo { .. } => ("node_info", None, None),
        RecordKind::Desired { .. } => ("desired", None, None),
        RecordKind::DesiredExpired { .. } => ("desired_expired", None, None),
        RecordKind::Shed { .. } => ("shed", None, None),
        RecordKind::ConnectionParameters { instance, .. } => {
            ("connection_parameters", Some(instance.as_str()), None)
        }
        RecordKind::Artifact { .. } => ("artifact", None, None),
    }
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

fn allocated(instances: &[InstanceRequest]) -> u32 {
    let n = instances
        .iter()
        .filter(|i| i.state != RequestedState::Destroyed)
        .count();
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Raw `(node, seq, time_ms, kind)` rows.
type RawRecord = (String, i64, i64, Vec<u8>);

fn raw_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawRecord> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
}

fn decode_record(raw: RawRecord) -> Result<(Name, Record)> {
    let (node, seq, time_ms, kind) = raw;
    let kind = decode("record", &node, &kind)?;
    Ok((
        name(node)?,
        Record {
            seq: from_sql(seq),
            // Stored bit-for-bit (see `ingest`), so it round-trips exactly.
            time_ms: time_ms as u64,
            kind,
        },
    ))
}

/// Highest generation handed out or stored for `node`.
fn high_water(tx: &Transaction<'_>, node: &Name) -> Result<u64> {
    let reserved: Option<i64> = tx
        .query_row(
            "SELECT last FROM generations WHERE node = ?1",
            [node.as_str()],
            |r| r.get(0),
        )
        .optional()?;
    let stored: Option<i64> = tx
        .query_row(
            "SELECT generation FROM desired WHERE node = ?1",
            [node.as_str()],
            |r| r.get(0),
        )
        .optional()?;
    Ok(from_sql(reserved.unwrap_or(0).max(stored.unwrap_or(0))))
}

fn set_high_water(tx: &Transaction<'_>, node: &Name, generation: i64) -> Result<()> {
    tx.execute(
        "INSERT INTO generations (node, last) VALUES (?1, ?2)
         ON CONFLICT (node) DO UPDATE SET last = MAX(last, excluded.last)",
        params![node.as_str(), generation],
    )?;
    Ok(())
}

fn stored_desired(tx: &Connection, node: &Name) -> Result<Option<DesiredState>> {
    let blob: Option<Vec<u8>> = tx
        .query_row(
            "SELECT state FROM desired WHERE node = ?1",
            [node.as_str()],
            |r| r.get(0),
        )
        .optional()?;
    blob.map(|b| decode_desired(node.as_str(), &b)).transpose()
}

/// A stored desired state; one stored before wire version 2 (no expiry) reads with
/// expiry 0 (the next update re-signs it with one).
fn decode_desired(node: &str, blob: &[u8]) -> Result<DesiredState> {
    decode("desired state", node, blob).or_else(|e| {
        postcard::from_bytes::<hedge_wire::DesiredStateV1>(blob)
            .map(DesiredState::from)
            .map_err(|_| e)
    })
}

/// Stores `d` if its generation is above the stored one; the caller holds an
/// immediate transaction.
fn store_desired(tx: &Transaction<'_>, d: &DesiredState) -> Result<()> {
    d.validate()?;
    // What the run loop publishes and a node decodes: refuse here what could never be
    // delivered, while the caller can still be told.
    match hedge_wire::codec::encode(&hedge_wire::Message::Desired(d.clone()), DEFAULT_MAX_FRAME) {
        Ok(_) => {}
        Err(WireError::TooLarge { len, max }) => {
            return Err(StoreError::TooLarge {
                node: d.node.clone(),
                len,
                max,
            })
        }
        Err(e) => return Err(e.into()),
    }
    let generation = seq_sql(d.generation)?;
    let current = stored_desired(tx, &d.node)?.map_or(0, |s| s.generation);
    if d.generation <= current {
        return Err(StoreError::StaleGeneration {
            node: d.node.clone(),
            current,
            given: d.generation,
        });
    }
    tx.execute(
        "INSERT INTO desired (node, generation, allocated, state) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (node) DO UPDATE SET generation = excluded.generation,
             allocated = excluded.allocated, state = excluded.state",
        params![
            d.node.as_str(),
            generation,
            allocated(&d.instances),
            encode("desired state", d)?
        ],
    )?;
    set_high_water(tx, &d.node, generation)
}

impl MasterStore {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let open_err = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        create_private(path).map_err(|e| StoreError::Create {
            path: path.to_owned(),
            source: e,
        })?;
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        // Switching a fresh file to WAL while another process does the same can fail
        // with SQLITE_BUSY without waiting on the busy handler: retry until the timeout.
        let deadline = Instant::now() + BUSY_TIMEOUT;
        let mut pause = Duration::from_millis(1);
        let version = loop {
            match set_up(&mut conn) {
                Err(e) if is_busy(&e) && Instant::now() < deadline => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                other => break other.map_err(open_err)?,
            }
        };
        if version > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew(version));
        }
        Ok(MasterStore {
            conn: Mutex::new(conn),
            path: path.to_owned(),
        })
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock dropped its transaction, which rolled back:
        // the connection is still usable.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stores a batch from `node` and returns the ack to publish. See the module doc.
    ///
    /// `node` is who the transport says sent it (the MQTT topic); a batch naming
    /// another node is refused. `now_ms` is the arrival time.
    pub fn ingest(&self, node: &Name, up: &Up, now_ms: u64) -> Result<Ingested> {
        self.ingest_within(node, up, now_ms, u64::MAX)
    }

    /// [`MasterStore::ingest`], refused with [`StoreError::QuotaExceeded`] when `node`
    /// already has `max_bytes` or more of records stored.
    pub fn ingest_within(
        &self,
        node: &Name,
        up: &Up,
        now_ms: u64,
        max_bytes: u64,
    ) -> Result<Ingested> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let ingested = ingest_in(&tx, node, up, now_ms, max_bytes)?;
        tx.commit()?;
        Ok(ingested)
    }

    /// Several batches in one transaction and one commit (one `fsync` under
    /// `synchronous = FULL`): each as [`MasterStore::ingest_within`], in a savepoint of
    /// its own, so a refused batch leaves the others stored. The results are in order
    /// and hold only once this returns: a failed commit fails every batch.
    pub fn ingest_many(&self, batches: &[(Name, Up, u64, u64)]) -> Vec<Result<Ingested>> {
        let failed = |e: &rusqlite::Error| -> Vec<Result<Ingested>> {
            batches
                .iter()
                .map(|_| Err(StoreError::Batch(e.to_string())))
                .collect()
        };
        let mut conn = self.conn();
        let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(e) => return failed(&e),
        };
        let mut results = Vec::with_capacity(batches.len());
        for (node, up, now_ms, max_bytes) in batches {
            let one = tx.savepoint().map_err(StoreError::from).and_then(|sp| {
                let ingested = ingest_in(&sp, node, up, *now_ms, *max_bytes)?;
                sp.commit()?;
                Ok(ingested)
            });
            results.push(one);
        }
        match tx.commit() {
            Ok(()) => results,
            Err(e) => failed(&e),
        }
    }

    /// Bytes of encoded records stored for `node` (what the ingest quota counts).
    pub fn stored_bytes(&self, node: &Name) -> Result<u64> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = stored_bytes(&tx, node)?;
        tx.commit()?;
        Ok(n)
    }

    /// The acknowledged prefix and pending ranges of `node`'s life `epoch`.
    pub fn coverage(&self, node: &Name, epoch: u64) -> Result<Coverage> {
        let conn = self.conn();
        load_coverage(&conn, node, epoch)
    }

    /// Adds or updates a node's registry facts (an operator's: its labels and region
    /// become the node's [`Assignment`], keeping an assigned `max_instances`); its
    /// counters and health are kept, and a `mem_bytes` of `None` keeps the reported one.
    pub fn register_node(&self, info: &NodeInfo) -> Result<()> {
        self.update_assignment(&info.node, |a| {
            a.labels = info.labels.clone();
            a.region = info.region.clone();
        })?;
        let conn = self.conn();
        conn.execute(
            "INSERT INTO nodes (node, board, arch, cpus, mem_bytes, capacity_instances)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (node) DO UPDATE SET board = excluded.board,
                 arch = excluded.arch, cpus = excluded.cpus,
                 mem_bytes = COALESCE(excluded.mem_bytes, nodes.mem_bytes),
                 capacity_instances = excluded.capacity_instances",
            params![
                info.node.as_str(),
                info.board,
                info.arch,
                info.cpus,
                info.mem_bytes.map(clamp_sql),
                info.capacity_instances
            ],
        )?;
        Ok(())
    }

    /// What the operator assigned to `node` (empty when nothing).
    pub fn assignment(&self, node: &Name) -> Result<Assignment> {
        let conn = self.conn();
        load_assignment(&conn, node)
    }

    /// In one transaction: reads `node`'s [`Assignment`], lets `f` change it, stores it,
    /// and makes the node known to the fleet (it shows in [`MasterStore::nodes`] before
    /// its first batch, with no capacity until it reports some).
    pub fn update_assignment(
        &self,
        node: &Name,
        f: impl FnOnce(&mut Assignment),
    ) -> Result<Assignment> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut a = load_assignment(&tx, node)?;
        f(&mut a);
        tx.execute(
            "INSERT INTO assigned (node, labels, region, max_instances) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (node) DO UPDATE SET labels = excluded.labels,
                 region = excluded.region, max_instances = excluded.max_instances",
            params![
                node.as_str(),
                serde_json::to_string(&a.labels)?,
                a.region,
                a.max_instances
            ],
        )?;
        tx.execute(
            "INSERT OR IGNORE INTO nodes (node) VALUES (?1)",
            [node.as_str()],
        )?;
        tx.commit()?;
        Ok(a)
    }

    /// Every known node, by name.
    pub fn nodes(&self) -> Result<Vec<NodeSummary>> {
        let conn = self.conn();
        load_nodes(&conn)
    }
}

/// Every known node, by name, as `conn` (or the transaction it derefs from) sees them.
fn load_nodes(conn: &Connection) -> Result<Vec<NodeSummary>> {
    type Row = (
        String,
        Option<i64>,
        Option<i64>,
        Option<String>,
        Option<String>,
        String,
        Option<String>,
        Option<u32>,
        Option<i64>,
        u32,
        i64,
        i64,
        i64,
        u32,
        Option<Vec<u8>>,
        Option<String>,
        Option<String>,
        Option<u32>,
        (u32, i64, i64),
    );
    let mut stmt = conn.prepare_cached(
        "SELECT n.node, n.first_seen_ms, n.last_seen_ms, n.board, n.arch, n.labels,
                 n.region, n.cpus, n.mem_bytes, n.capacity_instances, n.records, n.last_seq,
                 COALESCE(c.acked, 0), COALESCE(d.allocated, 0), n.health,
                 a.labels, a.region, a.max_instances,
                 (SELECT COUNT(*) FROM epochs e WHERE e.node = n.node), n.repeats, n.conflicts
             FROM nodes n
             LEFT JOIN coverage c ON c.node = n.node AND c.epoch = n.epoch
             LEFT JOIN desired d ON d.node = n.node
             LEFT JOIN assigned a ON a.node = n.node
             ORDER BY n.node",
    )?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
                r.get(9)?,
                r.get(10)?,
                r.get(11)?,
                r.get(12)?,
                r.get(13)?,
                r.get(14)?,
                r.get(15)?,
                r.get(16)?,
                r.get(17)?,
                (r.get(18)?, r.get(19)?, r.get(20)?),
            ))
        })?
        .collect::<rusqlite::Result<Vec<Row>>>()?;
    rows.into_iter()
        .map(|row| {
            let health = match &row.14 {
                Some(blob) => health_of(decode("health", &row.0, blob)?),
                None => None,
            };
            let capacity = match row.17 {
                Some(cap) => row.9.min(cap),
                None => row.9,
            };
            Ok(NodeSummary {
                reported_labels: serde_json::from_str(&row.5)?,
                reported_region: row.6,
                labels: match &row.15 {
                    Some(l) => serde_json::from_str(l)?,
                    None => BTreeMap::new(),
                },
                region: row.16,
                node: name(row.0)?,
                first_seen_ms: row.1.map(from_sql),
                last_seen_ms: row.2.map(from_sql),
                board: row.3,
                arch: row.4,
                cpus: row.7,
                mem_bytes: row.8.map(from_sql),
                capacity_instances: capacity,
                records: from_sql(row.10),
                last_seq: from_sql(row.11),
                acked_upto: from_sql(row.12),
                lives: row.18 .0,
                repeats: from_sql(row.18 .1),
                conflicts: from_sql(row.18 .2),
                allocated_instances: row.13,
                health,
            })
        })
        .collect()
}

impl MasterStore {
    /// Up to `limit` records of `node` with `seq >= from_seq`, in (life, seq) order:
    /// every life of the node.
    pub fn records(&self, node: &Name, from_seq: u64, limit: u32) -> Result<Vec<Record>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT r.node, r.seq, r.time_ms, r.kind FROM records r
             JOIN epochs e ON e.node = r.node AND e.epoch = r.epoch
             WHERE r.node = ?1 AND r.seq >= ?2 ORDER BY e.life, r.seq LIMIT ?3",
        )?;
        let rows = stmt
            .query_map(
                params![node.as_str(), clamp_sql(from_seq), limit],
                raw_record,
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(|raw| decode_record(raw).map(|(_, r)| r))
            .collect()
    }

    /// How many records of `node` are stored.
    pub fn count(&self, node: &Name) -> Result<u64> {
        let conn = self.conn();
        let n: i64 = conn.query_row(
            "SELECT COUNT(*) FROM records WHERE node = ?1",
            [node.as_str()],
            |r| r.get(0),
        )?;
        Ok(from_sql(n))
    }

    /// Usage records whose interval `[from_ms, to_ms)` overlaps
    /// `[period_start_ms, period_end_ms)` (an empty interval counts if it lies inside),
    /// by node then life then seq (every life of a node).
    pub fn usage(&self, period_start_ms: u64, period_end_ms: u64) -> Result<Vec<(Name, Record)>> {
        if period_end_ms <= period_start_ms {
            return Ok(Vec::new());
        }
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT r.node, r.seq, r.time_ms, r.kind FROM records r
             JOIN epochs e ON e.node = r.node AND e.epoch = r.epoch
             WHERE r.kind_tag = 'usage' AND r.span_from < ?2
               AND (r.span_to > ?1 OR (r.span_to = r.span_from AND r.span_from >= ?1))
             ORDER BY r.node, e.life, r.seq",
        )?;
        let rows = stmt
            .query_map(
                params![clamp_sql(period_start_ms), clamp_sql(period_end_ms)],
                raw_record,
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter().map(decode_record).collect()
    }

    /// Every incident, by node, life then id, with its latest state and timeline.
    pub fn incidents(&self) -> Result<Vec<IncidentView>> {
        let rows = {
            let conn = self.conn();
            let mut stmt = conn.prepare_cached(
                "SELECT r.node, r.seq, r.time_ms, r.kind, e.life FROM records r
                 JOIN epochs e ON e.node = r.node AND e.epoch = r.epoch
                 WHERE r.kind_tag = 'incident' ORDER BY r.node, e.life, r.seq",
            )?;
            let rows = stmt
                .query_map([], |r| Ok((raw_record(r)?, r.get::<_, u32>(4)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows
        };
        let mut out: BTreeMap<(Name, u32, u64), IncidentView> = BTreeMap::new();
        for (raw, life) in rows {
            let (node, record) = decode_record(raw)?;
            let RecordKind::Incident {
                id,
                instance,
                promise,
                severity,
                state,
                first_seen_ms,
                last_seen_ms,
                message,
            } = record.kind
            else {
                continue;
            };
            let step = IncidentTransition {
                seq: record.seq,
                time_ms: record.time_ms,
                state,
                severity,
                message: message.clone(),
            };
            // Rows come in seq order, so each one is the latest so far.
            let view = out
                .entry((node.clone(), life, id))
                .or_insert_with(|| IncidentView {
                    node,
                    life,
                    id,
                    instance: instance.clone(),
                    promise: promise.clone(),
                    severity,
                    state,
                    first_seen_ms,
                    last_seen_ms,
                    message: String::new(),
                    timeline: Vec::new(),
                });
            view.instance = instance;
            view.promise = promise;
            view.severity = severity;
            view.state = state;
            view.first_seen_ms = view.first_seen_ms.min(first_seen_ms);
            view.last_seen_ms = view.last_seen_ms.max(last_seen_ms);
            view.message = message;
            view.timeline.push(step);
        }
        Ok(out.into_values().collect())
    }

    /// Every instance requested by the master, requested on a node, or reported by a
    /// node, by node then name.
    pub fn instances(&self) -> Result<Vec<InstanceView>> {
        let (desired, states, locals) = {
            let conn = self.conn();
            let desired = conn
                .prepare_cached("SELECT node, state FROM desired ORDER BY node")?
                .query_map([], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            // The latest record per (node, instance): highest (life, seq).
            let latest = |tag: &str| -> Result<Vec<RawRecord>> {
                Ok(conn
                    .prepare_cached(
                        "SELECT node, seq, time_ms, kind FROM (
                             SELECT r.node, r.seq, r.time_ms, r.kind, ROW_NUMBER() OVER (
                                 PARTITION BY r.node, r.instance
                                 ORDER BY e.life DESC, r.seq DESC) AS nth
                             FROM records r
                             JOIN epochs e ON e.node = r.node AND e.epoch = r.epoch
                             WHERE r.kind_tag = ?1)
                         WHERE nth = 1",
                    )?
                    .query_map([tag], raw_record)?
                    .collect::<rusqlite::Result<Vec<_>>>()?)
            };
            let states = latest("instance_state")?;
            let locals = latest("local_request")?;
            (desired, states, locals)
        };
        let pruned = self.pruned()?;
        let mut out: BTreeMap<(Name, Name), InstanceView> = BTreeMap::new();
        let blank = |node: &Name, name: &Name, owner| InstanceView {
            node: node.clone(),
            name: name.clone(),
            owner,
            requested: None,
            status: None,
            pid: None,
            restarts: 0,
            last_exit: None,
            last_seen_ms: None,
        };
        for (node, blob) in desired {
            let d = decode_desired(&node, &blob)?;
            for i in d.instances {
                let mut v = blank(&d.node, &i.name, Owner::Master);
                v.requested = Some(i.state);
                out.insert((d.node.clone(), i.name), v);
            }
        }
        // Destroyed, reported destroyed, and pruned from the state: still the master's.
        for (node, name) in pruned {
            out.entry((node.clone(), name.clone())).or_insert_with(|| {
                let mut v = blank(&node, &name, Owner::Master);
                v.requested = Some(RequestedState::Destroyed);
                v
            });
        }
        for raw in locals {
            let (node, record) = decode_record(raw)?;
            if let RecordKind::LocalRequest { request } = record.kind {
                out.entry((node.clone(), request.name.clone()))
                    .or_insert_with(|| {
                        let mut v = blank(&node, &request.name, Owner::Node);
                        v.requested = Some(request.state);
                        v
                    });
            }
        }
        for raw in states {
            let (node, record) = decode_record(raw)?;
            if let RecordKind::InstanceState {
                instance,
                status,
                pid,
                restarts,
                last_exit,
            } = record.kind
            {
                let v = out
                    .entry((node.clone(), instance.clone()))
                    .or_insert_with(|| blank(&node, &instance, Owner::Unknown));
                v.status = Some(status);
                v.pid = pid;
                v.restarts = restarts;
                v.last_exit = last_exit;
                v.last_seen_ms = Some(record.time_ms);
            }
        }
        Ok(out.into_values().collect())
    }

    /// Every node's stored desired generation (the run loop publishes what is newer
    /// than what it published).
    pub fn desired_generations(&self) -> Result<Vec<(Name, u64)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT node, generation FROM desired ORDER BY node")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (node, generation) = row?;
            if let Ok(n) = Name::new(&node) {
                out.push((n, u64::try_from(generation).unwrap_or(0)));
            }
        }
        Ok(out)
    }

    /// The stored desired state of `node`.
    pub fn desired(&self, node: &Name) -> Result<Option<DesiredState>> {
        let conn = self.conn();
        stored_desired(&conn, node)
    }

    /// Stores `d` if its generation is above the stored one, else
    /// [`StoreError::StaleGeneration`]. `d` must pass the wire's validation and fit the
    /// frame limit signed and framed ([`StoreError::TooLarge`]).
    pub fn put_desired(&self, d: &DesiredState) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        store_desired(&tx, d)?;
        tx.commit()?;
        Ok(())
    }

    /// Reserves and returns a new generation for `node`: above every generation handed
    /// out or stored before, by any process.
    pub fn next_generation(&self, node: &Name) -> Result<u64> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let next = next_after(&tx, node)?;
        set_high_water(&tx, node, seq_sql(next)?)?;
        tx.commit()?;
        Ok(next)
    }

    /// In one transaction: reads `node`'s instances (none if no desired state) less the
    /// destroyed ones it reported destroyed (see [`MasterStore::place`]), maps them with `f`, takes a
    /// new generation, lets `sign` sign the result, validates and stores it (refusing
    /// one too large to deliver, [`StoreError::TooLarge`]), and returns it. Other
    /// writers wait meanwhile, so keep `f` and `sign` quick; an error stores nothing.
    pub fn update_desired<F, S>(&self, node: &Name, f: F, sign: S) -> Result<DesiredState>
    where
        F: FnOnce(Vec<InstanceRequest>) -> Vec<InstanceRequest>,
        S: FnOnce(&mut DesiredState),
    {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (d, _) = place::write_desired(&tx, node, f, sign)?;
        tx.commit()?;
        Ok(d)
    }
}

impl MasterStore {
    /// Records a supplied artifact: for a named release it replaces the release's
    /// variant for `target`; an unnamed one is recorded once per (sha256, target).
    pub fn supply_artifact(
        &self,
        release: Option<&Name>,
        target: &str,
        sha256: &[u8; 32],
        size: u64,
        now_ms: u64,
    ) -> Result<()> {
        let hex = hedge_wire::Sha256Hex(sha256).to_string();
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        match release {
            Some(r) => tx.execute(
                "DELETE FROM artifacts WHERE release = ?1 AND target = ?2",
                params![r.as_str(), target],
            )?,
            None => tx.execute(
                "DELETE FROM artifacts WHERE release IS NULL AND sha256 = ?1 AND target = ?2",
                params![hex, target],
            )?,
        };
        tx.execute(
            "INSERT INTO artifacts (release, target, sha256, size, supplied_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                release.map(Name::as_str),
                target,
                hex,
                clamp_sql(size),
                clamp_sql(now_ms)
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Every supplied artifact, by release (unnamed first), target, then sha256.
    pub fn artifacts(&self) -> Result<Vec<SuppliedArtifact>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT release, target, sha256, size, supplied_ms FROM artifacts
             ORDER BY release, target, sha256",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, Option<String>>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(|(release, target, sha256, size, at)| {
                Ok(SuppliedArtifact {
                    release: release.map(name).transpose()?,
                    target,
                    sha256,
                    size: from_sql(size),
                    supplied_ms: from_sql(at),
                })
            })
            .collect()
    }

    /// The variants of release `release`, by target; empty when never supplied.
    pub fn release_variants(&self, release: &Name) -> Result<Vec<hedge_wire::ArtifactVariant>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT target, sha256 FROM artifacts WHERE release = ?1 ORDER BY target",
        )?;
        let rows = stmt
            .query_map([release.as_str()], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows
            .into_iter()
            .filter_map(|(target, hex)| {
                Some(hedge_wire::ArtifactVariant {
                    target,
                    sha256: hedge_wire::parse_sha256(&hex)?,
                })
            })
            .collect())
    }
}

/// Creates `path` with mode 0600 unless it exists. SQLite gives the `-wal` and `-shm`
/// files it creates beside it the database file's mode, so they are 0600 too.
fn create_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Sets the connection's pragmas and creates the schema unless the file holds a newer
/// one; returns the schema version found.
fn set_up(conn: &mut Connection) -> rusqlite::Result<i64> {
    // WAL lets readers proceed beside the one writer; FULL makes a commit (after which
    // the ack is published) survive a power cut, not only a crash.
    conn.pragma_update_and_check(None, "journal_mode", "wal", |r| r.get::<_, String>(0))?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Ok(version);
    }
    if version == 1 {
        tx.execute_batch(MIGRATE_V1)?;
        tx.execute_batch(EPOCH_TABLES)?;
        tx.execute_batch(MIGRATE_V1_ROWS)?;
        tracing::info!(
            from = 1,
            to = SCHEMA_VERSION,
            "master store schema upgraded"
        );
    }
    tx.execute_batch(EPOCH_TABLES)?;
    tx.execute_batch(SCHEMA)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(version)
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(f.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// The generation after the high-water mark, within SQLite's range.
fn next_after(tx: &Transaction<'_>, node: &Name) -> Result<u64> {
    high_water(tx, node)?
        .checked_add(1)
        .filter(|g| i64::try_from(*g).is_ok())
        .ok_or_else(|| StoreError::GenerationExhausted(node.clone()))
}

/// The body of [`MasterStore::ingest_within`], inside the caller's transaction or
/// savepoint, which commits.
fn ingest_in(
    tx: &Connection,
    node: &Name,
    up: &Up,
    now_ms: u64,
    max_bytes: u64,
) -> Result<Ingested> {
    if &up.node != node {
        return Err(StoreError::NodeMismatch {
            topic: node.to_string(),
            sent: up.node.to_string(),
        });
    }
    up.validate()?;
    let covers = match up.covers {
        Some((from, to)) => Some((seq_sql(from)?, seq_sql(to)?)),
        None => None,
    };
    let mut rows = Vec::with_capacity(up.records.len());
    for r in &up.records {
        rows.push((seq_sql(r.seq)?, r, encode("record", &r.kind)?));
    }

    let epoch = epoch_sql(up.epoch);
    let bytes_before = stored_bytes(tx, node)?;
    if bytes_before >= max_bytes {
        return Err(StoreError::QuotaExceeded {
            node: node.clone(),
            stored: bytes_before,
            limit: max_bytes,
        });
    }
    tx.execute(
        "INSERT OR IGNORE INTO nodes (node) VALUES (?1)",
        [node.as_str()],
    )?;
    // A life not seen before gets the next number.
    tx.execute(
        "INSERT OR IGNORE INTO epochs (node, epoch, life, first_seen_ms)
         VALUES (?1, ?2, (SELECT COALESCE(MAX(life), 0) + 1 FROM epochs WHERE node = ?1), ?3)",
        params![node.as_str(), epoch, clamp_sql(now_ms)],
    )?;
    let (life, newest_life): (i64, i64) = tx.query_row(
        "SELECT e.life, (SELECT MAX(life) FROM epochs WHERE node = ?1)
         FROM epochs e WHERE e.node = ?1 AND e.epoch = ?2",
        params![node.as_str(), epoch],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let (mut stored, mut duplicates, mut last_seq) = (0usize, 0usize, 0i64);
    let mut new_bytes = 0u64;
    let (mut repeats, mut conflicts) = (0usize, 0usize);
    let mut health: Option<(i64, &Record)> = None;
    let mut info: Option<(i64, &Record)> = None;
    {
        let mut insert = tx.prepare_cached(
            "INSERT OR IGNORE INTO records
             (node, epoch, seq, time_ms, kind_tag, instance, span_from, span_to, kind, digest)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        let mut same_key = tx.prepare_cached(
            "SELECT time_ms, kind FROM records WHERE node = ?1 AND epoch = ?2 AND seq = ?3",
        )?;
        let mut same_event = tx.prepare_cached(
            "SELECT 1 FROM records WHERE node = ?1 AND digest = ?2
             AND NOT (epoch = ?3 AND seq = ?4) LIMIT 1",
        )?;
        for (seq, record, blob) in &rows {
            let (tag, instance, span) = index_of(&record.kind);
            let digest = digest(record.time_ms, blob);
            let n = insert.execute(params![
                node.as_str(),
                epoch,
                seq,
                // Bit-for-bit, so it reads back exactly; never queried by range.
                record.time_ms as i64,
                tag,
                instance,
                span.map(|(f, _)| clamp_sql(f)),
                span.map(|(_, t)| clamp_sql(t)),
                blob,
                digest,
            ])?;
            if n == 0 {
                duplicates += 1;
                let (time_ms, kind): (i64, Vec<u8>) = same_key
                    .query_row(params![node.as_str(), epoch, seq], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })?;
                if time_ms != record.time_ms as i64 || &kind != blob {
                    conflicts += 1;
                }
                continue;
            }
            if same_event.exists(params![node.as_str(), digest, epoch, seq])? {
                repeats += 1;
            }
            stored += 1;
            new_bytes += blob.len() as u64;
            last_seq = last_seq.max(*seq);
            let newest = match record.kind {
                RecordKind::NodeHealth { .. } => &mut health,
                RecordKind::NodeInfo { .. } => &mut info,
                _ => continue,
            };
            if newest.is_none_or(|(s, _)| s < *seq) {
                *newest = Some((*seq, record));
            }
        }
    }
    if conflicts > 0 {
        tracing::warn!(node = %node, epoch = up.epoch, conflicts,
            "records delivered again with other content: two copies of one node life?");
    }

    if new_bytes > 0 {
        tx.execute(
            "UPDATE node_bytes SET bytes = ?2 WHERE node = ?1",
            params![
                node.as_str(),
                clamp_sql(bytes_before.saturating_add(new_bytes))
            ],
        )?;
    }
    let mut coverage = load_coverage(tx, node, up.epoch)?;
    if let Some((from, to)) = covers {
        coverage.add(from_sql(from), from_sql(to));
        tx.execute(
            "INSERT INTO coverage (node, epoch, acked, pending) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (node, epoch) DO UPDATE SET acked = excluded.acked,
                 pending = excluded.pending",
            params![
                node.as_str(),
                epoch,
                seq_sql(coverage.acked)?,
                encode("coverage", &coverage.pending)?
            ],
        )?;
    }

    // `last_seq` and `epoch` follow the latest life; a new life starts them afresh.
    tx.execute(
        "UPDATE nodes SET first_seen_ms = COALESCE(first_seen_ms, ?2),
             last_seen_ms = MAX(COALESCE(last_seen_ms, ?2), ?2),
             records = records + ?3,
             last_seq = CASE WHEN ?6 < ?7 THEN last_seq
                 WHEN epoch IS ?5 THEN MAX(last_seq, ?4) ELSE ?4 END,
             epoch = CASE WHEN ?6 < ?7 THEN epoch ELSE ?5 END,
             repeats = repeats + ?8,
             conflicts = conflicts + ?9
         WHERE node = ?1",
        params![
            node.as_str(),
            clamp_sql(now_ms),
            i64::try_from(stored).unwrap_or(i64::MAX),
            last_seq,
            epoch,
            life,
            newest_life,
            i64::try_from(repeats).unwrap_or(i64::MAX),
            i64::try_from(conflicts).unwrap_or(i64::MAX),
        ],
    )?;
    if let Some((seq, record)) = health {
        if let RecordKind::NodeHealth { mem_total, .. } = record.kind {
            tx.execute(
                "UPDATE nodes SET health_life = ?5, health_seq = ?2, health = ?3, mem_bytes = ?4
                 WHERE node = ?1 AND (health_seq IS NULL OR (health_life, health_seq) < (?5, ?2))",
                params![
                    node.as_str(),
                    seq,
                    encode("health", record)?,
                    clamp_sql(mem_total),
                    life
                ],
            )?;
        }
    }
    if let Some((seq, record)) = info {
        if let RecordKind::NodeInfo {
            board,
            arch,
            cores,
            mem_total,
            max_instances,
            labels,
            region,
        } = &record.kind
        {
            let region = (!region.is_empty()).then_some(region);
            tx.execute(
                "UPDATE nodes SET info_life = ?10, info_seq = ?2, board = ?3, arch = ?4,
                     cpus = ?5, mem_bytes = ?6, capacity_instances = ?7, labels = ?8,
                     region = ?9
                 WHERE node = ?1 AND (info_seq IS NULL OR (info_life, info_seq) < (?10, ?2))",
                params![
                    node.as_str(),
                    seq,
                    board,
                    arch,
                    cores,
                    clamp_sql(*mem_total),
                    max_instances,
                    serde_json::to_string(labels)?,
                    region,
                    life
                ],
            )?;
        }
    }
    Ok(Ingested {
        stored,
        duplicates,
        repeats,
        conflicts,
        ack_upto: coverage.acked,
        epoch: up.epoch,
    })
}

/// Bytes of records stored for `node`; creates its `node_bytes` row (from `records`,
/// for stores written before the table existed) when missing.
fn stored_bytes(tx: &Connection, node: &Name) -> Result<u64> {
    let row: Option<i64> = tx
        .query_row(
            "SELECT bytes FROM node_bytes WHERE node = ?1",
            [node.as_str()],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(b) = row {
        return Ok(from_sql(b));
    }
    let sum: i64 = tx.query_row(
        "SELECT COALESCE(SUM(length(kind)), 0) FROM records WHERE node = ?1",
        [node.as_str()],
        |r| r.get(0),
    )?;
    tx.execute(
        "INSERT INTO node_bytes (node, bytes) VALUES (?1, ?2)",
        params![node.as_str(), sum],
    )?;
    Ok(from_sql(sum))
}

fn load_assignment(conn: &Connection, node: &Name) -> Result<Assignment> {
    let row: Option<(String, Option<String>, Option<u32>)> = conn
        .query_row(
            "SELECT labels, region, max_instances FROM assigned WHERE node = ?1",
            [node.as_str()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    Ok(match row {
        None => Assignment::default(),
        Some((labels, region, max_instances)) => Assignment {
            labels: serde_json::from_str(&labels)?,
            region,
            max_instances,
        },
    })
}

fn load_coverage(conn: &Connection, node: &Name, epoch: u64) -> Result<Coverage> {
    let row: Option<(i64, Vec<u8>)> = conn
        .query_row(
            "SELECT acked, pending FROM coverage WHERE node = ?1 AND epoch = ?2",
            params![node.as_str(), epoch_sql(epoch)],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    match row {
        None => Ok(Coverage::new()),
        Some((acked, pending)) => Ok(Coverage {
            acked: from_sql(acked),
            pending: decode("coverage", node.as_str(), &pending)?,
        }),
    }
}

fn health_of(record: Record) -> Option<Health> {
    match record.kind {
        RecordKind::NodeHealth {
            load1_milli,
            mem_total,
            mem_available,
            disk_free,
            temp_milli_c,
            uplink_up,
            outbox_depth,
        } => Some(Health {
            seq: record.seq,
            time_ms: record.time_ms,
            load1_milli,
            mem_total,
            mem_available,
            disk_free,
            temp_milli_c,
            uplink_up,
            outbox_depth,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
