//! Disaster recovery end to end (#14): an instance writes continuously (a counter file
//! and an SQLite database) on node A, its snapshots go to the master; A is SIGKILLed
//! and its state directory deleted; `hedge master restore` places the instance on B,
//! which fetches the snapshot, rebuilds its paths and only then starts it: the data it
//! starts with equals the last snapshot at the master byte for byte. Prints RPO (the
//! last snapshot at the master → the kill) and RTO (the restore command → running).
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::{Duration, Instant};

use common::backup::{
    at_master, backup_records, copy_tree, files, records, request_file, snapshot_contents,
    sqlite_facts, wait_at_master, wall_ms, WRITER,
};
use common::fleet::Fleet;
use hedge_wire::{BackupEvent, InstanceStatus, RecordKind};

#[test]
#[allow(clippy::disallowed_methods)] // an end-to-end test: measures real time (RTO)
fn an_instance_lost_with_its_node_runs_on_another_with_the_last_snapshot() {
    let mut fleet = Fleet::new();
    fleet.start_master();
    let mut a = fleet.started_node("a");
    let b = fleet.started_node("b");

    let file = request_file(fleet.dir.path(), "db", WRITER, "interval = 2\nretain = 5");
    fleet.master_ok(&["request", "--file", file.to_str().unwrap(), "--node", "a"]);
    a.running_pid_within("db", Duration::from_secs(30));
    // A few snapshots reach the master while the instance writes.
    wait_at_master(&fleet, "db", 3, Duration::from_secs(120));

    // The disaster: A dies with its disk.
    a.kill9();
    let killed_ms = wall_ms();
    let snaps = at_master(&fleet, "db");
    let last = snaps.last().unwrap().clone();
    assert_eq!(last.node, "a");
    // What the last snapshot holds, from a copy of A's backup directory (the oracle:
    // never seen by B or the master).
    let oracle_vault = tempfile::tempdir().unwrap();
    copy_tree(&a.home().join("backup"), oracle_vault.path());
    std::fs::remove_dir_all(a.home()).unwrap();
    let expected = snapshot_contents(oracle_vault.path(), "db", last.id);
    let expected = files(&expected.path().join("srv"));
    assert!(
        expected.contains_key(std::path::Path::new("data.db")),
        "{:?}",
        expected.keys()
    );

    let t0 = Instant::now();
    fleet.master_ok(&["restore", "db", "--to", "b"]);
    b.running_pid_within("db", Duration::from_secs(120));
    let rto = t0.elapsed();

    // What the instance found when it started on B is the snapshot, byte for byte.
    let at_start = b.partition("db").join("var/at-start");
    let done = b.partition("db").join("var/at-start.done");
    common::wait_for(
        "the instance's copy of what it found",
        Duration::from_secs(10),
        || done.exists().then_some(()),
    );
    let got = files(&at_start);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (path, bytes) in &expected {
        assert!(
            got[path] == *bytes,
            "{} differs from the snapshot",
            path.display()
        );
    }
    // And it is a sane database the instance goes on writing.
    let counter: u64 = String::from_utf8(expected[std::path::Path::new("counter")].clone())
        .unwrap()
        .parse()
        .unwrap();
    let (integrity, max_n, _) = sqlite_facts(&at_start.join("data.db"));
    if last.consistency.contains("frozen") || last.consistency.contains("command") {
        assert_eq!(integrity, "ok");
        assert!(
            counter == max_n || counter + 1 == max_n,
            "{counter} vs {max_n}"
        );
    }
    common::wait_for("the instance writing on B", Duration::from_secs(30), || {
        let now: u64 = std::fs::read_to_string(b.partition("db").join("srv/counter"))
            .ok()?
            .parse()
            .ok()?;
        (now > counter).then_some(())
    });

    // B said so, and started it only after the restore.
    let restored = common::wait_for("B's Restored record", Duration::from_secs(30), || {
        backup_records(&fleet, "b")
            .into_iter()
            .find_map(|(seq, i, s, e, _)| {
                (i == "db"
                    && s == last.id
                    && matches!(e, BackupEvent::Restored { ref source } if source.as_str() == "a"))
                .then_some(seq)
            })
    });
    let first_run = records(&fleet, "b")
        .into_iter()
        .find(|(_, _, k)| {
            matches!(k, RecordKind::InstanceState { instance, status: InstanceStatus::Running, .. } if instance.as_str() == "db")
        })
        .map(|(seq, _, _)| seq)
        .unwrap();
    assert!(restored < first_run, "started before the restore was done");

    let rpo_ms = killed_ms.saturating_sub(last.taken_ms);
    eprintln!(
        "disaster: restored snapshot {} ({} bytes, {} consistency, counter {counter}); RPO {:.1} s (last snapshot at the master -> kill), RTO {:.2} s (hedge master restore -> running on B)",
        last.id,
        last.bytes,
        last.consistency,
        Duration::from_millis(rpo_ms).as_secs_f64(),
        rto.as_secs_f64()
    );
}
