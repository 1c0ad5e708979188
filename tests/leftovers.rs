//! Orphan cleanup at boot never crosses a reboot: a stored process group recorded in
//! another boot (its pgid and start time now name an unrelated group) survives the
//! daemon's start, while one recorded in this boot is still killed.
//!
//! Runs as any user: the "unrelated" group is a `sleep` this test starts in its own
//! process group, and the record is written into the node's store before the daemon
//! opens it.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::Duration;

use common::{alive, wait_for, Node};
use hedge_runtime::store::{ObservedInstance, Store};
use hedge_runtime::supervisor::process_identity;
use hedge_wire::Name;

/// A `sleep` leading its own process group.
fn sleeper() -> Child {
    Command::new("sleep")
        .arg("100000")
        .process_group(0)
        .spawn()
        .unwrap()
}

/// Writes an observed record for `name` pointing at `child`'s group, with its real
/// start time (what an earlier daemon would have stored) and `boot_id`.
fn record(node: &Node, name: &str, child: &Child, boot_id: Option<String>) {
    let pid = child.id();
    let store = Store::open(&node.home().join("store"), 1 << 20).unwrap();
    let obs = ObservedInstance {
        pgid: Some(pid),
        start_ticks: Some(process_identity::start_ticks(pid).unwrap()),
        restarts: 0,
        last_exit: None,
        boot_id,
    };
    store.put_observed(&Name::new(name).unwrap(), &obs).unwrap();
}

#[test]
fn a_process_group_recorded_in_another_boot_survives_the_daemons_start() {
    let mut node = Node::init();
    let mut other_boot = sleeper();
    let mut this_boot = sleeper();
    let other = "00000000-0000-4000-8000-000000000000".to_string();
    assert_ne!(process_identity::boot_id(), Some(other.clone()));
    record(&node, "ghost", &other_boot, Some(other));
    record(&node, "mine", &this_boot, process_identity::boot_id());

    node.start();
    // The same-boot record is acted on (positive proof that the cleanup ran).
    wait_for(
        "the same-boot group killed",
        Duration::from_secs(10),
        || this_boot.try_wait().unwrap().map(|_| ()),
    );
    assert!(
        alive(other_boot.id()),
        "an unrelated group recorded in another boot was killed"
    );
    assert!(
        node.daemon_log()
            .contains("recorded process group left alone"),
        "{}",
        node.daemon_log()
    );
    assert_eq!(other_boot.try_wait().unwrap(), None);
    // The records are cleared: a later start does not judge them again.
    node.terminate();
    let store = Store::open(&node.home().join("store"), 1 << 20).unwrap();
    assert!(store.observed().unwrap().values().all(|o| o.pgid.is_none()));
    drop(store);
    other_boot.kill().unwrap();
    other_boot.wait().unwrap();
}
