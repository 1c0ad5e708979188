#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use hedge_wire::RequestedState;
use rusqlite::{params, Connection};

use super::*;
use crate::store::conformance::{batch, n, open, request, up, up_in, usage_rec, Harness};

/// A fresh SQLite store in a temp dir; each handle opens the same file.
struct Sqlite(tempfile::TempDir);

impl Harness for Sqlite {
    type Store = SqliteStore;

    fn open(&self) -> SqliteStore {
        SqliteStore::open(&self.0.path().join("master.db")).unwrap()
    }
}

/// The conformance suite, against SQLite.
mod conformance {
    crate::store::conformance::fleet_store_suite!(super::Sqlite(tempfile::tempdir().unwrap()));
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.db");
    drop(SqliteStore::open(&path).unwrap());
    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    assert!(matches!(
        SqliteStore::open(&path),
        Err(StoreError::SchemaTooNew(v)) if v == SCHEMA_VERSION + 1
    ));
}

#[test]
fn the_store_and_its_journal_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, store) = open();
    store.ingest(&n("a"), &batch("a", 1, 3), 1).unwrap();
    for f in [
        "master.db",
        "master.db-wal",
        "master.db-shm",
        "master.db.lock",
    ] {
        let mode = std::fs::metadata(dir.path().join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
}

/// The schema before epochs (version 1), as an older master wrote it.
const SCHEMA_V1: &str = "
CREATE TABLE records (node TEXT NOT NULL, seq INTEGER NOT NULL, time_ms INTEGER NOT NULL,
    kind_tag TEXT NOT NULL, instance TEXT, span_from INTEGER, span_to INTEGER,
    kind BLOB NOT NULL, PRIMARY KEY (node, seq));
CREATE INDEX records_by_tag ON records (kind_tag, node, instance, seq);
CREATE INDEX records_by_span ON records (kind_tag, span_from);
CREATE TABLE coverage (node TEXT PRIMARY KEY, acked INTEGER NOT NULL, pending BLOB NOT NULL);
CREATE TABLE nodes (node TEXT PRIMARY KEY, first_seen_ms INTEGER, last_seen_ms INTEGER,
    board TEXT, arch TEXT, labels TEXT NOT NULL DEFAULT '{}', region TEXT, cpus INTEGER,
    mem_bytes INTEGER, capacity_instances INTEGER NOT NULL DEFAULT 0,
    records INTEGER NOT NULL DEFAULT 0, last_seq INTEGER NOT NULL DEFAULT 0,
    health_seq INTEGER, health BLOB, info_seq INTEGER);
PRAGMA user_version = 1;
";

#[test]
fn a_version_1_store_is_migrated_and_keeps_its_records_as_life_0() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.db");
    {
        let c = Connection::open(&path).unwrap();
        c.execute_batch(SCHEMA_V1).unwrap();
        for q in 1..=3i64 {
            let r = usage_rec(
                q.unsigned_abs(),
                "web",
                (q * 1000).unsigned_abs(),
                (q * 1000 + 1000).unsigned_abs(),
            );
            c.execute(
                "INSERT INTO records VALUES ('pi-1', ?1, ?2, 'usage', 'web', ?3, ?4, ?5)",
                params![
                    q,
                    q * 1000 + 1000,
                    q * 1000,
                    q * 1000 + 1000,
                    postcard::to_allocvec(&r.kind).unwrap()
                ],
            )
            .unwrap();
        }
        c.execute(
            "INSERT INTO coverage VALUES ('pi-1', 3, ?1)",
            [postcard::to_allocvec(&BTreeMap::<u64, u64>::new()).unwrap()],
        )
        .unwrap();
        c.execute(
            "INSERT INTO nodes (node, first_seen_ms, records, last_seq) VALUES ('pi-1', 1, 3, 3)",
            [],
        )
        .unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    let pi = n("pi-1");
    assert_eq!(s.count(&pi).unwrap(), 3);
    assert_eq!(s.coverage(&pi, 0).unwrap().acked, 3);
    assert_eq!(s.usage(0, 10_000).unwrap().len(), 3);
    // The upgraded node's first life under an epoch counts from its own seq 1.
    let r = s
        .ingest(
            &pi,
            &up("pi-1", vec![usage_rec(1, "web", 4000, 5000)], Some((1, 1))),
            2,
        )
        .unwrap();
    assert_eq!((r.stored, r.ack_upto), (1, 1));
    assert_eq!(s.usage(0, 10_000).unwrap().len(), 4);
    let node = &s.nodes().unwrap()[0];
    assert_eq!((node.records, node.lives), (4, 2));
    drop(s);
    // Reopening a migrated store is a no-op.
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.count(&pi).unwrap(), 4);
}

