//! A stale copy's late records: stored and counted, never folded into the live
//! instance view; a node's `Fence` records say which fence its records are made under.

use hedge_wire::{InstanceStatus, Name, Record, RecordKind, RequestedState};

use super::place::{on, register};
use super::{n, request, up_in, usage_rec, Harness};
use crate::moves::MoveRequest;
use crate::sign::{sign, MasterKey};
use crate::store::FleetStore;

/// A node sending records with the seqs it chooses (life 1).
struct Sender {
    node: Name,
}

impl Sender {
    /// Ingests `records` at once; `express`: covers nothing (sent ahead of its range).
    fn send<S: FleetStore>(&self, s: &S, records: Vec<Record>, express: bool) -> usize {
        let covers = (!express).then(|| {
            let seqs = records.iter().map(|r| r.seq);
            (seqs.clone().min().unwrap(), seqs.max().unwrap())
        });
        let up = up_in(self.node.as_str(), 1, records, covers);
        s.ingest(&self.node, &up, 5_000).unwrap().stale
    }
}

fn fence(seq: u64, instance: &str, fence: u64) -> Record {
    Record {
        seq,
        time_ms: 1000 + seq,
        kind: RecordKind::Fence {
            instance: n(instance),
            fence,
            holding: true,
        },
    }
}

fn state(seq: u64, instance: &str, status: InstanceStatus, restarts: u32) -> Record {
    super::state_rec(seq, instance, status, restarts)
}

/// `(status, restarts)` the instance view shows for `instance` on `node`.
fn shown<S: FleetStore>(s: &S, node: &str, instance: &str) -> Option<(InstanceStatus, u32)> {
    s.instances()
        .unwrap()
        .into_iter()
        .find(|v| v.node == n(node) && v.name == n(instance))
        .and_then(|v| v.status.map(|st| (st, v.restarts)))
}

fn stale_of<S: FleetStore>(s: &S, node: &str) -> u64 {
    s.nodes()
        .unwrap()
        .into_iter()
        .find(|x| x.node == n(node))
        .unwrap()
        .stale
}

fn move_to<S: FleetStore>(s: &S, key: &MasterKey, from: &str, to: &str, fenced: bool) {
    s.move_instance(
        &MoveRequest {
            instance: n("x"),
            from: n(from),
            to: Some(n(to)),
            fenced,
            reason: format!("test move from {from} to {to}"),
            incident: None,
            budget: None,
        },
        0,
        1_000_000,
        |d: &mut hedge_wire::DesiredState| sign(key, d, 0),
    )
    .unwrap();
}

pub(crate) fn a_stale_copys_late_records_are_kept_counted_and_not_folded<H: Harness>(h: &H) {
    let s = &h.open();
    let key = MasterKey::generate();
    register(s, "a", 4);
    register(s, "b", 4);
    let (a, b) = (Sender { node: n("a") }, Sender { node: n("b") });
    s.place(
        request("x", RequestedState::Started),
        &on("a"),
        0,
        1_000_000,
        |d: &mut hedge_wire::DesiredState| sign(&key, d, 0),
    )
    .unwrap();
    let live = a.send(
        s,
        vec![fence(1, "x", 1), state(2, "x", InstanceStatus::Running, 0)],
        false,
    );
    assert_eq!(live, 0);
    assert_eq!(shown(s, "a", "x"), Some((InstanceStatus::Running, 0)));

    // x moves to b with a fenced; a, cut off, still runs and reports under fence 1.
    move_to(s, &key, "a", "b", true);
    let before = s.count(&n("a")).unwrap();
    let late = a.send(
        s,
        vec![
            state(3, "x", InstanceStatus::Running, 7),
            usage_rec(4, "x", 0, 60_000),
        ],
        false,
    );
    assert_eq!(late, 2, "both judged stale");
    assert_eq!(s.count(&n("a")).unwrap(), before + 2, "and stored");
    assert_eq!(stale_of(s, "a"), 2);
    assert_eq!(
        shown(s, "a", "x"),
        Some((InstanceStatus::Running, 0)),
        "the late report is not folded"
    );
    // Usage still counts (what ran was used).
    assert!(s
        .usage(0, 60_000)
        .unwrap()
        .iter()
        .any(|(node, r)| node == &n("a") && r.seq == 4));
    // b runs it under fence 2: live.
    let on_b = b.send(
        s,
        vec![fence(1, "x", 2), state(2, "x", InstanceStatus::Running, 0)],
        false,
    );
    assert_eq!(on_b, 0);
    assert_eq!(shown(s, "b", "x"), Some((InstanceStatus::Running, 0)));
    // a's copy reports its end: that is folded.
    a.send(s, vec![state(5, "x", InstanceStatus::Destroyed, 0)], false);
    assert_eq!(shown(s, "a", "x"), Some((InstanceStatus::Destroyed, 0)));

    // Back to a under fence 3 (two-phase: b's copy runs on until the handover). a's
    // running report overtakes its Fence: judged under fence 1, then made live when the
    // Fence arrives. b's reports meanwhile are a stale copy's.
    move_to(s, &key, "b", "a", false);
    assert_eq!(
        a.send(s, vec![state(7, "x", InstanceStatus::Running, 9)], true),
        1
    );
    assert_eq!(shown(s, "a", "x"), Some((InstanceStatus::Destroyed, 0)));
    assert_eq!(
        a.send(
            s,
            vec![fence(6, "x", 3), state(7, "x", InstanceStatus::Running, 9)],
            false
        ),
        0
    );
    assert_eq!(shown(s, "a", "x"), Some((InstanceStatus::Running, 9)));
    assert_eq!(stale_of(s, "a"), 2, "the overtaking report is live again");
    assert_eq!(
        b.send(s, vec![state(3, "x", InstanceStatus::Running, 4)], false),
        1
    );
    assert_eq!(shown(s, "b", "x"), Some((InstanceStatus::Running, 0)));
    assert_eq!(stale_of(s, "b"), 1);
}
