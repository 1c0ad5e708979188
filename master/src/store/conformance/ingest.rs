//! Ingest: idempotence, acks, lives, the quota and the integrity counters.

use super::*;
use crate::coverage::Coverage;
use crate::store::{Batch, Ingested, StoreError};

pub(crate) fn ingest_is_idempotent_and_acks_the_covered_prefix<H: Harness>(h: &H) {
    let s = &h.open();
    let pi = n("pi-1");
    let b = batch("pi-1", 1, 10);
    let first = s.ingest(&pi, &b, 5).unwrap();
    assert_eq!(
        first,
        Ingested {
            stored: 10,
            duplicates: 0,
            repeats: 0,
            conflicts: 0,
            ack_upto: 10,
            epoch: E1,
            stale: 0,
        }
    );
    let again = s.ingest(&pi, &b, 6).unwrap();
    assert_eq!(
        again,
        Ingested {
            stored: 0,
            duplicates: 10,
            repeats: 0,
            conflicts: 0,
            ack_upto: 10,
            epoch: E1,
            stale: 0,
        }
    );
    assert_eq!(s.count(&pi).unwrap(), 10);
    let got = s.records(&pi, 4, 3).unwrap();
    assert_eq!(got, b.records[3..6].to_vec());
    let node = &s.nodes().unwrap()[0];
    assert_eq!((node.records, node.last_seq, node.acked_upto), (10, 10, 10));
    assert_eq!((node.first_seen_ms, node.last_seen_ms), (Some(5), Some(6)));
}

/// Several batches, one commit: each is judged on its own (a refused one leaves the
/// others stored), the results come back in order, and what is stored is exactly what
/// one `ingest` per batch would have stored.
pub(crate) fn many_batches_share_one_commit_and_a_refused_one_leaves_the_others<H: Harness>(h: &H) {
    let s = &h.open();
    let (a, b) = (n("a"), n("b"));
    let batches = vec![
        Batch::direct(a.clone(), batch("a", 1, 5), 1, u64::MAX),
        // Names another node than its topic: refused, alone.
        Batch::direct(a.clone(), batch("b", 1, 5), 2, u64::MAX),
        Batch::direct(b.clone(), batch("b", 1, 3), 3, u64::MAX),
        Batch::direct(a.clone(), batch("a", 6, 8), 4, u64::MAX),
        // Over a (tiny) quota once a's records are in: refused, alone.
        Batch::direct(a.clone(), batch("a", 9, 9), 5, 1),
    ];
    let results = s.ingest_many(&batches);
    assert_eq!(results.len(), 5);
    assert_eq!(results[0].as_ref().unwrap().ack_upto, 5);
    assert!(matches!(results[1], Err(StoreError::NodeMismatch { .. })));
    assert_eq!(results[2].as_ref().unwrap().ack_upto, 3);
    assert_eq!(results[3].as_ref().unwrap().ack_upto, 8);
    assert!(matches!(results[4], Err(StoreError::QuotaExceeded { .. })));
    assert_eq!((s.count(&a).unwrap(), s.count(&b).unwrap()), (8, 3));
    // The refused batch can come again later, as a node resends it.
    assert_eq!(s.ingest(&a, &batch("a", 9, 9), 6).unwrap().ack_upto, 9);
}

pub(crate) fn gaps_wait_shed_seqs_count_and_express_batches_extend_nothing<H: Harness>(h: &H) {
    let s = &h.open();
    let pi = n("pi-1");
    // Seqs 11..=20, of which 13 and 14 were shed.
    let mut late = batch("pi-1", 11, 20);
    late.records.retain(|r| r.seq != 13 && r.seq != 14);
    assert_eq!(s.ingest(&pi, &late, 1).unwrap().ack_upto, 0);
    // An express incident ahead of everything: stored, no ack change.
    let express = up(
        "pi-1",
        vec![incident_rec(30, 1, IncidentState::Open, Severity::Minor)],
        None,
    );
    let r = s.ingest(&pi, &express, 2).unwrap();
    assert_eq!((r.stored, r.ack_upto), (1, 0));
    assert_eq!(
        s.ingest(&pi, &batch("pi-1", 1, 10), 3).unwrap().ack_upto,
        20
    );
    // The express record resent inside a covered range is a duplicate.
    let mut tail = batch("pi-1", 21, 29);
    tail.records
        .push(incident_rec(30, 1, IncidentState::Open, Severity::Minor));
    tail.covers = Some((21, 30));
    let r = s.ingest(&pi, &tail, 4).unwrap();
    assert_eq!((r.stored, r.duplicates, r.ack_upto), (9, 1, 30));
    assert_eq!(s.count(&pi).unwrap(), 28);
    assert_eq!(
        s.coverage(&pi, E1).unwrap(),
        Coverage {
            acked: 30,
            pending: BTreeMap::new()
        }
    );
}

