//! Revocation end to end, with a real mosquitto (mutual TLS, `crlfile`), real master and
//! node processes: after `hedge master revoke a`, node a's records are refused by the
//! master, its new connections are refused by the broker, and its artifact downloads by
//! the master's endpoint, while node b keeps syncing.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::fleet::Fleet;
use common::{wait_for, Node};
use hedge_runtime::artifact::fetch::{self, FetchError, Source};

fn sent_upto(node: &Node) -> u64 {
    node.status().uplink.progress.map_or(0, |p| p.sent_upto)
}

/// A source of `url` with the node's own uplink files as TLS client.
fn source(node: &Node, url: &str) -> Source {
    let up = node.home().join("uplink");
    let read = |f: &str| std::fs::read(up.join(f)).unwrap();
    let tls =
        hedge_uplink::tls::client_config(&read("ca.crt"), &read("node.crt"), &read("node.key"))
            .unwrap();
    Source::parse(url, tls).unwrap()
}

/// Whether a log line says `node`'s `what` was refused as revoked.
fn refused(log: &str, node: &str, what: &str) -> bool {
    log.lines().any(|l| {
        l.contains("revoked node refused") && l.contains(&format!("\"{node}\"")) && l.contains(what)
    })
}

fn fast(node: &Node) {
    node.edit_config(|c| {
        c.replace("sample_interval_ms = 10000", "sample_interval_ms = 100")
            .replace("usage_interval_ms = 60000", "usage_interval_ms = 100")
            .replace("max_batch_records = 1024", "max_batch_records = 16")
    });
}

/// An idle instance: usage records several times a second.
fn busy(node: &Node) {
    node.request_sleep("idle", "100000", &[]);
}

#[test]
fn a_revoked_node_cannot_connect_download_or_store_records() {
    let mut fleet = Fleet::new();
    let port = fleet.enable_artifacts();
    fleet.start_master();
    let mut a = fleet.node("rev-a");
    let mut b = fleet.node("rev-b");
    fast(&a);
    fast(&b);
    a.start();
    b.start();
    busy(&a);
    busy(&b);
    wait_for("both nodes stored", Duration::from_secs(30), || {
        (fleet.held("rev-a").1 > 0 && fleet.held("rev-b").1 > 0).then_some(())
    });
    let file = fleet.dir.path().join("x.tar.gz");
    std::fs::write(&file, b"some bytes").unwrap();
    let sha = fleet.master_ok(&["supply", file.to_str().unwrap(), "--target", "*"]);
    // The endpoint serves a node only what its desired state names: name it, stopped.
    for node in ["rev-a", "rev-b"] {
        fleet.master_ok(&[
            "request",
            &format!("pkg-{node}"),
            "--software",
            sha.trim(),
            "--entry",
            "bin/app",
            "--node",
            node,
            "--state",
            "stopped",
        ]);
    }
    let sha: [u8; 32] = hedge_common::hex::decode_array(&sha.trim()["sha256:".len()..]).unwrap();
    let url = format!("https://127.0.0.1:{port}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let fetch_as = |node: &Node, part: &str| {
        let source = source(node, &url);
        let part = fleet.dir.path().join(part);
        rt.block_on(fetch::download(&source, &sha, &part, 1 << 20))
    };
    fetch_as(&a, "before.part").expect("a downloads before its revocation");

    let out = fleet.master_ok(&["revoke", "rev-a"]);
    assert!(out.contains("rev-a revoked"), "{out}");
    let pid = fleet.broker.pid().unwrap();
    assert!(
        out.contains(&format!("broker (pid {pid}) told to reload")),
        "the broker was found through its pid_file:\n{out}"
    );
    // Records: the connection a already had stays open, but what it sends is refused.
    wait_for(
        "the master refuses a's records",
        Duration::from_secs(30),
        || refused(&fleet.master_log(0), "rev-a", "records").then_some(()),
    );
    // The master handles frames in order: nothing of a's is stored after the first refusal.
    let held = fleet.held("rev-a").1;
    let b_before = fleet.held("rev-b").1;
    wait_for(
        "a sends more, b keeps syncing",
        Duration::from_secs(30),
        || (sent_upto(&a) > held && fleet.held("rev-b").1 > b_before + 20).then_some(()),
    );
    assert_eq!(
        fleet.held("rev-a").1,
        held,
        "a revoked node's records were stored"
    );

    // Downloads: refused by name.
    match fetch_as(&a, "after.part") {
        Err(FetchError::Status(403)) => {}
        other => panic!("a revoked node downloaded: {other:?}"),
    }
    assert!(refused(&fleet.master_log(0), "rev-a", "artifact download"));
    fetch_as(&b, "b.part").expect("b still downloads");

    // Connections: a restarted node a is refused by the broker (CRL), b is not.
    let refusals = |log: &str| log.matches("certificate verify failed").count();
    let before = refusals(&fleet.broker.log_text());
    a.kill9();
    a.start();
    wait_for(
        "the broker refuses a's certificate",
        Duration::from_secs(30),
        || (refusals(&fleet.broker.log_text()) > before).then_some(()),
    );
    let b_now = fleet.held("rev-b").1;
    wait_for("b keeps syncing", Duration::from_secs(30), || {
        (fleet.held("rev-b").1 > b_now + 20).then_some(())
    });
    assert!(!a.status().uplink.connected);
    assert_eq!(fleet.held("rev-a").1, held);

    // Enrolling the revoked id again is refused.
    let bundle = fleet.dir.path().join("again.bundle");
    let out = fleet.master(&["enroll", "rev-a", "--out", bundle.to_str().unwrap()]);
    assert!(!out.status.success(), "a revoked id was enrolled again");
}
