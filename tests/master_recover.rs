//! The master's own recovery, end to end (real master, mosquitto over TLS, a node): a
//! master restored from an older backup of its store still delivers new desired states
//! to a node that applied later generations of its previous life, thanks to the epoch
//! `hedge master recover` raises (the high 32 bits of every generation); and the node
//! holds over the instances requested after the backup, which the recovered master's
//! states leave out (`hedge_runtime::holdover`), until a request names them.
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

    // Back up while the master runs; then the old life goes on past the backup: b
    // keeps data in its partition.
    let backup = fleet.dir.path().join("master-backup.db");
    let out = fleet.master_ok(&["backup", "--out", backup.to_str().unwrap()]);
    assert!(out.contains("epoch 0"), "{out}");
    fleet.master_ok(&[
        "request",
        "b",
        "--software",
        "exec:/bin/sh",
        "--arg=-c",
        "--arg=mkdir -p srv && echo kept > srv/data && exec sleep 1000",
        "--node",
        "n1",
    ]);
    let mut later = g1;
    for name in ["c", "d"] {
        later = request(&fleet, name, "n1");
    }
    let seen = applied(&node, later, "d");
    assert_eq!(seen, later);
    let b_pid = node.running_pid_within("b", Duration::from_secs(30));
    let data = node.partition("b").join("srv/data");
    wait_for("b's data", Duration::from_secs(30), || {
        data.is_file().then_some(())
    });

    // The store is in use: recover refuses (69) and changes nothing.
    let refused = fleet.master(&["recover", "--from", backup.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(69), "{refused:?}");

    // Stop the master, recover from the backup, start it again.
    for mut m in fleet.masters.drain(..) {
        m.kill().unwrap();
        m.wait().unwrap();
    }
    let recovered = fleet.master(&["recover", "--from", backup.to_str().unwrap()]);
    assert!(recovered.status.success(), "{recovered:?}");
    let out = String::from_utf8_lossy(&recovered.stdout);
    assert!(out.contains("recovered"), "{out}");
    let notice = String::from_utf8_lossy(&recovered.stderr);
    assert!(notice.contains("holds them over"), "{notice}");
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
    // the backup, are not in it, and the node holds them over: b still runs, the same
    // process, its data intact.
    node.running_pid_within("a", Duration::from_secs(30));
    let held = |name: &str| node.instance(name).is_some_and(|i| i.held_over);
    for name in ["b", "c", "d"] {
        assert!(held(name), "{name} is held over: {:?}", node.instance(name));
    }
    assert!(!held("a") && !held("e"));
    assert_eq!(node.running_pid("b", None), b_pid, "b was not restarted");
    assert_eq!(std::fs::read_to_string(&data).unwrap(), "kept\n");
    let log = node.daemon_log();
    assert!(
        log.contains("instance held over") && log.contains("instance=b"),
        "the node reports b held over: {log}"
    );
    let status = node.ok(&["status"]);
    assert!(status.contains("held over b"), "{status}");

    // A later state of the same epoch still leaves b out: still held over.
    let again = request(&fleet, "f", "n1");
    assert_eq!(again, g + 1);
    applied(&node, again, "f");
    assert!(held("b"));
    assert_eq!(node.running_pid("b", None), b_pid);

    // Requested again, c is the master's once more (no longer held over).
    let gc = request(&fleet, "c", "n1");
    applied(&node, gc, "c");
    assert!(!held("c"));

    // The master's explicit destroy removes b, partition and all.
    let out = fleet.master_ok(&[
        "request",
        "b",
        "--software",
        "exec:/bin/sh",
        "--state",
        "destroyed",
        "--node",
        "n1",
    ]);
    assert!(out.contains("b requested on n1"), "{out}");
    wait_for("b destroyed", Duration::from_secs(60), || {
        (node.instance("b").is_none() && !node.partition("b").exists()).then_some(())
    });
    assert!(held("d"), "d is still held over");

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
