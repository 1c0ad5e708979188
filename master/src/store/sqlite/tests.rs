#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use hedge_wire::RequestedState;
use rusqlite::{params, Connection};

use super::*;
use crate::store::conformance::{batch, n, open, request, up, usage_rec, Harness};

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
    for f in ["master.db", "master.db-wal", "master.db-shm"] {
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
