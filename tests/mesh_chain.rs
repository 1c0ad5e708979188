//! The mesh, end to end (#13): a chain of four nodes, each in its own network namespace
//! but the last, which alone reaches the broker; peer links are veth pairs cut with
//! `ip link set down`. Records made on the far end cross every hop with custody and
//! reach the master exactly once, content checked, through link cuts and SIGKILLs of
//! every relay. Real master, mosquitto (mutual TLS) and node processes.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::swarm::{Layout, Swarm};
use common::wait_for;
use hedge_wire::{Record, RecordKind};

/// Fast records: an idle instance makes ten usage records a second.
fn fast(c: String) -> String {
    c.replace("sample_interval_ms = 10000", "sample_interval_ms = 100")
        .replace("usage_interval_ms = 60000", "usage_interval_ms = 100")
}

/// Usage intervals of one instance that overlap (CPU accounted twice) or leave a gap
/// (a record lost), over the master's records of one node.
fn usage_faults(records: &BTreeMap<u64, Record>) -> (usize, usize) {
    let mut spans: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    for r in records.values() {
        if let RecordKind::Usage {
            instance,
            from_ms,
            to_ms,
            ..
        } = &r.kind
        {
            spans
                .entry(instance.to_string())
                .or_default()
                .push((*from_ms, *to_ms));
        }
    }
    let (mut overlaps, mut gaps) = (0, 0);
    for v in spans.values_mut() {
        v.sort_unstable();
        for w in v.windows(2) {
            if w[1].0 < w[0].1 {
                overlaps += 1;
            } else if w[1].0 > w[0].1 {
                gaps += 1;
            }
        }
    }
    (overlaps, gaps)
}

#[test]
fn five_thousand_records_cross_a_chain_of_four_exactly_once_through_cuts_and_kills() {
    if !common::swarm::can_run() {
        return;
    }
    let layout = Layout {
        nodes: &["far", "r1", "r2", "gw"],
        gateways: &["gw"],
        links: &[("far", "r1"), ("r1", "r2"), ("r2", "gw")],
    };
    let mut swarm = Swarm::with_master(&layout, |name, c| if name == "far" { fast(c) } else { c });
    swarm.start_all();
    let far = "far";
    // 20 idle instances on the far end: about 200 usage records a second.
    for i in 0..20 {
        swarm
            .node(far)
            .request_sleep(&format!("s{i}"), "100000", &[]);
    }
    // The far end's records as it made them: every record shows up in its outbox
    // (the origin keeps each until the master's ack), sampled once a round.
    let mut made: BTreeMap<u64, Record> = BTreeMap::new();
    let links = [("far", "r1"), ("r1", "r2"), ("r2", "gw")];
    let relays = ["r1", "r2", "gw"];
    let mut kills = [0u32; 3];
    let mut cuts = 0;
    let mut round = 0usize;
    loop {
        made.extend(swarm.outbox_records(far));
        let produced = swarm.node(far).status().outbox.next_seq - 1;
        if cuts >= 20 && kills.iter().all(|k| *k >= 3) && produced >= 5_000 {
            break;
        }
        round += 1;
        assert!(round < 200, "not done after {round} rounds");
        let (a, b) = links[round % links.len()];
        swarm.cut(a, b);
        cuts += 1;
        // Chaos pacing, not synchronisation: the link stays down a while; every third
        // cut outlasts the peers' dead-after (2 s), so their sessions end.
        let hold = if round % 3 == 0 { 2_500 } else { 400 };
        std::thread::sleep(Duration::from_millis(hold));
        made.extend(swarm.outbox_records(far));
        let k = round % relays.len();
        if kills[k] < 3 {
            swarm.kill9_and_restart(relays[k]);
            kills[k] += 1;
        }
        swarm.restore(a, b);
        std::thread::sleep(Duration::from_millis(800));
    }
    // Quiet the far end, then let the chain drain it: its outbox empties only once the
    // master's signed acks came back down the chain.
    for i in 0..20 {
        swarm.node(far).ok(&["destroy", &format!("s{i}")]);
    }
    let produced = wait_for("far drained", Duration::from_secs(180), || {
        made.extend(swarm.outbox_records(far));
        let s = swarm.node(far).status();
        (s.outbox.depth == 0).then_some(s.outbox.next_seq - 1)
    });
    assert!(produced >= 5_000, "only {produced} records");
    wait_for("master caught up", Duration::from_secs(60), || {
        (swarm.fleet.held(far).1 >= produced).then_some(())
    });
    let held = swarm.master_records(far);
    // Every seq the far end made, once.
    let missing: Vec<u64> = (1..=produced).filter(|s| !held.contains_key(s)).collect();
    assert!(
        missing.is_empty(),
        "{} seqs missing, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    // Content, not only counts: every record seen at the origin is the master's.
    let mut compared = 0;
    for (seq, r) in &made {
        assert_eq!(held.get(seq), Some(r), "seq {seq} differs at the master");
        compared += 1;
    }
    let (overlaps, gaps) = usage_faults(&held);
    let entry = swarm.master_entry(far);
    let (records, lives, repeats, conflicts) = (
        entry["records"].as_u64().unwrap(),
        entry["lives"].as_u64().unwrap(),
        entry["repeats"].as_u64().unwrap(),
        entry["conflicts"].as_u64().unwrap(),
    );
    eprintln!(
        "chain: {produced} records, {compared} compared with the origin's, {cuts} cuts, \
         relay kills {kills:?}, {round} rounds; stored {records}, lives {lives}, repeats \
         {repeats}, conflicts {conflicts}, usage overlaps {overlaps}, gaps {gaps}; path {}",
        entry["path"]
    );
    assert!(
        compared * 2 >= usize::try_from(produced).unwrap(),
        "too few compared"
    );
    assert_eq!(records, produced, "stored {records} for {produced}");
    assert_eq!((lives, repeats, conflicts, overlaps, gaps), (1, 0, 0, 0, 0));
    // The relays' own records, SIGKILLs and all, exactly once too.
    for r in relays {
        let e = swarm.master_entry(r);
        assert_eq!(e["records"], e["last_seq"], "{r}: {e}");
        assert_eq!(
            (e["repeats"].as_u64(), e["conflicts"].as_u64()),
            (Some(0), Some(0)),
            "{r}"
        );
    }
    // The far end's records arrived through the chain: the master shows the path.
    let path = entry["path"].to_string();
    assert!(
        path.contains("r1") && path.contains("r2") && path.contains("gw"),
        "path {path}"
    );
}
