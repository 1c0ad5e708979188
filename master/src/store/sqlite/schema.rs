//! The SQLite schema: its tables, its version and the migration from older files.
//!
//! Contract: [`set_up`] sets the connection's pragmas and, in one `BEGIN IMMEDIATE`
//! transaction, creates what is missing and migrates an older file, unless the file
//! holds a newer schema (it then returns that version and changes nothing).
//!
//! Tables: `records` (postcard `RecordKind` plus the denormalised index columns
//! `kind_tag`, `instance`, `span_from`/`span_to` for usage intervals, and `digest`),
//! `events` (each distinct event of a node: time and digest),
//! `coverage` (per node and epoch), `epochs` (each life of a node: `life` numbered
//! from 1 per node in the order first seen, 0 for records older than epochs), `nodes`,
//! `desired`, `generations` (high-water mark of handed-out generations), `artifacts`
//! (supplied software: release or NULL, target, sha256 hex, size; one row per
//! (release, target) of a named release, one per (sha256, target) of an unnamed one),
//! `assigned` (operator-assigned labels, region and instance cap per node),
//! `node_bytes` (bytes of encoded records stored per node, for the ingest quota; filled
//! from `records` the first time a node without a row ingests), `destroyed` (per node
//! and instance requested `destroyed`: the generation that destroyed it, and whether it
//! was pruned from the state since), `node_states` (what the operator set: draining,
//! retiring, retired, and since when; no row: schedulable);
//! the tables of moves are in `moves`, the instances' leases in `leases`,
//! the records of stale copies in `stale`, the path of each node's last batch and its
//! refused relayed batches in `carry`, the blob service's snapshots, counters and open
//! restores in `backups`, backup policies in `policies`, the master's epoch in `meta`.
//! New tables are created by `CREATE ... IF NOT EXISTS` at every open, so adding one
//! keeps [`SCHEMA_VERSION`] (an older master simply ignores it). Version 2 keyed
//! records and coverage by epoch: a version 1 file is migrated in place at open (its
//! rows become life 0, epoch 0), in the same transaction that sets the version.
//! Version 3 stores `records` clustered on its key (`WITHOUT ROWID`: one b-tree for the
//! row and its key instead of two) and splits its two lookup indexes by kind: usage
//! records, nearly all of a drain, are only in `records_by_span`, every other kind only
//! in `records_by_tag` (both partial). A query uses a partial index only when its WHERE
//! clause holds the index's condition as one of its terms, and without statistics the
//! planner prefers the clustered key (`node = ?`) to any index: so each query by kind
//! names its index (`INDEXED BY`, an error at prepare if it cannot be used) and holds
//! the condition (`r.kind_tag <> 'usage'`, `r.kind_tag = 'usage'`); the tests check
//! their plans. A version 2 file's records are copied over at open, in that same
//! transaction. Version 4 adds `events (node, time_ms, digest)`, one row per distinct
//! event of a node, filled from the stored digests at open, and drops the index
//! `records_by_event` it replaces: a record stored now whose event is already there is
//! a repeat (`bulk`). Older files go straight to version 4.

use std::path::Path;

use rusqlite::{Connection, ErrorCode, TransactionBehavior};

/// The page cache of a connection, KiB (SQLite's `cache_size`, negative for KiB): the
/// indexes an ingest walks stay in memory instead of being read back from the file.
const CACHE_KIB: i64 = -16 * 1024;

/// WAL pages after which a commit copies the WAL into the file (SQLite's
/// `wal_autocheckpoint`, default 1,000): a drain's commit writes about that many pages,
/// so at the default nearly every commit checkpointed, writing each page twice and
/// syncing twice. Commits stay synced (`synchronous = FULL`); the WAL grows to about
/// this many 4 KiB pages before a checkpoint.
const CHECKPOINT_PAGES: i64 = 8 * 1024;

/// The schema version this code writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 4;

/// The tables keyed by epoch (version 2; `records` clustered on its key since version
/// 3), created fresh or by a migration.
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
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    node    TEXT    NOT NULL,
    time_ms INTEGER NOT NULL,
    digest  BLOB    NOT NULL,
    PRIMARY KEY (node, time_ms, digest)
) WITHOUT ROWID;
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