/// The records of version 2: a rowid table beside its key, as an older master wrote it.
const SCHEMA_V2_RECORDS: &str = "
CREATE TABLE records (node TEXT NOT NULL, epoch INTEGER NOT NULL, seq INTEGER NOT NULL,
    time_ms INTEGER NOT NULL, kind_tag TEXT NOT NULL, instance TEXT, span_from INTEGER,
    span_to INTEGER, kind BLOB NOT NULL, digest BLOB, PRIMARY KEY (node, epoch, seq));
CREATE INDEX records_by_tag ON records (kind_tag, node, instance, seq);
CREATE INDEX records_by_span ON records (kind_tag, span_from);
CREATE INDEX records_by_event ON records (node, time_ms, digest);
CREATE TABLE coverage (node TEXT NOT NULL, epoch INTEGER NOT NULL, acked INTEGER NOT NULL,
    pending BLOB NOT NULL, PRIMARY KEY (node, epoch));
CREATE TABLE epochs (node TEXT NOT NULL, epoch INTEGER NOT NULL, life INTEGER NOT NULL,
    first_seen_ms INTEGER, PRIMARY KEY (node, epoch));
PRAGMA user_version = 2;
";

#[test]
fn a_version_2_store_gets_clustered_records_and_keeps_them_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.db");
    let e1 = i64::try_from(crate::store::conformance::E1).unwrap();
    let recs: Vec<Record> = (1..=3)
        .map(|q| usage_rec(q, "web", q * 1000, q * 1000 + 1000))
        .collect();
    {
        let c = Connection::open(&path).unwrap();
        c.execute_batch(SCHEMA_V2_RECORDS).unwrap();
        for r in &recs {
            let (from, to) = (r.time_ms - 1000, r.time_ms);
            c.execute(
                "INSERT INTO records VALUES ('pi-1', ?1, ?2, ?3, 'usage', 'web', ?4, ?5, ?6, ?7)",
                params![
                    e1,
                    i64::try_from(r.seq).unwrap(),
                    i64::try_from(r.time_ms).unwrap(),
                    i64::try_from(from).unwrap(),
                    i64::try_from(to).unwrap(),
                    postcard::to_allocvec(&r.kind).unwrap(),
                    vec![r.seq.to_le_bytes()[0]; 32],
                ],
            )
            .unwrap();
        }
        c.execute("INSERT INTO epochs VALUES ('pi-1', ?1, 1, 1)", [e1])
            .unwrap();
        c.execute(
            "INSERT INTO coverage VALUES ('pi-1', ?1, 3, ?2)",
            params![
                e1,
                postcard::to_allocvec(&BTreeMap::<u64, u64>::new()).unwrap()
            ],
        )
        .unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    let pi = n("pi-1");
    assert_eq!(s.count(&pi).unwrap(), 3);
    assert_eq!(s.usage(0, 10_000).unwrap().len(), 3);
    {
        let conn = s.conn();
        let (sql, version): (String, i64) = conn
            .query_row(
                "SELECT sql, (SELECT user_version FROM pragma_user_version)
                 FROM sqlite_master WHERE name = 'records'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert!(sql.ends_with("WITHOUT ROWID"), "{sql}");
        assert_eq!(version, SCHEMA_VERSION);
        assert_eq!(
            record_indexes(&conn),
            ["records_by_span", "records_by_tag"],
            "the indexes are on the new table, not dropped with the old one"
        );
        let old: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'records_v2'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(old, 0);
    }
    // The migrated rows keep their keys: the same batch again is all duplicates.
    let again = s
        .ingest(&pi, &up("pi-1", recs.clone(), Some((1, 3))), 2)
        .unwrap();
    assert_eq!((again.stored, again.duplicates, again.conflicts), (0, 3, 0));
    let next = s
        .ingest(
            &pi,
            &up("pi-1", vec![usage_rec(4, "web", 4000, 5000)], Some((4, 4))),
            3,
        )
        .unwrap();
    assert_eq!((next.stored, next.ack_upto), (1, 4));
    drop(s);
    // Reopening a migrated store is a no-op.
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.count(&pi).unwrap(), 4);
    assert_eq!(s.usage(0, 10_000).unwrap().len(), 4);
}