pub(crate) fn bad_batches_are_refused_whole<H: Harness>(h: &H) {
    let s = &h.open();
    let pi = n("pi-1");
    assert!(matches!(
        s.ingest(&pi, &batch("pi-2", 1, 2), 0),
        Err(StoreError::NodeMismatch { .. })
    ));
    let mut big = batch("pi-1", 1, 2);
    big.records
        .push(state_rec(1 << 63, "web", InstanceStatus::Stopped, 0));
    big.covers = None;
    assert!(matches!(
        s.ingest(&pi, &big, 0),
        Err(StoreError::SeqOutOfRange(_))
    ));
    let huge = up("pi-1", Vec::new(), Some((1, u64::MAX)));
    assert!(matches!(
        s.ingest(&pi, &huge, 0),
        Err(StoreError::SeqOutOfRange(_))
    ));
    assert_eq!(s.count(&pi).unwrap(), 0);
    assert!(s.nodes().unwrap().is_empty());
}

pub(crate) fn a_node_over_its_byte_quota_is_refused_and_others_are_not<H: Harness>(h: &H) {
    let store = &h.open();
    let first = store
        .ingest_within(&n("a"), &batch("a", 1, 10), 1, 100)
        .unwrap();
    assert_eq!(first.stored, 10);
    let used = store.stored_bytes(&n("a")).unwrap();
    assert!(used >= 100, "ten records take {used} bytes");
    match store.ingest_within(&n("a"), &batch("a", 11, 12), 2, 100) {
        Err(StoreError::QuotaExceeded { stored, limit, .. }) => {
            assert_eq!((stored, limit), (used, 100));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(store.count(&n("a")).unwrap(), 10, "nothing stored");
    assert_eq!(
        store.coverage(&n("a"), E1).unwrap().acked,
        10,
        "nothing acked"
    );
    // Another node has its own quota; duplicates add no bytes.
    store
        .ingest_within(&n("b"), &batch("b", 1, 2), 3, 100)
        .unwrap();
    store.ingest(&n("a"), &batch("a", 1, 10), 4).unwrap();
    assert_eq!(store.stored_bytes(&n("a")).unwrap(), used);
}

/// A node wiped and restarted with the same id: its seqs start at 1 again in a new epoch.
pub(crate) fn a_new_life_is_stored_beside_the_old_one_and_acked_on_its_own<H: Harness>(h: &H) {
    let s = &h.open();
    let pi = n("pi-1");
    const E2: u64 = u64::MAX - 3;
    let old = s.ingest(&pi, &batch("pi-1", 1, 10), 5).unwrap();
    assert_eq!((old.stored, old.ack_upto, old.epoch), (10, 10, E1));
    // The new life's records 1..=4: other events under seqs the old life used.
    let new_records: Vec<Record> = (1..=4)
        .map(|q| state_rec(q, "db", InstanceStatus::Stopped, 0))
        .collect();
    let new = s
        .ingest(
            &pi,
            &up_in("pi-1", E2, new_records.clone(), Some((1, 4))),
            6,
        )
        .unwrap();
    assert_eq!(
        new,
        Ingested {
            stored: 4,
            duplicates: 0,
            repeats: 0,
            conflicts: 0,
            ack_upto: 4,
            epoch: E2,
            stale: 0,
        },
        "a new life's seqs are not the old life's duplicates"
    );
    assert_eq!(s.count(&pi).unwrap(), 14);
    assert_eq!(s.coverage(&pi, E1).unwrap().acked, 10);
    assert_eq!(s.coverage(&pi, E2).unwrap().acked, 4);
    let node = &s.nodes().unwrap()[0];
    assert_eq!(
        (node.records, node.lives, node.last_seq, node.acked_upto),
        (14, 2, 4, 4),
        "the fleet view follows the latest life"
    );
    assert_eq!((node.repeats, node.conflicts), (0, 0));
    // Every life's records, oldest life first.
    let all = s.records(&pi, 1, 100).unwrap();
    assert_eq!(all.len(), 14);
    assert_eq!(all[10..], new_records[..]);
    // A late resend of the old life changes nothing of the new one.
    let late = s.ingest(&pi, &batch("pi-1", 1, 10), 7).unwrap();
    assert_eq!((late.stored, late.ack_upto, late.epoch), (0, 10, E1));
    let node = &s.nodes().unwrap()[0];
    assert_eq!((node.last_seq, node.acked_upto), (4, 4));
}

pub(crate) fn repeated_events_and_conflicting_deliveries_are_counted<H: Harness>(h: &H) {
    let s = &h.open();
    let pi = n("pi-1");
    const E2: u64 = 0xe2;
    let first = batch("pi-1", 1, 5);
    s.ingest(&pi, &first, 1).unwrap();
    // A restored store resends seqs 4 and 5 under its new epoch: the same events.
    let again = up_in("pi-1", E2, first.records[3..].to_vec(), Some((1, 5)));
    let r = s.ingest(&pi, &again, 2).unwrap();
    assert_eq!((r.stored, r.repeats, r.conflicts), (2, 2, 0));
    // A clone of the old life delivers seq 3 with other content: kept as first stored.
    let clone = up("pi-1", vec![usage_rec(3, "web", 0, 1000)], Some((3, 3)));
    let r = s.ingest(&pi, &clone, 3).unwrap();
    assert_eq!((r.stored, r.duplicates, r.conflicts), (0, 1, 1));
    assert_eq!(s.records(&pi, 3, 1).unwrap()[0], first.records[2]);
    // A plain resend is neither.
    let r = s.ingest(&pi, &first, 4).unwrap();
    assert_eq!(
        (r.stored, r.duplicates, r.repeats, r.conflicts),
        (0, 5, 0, 0)
    );
    let node = &s.nodes().unwrap()[0];
    assert_eq!((node.repeats, node.conflicts), (2, 1));
}

/// A carried batch is stored under its own node with its path; a `Relayed` record keeps
/// only its summary; a refused relayed record counts once in its carrier's
/// `forged_relayed`, however often it is delivered.
pub(crate) fn carried_batches_keep_their_path_and_count_refused_relayed_once<H: Harness>(h: &H) {
    use hedge_wire::mesh::SignedBatch;
    let s = &h.open();
    let (a, b, c) = (n("a"), n("b"), n("c"));
    let carried_bytes = hedge_wire::encode(
        &hedge_wire::Message::Up(batch("a", 1, 5)),
        hedge_wire::DEFAULT_MAX_FRAME,
    )
    .unwrap();
    let mut own = batch("c", 1, 2);
    own.records.push(Record {
        seq: 3,
        time_ms: 2_000,
        kind: RecordKind::Relayed(SignedBatch {
            bytes: carried_bytes.clone(),
            signature: vec![7; 64],
        }),
    });
    own.covers = Some((1, 3));
    let mut from_c = Batch::direct(c.clone(), own, 10, u64::MAX);
    from_c.refused_relayed = vec![3];
    let from_a = Batch {
        node: a.clone(),
        up: batch("a", 1, 5),
        now_ms: 10,
        max_bytes: u64::MAX,
        via: vec![c.clone(), b.clone()],
        refused_relayed: Vec::new(),
    };
    for _ in 0..2 {
        let r = s.ingest_many(&[from_c.clone(), from_a.clone()]);
        assert_eq!(r[0].as_ref().unwrap().ack_upto, 3);
        assert_eq!(r[1].as_ref().unwrap().ack_upto, 5);
    }
    let nodes = s.nodes().unwrap();
    let view = |who: &Name| nodes.iter().find(|x| &x.node == who).unwrap().clone();
    assert_eq!(
        (
            view(&a).path.as_deref(),
            view(&a).forged_relayed,
            view(&a).records
        ),
        (Some("via c,b"), 0, 5)
    );
    assert_eq!(
        (
            view(&c).path.as_deref(),
            view(&c).forged_relayed,
            view(&c).records
        ),
        (Some("direct"), 1, 3)
    );
    // The relayed record is kept as its summary, not the carried bytes.
    let kept = s.records(&c, 3, 1).unwrap();
    let summary = crate::relay::read_summary(&kept[0].kind).unwrap();
    assert_eq!((summary.origin, summary.records), (Some(a.clone()), 5));
    assert_eq!(summary.bytes as usize, carried_bytes.len());
    // a's next batch comes directly: its path follows.
    s.ingest(&a, &batch("a", 6, 6), 11).unwrap();
    let a_now = s
        .nodes()
        .unwrap()
        .into_iter()
        .find(|x| x.node == a)
        .unwrap();
    assert_eq!(a_now.path.as_deref(), Some("direct"));
}
