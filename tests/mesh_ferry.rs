//! The mesh, end to end (#13): a ferry. Node `c` (its own network namespace, no way to
//! the broker) hands custody of its records to `b`, a ferry (`[mesh] ferry = true`)
//! whose own uplink is cut from the start: nobody has a path, and `b` takes custody
//! anyway. The `c`–`b` link then goes down for good, and `b` later reaches the master:
//! every record `b` carried arrives, exactly once and as `c` made it. `c` keeps its
//! records until the master's signed ack reaches it, which it does through another
//! path (`c`–`d`, `d` a gateway); then `c`'s outbox empties, and the master still holds
//! each record once.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::swarm::{mesh_setting, Layout, Swarm};
use common::wait_for;
use hedge_wire::mesh::SignedBatch;
use hedge_wire::{Record, RecordKind};

/// The ranges of `origin`'s records that `relay` holds in its own outbox
/// (`Relayed` records, nested ones included).
fn carried(swarm: &Swarm, relay: &str, origin: &str) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for r in swarm.outbox_records(relay).into_values() {
        if let RecordKind::Relayed(b) = r.kind {
            collect(&b, origin, &mut out, 0);
        }
    }
    out.sort_unstable();
    out
}

fn collect(b: &SignedBatch, origin: &str, out: &mut Vec<(u64, u64)>, depth: usize) {
    let Ok(up) = b.up(1 << 20) else { return };
    if up.node.as_str() == origin {
        if let Some(c) = up.covers {
            out.push(c);
        }
    }
    if depth < hedge_wire::mesh::MAX_RELAY_DEPTH {
        for r in &up.records {
            if let RecordKind::Relayed(inner) = &r.kind {
                collect(inner, origin, out, depth + 1);
            }
        }
    }
}

#[test]
fn a_ferry_carries_custody_to_the_master_and_the_ack_returns_by_another_path() {
    if !common::swarm::can_run() {
        return;
    }
    let layout = Layout {
        nodes: &["c", "b", "d"],
        gateways: &["b", "d"],
        links: &[("c", "b"), ("c", "d")],
    };
    let mut swarm = Swarm::with_master(&layout, |name, c| match name {
        "c" => c
            .replace("sample_interval_ms = 10000", "sample_interval_ms = 100")
            .replace("usage_interval_ms = 60000", "usage_interval_ms = 100"),
        "b" => mesh_setting(&c, "ferry", "true"),
        _ => c,
    });
    // No path anywhere: the other path stays down until the end, and the ferry's
    // uplink (every gateway's) is cut before it ever connects.
    swarm.cut("c", "d");
    swarm.fleet.cut_link();
    swarm.start_all();
    for i in 0..5 {
        swarm
            .node("c")
            .request_sleep(&format!("s{i}"), "100000", &[]);
    }
    // c hands custody to the ferry: b's own outbox holds c's signed batches.
    let upto = wait_for(
        "b holding 300 of c's records",
        Duration::from_secs(60),
        || {
            let held = carried(&swarm, "b", "c");
            let top = held.iter().map(|c| c.1).max()?;
            (top >= 300).then_some(top)
        },
    );
    assert_eq!(
        swarm.fleet.held("c").1,
        0,
        "nothing reached the master: nobody had a path"
    );
    // The c–b link goes down for good.
    swarm.cut("c", "b");
    let held_by_b = carried(&swarm, "b", "c");
    let upto = held_by_b.iter().map(|c| c.1).max().unwrap_or(upto);
    // Custody did not make c delete anything: the origin keeps its records until the
    // master's ack.
    let at_c = swarm.outbox_records("c");
    assert!(
        (1..=upto).all(|s| at_c.contains_key(&s)),
        "c deleted records on custody alone"
    );
    for i in 0..5 {
        swarm.node("c").ok(&["destroy", &format!("s{i}")]);
    }
    // The ferry reaches the master later.
    swarm.fleet.restore_link();
    wait_for(
        "c's carried records at the master",
        Duration::from_secs(60),
        || (swarm.fleet.held("c").1 >= upto).then_some(()),
    );
    let at_master = swarm.master_records("c");
    for s in 1..=upto {
        assert_eq!(
            at_master.get(&s),
            at_c.get(&s),
            "seq {s}: the master's copy is not the origin's"
        );
    }
    // The ack cannot reach c yet: it still holds what b delivered.
    let now_at_c = swarm.outbox_records("c");
    assert!(
        now_at_c.contains_key(&1),
        "c deleted without a path for the ack"
    );
    // Another path: c–d. c sends again what no ack covers; the master stores nothing
    // twice and its signed ack reaches c through d.
    swarm.restore("c", "d");
    let produced = wait_for("c's outbox empty", Duration::from_secs(120), || {
        let s = swarm.node("c").status();
        (s.outbox.depth == 0).then_some(s.outbox.next_seq - 1)
    });
    wait_for("master caught up", Duration::from_secs(60), || {
        (swarm.fleet.held("c").1 >= produced).then_some(())
    });
    let at_master: BTreeMap<u64, Record> = swarm.master_records("c");
    assert!(
        (1..=produced).all(|s| at_master.contains_key(&s)),
        "records of c missing"
    );
    let e = swarm.master_entry("c");
    eprintln!(
        "ferry: c made {produced}, b carried 1..={upto} ({} batches), master {e}",
        held_by_b.len()
    );
    assert_eq!(e["records"].as_u64(), Some(produced), "{e}");
    assert_eq!(
        (
            e["lives"].as_u64(),
            e["repeats"].as_u64(),
            e["conflicts"].as_u64()
        ),
        (Some(1), Some(0), Some(0)),
        "{e}"
    );
}
