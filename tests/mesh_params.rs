//! The mesh, end to end (#13): connection parameters cross one peer link with no master
//! running. `node-2` runs `db`, which publishes its port; `node-1`, a peer in another
//! network namespace, runs `app`, whose config renders `{{node-2/db.port}}`. The value
//! travels signed by `node-2` over the peer link; a new value re-renders `app` (and
//! restarts it); a cut link keeps the last value. Both requests are made on the nodes
//! themselves: no master, no broker path.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::params::{app_request, db_request};
use common::swarm::{Layout, Swarm};
use common::{wait_for, Node};

fn conf(node: &Node) -> Option<String> {
    std::fs::read_to_string(node.partition("app").join("etc/app.conf")).ok()
}

#[test]
fn connection_parameters_cross_a_peer_link_with_no_master() {
    if !common::swarm::can_run() {
        return;
    }
    let layout = Layout {
        nodes: &["node-1", "node-2"],
        gateways: &[],
        links: &[("node-1", "node-2")],
    };
    let mut swarm = Swarm::with_master(&layout, |_, c| c);
    // No master from here on; neither node can reach the broker anyway.
    swarm.stop_masters();
    swarm.start_all();
    let dir = swarm.fleet.dir.path().to_path_buf();

    // The consumer first: it waits for a value published on its peer.
    swarm.node("node-1").ok(&[
        "request",
        "--file",
        &app_request(&dir, "db={{node-2/db.port}}\\n"),
    ]);
    swarm
        .node("node-2")
        .ok(&["request", "--file", &db_request(&dir, "5432")]);
    wait_for("app rendered from node-2", Duration::from_secs(60), || {
        (conf(swarm.node("node-1"))? == "db=5432\n").then_some(())
    });
    let pid = swarm
        .node("node-1")
        .running_pid_within("app", Duration::from_secs(30));

    // A new value re-renders and restarts the consumer.
    swarm
        .node("node-2")
        .ok(&["request", "--file", &db_request(&dir, "6543")]);
    wait_for("app re-rendered", Duration::from_secs(60), || {
        (conf(swarm.node("node-1"))? == "db=6543\n").then_some(())
    });
    let restarted = swarm.node("node-1").running_pid("app", Some(pid));
    assert_ne!(restarted, pid);

    // The link goes down and node-1 reboots: the last verified value holds.
    swarm.cut("node-1", "node-2");
    swarm.node_mut("node-1").terminate();
    std::fs::remove_file(swarm.node("node-1").partition("app").join("etc/app.conf")).unwrap();
    swarm.node_mut("node-1").start();
    wait_for("app rendered offline", Duration::from_secs(30), || {
        (conf(swarm.node("node-1"))? == "db=6543\n").then_some(())
    });
    assert!(swarm.fleet.masters.is_empty(), "a master ran");
}