#[test]
fn a_desired_state_stored_before_wire_version_2_still_reads() {
    let (_d, s) = open();
    let pi = n("pi-1");
    let v1 = hedge_wire::DesiredStateV1 {
        node: pi.clone(),
        generation: 3,
        instances: vec![request("web", RequestedState::Started)],
        signature: heapless::Vec::new(),
    };
    s.conn()
        .execute(
            "INSERT INTO desired (node, generation, allocated, state) VALUES (?1, 3, 0, ?2)",
            rusqlite::params![pi.as_str(), postcard::to_allocvec(&v1).unwrap()],
        )
        .unwrap();
    let d = s.desired(&pi).unwrap().unwrap();
    assert_eq!((d.generation, d.expires_ms), (3, 0));
    assert_eq!(d.instances, v1.instances);
}

#[test]
fn a_backup_is_a_consistent_store_taken_while_another_handle_writes() {
    let (dir, store) = open();
    let out = dir.path().join("backup.db");
    let writer = SqliteStore::open(store.path()).unwrap();
    std::thread::scope(|t| {
        t.spawn(|| {
            for i in 0..200u64 {
                writer
                    .ingest(&n("a"), &batch("a", i + 1, i + 1), i)
                    .unwrap();
            }
        });
        for _ in 0..5 {
            store.backup_to(&out).unwrap();
            // Every copy is a whole store whose coverage matches its records.
            let copy = dir.path().join("copy.db");
            std::fs::copy(&out, &copy).unwrap();
            let c = SqliteStore::open(&copy).unwrap();
            let count = c.count(&n("a")).unwrap();
            assert_eq!(
                c.coverage(&n("a"), crate::store::conformance::E1)
                    .unwrap()
                    .acked,
                count
            );
            drop(c);
            for f in ["copy.db", "copy.db-wal", "copy.db-shm", "copy.db.lock"] {
                let _ = std::fs::remove_file(dir.path().join(f));
            }
        }
    });
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&out).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn recover_refuses_a_store_in_use_and_raises_the_epoch_past_the_old_life() {
    use crate::sign::{sign, MasterKey};
    let (dir, store) = open();
    let path = store.path().to_owned();
    let key = MasterKey::generate();
    let write = |s: &SqliteStore| {
        s.update_desired(&n("a"), |v| v, |d| sign(&key, d, 0))
            .unwrap()
            .generation
    };
    assert_eq!(write(&store), 1);
    let backup = dir.path().join("backup.db");
    store.backup_to(&backup).unwrap();
    // The old life goes on past the backup: the node applied generation 3.
    write(&store);
    let applied = write(&store);
    assert_eq!(applied, 3);
    assert!(matches!(
        SqliteStore::recover(&path, &backup, 1_764_000_000),
        Err(StoreError::InUse(_))
    ));
    drop(store);
    let r = SqliteStore::recover(&path, &backup, 1_764_000_000).unwrap();
    assert_eq!((r.previous_epoch, r.epoch), (0, 1_764_000_000));
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.epoch().unwrap(), 1_764_000_000);
    // The backup's state: generation 1 stored; without the epoch the next would be 2,
    // below what the node applied; with it, above.
    assert_eq!(store.desired_generation(&n("a")).unwrap(), Some(1));
    let next = write(&store);
    assert_eq!(next, crate::epoch::first_of(1_764_000_000));
    assert!(next > applied && 2 <= applied);
    assert_eq!(write(&store), next + 1);
    // A new node starts in the epoch too.
    let b = store
        .update_desired(&n("b"), |v| v, |d| sign(&key, d, 0))
        .unwrap();
    assert_eq!(b.generation, crate::epoch::first_of(1_764_000_000));
    // Recovering the same old backup again, with a clock set back: one epoch more.
    drop(store);
    let r = SqliteStore::recover(&path, &backup, 5).unwrap();
    assert_eq!((r.previous_epoch, r.epoch), (1_764_000_000, 1_764_000_001));
    let store = SqliteStore::open(&path).unwrap();
    assert!(write(&store) > next + 1);
    // A store cannot be opened while a recover holds it (the lock is shared by opens).
    let lock = std::fs::File::open(dir.path().join("master.db.lock")).unwrap();
    drop(store);
    let held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| e)
        .unwrap();
    assert!(matches!(
        SqliteStore::open(&path),
        Err(StoreError::Recovering(_))
    ));
    drop(held);
    SqliteStore::open(&path).unwrap();
}

