//! An interrupted upload completes later without sending again what the master holds
//! (#14): a snapshot of 8 MiB of random data leaves under a 768 KiB/s budget; midway
//! the node is SIGKILLed, its links to the master (broker and HTTPS) are cut with
//! nftables and the node started again behind the cut; its uplink returns first (the
//! uploader tries and fails), then the blob service's port: the snapshot completes, and the master's counters show no chunk put twice beyond the
//! one that can be in flight at each interruption.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use common::backup::{
    at_master, blob_counters, bulk_writer, chunk_files, request_file, set_upload_rate, Listed,
};
use common::fleet::{can_cut, cut_port, nft, Fleet};
use common::wait_for;

/// The snapshot with the whole 8 MiB.
fn full(s: &Listed) -> bool {
    s.bytes >= 8 << 20
}

/// Interruptions in this test that can each leave one put in flight.
const INTERRUPTIONS: u64 = 2;

#[test]
fn a_cut_and_killed_upload_resumes_without_resending_what_is_stored() {
    if !common::can_run(can_cut(), "root and nft to cut links") {
        return;
    }
    let mut fleet = Fleet::new();
    fleet.start_master();
    let mut a = fleet.node("a");
    set_upload_rate(&a, 768 * 1024);
    a.start();
    wait_for("a registered", Duration::from_secs(30), || {
        (fleet.held("a").0 > 0).then_some(())
    });

    let file = request_file(
        fleet.dir.path(),
        "bulk",
        &bulk_writer(8),
        "interval = 3600\nretain = 2",
    );
    fleet.master_ok(&["request", "--file", file.to_str().unwrap(), "--node", "a"]);
    let done = a.partition("bulk").join("srv/done");
    wait_for("8 MiB written", Duration::from_secs(60), || {
        done.exists().then_some(())
    });
    a.ok(&["backup", "bulk"]);

    // Midway through the upload: SIGKILL.
    wait_for("the upload under way", Duration::from_secs(60), || {
        (blob_counters(&fleet, "a").1 >= 30).then_some(())
    });
    a.kill9();
    let (_, puts_at_kill, _, _) = blob_counters(&fleet, "a");
    // (A snapshot taken when the policy arrived may hold part of the data; the one
    // taken on demand holds it all.)
    assert!(
        !at_master(&fleet, "bulk").iter().any(full),
        "finished too soon"
    );

    // Both links cut; the node comes back behind the cut. Once its uplink is back the
    // uploader tries, in vain while the blob service stays out of reach.
    let https = fleet.artifacts_port.unwrap();
    let cut_https = cut_port(https, &["reject", "with", "tcp", "reset"]);
    fleet.cut_link();
    a.start();
    fleet.restore_link();
    wait_for(
        "an upload attempt behind the cut",
        Duration::from_secs(90),
        || a.daemon_log().contains("upload interrupted").then_some(()),
    );
    assert_eq!(
        blob_counters(&fleet, "a").1,
        puts_at_kill,
        "nothing reached the master through the cut"
    );

    // The blob service is reachable again: the snapshot completes.
    nft(&["delete", "table", "inet", &cut_https]);
    let snaps: Vec<Listed> = wait_for(
        "the whole snapshot at the master",
        Duration::from_secs(180),
        || {
            let s: Vec<Listed> = at_master(&fleet, "bulk").into_iter().filter(full).collect();
            (!s.is_empty()).then_some(s)
        },
    );
    let (bytes, puts, duplicates, refused) = blob_counters(&fleet, "a");
    let stored = u64::try_from(chunk_files(&fleet, "a").len()).unwrap();
    eprintln!(
        "interrupted upload: snapshot {} of {} bytes; {stored} chunks ({bytes} bytes) stored, {puts} puts ({puts_at_kill} before the kill), {duplicates} duplicate, {refused} refused",
        snaps[0].id, snaps[0].bytes
    );
    assert!(
        duplicates <= INTERRUPTIONS,
        "{duplicates} chunks sent again"
    );
    assert_eq!(
        puts,
        stored + duplicates,
        "every put stored a chunk or was a duplicate"
    );
    // The node says it is uploaded once the master has it.
    wait_for("a's Uploaded record", Duration::from_secs(30), || {
        common::backup::backup_records(&fleet, "a")
            .iter()
            .any(|(_, i, s, e, _)| {
                i == "bulk" && *s == snaps[0].id && *e == hedge_wire::BackupEvent::Uploaded
            })
            .then_some(())
    });
}
