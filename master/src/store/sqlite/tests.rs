#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Barrier};

use hedge_wire::RequestedState;
use rusqlite::{params, Connection};

use super::*;
use crate::alloc::{AllocError, Placement};
use crate::store::conformance::place::register;
use crate::store::conformance::{batch, n, open, request, up, usage_rec};

/// The conformance suite, against SQLite.
mod conformance {
    crate::store::conformance::fleet_store_suite!(super::open());
}

#[test]
fn everything_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.db");
    let pi = n("pi-1");
    {
        let s = SqliteStore::open(&path).unwrap();
        s.ingest(&pi, &batch("pi-1", 3, 5), 0).unwrap();
        s.update_desired(&pi, |v| v, |_| {}).unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.count(&pi).unwrap(), 3);
    assert_eq!(s.ingest(&pi, &batch("pi-1", 1, 2), 1).unwrap().ack_upto, 5);
    assert_eq!(s.next_generation(&pi).unwrap(), 2);
}

#[test]
fn concurrent_stores_on_one_file_store_each_record_once() {
    // Each thread opens its own store, as separate master processes would.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.db");
    let threads = 6;
    let results: Vec<(usize, u64, Vec<u64>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let path = path.clone();
                scope.spawn(move || {
                    let s = SqliteStore::open(&path).unwrap();
                    let pi = n("pi-1");
                    let mut stored = 0;
                    let mut ack = 0;
                    // Every thread sends the same batches, in a different order.
                    for i in 0..20u64 {
                        let k = (i + t as u64 * 7) % 20;
                        let r = s
                            .ingest(&pi, &batch("pi-1", k * 10 + 1, k * 10 + 10), i)
                            .unwrap();
                        stored += r.stored;
                        ack = ack.max(r.ack_upto);
                    }
                    let gens = (0..10).map(|_| s.next_generation(&pi).unwrap()).collect();
                    (stored, ack, gens)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let stored: usize = results.iter().map(|r| r.0).sum();
    assert_eq!(stored, 200, "each (node, seq) stored exactly once");
    assert!(results.iter().any(|r| r.1 == 200));
    let gens: BTreeSet<u64> = results.iter().flat_map(|r| r.2.clone()).collect();
    assert_eq!(gens.len(), threads * 10, "no generation handed out twice");
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.count(&n("pi-1")).unwrap(), 200);
    assert_eq!(s.nodes().unwrap()[0].records, 200);
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

#[test]
fn concurrent_placements_never_overfill_a_node() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.db");
    register(&SqliteStore::open(&path).unwrap(), "solo", 1);
    const WRITERS: usize = 8;
    let barrier = Arc::new(Barrier::new(WRITERS));
    let handles: Vec<_> = (0..WRITERS)
        .map(|i| {
            let (path, barrier) = (path.clone(), barrier.clone());
            std::thread::spawn(move || {
                let s = SqliteStore::open(&path).unwrap();
                barrier.wait();
                s.place(
                    request(&format!("w{i}"), RequestedState::Started),
                    &Placement::default(),
                    0,
                    60_000,
                    |_| {},
                )
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let placed: Vec<String> = results
        .iter()
        .filter_map(|r| Some(r.as_ref().ok()?.state.instances.last()?.name.to_string()))
        .collect();
    assert_eq!(
        placed.len(),
        1,
        "placed onto a node with room for one: {placed:?}"
    );
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(
            matches!(r, StoreError::Alloc(AllocError::NoCandidate { .. })),
            "{r:?}"
        );
    }
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.nodes().unwrap()[0].allocated_instances, 1);
    assert_eq!(s.desired(&n("solo")).unwrap().unwrap().instances.len(), 1);
}
