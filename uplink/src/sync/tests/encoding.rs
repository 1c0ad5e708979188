//! Which encoding batches go in: compact when it fits the plan, the postcard envelope
//! otherwise.

use hedge_wire::codec::encode;
use hedge_wire::{COMPACT_UP_VERSION, WIRE_VERSION};

use super::*;

/// Every frame sent, with its length in the postcard envelope.
fn frames(out: &[Output]) -> Vec<(Vec<u8>, usize)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send { frame, .. } => {
                let v2 = encode(&Message::Up(up(frame)), DEFAULT_MAX_FRAME).unwrap();
                Some((frame.clone(), v2.len()))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn range_batches_go_compact_and_smaller() {
    let outbox = outbox_of((1..=600).map(|q| any_record(q, u32::try_from(q).unwrap())));
    let cfg = Config {
        max_batch_bytes: 4096,
        ..Config::default()
    };
    let (mut s, t0, out) = connected(cfg.clone());
    let out = serve(&mut s, t0, &outbox, out);
    let sent = frames(&out);
    assert!(sent.len() > 1);
    for (frame, v2) in &sent {
        assert_eq!(frame[0], COMPACT_UP_VERSION);
        assert!(frame.len() < *v2, "{} vs {v2}", frame.len());
        assert!(frame.len() <= cfg.max_batch_bytes);
    }
    // The window's worth, in order, nothing skipped.
    let all: Vec<u64> = sends(&out).into_iter().flat_map(|(_, seqs)| seqs).collect();
    assert_eq!(all, (1..=all.len() as u64).collect::<Vec<_>>());
}

/// Usage records whose values swing between 0 and 2^62 from one record to the next:
/// every delta is long, so the compact form is longer than the postcard envelope.
fn swinging(seq: u64) -> Record {
    let v = if seq % 2 == 0 { 0 } else { 1 << 62 };
    Record {
        seq,
        time_ms: v,
        kind: RecordKind::Usage {
            instance: inst(),
            from_ms: v,
            to_ms: v,
            cpu_ms: 0,
            mem_avg_bytes: v,
            mem_peak_bytes: v ^ (1 << 62),
            disk_bytes: v,
            net_rx_bytes: None,
            net_tx_bytes: None,
            uptime_ms: v,
        },
    }
}

#[test]
fn a_batch_longer_compact_than_planned_goes_in_version_2() {
    let records: Vec<Record> = (1..=40).map(swinging).collect();
    let probe = Up {
        node: node(),
        records: records.clone(),
        covers: Some((1, 40)),
        epoch: EPOCH,
    };
    let compact = hedge_wire::encode_up(&probe, DEFAULT_MAX_FRAME).unwrap();
    let v2 = encode(&Message::Up(probe), DEFAULT_MAX_FRAME).unwrap();
    assert!(
        compact.len() > v2.len(),
        "the premise: {} vs {}",
        compact.len(),
        v2.len()
    );

    let (mut s, t0, out) = connected(Config::default());
    let out = serve(&mut s, t0, &outbox_of(records), out);
    let sent = frames(&out);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0[0], WIRE_VERSION);
    assert_eq!(sent[0].0, v2);
    assert_eq!(s.stats().bytes_sent, v2.len() as u64);
}

/// A record's cost, measured without encoding it, is exactly what it adds to a
/// version-2 frame of its own (what the plans bound), for every kind and for seqs whose
/// varints take one to ten bytes.
#[test]
fn a_records_measured_cost_is_what_it_adds_to_a_frame() {
    let empty = super::encode_up(&node(), 7, Vec::new(), None, usize::MAX)
        .0
        .unwrap();
    for (k, seq) in (0..40u32).zip(
        [1, 127, 128, 16_383, 16_384, u64::MAX / 3, u64::MAX]
            .iter()
            .cycle(),
    ) {
        let r = any_record(*seq, k);
        let framed = super::encode_up(&node(), 7, vec![r.clone()], None, usize::MAX)
            .0
            .unwrap();
        assert_eq!(
            super::outbox::record_cost(&r).unwrap(),
            framed.len() - empty.len(),
            "{r:?}"
        );
    }
}
