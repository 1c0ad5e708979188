//! The node gives back what a burst of work mapped and no longer uses (src/memory.rs):
//! after its boot and a run of requests, the daemon's mapped file pages fall far below
//! their peak, and it goes on supervising as before (the released pages come back at
//! its next touch).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{wait_for, Node};

/// The file-backed pages the process maps, in KiB.
fn mapped_file_kib(pid: u32) -> u64 {
    common::status_kib(pid, "RssFile").unwrap()
}

#[test]
fn after_a_burst_the_node_maps_far_fewer_file_pages_and_keeps_supervising() {
    let mut node = Node::init();
    node.start();
    let pid = node.daemon.as_ref().unwrap().id();
    let mut peak = mapped_file_kib(pid);
    for i in 0..10 {
        node.request_sleep(&format!("s{i}"), "100000", &[]);
        peak = peak.max(mapped_file_kib(pid));
    }
    let pids: Vec<u32> = (0..10)
        .map(|i| node.running_pid(&format!("s{i}"), None))
        .collect();
    peak = peak.max(mapped_file_kib(pid));
    let low = wait_for(
        "the node to release what its boot and the requests mapped",
        Duration::from_secs(30),
        || {
            let now = mapped_file_kib(pid);
            (now * 10 <= peak * 6).then_some(now)
        },
    );
    eprintln!("mapped file pages: peak {peak} KiB, then {low} KiB");
    // It supervises as before: an instance killed now comes back.
    nix::sys::signal::kill(common::nix_pid(pids[3]), nix::sys::signal::Signal::SIGKILL).unwrap();
    node.running_pid("s3", Some(pids[3]));
    assert_eq!(node.status().instances.len(), 10);
    for (i, p) in pids.iter().enumerate().filter(|(i, _)| *i != 3) {
        assert_eq!(
            node.running_pid(&format!("s{i}"), None),
            *p,
            "s{i} untouched"
        );
    }
}
