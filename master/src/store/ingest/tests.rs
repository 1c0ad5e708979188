#![allow(clippy::unwrap_used)]

use hedge_wire::InstanceStatus;

use super::*;
use crate::store::conformance::{batch, n, request, state_rec, up, usage_rec};

#[test]
fn a_checked_batch_carries_each_record_with_its_index_and_digest() {
    let b = up(
        "pi",
        vec![
            usage_rec(1, "web", 10, 20),
            state_rec(2, "db", InstanceStatus::Running, 0),
        ],
        Some((1, 2)),
    );
    let c = check(&n("pi"), &b).unwrap();
    assert_eq!(c.covers, Some((1, 2)));
    assert_eq!(c.rows.len(), 2);
    assert_eq!(
        c.rows[0].index,
        Index {
            tag: "usage",
            instance: Some("web"),
            span: Some((10, 20)),
        }
    );
    assert_eq!(
        (c.rows[1].seq, c.rows[1].index.tag, c.rows[1].index.instance),
        (2, "instance_state", Some("db"))
    );
    assert_eq!(
        c.rows[1].blob,
        encode("record", &b.records[1].kind).unwrap()
    );
    assert_eq!(
        c.rows[1].digest,
        digest(b.records[1].time_ms, &c.rows[1].blob)
    );
}

#[test]
fn the_same_event_has_the_same_digest_and_another_time_or_content_does_not() {
    let blob = encode("record", &usage_rec(1, "web", 0, 10).kind).unwrap();
    let other = encode("record", &usage_rec(1, "web", 0, 11).kind).unwrap();
    assert_eq!(digest(5, &blob), digest(5, &blob));
    assert_eq!(digest(5, &blob).len(), 16);
    assert_ne!(digest(5, &blob), digest(6, &blob));
    assert_ne!(digest(5, &blob), digest(5, &other));
}

#[test]
fn local_requests_are_indexed_by_the_instance_they_request() {
    let kind = RecordKind::LocalRequest {
        request: Box::new(request("cam", hedge_wire::RequestedState::Started)),
    };
    assert_eq!(
        index_of(&kind),
        Index {
            tag: "local_request",
            instance: Some("cam"),
            span: None,
        }
    );
}

#[test]
fn batches_of_another_node_or_out_of_range_seqs_are_refused() {
    assert!(matches!(
        check(&n("pi-1"), &batch("pi-2", 1, 2)),
        Err(StoreError::NodeMismatch { .. })
    ));
    let big = up(
        "pi-1",
        vec![state_rec(1 << 63, "web", InstanceStatus::Stopped, 0)],
        None,
    );
    assert!(matches!(
        check(&n("pi-1"), &big),
        Err(StoreError::SeqOutOfRange(s)) if s == 1 << 63
    ));
    let huge = up("pi-1", Vec::new(), Some((1, u64::MAX)));
    assert!(matches!(
        check(&n("pi-1"), &huge),
        Err(StoreError::SeqOutOfRange(u64::MAX))
    ));
    assert_eq!(seq_i64(7).unwrap(), 7);
}
