//! Deduplication (issue #14): a 64 MiB partition where 1% changes between two snapshots
//! stores, and uploads, about 1% again, plus chunk overhead.
//!
//! A real node daemon; an instance (no policy: no scheduled snapshot in between); 64 MiB
//! of seeded pseudo-random data in 4 files written into its `srv/`; `hedge node backup
//! NAME`; 1% of the bytes overwritten in 10 scattered places; `hedge node backup NAME`
//! again.
//! - `local`: the second snapshot's new bytes (`hedge node backups NAME --json`);
//! - `uploaded`: the same on an enrolled node whose uploader sends both snapshots to the
//!   master; the bytes the master's blob store gained for the second (its per-node
//!   counters, `hedge master backups --json`), and no chunk put twice.
//!
//! Each must be at least what changed (it was seen) and at most what changed plus, per
//! changed place, the two chunks at its edges at their largest (256 KiB each), plus the
//! manifest's chunks (2 more): far below the 64 MiB a non-deduplicating backup stores.
//! The figures are printed (`--nocapture`).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::backup as bk;
use common::fleet::Fleet;
use common::Node;

/// FastCDC's largest chunk (the engine's max).
const MAX_CHUNK: u64 = 256 * 1024;
/// Places the 1% change is scattered over.
const PLACES: u64 = 10;
/// The partition's data.
const TOTAL: u64 = 64 << 20;

/// Fills `name`'s srv/, snapshots, changes 1%, snapshots; calls `after_each` after
/// each snapshot with its id. Returns (first id, second id, bytes changed).
fn scenario(node: &Node, name: &str, mut after_each: impl FnMut(&str)) -> (String, String, u64) {
    let srv = node.partition(name).join("srv");
    assert_eq!(bk::fill_random(&srv, 4, TOTAL / 4, 7), TOTAL);
    let first = bk::take_backup(node, name);
    after_each(&first);
    let changed = bk::scatter_changes(&srv, TOTAL / 100, PLACES, 11);
    let second = bk::take_backup(node, name);
    assert_ne!(first, second, "two snapshots, two ids");
    after_each(&second);
    (first, second, changed)
}

/// The most a 1%-changed snapshot may add (see the module doc).
fn bound(changed: u64) -> u64 {
    changed + PLACES * 2 * MAX_CHUNK + 2 * MAX_CHUNK
}

#[allow(clippy::cast_precision_loss)] // printed percentages and ratios
fn report(what: &str, changed: u64, new: u64) {
    let pct = |x: u64| 100.0 * x as f64 / TOTAL as f64;
    println!(
        "dedup ({what}): 64 MiB partition, {changed} B changed in {PLACES} places \
         ({:.2}%); the 2nd snapshot added {new} B = {:.2}% of the set, {:.2}x the bytes \
         changed (bound {} B = {:.2}%)",
        pct(changed),
        pct(new),
        new as f64 / changed as f64,
        bound(changed),
        pct(bound(changed)),
    );
}

#[test]
fn local() {
    let mut node = Node::init();
    node.start();
    node.request_sleep("db", "100000", &[]);
    node.running_pid("db", None);
    let (first, second, changed) = scenario(&node, "db", |_| {});
    let list = bk::local_snapshots(&node, "db");
    let s1 = bk::snapshot_in(&list, &first);
    let s2 = bk::snapshot_in(&list, &second);
    let (b1, n1) = (bk::field(s1, "bytes"), bk::field(s1, "new_bytes"));
    let (b2, n2) = (bk::field(s2, "bytes"), bk::field(s2, "new_bytes"));
    println!("snapshot 1: {b1} B, {n1} B new; snapshot 2: {b2} B, {n2} B new");
    report("node's count", changed, n2);
    assert!(b1 >= TOTAL && b2 >= TOTAL, "every byte counted: {b1}, {b2}");
    assert!(n1 >= TOTAL, "the first snapshot stores everything: {n1}");
    assert!(
        n2 >= changed,
        "the changes must be stored: {n2} < {changed}"
    );
    assert!(
        n2 <= bound(changed),
        "the second snapshot stored {n2} B new, over {} B for {changed} B changed",
        bound(changed)
    );
}

#[test]
fn uploaded() {
    let mut fleet = Fleet::new();
    fleet.start_master();
    let mut node = fleet.node("n1");
    // No upload budget to wait on: the figure is bytes, not time.
    bk::set_upload_rate(&node, 1 << 30);
    node.start();
    node.request_sleep("db", "100000", &[]);
    node.running_pid("db", None);
    let mut stored = Vec::new();
    let (_, _, changed) = scenario(&node, "db", |id| {
        bk::wait_uploaded(&node, "db", id, Duration::from_secs(300));
        stored.push(bk::blob_counters(&fleet, "n1"));
    });
    // (bytes, chunk puts, duplicate puts, refused)
    let (c1, c2) = (stored[0], stored[1]);
    let added = c2.0 - c1.0;
    println!(
        "master's blob counters (bytes, chunk puts, duplicate puts, refused) after \
         snapshot 1: {c1:?}; after snapshot 2: {c2:?}"
    );
    report("bytes the master stored", changed, added);
    assert!(c1.0 >= TOTAL, "the first upload: {c1:?}");
    assert_eq!(c2.2, 0, "no chunk sent twice: {c2:?}");
    assert_eq!(c2.3, 0, "nothing refused: {c2:?}");
    assert!(
        added >= changed,
        "the changes must be uploaded: {added} < {changed}"
    );
    assert!(
        added <= bound(changed),
        "the second upload stored {added} B, over {} B for {changed} B changed",
        bound(changed)
    );
}