/// Version 2 → 3, before [`EPOCH_TABLES`]: set the rowid table aside. Its indexes go
/// first: renamed with it, they would keep their names and [`SCHEMA`] would not create
/// them on the new table.
const MIGRATE_V2: &str = "
DROP INDEX IF EXISTS records_by_tag;
DROP INDEX IF EXISTS records_by_span;
DROP INDEX IF EXISTS records_by_event;
DROP INDEX IF EXISTS records_by_digest;
ALTER TABLE records RENAME TO records_v2;
";

/// Version 2 → 3, after [`MIGRATE_V2`] and [`EPOCH_TABLES`]: copy the rows over, in key
/// order (each page of the new table is filled once).
const MIGRATE_V2_ROWS: &str = "
INSERT INTO records (node, epoch, seq, time_ms, kind_tag, instance, span_from, span_to, kind, digest)
    SELECT node, epoch, seq, time_ms, kind_tag, instance, span_from, span_to, kind, digest
    FROM records_v2 ORDER BY node, epoch, seq;
DROP TABLE records_v2;
";

/// Version 3 → 4, after [`EPOCH_TABLES`] (which creates `events`): the events of the
/// records stored so far, in key order. Records of a version 1 file have no digest
/// and no event: a repeat of one cannot be told, as before.
const MIGRATE_V3_ROWS: &str = "
INSERT OR IGNORE INTO events (node, time_ms, digest)
    SELECT node, time_ms, digest FROM records WHERE digest IS NOT NULL
    ORDER BY node, time_ms, digest;
";

const SCHEMA: &str = "
CREATE INDEX IF NOT EXISTS records_by_tag ON records (kind_tag, node, instance, seq)
    WHERE kind_tag <> 'usage';
CREATE INDEX IF NOT EXISTS records_by_span ON records (span_from) WHERE kind_tag = 'usage';
DROP INDEX IF EXISTS records_by_digest;
DROP INDEX IF EXISTS records_by_event;
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
CREATE TABLE IF NOT EXISTS node_states (
    node     TEXT PRIMARY KEY,
    state    TEXT    NOT NULL,
    since_ms INTEGER NOT NULL
);
";

/// Creates `path` with mode 0600 unless it exists. SQLite gives the `-wal` and `-shm`
/// files it creates beside it the database file's mode, so they are 0600 too.
pub(super) fn create_private(path: &Path) -> std::io::Result<()> {
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
pub(super) fn set_up(conn: &mut Connection) -> rusqlite::Result<i64> {
    // WAL lets readers proceed beside the one writer; FULL makes a commit (after which
    // the ack is published) survive a power cut, not only a crash.
    conn.pragma_update_and_check(None, "journal_mode", "wal", |r| r.get::<_, String>(0))?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "cache_size", CACHE_KIB)?;
    conn.pragma_update(None, "wal_autocheckpoint", CHECKPOINT_PAGES)?;
    // The savepoint journals of a group commit (one savepoint per batch) in memory, not
    // in a temporary file written page by page: they are never needed after a crash.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Ok(version);
    }
    let migration = match version {
        1 => Some((MIGRATE_V1, MIGRATE_V1_ROWS)),
        2 => Some((MIGRATE_V2, MIGRATE_V2_ROWS)),
        3 => Some(("", "")),
        _ => None,
    };
    if let Some((before, rows)) = migration {
        tx.execute_batch(before)?;
        tx.execute_batch(EPOCH_TABLES)?;
        tx.execute_batch(rows)?;
        tx.execute_batch(MIGRATE_V3_ROWS)?;
        tracing::info!(
            from = version,
            to = SCHEMA_VERSION,
            "master store schema upgraded"
        );
    }
    tx.execute_batch(EPOCH_TABLES)?;
    tx.execute_batch(SCHEMA)?;
    tx.execute_batch(super::moves::SCHEMA)?;
    tx.execute_batch(super::leases::SCHEMA)?;
    tx.execute_batch(super::stale::SCHEMA)?;
    tx.execute_batch(super::carry::SCHEMA)?;
    tx.execute_batch(super::backups::SCHEMA)?;
    tx.execute_batch(super::policies::SCHEMA)?;
    tx.execute_batch(super::meta::SCHEMA)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(version)
}

pub(super) fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(f.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}
