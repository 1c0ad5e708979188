use std::time::{Duration, Instant};

use hedge_wire::mesh::{CustodyRefusal, SignedBatch, MAX_RELAY_DEPTH};
use hedge_wire::{encode, Message, Name, Record, RecordKind, Up, DEFAULT_MAX_FRAME};

use super::{relay_depth, BatchKey, Desk, Verdict};

const MEMORY: Duration = Duration::from_secs(60);

/// One instant for the whole test (the memory's expiry is tested with others).
fn t0() -> Instant {
    static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    // The test's clock origin: a pure core is fed whatever time the test chooses.
    #[allow(clippy::disallowed_methods)]
    *T0.get_or_init(Instant::now)
}

fn name(s: &str) -> Name {
    Name::new(s).expect("valid name")
}

fn health(seq: u64) -> Record {
    Record {
        seq,
        time_ms: 1_000 + seq,
        kind: RecordKind::NodeHealth {
            load1_milli: 1,
            mem_total: 2,
            mem_available: 1,
            disk_free: 3,
            temp_milli_c: None,
            uplink_up: false,
            outbox_depth: seq,
        },
    }
}

fn batch_of(
    node: &str,
    epoch: u64,
    records: Vec<Record>,
    covers: Option<(u64, u64)>,
) -> SignedBatch {
    let up = Up {
        node: name(node),
        records,
        covers,
        epoch,
    };
    SignedBatch {
        bytes: encode(&Message::Up(up), DEFAULT_MAX_FRAME).expect("encodes"),
        signature: vec![7; 64],
    }
}

fn batch(node: &str, from: u64, to: u64) -> SignedBatch {
    batch_of(node, 9, (from..=to).map(health).collect(), Some((from, to)))
}

/// A batch of `outer` holding `layers` nested `Relayed` layers (n0's plain batch in
/// n1's in ...).
fn nested(outer: &str, layers: usize) -> SignedBatch {
    let mut inner = batch("n0", 1, 1);
    for i in 1..=layers {
        let node = if i == layers {
            outer.to_string()
        } else {
            format!("n{i}")
        };
        let rec = Record {
            seq: 1,
            time_ms: 5,
            kind: RecordKind::Relayed(inner),
        };
        inner = batch_of(&node, 9, vec![rec], Some((1, 1)));
    }
    inner
}

fn key(node: &str, from: u64, to: u64) -> BatchKey {
    BatchKey {
        origin: name(node),
        epoch: 9,
        covers: Some((from, to)),
    }
}

fn desk() -> Desk {
    Desk::new(DEFAULT_MAX_FRAME, 4, 8, MEMORY)
}

#[test]
fn a_peers_own_signed_batch_is_stored_then_answered_custody() {
    let mut d = desk();
    let a = name("a");
    let v = d.judge(t0(), &a, &batch("a", 1, 3), |_| true);
    let Verdict::Store { id, key: k } = v else {
        panic!("expected Store, got {v:?}");
    };
    assert_eq!(k, key("a", 1, 3));
    assert_eq!(d.pending(), 1);
    let ans = d.stored(t0(), id, Ok(())).expect("answer");
    assert_eq!(ans.peer, a);
    assert_eq!(ans.key, key("a", 1, 3));
    assert_eq!(ans.result, Ok(()));
    assert_eq!(d.pending(), 0);
    // The same range again (a resend): answered at once, not stored twice.
    assert_eq!(
        d.judge(t0(), &a, &batch("a", 1, 3), |_| true),
        Verdict::Held(key("a", 1, 3))
    );
    // The next range is new.
    assert!(matches!(
        d.judge(t0(), &a, &batch("a", 4, 5), |_| true),
        Verdict::Store { .. }
    ));
    let s = d.stats();
    assert_eq!((s.handed, s.held, s.stored, s.refused), (2, 1, 1, 0));
}

#[test]
fn another_nodes_batch_is_refused_before_its_signature_is_checked() {
    let mut d = desk();
    let mut called = false;
    let v = d.judge(t0(), &name("a"), &batch("b", 1, 3), |_| {
        called = true;
        true
    });
    assert_eq!(
        v,
        Verdict::Refuse {
            key: Some(key("b", 1, 3)),
            reason: CustodyRefusal::NotYours
        }
    );
    assert!(
        !called,
        "the signature of a batch refused earlier is not checked"
    );
    assert_eq!(d.pending(), 0);
}

