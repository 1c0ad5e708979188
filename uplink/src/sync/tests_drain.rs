//! Draining a large outbox: loads and deletes (each a store flush on the node) come in
//! large steps, and nothing acknowledged stays undeleted once the work is done.
#![allow(clippy::unwrap_used)]
// Tests take `Instant::now()` as an arbitrary origin; the machine only compares instants.
#![allow(clippy::disallowed_methods)]

use std::collections::{BTreeMap, VecDeque};

use hedge_wire::RecordKind;

use super::*;

const EPOCH: u64 = 9;

fn usage(seq: u64) -> Record {
    Record {
        seq,
        time_ms: seq,
        kind: RecordKind::Usage {
            instance: Name::new("web").unwrap(),
            from_ms: seq * 1000,
            to_ms: seq * 1000 + 1000,
            cpu_ms: 12,
            mem_avg_bytes: 1 << 20,
            mem_peak_bytes: 2 << 20,
            disk_bytes: 4096,
            net_rx_bytes: None,
            net_tx_bytes: None,
            uptime_ms: 1000,
        },
    }
}

/// Drains `total` records with a master that acks each batch in order (one ack at a
/// time, or `lost_at`: the link goes down after that many acks). Returns the loads
/// asked and the deletes emitted.
fn drain(total: u64, lost_at: Option<usize>) -> (usize, Vec<u64>) {
    let cfg = Config {
        max_batch_records: 10,
        window: 4,
        ..Config::default()
    };
    let outbox: BTreeMap<u64, Record> = (1..=total).map(|s| (s, usage(s))).collect();
    let t0 = Instant::now();
    let mut s = SyncMachine::new(Name::new("n").unwrap(), EPOCH, cfg, 1);
    s.handle(t0, Input::Start);
    let mut queue = VecDeque::from(s.handle(t0, Input::LinkUp));
    let (mut loads, mut deletes, mut flights, mut acks) = (0, Vec::new(), VecDeque::new(), 0);
    loop {
        while let Some(o) = queue.pop_front() {
            match o {
                Output::Load { from, limit } => {
                    loads += 1;
                    let records: Vec<Record> = outbox
                        .range(from..)
                        .take(limit)
                        .map(|(_, r)| r.clone())
                        .collect();
                    let end = outbox.range(from..).nth(limit).is_none();
                    queue.extend(s.handle(t0, Input::Loaded { from, records, end }));
                }
                Output::Send {
                    range: Some((_, to)),
                    ..
                } => flights.push_back(to),
                Output::Delete { upto } => deletes.push(upto),
                Output::Send { .. } | Output::Connect => {}
            }
        }
        if lost_at == Some(acks) {
            s.handle(t0, Input::LinkDown)
                .into_iter()
                .for_each(|o| match o {
                    Output::Delete { upto } => deletes.push(upto),
                    o => panic!("{o:?} after LinkDown"),
                });
            return (loads, deletes);
        }
        let Some(upto) = flights.pop_front() else {
            return (loads, deletes);
        };
        acks += 1;
        queue.extend(s.handle(t0, Input::Acked { upto, epoch: EPOCH }));
    }
}

#[test]
fn a_large_drain_loads_and_deletes_in_large_steps() {
    // 20 batches of 10; a look-ahead of 40: steps of 20.
    let (loads, deletes) = drain(200, None);
    assert_eq!(deletes.last(), Some(&200), "{deletes:?}");
    assert!(
        deletes.windows(2).all(|w| w[1] - w[0] >= 20 || w[1] == 200),
        "{deletes:?}"
    );
    assert!(deletes.len() <= 11, "{deletes:?}");
    // One load per batch would be 21.
    assert!(loads <= 12, "{loads} loads");
}

#[test]
fn what_is_acknowledged_is_deleted_when_the_link_goes_down() {
    // Three acks (30 seqs, less than a step) with batches still in flight.
    let (_, deletes) = drain(200, Some(3));
    assert_eq!(deletes, vec![20, 30]);
}
