//! A chunk altered at rest in the master's blob store is caught at restore (#14): the
//! target node refuses the restore, leaves the instance stopped, and its
//! `Backup { RestoreFailed }` record, stored at the master, names the damaged snapshot
//! and chunk.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use common::backup::{
    at_master, backup_records, bulk_writer, chunk_files, flip_a_byte, request_file,
};
use common::fleet::Fleet;
use common::wait_for;
use hedge_wire::{BackupEvent, InstanceStatus};

#[test]
fn a_chunk_altered_at_the_master_fails_the_restore_naming_the_snapshot() {
    let mut fleet = Fleet::new();
    fleet.start_master();
    let a = fleet.started_node("a");
    let b = fleet.started_node("b");

    let file = request_file(
        fleet.dir.path(),
        "notes",
        &bulk_writer(1),
        "interval = 3600\nretain = 2",
    );
    fleet.master_ok(&["request", "--file", file.to_str().unwrap(), "--node", "a"]);
    let done = a.partition("notes").join("srv/done");
    wait_for("1 MiB written", Duration::from_secs(60), || {
        done.exists().then_some(())
    });
    a.ok(&["backup", "notes"]);
    // (A snapshot taken when the policy arrived may hold part of the data.)
    let snap = wait_for(
        "the whole snapshot at the master",
        Duration::from_secs(120),
        || {
            at_master(&fleet, "notes")
                .into_iter()
                .rev()
                .find(|s| s.bytes >= 1 << 20)
        },
    );

    // Every chunk of a's namespace altered at rest: whichever the restore fetches
    // first is found out.
    let chunks = chunk_files(&fleet, "a");
    assert!(!chunks.is_empty());
    for c in &chunks {
        flip_a_byte(c);
    }
    let names: Vec<String> = chunks
        .iter()
        .map(|c| c.file_name().unwrap().to_string_lossy().into_owned())
        .collect();

    fleet.master_ok(&[
        "restore",
        "notes",
        "--to",
        "b",
        "--snapshot",
        &snap.id.to_string(),
    ]);
    let message = wait_for("b's RestoreFailed record", Duration::from_secs(60), || {
        backup_records(&fleet, "b")
            .into_iter()
            .find_map(|(_, i, s, e, m)| {
                (i == "notes"
                    && s == snap.id
                    && matches!(e, BackupEvent::RestoreFailed { ref source } if source.as_str() == "a"))
                .then_some(m)
            })
    });
    eprintln!("tamper: b reported: {message}");
    assert!(
        message.contains(&snap.id.to_string()),
        "the record names the snapshot: {message}"
    );
    assert!(
        names.iter().any(|n| message.contains(n.as_str())),
        "the record names the damaged chunk: {message}"
    );
    // The instance was placed on b, never started there.
    let view = b.instance("notes").expect("notes is placed on b");
    assert_ne!(view.state, InstanceStatus::Running);
    assert!(view.pid.is_none());
    assert!(!b.partition("notes").join("srv/done").exists());
    // The node's log says which snapshot is damaged too.
    let log = b.daemon_log();
    assert!(
        log.lines()
            .any(|l| l.contains("restore failed") && l.contains(&snap.id.to_string())),
        "{log}"
    );
}
