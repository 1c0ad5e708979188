//! Draining a large outbox: loads and deletes (each a store flush on the node) come in
//! large steps, and nothing acknowledged stays undeleted once the work is done.
#![allow(clippy::unwrap_used)]
// Tests take `Instant::now()` as an arbitrary origin; the machine only compares instants.
#![allow(clippy::disallowed_methods)]

use std::collections::VecDeque;

use super::tests::{outbox_of, serve, usage};
use super::*;

const EPOCH: u64 = 0x5eed_0001;

/// Drains `total` records with a master that acks each batch in order (or, with
/// `lost_at`, the link goes down after that many acks). Returns the loads asked and
/// the deletes emitted.
fn drain(total: u64, lost_at: Option<usize>) -> (usize, Vec<u64>) {
    let cfg = Config {
        max_batch_records: 10,
        window: 4,
        ..Config::default()
    };
    let outbox = outbox_of((1..=total).map(usage));
    let t0 = Instant::now();
    let mut s = SyncMachine::new(Name::new("node-1").unwrap(), EPOCH, cfg, 1);
    s.handle(t0, Input::Start);
    let mut out = s.handle(t0, Input::LinkUp);
    let (mut loads, mut deletes, mut flights) = (0, Vec::new(), VecDeque::new());
    for acks in 0.. {
        for o in serve(&mut s, t0, &outbox, out) {
            match o {
                Output::Load { .. } => loads += 1,
                Output::Send {
                    range: Some((_, to)),
                    ..
                } => flights.push_back(to),
                Output::Delete { upto } => deletes.push(upto),
                Output::Send { .. } | Output::Connect => {}
            }
        }
        if lost_at == Some(acks) {
            for o in s.handle(t0, Input::LinkDown) {
                let Output::Delete { upto } = o else {
                    panic!("{o:?} after LinkDown");
                };
                deletes.push(upto);
            }
            break;
        }
        let Some(upto) = flights.pop_front() else {
            break;
        };
        out = s.handle(t0, Input::Acked { upto, epoch: EPOCH });
    }
    (loads, deletes)
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
