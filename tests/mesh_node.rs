//! The node daemon's mesh integration with real processes over loopback (no network
//! namespaces: the issue's chain, ferry and bound tests with cut links are
//! `tests/mesh_*.rs`): a node whose broker is unreachable hands its records to a peer
//! that has an uplink; the peer holds them in custody, in its own outbox, and `status`
//! shows both sides (path, PEERS, custody per origin); connection parameters cross the
//! peer link with no master running.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::broker::free_port;
use common::fleet::Fleet;
use common::{wait_for, Node};

/// Turns `[mesh]` on in `node`'s config: listening on `port`, dialling `peers`.
fn mesh_on(node: &Node, port: u16, peers: &[u16]) {
    let peers: Vec<String> = peers.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    node.edit_config(|c| {
        let at = c.find("\n[mesh]\n").expect("a [mesh] section");
        let (head, tail) = c.split_at(at);
        let tail = tail.replacen(
            "enabled = false",
            &format!(
                "enabled = true\nlisten = \"127.0.0.1:{port}\"\npeers = [{}]\nkeepalive_ms = 200\ndead_after_ms = 1000",
                peers.join(", ")
            ),
            1,
        );
        format!("{head}{tail}")
    });
}

/// A node of `fleet` whose broker port is a closed one: only the mesh reaches the master.
fn cut_off(fleet: &Fleet, id: &str) -> Node {
    let node = fleet.node(id);
    let dead = free_port();
    let live = format!("port = {}", fleet.node_port);
    node.edit_config(|c| c.replacen(&live, &format!("port = {dead}"), 1));
    node
}

#[test]
fn a_node_without_a_broker_hands_its_records_to_a_peer_that_holds_them_in_custody() {
    let mut fleet = Fleet::new();
    fleet.start_master();
    let (pa, pb) = (free_port(), free_port());
    let mut a = fleet.node("a");
    mesh_on(&a, pa, &[]);
    a.start();
    let mut b = cut_off(&fleet, "b");
    mesh_on(&b, pb, &[pa]);
    b.start();
    b.request_sleep("s", "100000", &[]);

    // b: a is its peer, one hop from the master through it.
    let sb = wait_for(
        "b reaches the master through a",
        Duration::from_secs(30),
        || {
            let s = b.status();
            (s.mesh.hops == Some(1) && s.mesh.connected).then_some(s)
        },
    );
    assert!(!sb.uplink.connected);
    let pa_row = sb.mesh.peers.iter().find(|p| p.node == "a").unwrap();
    assert_eq!((pa_row.link.as_str(), pa_row.hops), ("up", Some(0)));

    // a: custody of b's batches, in its own outbox, shown per origin.
    let sa = wait_for("a holds custody for b", Duration::from_secs(30), || {
        let s = a.status();
        (s.mesh.relay.batches > 0).then_some(s)
    });
    assert_eq!(sa.mesh.hops, Some(0));
    assert!(sa.mesh.relay.records > 0);
    assert!(sa
        .mesh
        .peers
        .iter()
        .any(|p| p.node == "b" && p.link == "up"));
    let table = a.ok(&["status"]);
    let row = table
        .lines()
        .find(|l| l.starts_with("b "))
        .unwrap_or_else(|| panic!("no row for b:\n{table}"));
    assert!(row.split_whitespace().nth(2) == Some("up"), "{table}");

    // The master unwraps b's records from a's batches and its signed ack comes back
    // down: b deletes what the master holds, a drops its custody copies.
    wait_for(
        "the master holds b's records",
        Duration::from_secs(30),
        || (fleet.held("b").0 > 0).then_some(()),
    );
    wait_for(
        "b's outbox drained through a",
        Duration::from_secs(30),
        || (b.status().outbox.depth == 0).then_some(()),
    );
    wait_for(
        "a's custody for b acknowledged",
        Duration::from_secs(30),
        || {
            let s = a.status();
            let row = s.mesh.peers.iter().find(|p| p.node == "b")?;
            (row.custody_batches == 0).then_some(())
        },
    );
    let nodes = fleet.master_ok(&["nodes"]);
    assert!(nodes.contains("via a"), "{nodes}");
}

#[test]
fn connection_parameters_cross_a_peer_link_with_no_master() {
    // Two nodes enrolled by a master that then goes away with its broker.
    let mut fleet = Fleet::new();
    fleet.start_master();
    let (pa, pb) = (free_port(), free_port());
    let mut a = cut_off(&fleet, "a");
    let mut b = cut_off(&fleet, "b");
    mesh_on(&a, pa, &[pb]);
    mesh_on(&b, pb, &[pa]);
    // Enrollment needs the master's HTTPS endpoint once (the certificate is the peer's
    // identity); after that the master is gone.
    a.start();
    b.start();
    wait_for("both enrolled and peered", Duration::from_secs(30), || {
        (a.status()
            .mesh
            .peers
            .iter()
            .any(|p| p.node == "b" && p.link == "up")
            && b.status()
                .mesh
                .peers
                .iter()
                .any(|p| p.node == "a" && p.link == "up"))
        .then_some(())
    });
    for m in &mut fleet.masters {
        m.kill().unwrap();
        m.wait().unwrap();
    }
    fleet.broker.stop();

    // b's db publishes; a's app renders it from the peer.
    b.request_sleep("db", "100000", &[]);
    let db_etc = b.partition("db").join("etc");
    wait_for("db's partition", Duration::from_secs(10), || {
        db_etc.is_dir().then_some(())
    });
    let tmp = db_etc.join("connection.json.tmp");
    std::fs::write(&tmp, r#"{"port":7001}"#).unwrap();
    std::fs::rename(&tmp, db_etc.join("connection.json")).unwrap();

    let file = a.dir.path().join("app.toml");
    std::fs::write(
        &file,
        r#"
name = "app"
software = "exec:/bin/sleep"
args = ["100000"]
[[config_files]]
path = "etc/app.conf"
template = "db={{b/db.port}}\n"
"#,
    )
    .unwrap();
    a.ok(&["request", "--file", file.to_str().unwrap()]);
    let conf = a.partition("app").join("etc/app.conf");
    wait_for("app rendered b's db port", Duration::from_secs(30), || {
        (std::fs::read_to_string(&conf).ok()? == "db=7001\n").then_some(())
    });
    assert_eq!(a.status().mesh.relay.peer_params, 1);
}