#[test]
fn a_closed_restores_key_leaves_the_file() {
    use crate::restore::RestoreRequest;
    use crate::sign::{sign, MasterKey};
    use hedge_wire::backup::{BackupEvent, SnapshotId};
    use hedge_wire::{Record, RecordKind};
    let (dir, store) = open();
    let key = MasterKey::generate();
    crate::store::conformance::place::register(&store, "a", 4);
    store
        .place(
            request("x", RequestedState::Started),
            &crate::store::conformance::place::on("a"),
            0,
            0,
            |d| sign(&key, d, 0),
        )
        .unwrap();
    let secret = [0xa5u8; 32];
    let contains = |path: &std::path::Path| {
        std::fs::read(path)
            .map(|b| b.windows(32).any(|w| w == secret))
            .unwrap_or(false)
    };
    let checkpoint = |s: &SqliteStore| {
        s.conn()
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
    };
    store
        .place_restore(
            &RestoreRequest {
                instance: n("x"),
                target: n("a"),
                source: n("a"),
                snapshot: SnapshotId(1),
                key: zeroize::Zeroizing::new(secret),
            },
            1,
            0,
            |d| sign(&key, d, 0),
        )
        .unwrap();
    checkpoint(&store);
    let db = dir.path().join("master.db");
    assert!(contains(&db), "the open restore's key is stored");
    let done = Up {
        node: n("a"),
        records: vec![Record {
            seq: 1,
            time_ms: 5,
            kind: RecordKind::Backup {
                instance: n("x"),
                snapshot: SnapshotId(1),
                event: BackupEvent::Restored { source: n("a") },
                message: String::new(),
            },
        }],
        covers: Some((1, 1)),
        epoch: 1,
    };
    store.ingest(&n("a"), &done, 5).unwrap();
    assert!(store.open_restores().unwrap().is_empty());
    checkpoint(&store);
    assert!(
        !contains(&db),
        "the closed restore's key is wiped from the file"
    );
    assert!(!contains(&dir.path().join("master.db-wal")));
}

#[test]
fn a_version_3_store_gets_its_events_and_still_counts_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.db");
    let pi = n("pi-1");
    let first = crate::store::conformance::batch("pi-1", 1, 5);
    {
        let s = SqliteStore::open(&path).unwrap();
        s.ingest(&pi, &first, 1).unwrap();
    }
    // The same file as a version 3 master left it: no `events`, the event index, and the
    // older index by digest alone.
    Connection::open(&path)
        .unwrap()
        .execute_batch(
            "DROP TABLE events;
             CREATE INDEX records_by_event ON records (node, time_ms, digest);
             CREATE INDEX records_by_digest ON records (node, digest);
             PRAGMA user_version = 3;",
        )
        .unwrap();
    let s = SqliteStore::open(&path).unwrap();
    {
        let conn = s.conn();
        assert_eq!(record_indexes(&conn), ["records_by_span", "records_by_tag"]);
        let (events, version): (i64, i64) = conn
            .query_row(
                "SELECT (SELECT count(*) FROM events), (SELECT user_version FROM pragma_user_version)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((events, version), (5, SCHEMA_VERSION));
    }
    // Records stored before the migration are still known as events: the same two
    // events under a new life are repeats, and a new one is not.
    let mut again = first.records[3..].to_vec();
    again.push(usage_rec(6, "web", 5000, 6000));
    let r = s
        .ingest(&pi, &up_in("pi-1", 0xe2, again, Some((1, 6))), 2)
        .unwrap();
    assert_eq!((r.stored, r.repeats, r.duplicates), (3, 2, 0));
    drop(s);
    // Reopening changes nothing.
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.count(&pi).unwrap(), 8);
    assert_eq!(s.nodes().unwrap()[0].repeats, 2);
}

/// A batch longer than one multi-row insert, its records partly stored already: each
/// record is stored or counted as a duplicate once, a changed one is a conflict, and an
/// event sent twice within the batch is one repeat.
#[test]
fn a_long_batch_is_stored_in_chunks_and_counted_per_record() {
    let (_dir, s) = open();
    let pi = n("pi-1");
    let rec = |q: u64| usage_rec(q, "web", q * 1000, q * 1000 + 1000);
    let stored_before: Vec<Record> = (100..=199).map(rec).collect();
    s.ingest(&pi, &up("pi-1", stored_before, Some((100, 199))), 1)
        .unwrap();
    let mut records: Vec<Record> = (1..=300).map(rec).collect();
    // Seq 150 again with other content; seq 250 carries the same event as seq 249.
    records[149] = usage_rec(150, "web", 0, 1);
    records[249] = Record {
        seq: 250,
        ..records[248].clone()
    };
    let r = s
        .ingest(&pi, &up("pi-1", records, Some((1, 300))), 2)
        .unwrap();
    assert_eq!(
        (r.stored, r.duplicates, r.conflicts, r.repeats, r.ack_upto),
        (200, 100, 1, 1, 300)
    );
    assert_eq!(s.count(&pi).unwrap(), 300);
    assert_eq!(
        s.records(&pi, 150, 1).unwrap()[0],
        rec(150),
        "kept as first stored"
    );
    let node = &s.nodes().unwrap()[0];
    assert_eq!((node.records, node.repeats, node.conflicts), (300, 1, 1));
}

