//! The mesh, end to end (#13): requests and authenticity through a chain of three
//! (`far` – `r` – `gw`, each but the gateway in its own network namespace).
//! - A request made at the master for `far` reaches it through the chain (the gateway
//!   fetches `far`'s signed state, at the latest at its next periodic fetch, a minute,
//!   and it spreads down) and runs; `far`'s records of it come back.
//! - A hostile relay: `gw`'s own disk is the attacker's. With its daemon stopped, the
//!   test appends to its outbox a genuine batch of `far` with one record altered (the
//!   origin's signature kept), and a batch in `far`'s name signed with `gw`'s own node
//!   key; `gw` then delivers them in its own batches. The master refuses both and counts
//!   them; it stores nothing in `far`'s name that `far` did not sign, and `gw` goes on
//!   syncing.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::swarm::{Layout, Swarm};
use common::wait_for;
use hedge_runtime::store::Store;
use hedge_wire::mesh::SignedBatch;
use hedge_wire::{InstanceStatus, Message, Name, Record, RecordKind, Up};

/// Genuine signed batches of `origin` nested in `relay`'s outbox.
fn origin_batches(swarm: &Swarm, relay: &str, origin: &str) -> Vec<SignedBatch> {
    fn walk(b: SignedBatch, origin: &str, out: &mut Vec<SignedBatch>, depth: usize) {
        let Ok(up) = b.up(1 << 20) else { return };
        if up.node.as_str() == origin {
            out.push(b);
            return;
        }
        if depth < hedge_wire::mesh::MAX_RELAY_DEPTH {
            for r in up.records {
                if let RecordKind::Relayed(inner) = r.kind {
                    walk(inner, origin, out, depth + 1);
                }
            }
        }
    }
    let mut out = Vec::new();
    for r in swarm.outbox_records(relay).into_values() {
        if let RecordKind::Relayed(b) = r.kind {
            walk(b, origin, &mut out, 0);
        }
    }
    out
}

fn encode_up(up: Up) -> Vec<u8> {
    hedge_wire::encode(&Message::Up(up), hedge_wire::DEFAULT_MAX_FRAME).unwrap()
}

#[test]
#[allow(clippy::disallowed_methods)] // an end-to-end test: reports how long the request took
fn a_request_crosses_the_chain_and_a_relay_can_neither_alter_nor_forge_records() {
    if !common::swarm::can_run() {
        return;
    }
    let layout = Layout {
        nodes: &["far", "r", "gw"],
        gateways: &["gw"],
        links: &[("far", "r"), ("r", "gw")],
    };
    // far reports its usage every second, so there is always some of it to relay.
    let mut swarm = Swarm::with_master(&layout, |name, c| {
        if name == "far" {
            c.replace("usage_interval_ms = 60000", "usage_interval_ms = 1000")
                .replace("sample_interval_ms = 10000", "sample_interval_ms = 500")
        } else {
            c
        }
    });
    swarm.start_all();

    // A request at the master for the far node: through the chain, it runs.
    swarm.fleet.master_ok(&[
        "request",
        "w",
        "--software",
        "exec:/bin/sleep",
        "--arg",
        "100000",
        "--node",
        "far",
    ]);
    // The gateway asks the master for the states of the nodes it carries when that set
    // grows and then every minute (the mesh link's `fetch_every`): a new request takes
    // up to that long to start down the chain.
    let asked = Instant::now();
    let pid = swarm.wait("w running on far", Duration::from_secs(150), || {
        let i = swarm.node("far").instance("w")?;
        (i.state == InstanceStatus::Running).then_some(i.pid?)
    });
    let took = asked.elapsed();
    assert!(common::alive(pid));
    // ... and far's report of it comes back to the master.
    wait_for(
        "far's Running at the master",
        Duration::from_secs(60),
        || {
            swarm
            .master_records("far")
            .values()
            .any(|r| {
                matches!(&r.kind, RecordKind::InstanceState { instance, status: InstanceStatus::Running, .. }
                    if instance.as_str() == "w")
            })
            .then_some(())
        },
    );

    // The hostile relay: gw's outbox, written while its daemon is down. Each batch of
    // far stays in gw's outbox until the master acks gw's batch holding it: with the
    // master stopped, one stays.
    let before = swarm.master_entry("far");
    swarm.stop_masters();
    let genuine = wait_for("a batch of far held by gw", Duration::from_secs(60), || {
        origin_batches(&swarm, "gw", "far").into_iter().next()
    });
    swarm.node_mut("gw").terminate();
    let gw_home = swarm.node("gw").home();
    let gw_key = std::fs::read(gw_home.join("uplink/node.key")).unwrap();
    let mut altered_up = genuine.up(1 << 20).unwrap();
    let (altered_seq, altered_time) = {
        let r: &mut Record = altered_up.records.first_mut().unwrap();
        r.time_ms += 1;
        (r.seq, r.time_ms)
    };
    let altered = SignedBatch {
        bytes: encode_up(altered_up.clone()),
        signature: genuine.signature.clone(),
    };
    // In far's name, far's epoch, seqs far never used; signed with gw's own key.
    let far_name = Name::new("far").unwrap();
    let forged_seq = 1_000_000;
    let forged_up = Up {
        node: far_name.clone(),
        epoch: altered_up.epoch,
        covers: Some((forged_seq, forged_seq)),
        records: vec![Record {
            seq: forged_seq,
            time_ms: altered_time,
            kind: RecordKind::NodeHealth {
                load1_milli: 1,
                mem_total: 2,
                mem_available: 1,
                disk_free: 3,
                temp_milli_c: None,
                uplink_up: false,
                outbox_depth: 0,
            },
        }],
    };
    let forged_bytes = encode_up(forged_up);
    let forged = hedge_uplink::origin::OriginKey::from_pem(&gw_key)
        .unwrap()
        .sign_batch(forged_bytes)
        .unwrap();
    {
        let store = Store::open(&gw_home.join("store"), 1 << 20).unwrap();
        let now = altered_time;
        store.append(now, RecordKind::Relayed(altered)).unwrap();
        store.append(now, RecordKind::Relayed(forged)).unwrap();
        store.flush_records().unwrap();
    }
    swarm.node_mut("gw").start();
    swarm.fleet.start_master();
    // Refused and counted by the master.
    let counted = wait_for("the forgeries counted", Duration::from_secs(60), || {
        let e = swarm.master_entry("gw");
        let n = e["forged_relayed"].as_u64()?;
        (n >= 2).then_some(n)
    });
    // gw goes on: its outbox (the forgeries included) drains.
    wait_for("gw drained", Duration::from_secs(60), || {
        (swarm.node("gw").status().outbox.depth == 0).then_some(())
    });
    let held = swarm.master_records("far");
    assert!(
        held.range(forged_seq..).next().is_none(),
        "a record in far's name that far never signed was stored"
    );
    if let Some(r) = held.get(&altered_seq) {
        assert_ne!(r.time_ms, altered_time, "the altered record was stored");
    }
    let after = swarm.master_entry("far");
    assert_eq!(after["conflicts"], before["conflicts"], "{after}");
    assert_eq!(after["records"], after["last_seq"], "{after}");
    eprintln!(
        "requests: w ran on far (pid {pid}) {took:?} after the request; forged_relayed \
         {counted}"
    );
}