#[test]
fn a_bad_signature_is_refused_and_nothing_waits() {
    let mut d = desk();
    let v = d.judge(t0(), &name("a"), &batch("a", 1, 3), |_| false);
    assert_eq!(
        v,
        Verdict::Refuse {
            key: Some(key("a", 1, 3)),
            reason: CustodyRefusal::BadSignature
        }
    );
    assert_eq!(d.pending(), 0);
    assert_eq!(d.stats().refused, 1);
}

#[test]
fn garbage_truncated_and_lifeless_batches_are_malformed() {
    let mut d = desk();
    let a = name("a");
    let good = batch("a", 1, 3);
    let cases = [
        SignedBatch {
            bytes: vec![],
            signature: vec![],
        },
        SignedBatch {
            bytes: vec![0xff; 40],
            signature: vec![1; 64],
        },
        SignedBatch {
            bytes: good.bytes[..good.bytes.len() - 1].to_vec(),
            signature: good.signature.clone(),
        },
    ];
    for b in &cases {
        assert_eq!(
            d.judge(t0(), &a, b, |_| true),
            Verdict::Refuse {
                key: None,
                reason: CustodyRefusal::Malformed
            }
        );
    }
    // An ack is a frame too, but not a batch.
    let ack = SignedBatch {
        bytes: encode(
            &Message::Ack(hedge_wire::Ack { upto: 1, epoch: 9 }),
            DEFAULT_MAX_FRAME,
        )
        .expect("encodes"),
        signature: vec![],
    };
    assert!(matches!(
        d.judge(t0(), &a, &ack, |_| true),
        Verdict::Refuse {
            reason: CustodyRefusal::Malformed,
            ..
        }
    ));
    // A frame larger than the desk's limit.
    let mut small = Desk::new(16, 4, 8, MEMORY);
    assert!(matches!(
        small.judge(t0(), &a, &good, |_| true),
        Verdict::Refuse {
            reason: CustodyRefusal::Malformed,
            ..
        }
    ));
}

#[test]
fn nesting_is_counted_and_one_more_wrap_must_stay_within_the_depth() {
    assert_eq!(
        relay_depth(
            &nested("x", 1).up(DEFAULT_MAX_FRAME).expect("up"),
            DEFAULT_MAX_FRAME
        ),
        Ok(1)
    );
    assert_eq!(
        relay_depth(
            &nested("x", 3).up(DEFAULT_MAX_FRAME).expect("up"),
            DEFAULT_MAX_FRAME
        ),
        Ok(3)
    );
    let mut d = desk();
    let p = name("p");
    // MAX_RELAY_DEPTH - 1 layers inside: wrapping it makes MAX_RELAY_DEPTH.
    let ok = nested("p", MAX_RELAY_DEPTH - 1);
    assert!(matches!(
        d.judge(t0(), &p, &ok, |_| true),
        Verdict::Store { .. }
    ));
    let deep = nested("p", MAX_RELAY_DEPTH);
    assert!(matches!(
        d.judge(t0(), &p, &deep, |_| true),
        Verdict::Refuse {
            reason: CustodyRefusal::TooDeep,
            ..
        }
    ));
    // Far deeper than the limit: refused without decoding every layer.
    let abyss = nested("p", MAX_RELAY_DEPTH + 5);
    assert!(matches!(
        d.judge(t0(), &p, &abyss, |_| true),
        Verdict::Refuse {
            reason: CustodyRefusal::TooDeep,
            ..
        }
    ));
}

#[test]
fn a_garbled_inner_batch_is_malformed() {
    let rec = Record {
        seq: 1,
        time_ms: 5,
        kind: RecordKind::Relayed(SignedBatch {
            bytes: vec![4, 200, 1],
            signature: vec![],
        }),
    };
    let mut d = desk();
    assert!(matches!(
        d.judge(
            t0(),
            &name("p"),
            &batch_of("p", 9, vec![rec], Some((1, 1))),
            |_| true
        ),
        Verdict::Refuse {
            reason: CustodyRefusal::Malformed,
            ..
        }
    ));
}