/// The names of the indexes on `records`, sorted.
fn record_indexes(conn: &Connection) -> Vec<String> {
    conn.prepare(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'records'
         ORDER BY name",
    )
    .unwrap()
    .query_map([], |r| r.get(0))
    .unwrap()
    .collect::<rusqlite::Result<_>>()
    .unwrap()
}

/// `EXPLAIN QUERY PLAN` of `sql`, its parameters bound to NULL.
fn plan(conn: &Connection, sql: &str) -> Vec<String> {
    let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
    let nulls = vec![rusqlite::types::Value::Null; stmt.parameter_count()];
    stmt.query_map(rusqlite::params_from_iter(nulls), |r| r.get(3))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

#[test]
fn usage_records_are_indexed_by_span_and_the_other_kinds_by_tag() {
    let (_dir, store) = open();
    let conn = store.conn();
    let by_tag = [
        ("accepted", place::ACCEPTED.to_owned()),
        ("reported_after", place::REPORTED_AFTER.to_owned()),
        ("fence_before", stale::FENCE_BEFORE.to_owned()),
        ("latest_published", imports::LATEST_PUBLISHED.to_owned()),
        ("by_tag", records::BY_TAG.to_owned()),
        ("latest", records::latest_sql()),
    ];
    for (name, sql) in &by_tag {
        assert!(sql.contains("r.kind_tag <> 'usage'"), "{name}: {sql}");
        let p = plan(&conn, sql);
        assert!(
            p.iter().any(|l| l.contains("USING INDEX records_by_tag")),
            "{name}: {p:?}"
        );
    }
    let p = plan(&conn, records::USAGE);
    assert!(
        p.iter().any(|l| l.contains("USING INDEX records_by_span")),
        "{p:?}"
    );
    // Both are partial: a usage record has no entry in records_by_tag, the others none
    // in records_by_span.
    let partial: Vec<(String, bool)> = conn
        .prepare("SELECT name, partial FROM pragma_index_list('records') ORDER BY name")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    let partial: Vec<(&str, bool)> = partial.iter().map(|(n, p)| (n.as_str(), *p)).collect();
    assert_eq!(
        partial,
        [
            ("records_by_span", true),
            ("records_by_tag", true),
            ("sqlite_autoindex_records_1", false),
        ]
    );
}

#[test]
fn a_connection_keeps_group_commits_off_temporary_files_and_checkpoints_seldom() {
    let (_dir, store) = open();
    let conn = store.conn();
    let pragma = |name: &str| -> i64 {
        conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
            .unwrap()
    };
    // 2 = MEMORY: the savepoint journals of a group commit are not written to a file.
    assert_eq!(pragma("temp_store"), 2);
    assert_eq!(pragma("wal_autocheckpoint"), 8 * 1024);
    assert_eq!(pragma("cache_size"), -16 * 1024);
    // Commits stay synced: 2 = FULL.
    assert_eq!(pragma("synchronous"), 2);
}

/// A batch that fails after its records were written (its coverage row does not
/// decode) fails alone in a group: the group runs again with a savepoint per batch, so
/// none of its records stay and the others' are all stored.
#[test]
fn a_batch_failing_after_its_writes_leaves_nothing_and_the_group_stores_the_rest() {
    let (dir, store) = open();
    store.ingest(&n("a"), &batch("a", 1, 3), 1).unwrap();
    Connection::open(dir.path().join("master.db"))
        .unwrap()
        .execute("UPDATE coverage SET pending = x'ff' WHERE node = 'a'", [])
        .unwrap();
    let batches = [
        Batch::direct(n("b"), batch("b", 1, 3), 2, u64::MAX),
        Batch::direct(n("a"), batch("a", 4, 6), 2, u64::MAX),
        Batch::direct(n("c"), batch("c", 1, 2), 2, u64::MAX),
    ];
    let results = store.ingest_many(&batches);
    assert_eq!(results.len(), 3);
    assert!(results[1].is_err(), "{:?}", results[1]);
    assert_eq!(results[0].as_ref().unwrap().ack_upto, 3);
    assert_eq!(results[2].as_ref().unwrap().ack_upto, 2);
    let counts: Vec<u64> = ["a", "b", "c"]
        .iter()
        .map(|x| store.count(&n(x)).unwrap())
        .collect();
    assert_eq!(counts, [3, 3, 2]);
}
