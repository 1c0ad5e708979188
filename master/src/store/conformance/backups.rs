//! Backups: snapshots stored once, listed in order, forgotten; blob counters; open
//! restores.

use hedge_wire::backup::{Consistency, SnapshotHeader, SnapshotId};

use super::*;
use crate::store::{OpenRestore, StoredSnapshot};

fn snap(node: &str, instance: &str, id: u64, taken_ms: u64) -> (StoredSnapshot, SnapshotHeader) {
    let header = SnapshotHeader {
        node: n(node),
        instance: n(instance),
        id: SnapshotId(id),
        taken_ms,
        consistency: Consistency::Frozen,
        bytes: 100,
        new_bytes: 10,
        chunks: 3,
        root: vec![9; 40],
        sealed_key: heapless::Vec::from_slice(&[7u8; 80]).unwrap(),
    };
    let stored = StoredSnapshot {
        node: n(node),
        instance: n(instance),
        id: SnapshotId(id),
        taken_ms,
        consistency: Consistency::Frozen,
        bytes: 100,
        new_bytes: 10,
        chunks: 3,
        stored_ms: 5,
        ids: format!("{node}/snapshots/{instance}/{id:016x}"),
    };
    (stored, header)
}

pub(crate) fn snapshots_are_stored_once_listed_in_order_and_forgotten<H: Harness>(h: &H) {
    let s = &h.open();
    let (a2, ha2) = snap("a", "web", u64::MAX, 20);
    let (a1, ha1) = snap("a", "web", 1, 10);
    let (b1, hb1) = snap("b", "db", 2, 5);
    assert!(s.put_snapshot(&a2, &ha2).unwrap());
    assert!(s.put_snapshot(&a1, &ha1).unwrap());
    assert!(s.put_snapshot(&b1, &hb1).unwrap());
    let mut again = a1.clone();
    again.bytes = 999;
    assert!(!s.put_snapshot(&again, &ha1).unwrap(), "stored once");
    assert_eq!(
        s.snapshots().unwrap(),
        vec![a1.clone(), a2.clone(), b1.clone()]
    );
    assert_eq!(
        s.snapshot_header(&n("a"), &n("web"), SnapshotId(u64::MAX))
            .unwrap(),
        Some(ha2)
    );
    assert_eq!(
        s.snapshot_header(&n("b"), &n("web"), SnapshotId(2))
            .unwrap(),
        None
    );
    s.forget_snapshots(
        &n("a"),
        &[(n("web"), SnapshotId(1)), (n("web"), SnapshotId(77))],
    )
    .unwrap();
    let h2 = h.open();
    assert_eq!(h2.snapshots().unwrap(), vec![a2, b1]);
}

pub(crate) fn blob_counters_count_puts_duplicates_and_refusals<H: Harness>(h: &H) {
    let s = &h.open();
    assert!(s.blob_counters().unwrap().is_empty());
    s.count_chunk_put(&n("a"), 100, false).unwrap();
    s.count_chunk_put(&n("a"), 50, false).unwrap();
    s.count_chunk_put(&n("a"), 0, true).unwrap();
    s.count_blob_refused(&n("b")).unwrap();
    let c = s.blob_counters().unwrap();
    assert_eq!(c.len(), 2);
    assert_eq!(
        (
            c[0].node.as_str(),
            c[0].bytes,
            c[0].chunk_puts,
            c[0].duplicate_puts,
            c[0].refused
        ),
        ("a", 150, 2, 1, 0)
    );
    assert_eq!((c[1].node.as_str(), c[1].refused, c[1].bytes), ("b", 1, 0));
    s.set_blob_bytes(&n("a"), 7).unwrap();
    assert_eq!(h.open().blob_counters().unwrap()[0].bytes, 7);
}

pub(crate) fn open_restores_give_their_key_to_their_target_only<H: Harness>(h: &H) {
    let s = &h.open();
    let r = OpenRestore {
        target: n("b"),
        instance: n("web"),
        source: n("a"),
        snapshot: SnapshotId(5),
    };
    s.open_restore(&r, &[3; 32], 1).unwrap();
    assert_eq!(
        s.open_restore_for(&n("b"), &n("web"), SnapshotId(5))
            .unwrap(),
        Some((n("a"), [3; 32]))
    );
    assert_eq!(
        s.open_restore_for(&n("c"), &n("web"), SnapshotId(5))
            .unwrap(),
        None
    );
    assert_eq!(
        s.open_restore_for(&n("b"), &n("web"), SnapshotId(6))
            .unwrap(),
        None
    );
    assert_eq!(s.open_restores_from(&n("a")).unwrap(), vec![r.clone()]);
    assert!(s.open_restores_from(&n("b")).unwrap().is_empty());
    // A new restore of the same target and instance replaces it.
    let r2 = OpenRestore {
        snapshot: SnapshotId(6),
        ..r
    };
    s.open_restore(&r2, &[4; 32], 2).unwrap();
    assert_eq!(s.open_restores_from(&n("a")).unwrap(), vec![r2]);
    s.close_restore(&n("b"), &n("web")).unwrap();
    assert!(h.open().open_restores_from(&n("a")).unwrap().is_empty());
    assert_eq!(
        s.open_restore_for(&n("b"), &n("web"), SnapshotId(6))
            .unwrap(),
        None
    );
}

pub(crate) fn backup_records_are_listed_by_node<H: Harness>(h: &H) {
    use hedge_wire::backup::BackupEvent;
    let s = &h.open();
    let rec = |seq: u64, event: BackupEvent| Record {
        seq,
        time_ms: 100 + seq,
        kind: RecordKind::Backup {
            instance: n("web"),
            snapshot: SnapshotId(seq),
            event,
            message: String::new(),
        },
    };
    let taken = BackupEvent::Taken {
        taken_ms: 1,
        bytes: 2,
        new_bytes: 3,
        consistency: Consistency::Live,
    };
    let records = vec![
        rec(1, taken.clone()),
        state_rec(2, "web", InstanceStatus::Running, 0),
        rec(3, BackupEvent::Uploaded),
    ];
    s.ingest(&n("b"), &up("b", records, Some((1, 3))), 5)
        .unwrap();
    s.ingest(&n("a"), &up("a", vec![rec(1, taken)], Some((1, 1))), 5)
        .unwrap();
    let got: Vec<(String, u64)> = s
        .backup_records()
        .unwrap()
        .into_iter()
        .map(|(node, r)| (node.to_string(), r.seq))
        .collect();
    assert_eq!(got, vec![("a".into(), 1), ("b".into(), 1), ("b".into(), 3)]);
}
