//! The master's own recovery, end to end (real master, mosquitto over TLS, a node): a
//! master restored from an older backup of its store still delivers new desired states
//! to a node that applied later generations of its previous life, thanks to the epoch
//! `hedge master recover` raises (the high 32 bits of every generation).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::fleet::Fleet;
use common::{wait_for, Node};

/// `hedge master request NAME` of `/bin/sleep 1000` on `node`; the generation printed.
fn request(fleet: &Fleet, name: &str, node: &str) -> u64 {
    let out = fleet.master_ok(&[
        "request",
        name,
        "--software",
        "exec:/bin/sleep",
        "--arg",
        "1000",
        "--node",
        node,
    ]);
    let line = out
        .lines()
        .find(|l| l.starts_with(&format!("{name} requested on {node}")))
        .unwrap_or_else(|| panic!("no request line in {out:?}"));
    line.split("(generation ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|g| g.parse().ok())
        .unwrap_or_else(|| panic!("no generation in {line:?}"))
}

/// Waits until `node` applied generation `generation` (or a later one) and runs `name`.
fn applied(node: &Node, generation: u64, name: &str) -> u64 {
    let applied = wait_for(
        &format!("generation {generation} applied"),
        Duration::from_secs(60),
        || {
            let g = node.try_status()?.desired?.generation;
            (g >= generation).then_some(g)
        },
    );
    node.running_pid_within(name, Duration::from_secs(30));
    applied
}

#[test]
fn a_master_recovered_from_an_older_backup_still_moves_its_nodes_forward() {
    let mut fleet = Fleet::new();
    fleet.start_master();
    let node = fleet.started_node("n1");
    let g1 = request(&fleet, "a", "n1");
    applied(&node, g1, "a");

    // Back up while the master runs; then the old life goes on past the backup.
    let backup = fleet.dir.path().join("master-backup.db");
    let out = fleet.master_ok(&["backup", "--out", backup.to_str().unwrap()]);
    assert!(out.contains("epoch 0"), "{out}");
    let mut later = g1;
    for name in ["b", "c", "d"] {
        later = request(&fleet, name, "n1");
    }
    let seen = applied(&node, later, "d");
    assert_eq!(seen, later);

    // The store is in use: recover refuses (69) and changes nothing.
    let refused = fleet.master(&["recover", "--from", backup.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(69), "{refused:?}");

    // Stop the master, recover from the backup, start it again.
    for mut m in fleet.masters.drain(..) {
        m.kill().unwrap();
        m.wait().unwrap();
    }
    let out = fleet.master_ok(&["recover", "--from", backup.to_str().unwrap()]);
    assert!(out.contains("recovered"), "{out}");
    fleet.start_master();

    // The recovered store holds the backup's state: without the epoch its next
    // generation would be g1 + 1, which the node refuses as stale (it applied `later`).
    assert!(g1 < later, "the node applied generations after the backup");
    let next_without_epoch = g1 + 1;
    assert!(next_without_epoch <= seen);
    let g = request(&fleet, "e", "n1");
    let epoch = g >> 32;
    assert!(epoch > 0, "generation {g} carries no epoch");
    assert_eq!(g & 0xffff_ffff, 1, "the first generation of the new epoch");
    assert!(g > seen, "generation {g} must be above the applied {seen}");
    // The node accepts it: the instance appears and runs.
    assert_eq!(applied(&node, g, "e"), g);
    // The recovered master's state is the backup's plus e: b, c, d, requested after
    // the backup, are gone from it, and a still runs.
    node.running_pid_within("a", Duration::from_secs(30));
    let again = request(&fleet, "f", "n1");
    assert_eq!(again, g + 1);
    applied(&node, again, "f");

    // A request file's [backup] reaches the signed state (what `request` reports is
    // read from it); the same request without it removes the policy.
    let file = fleet.dir.path().join("g.toml");
    let text = "name = \"g\"\nsoftware = \"exec:/bin/sleep\"\nargs = [\"1000\"]\n";
    std::fs::write(
        &file,
        format!("{text}[backup]\ninterval = \"5m\"\nretain = 3\n"),
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let out = fleet.master_ok(&["request", "--file", f, "--node", "n1"]);
    assert!(
        out.contains("g backed up every 300 s, 3 kept, paths srv"),
        "{out}"
    );
    std::fs::write(&file, text).unwrap();
    let out = fleet.master_ok(&["request", "--file", f]);
    assert!(
        out.contains("g requested on n1") && !out.contains("backed up"),
        "{out}"
    );
}
