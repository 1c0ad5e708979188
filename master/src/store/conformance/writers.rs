//! Serialized writers: several handles on one store (as several master processes open
//! it) store each record once, hand out each generation once, never over-fill a node;
//! what one handle wrote, the next one opened reads.

use std::collections::BTreeSet;
use std::sync::Barrier;

use super::place::register;
use super::*;
use crate::alloc::{AllocError, Placement};
use crate::store::StoreError;

pub(crate) fn everything_survives_reopening<H: Harness>(h: &H) {
    let pi = n("pi-1");
    {
        let s = h.open();
        s.ingest(&pi, &batch("pi-1", 3, 5), 0).unwrap();
        s.update_desired(&pi, |v| v, |_| {}).unwrap();
    }
    let s = h.open();
    assert_eq!(s.count(&pi).unwrap(), 3);
    assert_eq!(s.ingest(&pi, &batch("pi-1", 1, 2), 1).unwrap().ack_upto, 5);
    assert_eq!(s.next_generation(&pi).unwrap(), 2);
}

pub(crate) fn concurrent_stores_on_one_file_store_each_record_once<H: Harness>(h: &H) {
    // Each thread opens its own handle, as separate master processes would.
    let threads = 6;
    let results: Vec<(usize, u64, Vec<u64>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let s = h.open();
                    let pi = n("pi-1");
                    let mut stored = 0;
                    let mut ack = 0;
                    // Every thread sends the same batches, in a different order.
                    for i in 0..20u64 {
                        let k = (i + t as u64 * 7) % 20;
                        let r = s
                            .ingest(&pi, &batch("pi-1", k * 10 + 1, k * 10 + 10), i)
                            .unwrap();
                        stored += r.stored;
                        ack = ack.max(r.ack_upto);
                    }
                    let gens = (0..10).map(|_| s.next_generation(&pi).unwrap()).collect();
                    (stored, ack, gens)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let stored: usize = results.iter().map(|r| r.0).sum();
    assert_eq!(stored, 200, "each (node, seq) stored exactly once");
    assert!(results.iter().any(|r| r.1 == 200));
    let gens: BTreeSet<u64> = results.iter().flat_map(|r| r.2.clone()).collect();
    assert_eq!(gens.len(), threads * 10, "no generation handed out twice");
    let s = h.open();
    assert_eq!(s.count(&n("pi-1")).unwrap(), 200);
    assert_eq!(s.nodes().unwrap()[0].records, 200);
}

pub(crate) fn concurrent_placements_never_overfill_a_node<H: Harness>(h: &H) {
    register(&h.open(), "solo", 1);
    const WRITERS: usize = 8;
    let barrier = Barrier::new(WRITERS);
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..WRITERS)
            .map(|i| {
                let barrier = &barrier;
                scope.spawn(move || {
                    let s = h.open();
                    barrier.wait();
                    s.place(
                        request(&format!("w{i}"), RequestedState::Started),
                        &Placement::default(),
                        0,
                        60_000,
                        |_| {},
                    )
                })
            })
            .collect();
        handles.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let placed: Vec<String> = results
        .iter()
        .filter_map(|r| Some(r.as_ref().ok()?.state.instances.last()?.name.to_string()))
        .collect();
    assert_eq!(
        placed.len(),
        1,
        "placed onto a node with room for one: {placed:?}"
    );
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(
            matches!(r, StoreError::Alloc(AllocError::NoCandidate { .. })),
            "{r:?}"
        );
    }
    let s = h.open();
    assert_eq!(s.nodes().unwrap()[0].allocated_instances, 1);
    assert_eq!(s.desired(&n("solo")).unwrap().unwrap().instances.len(), 1);
}
