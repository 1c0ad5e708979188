//! A node re-initialised with the same id (its store wiped: new SD card, reflashed
//! board) starts a new life: its records, counted from seq 1 again, reach the master
//! beside the old life's, over a real mosquitto with mutual TLS.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::fleet::Fleet;
use common::{wait_for, Node};
use serde_json::Value;

/// The master's fleet entry of `node`.
fn master_node(fleet: &Fleet, node: &str) -> Value {
    let v: Value = serde_json::from_str(&fleet.master_ok(&["nodes", "--json"])).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == node)
        .cloned()
        .unwrap_or(Value::Null)
}

/// Whether the master lists instance `name` of `node` as requested on the node.
fn master_has_local(fleet: &Fleet, node: &str, name: &str) -> bool {
    let v: Value = serde_json::from_str(&fleet.master_ok(&["instances", "--json"])).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .any(|i| i["node"] == node && i["name"] == name && i["owner"] == "Node")
}

/// Waits until the node's outbox is empty (every record acknowledged) and returns the
/// records its store produced (next seq - 1).
fn drained(node: &Node) -> u64 {
    wait_for("outbox drained", Duration::from_secs(60), || {
        let s = node.status();
        (s.outbox.depth == 0 && s.uplink.connected).then(|| s.outbox.next_seq - 1)
    })
}

#[test]
fn a_wiped_node_starts_a_new_life_and_the_master_keeps_both() {
    let mut fleet = Fleet::new();
    fleet.start_master();
    let mut node = fleet.node("phoenix");
    node.start();
    let old_epoch = node.status().uplink.epoch;
    node.request_sleep("before", "100000", &[]);
    wait_for(
        "first life's request at the master",
        Duration::from_secs(30),
        || master_has_local(&fleet, "phoenix", "before").then_some(()),
    );
    // Quiet: the first life stops producing, everything is acknowledged.
    node.ok(&["destroy", "before"]);
    let old_acked = drained(&node);
    assert!(node.terminate().success());
    // What the master holds of the first life once it stopped (records made while
    // stopping may or may not have left before the wipe).
    let old_held = wait_for("first life held", Duration::from_secs(30), || {
        let r = master_node(&fleet, "phoenix")["records"].as_u64()?;
        (r >= old_acked).then_some(r)
    });

    // New SD card: the store is gone; same id, same enrollment.
    std::fs::remove_dir_all(node.home().join("store")).unwrap();
    node.start();
    let new_epoch = node.status().uplink.epoch;
    assert_ne!(new_epoch, old_epoch, "a wiped store is a new life");
    node.request_sleep("after", "100000", &[]);
    wait_for(
        "new life's request at the master",
        Duration::from_secs(30),
        || master_has_local(&fleet, "phoenix", "after").then_some(()),
    );
    node.ok(&["destroy", "after"]);
    // Every record of the new life is acknowledged and held, beside the first life's.
    let (new_produced, n) = wait_for("both lives held", Duration::from_secs(60), || {
        let s = node.status();
        if s.outbox.depth != 0 {
            return None;
        }
        let produced = s.outbox.next_seq - 1;
        let n = master_node(&fleet, "phoenix");
        (n["records"].as_u64()? == old_held + produced).then_some((produced, n))
    });
    let records = n["records"].as_u64().unwrap();
    eprintln!(
        "re-initialised node: first life {old_held} records at the master ({old_acked} \
         acknowledged before the wipe), new life {new_produced} records; master holds \
         {records} in {} lives; lost 0; repeats {}, conflicts {}",
        n["lives"], n["repeats"], n["conflicts"]
    );
    assert!(
        new_produced >= 2,
        "the new life made records: {new_produced}"
    );
    assert_eq!(n["lives"], 2, "{n}");
    assert_eq!(
        (n["repeats"].as_u64(), n["conflicts"].as_u64()),
        (Some(0), Some(0)),
        "{n}"
    );
    // The fleet view follows the new life: its seqs from 1, all acknowledged.
    assert_eq!(n["last_seq"].as_u64(), Some(new_produced), "{n}");
    assert_eq!(n["acked_upto"].as_u64(), Some(new_produced), "{n}");
    // The old life's request is still there.
    assert!(master_has_local(&fleet, "phoenix", "before"));
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// A node whose store is restored from an older backup: the restored store's seqs were
/// already used (and acknowledged) by the life that went on after the backup, so it
/// must start a new life, or its new records would be taken for those.
#[test]
fn a_node_restored_from_a_backup_starts_a_new_life_and_loses_nothing() {
    let mut fleet = Fleet::new();
    fleet.start_master();
    let mut node = fleet.node("lazarus");
    node.start();
    let first_epoch = node.status().uplink.epoch;
    drained(&node);
    assert!(node.terminate().success());
    let backup = node.dir.path().join("store.backup");
    copy_dir(&node.home().join("store"), &backup);

    // The life goes on after the backup: same store, same epoch, seqs past the backup's.
    node.start();
    assert_eq!(Some(node.status().uplink.epoch), Some(first_epoch));
    node.request_sleep("mid", "100000", &[]);
    wait_for(
        "the request made after the backup",
        Duration::from_secs(30),
        || master_has_local(&fleet, "lazarus", "mid").then_some(()),
    );
    node.ok(&["destroy", "mid"]);
    drained(&node);
    assert!(node.terminate().success());
    let before_restore = wait_for("first life held", Duration::from_secs(30), || {
        master_node(&fleet, "lazarus")["records"].as_u64()
    });

    // The card dies; the backup is copied back.
    std::fs::remove_dir_all(node.home().join("store")).unwrap();
    copy_dir(&backup, &node.home().join("store"));
    node.start();
    let restored_epoch = node.status().uplink.epoch;
    assert_ne!(
        restored_epoch, first_epoch,
        "a restored store starts a new life"
    );
    node.request_sleep("late", "100000", &[]);
    wait_for(
        "the restored node's request at the master",
        Duration::from_secs(30),
        || master_has_local(&fleet, "lazarus", "late").then_some(()),
    );
    node.ok(&["destroy", "late"]);
    // Everything the restored life sent was stored before it was acknowledged: the
    // master holds the records of before plus every record the node deleted on an ack.
    let (deleted, n) = wait_for("restored life held", Duration::from_secs(60), || {
        let s = node.status();
        if s.outbox.depth != 0 {
            return None;
        }
        let deleted = s.uplink.progress?.deleted;
        let n = master_node(&fleet, "lazarus");
        (n["records"].as_u64()? == before_restore + deleted).then_some((deleted, n))
    });
    eprintln!(
        "restored node: {before_restore} records at the master before the restore; the \
         restored life sent {deleted} (all acknowledged, lost 0); master holds {} in {} \
         lives; repeats {}, conflicts {}",
        n["records"], n["lives"], n["repeats"], n["conflicts"]
    );
    assert!(deleted >= 2, "{n}");
    assert_eq!(n["lives"], 2, "{n}");
    assert_eq!(n["conflicts"].as_u64(), Some(0), "{n}");
    assert!(master_has_local(&fleet, "lazarus", "mid"));
}