#[test]
fn a_range_waiting_for_the_daemon_is_not_handed_twice() {
    let mut d = desk();
    let a = name("a");
    let Verdict::Store { id, .. } = d.judge(t0(), &a, &batch("a", 1, 3), |_| true) else {
        panic!("expected Store");
    };
    assert_eq!(
        d.judge(t0(), &a, &batch("a", 1, 3), |_| true),
        Verdict::Waiting
    );
    assert_eq!(d.pending(), 1);
    assert!(d.stored(t0(), id, Ok(())).is_some());
    assert_eq!(
        d.judge(t0(), &a, &batch("a", 1, 3), |_| true),
        Verdict::Held(key("a", 1, 3))
    );
}

#[test]
fn a_refused_store_is_not_remembered_and_the_next_copy_is_handed_again() {
    let mut d = desk();
    let a = name("a");
    let Verdict::Store { id, .. } = d.judge(t0(), &a, &batch("a", 1, 3), |_| true) else {
        panic!("expected Store");
    };
    let ans = d
        .stored(t0(), id, Err(CustodyRefusal::Full))
        .expect("answer");
    assert_eq!(ans.result, Err(CustodyRefusal::Full));
    assert!(matches!(
        d.judge(t0(), &a, &batch("a", 1, 3), |_| true),
        Verdict::Store { .. }
    ));
}

#[test]
fn unknown_and_repeated_answers_are_ignored() {
    let mut d = desk();
    assert_eq!(d.stored(t0(), 42, Ok(())), None);
    let Verdict::Store { id, .. } = d.judge(t0(), &name("a"), &batch("a", 1, 3), |_| true) else {
        panic!("expected Store");
    };
    assert!(d.stored(t0(), id, Ok(())).is_some());
    assert_eq!(d.stored(t0(), id, Ok(())), None);
}

#[test]
fn pending_batches_are_bounded() {
    let mut d = Desk::new(DEFAULT_MAX_FRAME, 2, 8, MEMORY);
    let a = name("a");
    for from in [1, 4] {
        assert!(matches!(
            d.judge(t0(), &a, &batch("a", from, from + 2), |_| true),
            Verdict::Store { .. }
        ));
    }
    assert_eq!(
        d.judge(t0(), &a, &batch("a", 7, 9), |_| true),
        Verdict::Refuse {
            key: Some(key("a", 7, 9)),
            reason: CustodyRefusal::Full
        }
    );
}

#[test]
fn the_memory_of_stored_ranges_is_bounded_oldest_forgotten_first() {
    let mut d = Desk::new(DEFAULT_MAX_FRAME, 4, 2, MEMORY);
    let a = name("a");
    for from in [1, 4, 7] {
        let Verdict::Store { id, .. } = d.judge(t0(), &a, &batch("a", from, from + 2), |_| true)
        else {
            panic!("expected Store");
        };
        assert!(d.stored(t0(), id, Ok(())).is_some());
    }
    assert!(matches!(
        d.judge(t0(), &a, &batch("a", 1, 3), |_| true),
        Verdict::Store { .. }
    ));
    assert_eq!(
        d.judge(t0(), &a, &batch("a", 7, 9), |_| true),
        Verdict::Held(key("a", 7, 9))
    );
}

#[test]
fn express_batches_are_always_stored_never_deduplicated() {
    let mut d = desk();
    let a = name("a");
    let express = batch_of("a", 9, vec![health(5)], None);
    for _ in 0..2 {
        let Verdict::Store { id, key: k } = d.judge(t0(), &a, &express, |_| true) else {
            panic!("expected Store");
        };
        assert_eq!(k.covers, None);
        assert!(d.stored(t0(), id, Ok(())).is_some());
    }
}

#[test]
fn a_range_stored_longer_ago_than_the_memory_is_stored_again() {
    let mut d = desk();
    let a = name("a");
    let Verdict::Store { id, .. } = d.judge(t0(), &a, &batch("a", 1, 3), |_| true) else {
        panic!("expected Store");
    };
    assert!(d.stored(t0(), id, Ok(())).is_some());
    let soon = t0() + MEMORY - Duration::from_millis(1);
    assert_eq!(
        d.judge(soon, &a, &batch("a", 1, 3), |_| true),
        Verdict::Held(key("a", 1, 3))
    );
    // The origin sends it again after its custody stalled: this relay may have shed
    // or lost the first copy, so it is stored again.
    let later = t0() + MEMORY;
    assert!(matches!(
        d.judge(later, &a, &batch("a", 1, 3), |_| true),
        Verdict::Store { .. }
    ));
}
