//! The compact batch encoding (envelope version 3): every valid batch round-trips
//! through it, hostile bytes get a typed error and no panic, and a realistic usage
//! batch is much smaller than in version 2.
#![allow(clippy::unwrap_used)]

mod common;

use hedge_wire::compact::{SEQ_NEXT, USAGE};
use hedge_wire::limits::MAX_RECORDS;
use hedge_wire::*;
use proptest::collection::vec;
use proptest::option::of;
use proptest::prelude::*;

const MAX: usize = DEFAULT_MAX_FRAME;

fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

/// Usage records whose fields often repeat (few names, few values), so that every
/// prediction of the encoding both holds and fails; other kinds mixed in.
fn usage_kind() -> impl Strategy<Value = RecordKind> {
    let small = || prop_oneof![Just(0u64), Just(1), Just(100), Just(u64::MAX), any::<u64>()];
    (
        prop_oneof![Just("a"), Just("b"), Just("u17"), Just("x-1.y")],
        (small(), small(), small()),
        (small(), small(), small()),
        (of(small()), of(small()), small()),
    )
        .prop_map(
            |(n, (from_ms, to_ms, cpu_ms), (m, peak, disk), (rx, tx, up))| RecordKind::Usage {
                instance: name(n),
                from_ms,
                to_ms,
                cpu_ms,
                mem_avg_bytes: m,
                mem_peak_bytes: if peak == 1 { m } else { peak },
                disk_bytes: disk,
                net_rx_bytes: rx,
                net_tx_bytes: tx,
                uptime_ms: if up == 1 {
                    to_ms.wrapping_sub(from_ms)
                } else {
                    up
                },
            },
        )
}

/// A valid batch of mostly usage records: seqs consecutive or not, times repeating or
/// jumping either way, with or without `covers`.
fn usage_up() -> impl Strategy<Value = Up> {
    (
        prop_oneof![Just(1u64), Just(u64::MAX - 40), 0..u64::MAX / 2],
        vec(
            (
                prop_oneof![Just(1u64), Just(1), 1..1000u64],
                prop_oneof![Just(0u64), any::<u64>()],
                prop_oneof![4 => usage_kind(), 1 => common::record_kind()],
            ),
            0..24,
        ),
        any::<bool>(),
        1..=u64::MAX,
    )
        .prop_map(|(base, recs, covered, epoch)| {
            let mut seq = base;
            let mut time_ms = 1_764_000_000_000u64;
            let mut records = Vec::new();
            for (step, dt, kind) in recs {
                let Some(next) = seq.checked_add(step) else {
                    break;
                };
                seq = next;
                time_ms = time_ms.wrapping_add(dt);
                records.push(Record { seq, time_ms, kind });
            }
            let covers = match (covered, records.first(), records.last()) {
                (true, Some(a), Some(b)) => Some((a.seq - (a.seq > 0) as u64, b.seq)),
                (true, None, None) => Some((base, base)),
                _ => None,
            };
            Up {
                node: name("node-1"),
                records,
                covers,
                epoch,
            }
        })
}

fn roundtrip(up: &Up) -> Result<(), TestCaseError> {
    let bytes = encode_up(up, MAX).unwrap();
    prop_assert_eq!(bytes[0], COMPACT_UP_VERSION);
    prop_assert_eq!(decode(&bytes, MAX).unwrap(), Message::Up(up.clone()));
    prop_assert_eq!(
        encode_up(up, bytes.len() - 1),
        Err(WireError::TooLarge {
            len: bytes.len(),
            max: bytes.len() - 1
        })
    );
    // Every proper prefix is refused.
    for cut in 0..bytes.len() {
        prop_assert!(decode(&bytes[..cut], MAX).is_err());
    }
    Ok(())
}

proptest! {
    #![proptest_config(common::cases(512))]

    #[test]
    fn any_batch_roundtrips(up in common::up()) {
        roundtrip(&up)?;
    }

    #[test]
    fn usage_batches_roundtrip(up in usage_up()) {
        roundtrip(&up)?;
    }

    /// Random bytes behind the compact version byte: a typed error or a valid batch.
    #[test]
    fn random_bodies_never_panic(body in vec(any::<u8>(), 0..512)) {
        let mut bytes = vec![COMPACT_UP_VERSION];
        bytes.extend(body);
        if let Ok(m) = decode(&bytes, MAX) {
            prop_assert!(m.validate().is_ok());
        }
    }

    /// Mutated valid batches: a typed error, or a valid batch that round-trips.
    #[test]
    fn mutations_never_panic(
        up in usage_up(),
        flips in vec((any::<prop::sample::Index>(), 1..=255u8), 1..4),
    ) {
        let mut bytes = encode_up(&up, MAX).unwrap();
        for (i, x) in flips {
            let i = i.index(bytes.len() - 1) + 1;
            bytes[i] ^= x;
        }
        if let Ok(Message::Up(m)) = decode(&bytes, MAX) {
            prop_assert!(m.validate().is_ok());
            let again = encode_up(&m, MAX).unwrap();
            prop_assert_eq!(decode(&again, MAX).unwrap(), Message::Up(m));
        }
    }
}

/// Version 3, node "n", epoch 1, `covers` none, then `rest` (count and records).
fn body(rest: &[u8]) -> Vec<u8> {
    let mut b = vec![COMPACT_UP_VERSION, 1, b'n', 1, 0];
    b.extend_from_slice(rest);
    b
}

#[test]
fn malformed_batches_are_typed_errors() {
    let fully_predicted = USAGE | 0b1111_1100;
    let cases: Vec<(&str, Vec<u8>, WireError)> = vec![
        (
            "name number never defined",
            // One usage record (seq 0, time 0) naming batch name 0 before any.
            body(&[1, fully_predicted | SEQ_NEXT, 0, 65, 0, 0]),
            WireError::Compact("name number not yet defined"),
        ),
        (
            "empty name",
            body(&[1, fully_predicted | SEQ_NEXT, 0, 0, 0, 0]),
            WireError::Compact("empty name"),
        ),
        (
            "reserved head bits",
            body(&[1, SEQ_NEXT | 0b100, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0]),
            WireError::Compact("reserved head bits set"),
        ),
        (
            "seq past u64::MAX",
            // Record 1 at u64::MAX (a gap from 0), record 2 after it.
            body(&[
                2, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0, 7, 0, 0, 0,
                SEQ_NEXT, 0, 7, 0, 0, 0,
            ]),
            WireError::Compact("seq past u64::MAX"),
        ),
        (
            "more records than the bound",
            body(&[0x81, 0x08]),
            WireError::Invalid("too many records"),
        ),
        (
            "a varint of 11 bytes",
            body(&[
                1, 0, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0,
            ]),
            WireError::Decode(postcard::Error::DeserializeBadVarint),
        ),
        (
            "a 10th varint byte above 1",
            body(&[
                1, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
            ]),
            WireError::Decode(postcard::Error::DeserializeBadVarint),
        ),
        (
            "a bad covers tag",
            vec![COMPACT_UP_VERSION, 1, b'n', 1, 2],
            WireError::Decode(postcard::Error::DeserializeBadOption),
        ),
        (
            "a name with a bad byte",
            body(&[1, fully_predicted | SEQ_NEXT, 0, 1, b'A', 0, 0]),
            WireError::Name(NameError::BadChar),
        ),
        (
            "a count larger than the records present",
            body(&[3, SEQ_NEXT, 0, 7, 0, 0, 0]),
            WireError::Decode(postcard::Error::DeserializeUnexpectedEnd),
        ),
        ("trailing bytes", body(&[0, 0]), WireError::TrailingBytes),
    ];
    assert_eq!(MAX_RECORDS, 1024, "the bound case encodes 1025");
    for (what, bytes, want) in cases {
        assert_eq!(decode(&bytes, MAX), Err(want), "{what}");
    }
    // The validation still applies to a compact batch: epoch 0 is refused.
    let mut zero_epoch = body(&[0]);
    zero_epoch[3] = 0;
    assert_eq!(
        decode(&zero_epoch, MAX),
        Err(WireError::Invalid("epoch 0 is reserved"))
    );
}

/// One second of a node's usage accounting: `instances` instances closing their
/// intervals at the same sample tick, as the daemon's monitor does, appended a few ms
/// apart; `ticks` ticks in a row.
fn realistic(instances: usize, ticks: u64, interval_ms: u64) -> Up {
    let t0 = 1_764_600_000_000u64;
    let mut records = Vec::new();
    let mut seq = 41_000u64;
    for tick in 0..ticks {
        let to_ms = t0 + (tick + 1) * interval_ms + 3;
        let from_ms = to_ms - interval_ms;
        for i in 0..instances {
            let k = i as u64;
            let mem = 1_064_960 + 4096 * (k % 3);
            records.push(Record {
                seq,
                time_ms: to_ms + 1 + k / 40,
                kind: RecordKind::Usage {
                    instance: name(&format!("u{i}")),
                    from_ms,
                    to_ms,
                    cpu_ms: (k + tick) % 4,
                    mem_avg_bytes: mem,
                    mem_peak_bytes: if i % 5 == 0 { mem + 8192 } else { mem },
                    disk_bytes: 4096,
                    net_rx_bytes: None,
                    net_tx_bytes: None,
                    uptime_ms: interval_ms,
                },
            });
            seq += 1;
        }
    }
    records.truncate(256);
    let covers = Some((records[0].seq, records.last().unwrap().seq));
    Up {
        node: name("bench"),
        records,
        covers,
        epoch: 0x9e37_79b9_7f4a_7c15,
    }
}

/// Bytes per record of `up` in version 2 and in the compact encoding.
fn per_record(up: &Up) -> (f64, f64) {
    let n = up.records.len() as f64;
    let old = encode(&Message::Up(up.clone()), MAX).unwrap().len() as f64 / n;
    let new = encode_up(up, MAX).unwrap().len() as f64 / n;
    (old, new)
}

/// Sizes, not timings: the compact form of a full batch of usage records is at most
/// half the version-2 form, for the bench's shape (200 instances every 100 ms: most
/// names new in a batch) and for a small node's (10 instances every minute).
#[test]
fn usage_batches_are_at_most_half_as_large() {
    for (what, up) in [
        ("200 instances, 100 ms", realistic(200, 2, 100)),
        ("10 instances, 60 s", realistic(10, 26, 60_000)),
    ] {
        assert_eq!(up.records.len(), 256);
        let (old, new) = per_record(&up);
        eprintln!("{what}: version 2 {old:.1} B/record, compact {new:.1} B/record");
        assert!(new * 2.0 <= old, "{what}: {new:.1} vs {old:.1} B/record");
    }
    // An express batch (no covers, a few records far apart) is no larger either.
    let mut up = realistic(10, 1, 60_000);
    up.records.truncate(3);
    up.records[1].seq += 1000;
    up.records[2].seq += 2000;
    up.covers = None;
    let (old, new) = per_record(&up);
    assert!(new <= old, "{new:.1} vs {old:.1} B/record");
}

/// Version-2 batches still decode, to the same value as their compact form.
#[test]
fn both_versions_decode_alike() {
    let up = realistic(50, 3, 1000);
    let old = encode(&Message::Up(up.clone()), MAX).unwrap();
    let new = encode_up(&up, MAX).unwrap();
    assert_eq!(old[0], WIRE_VERSION);
    assert_eq!(new[0], COMPACT_UP_VERSION);
    assert_eq!(decode(&old, MAX).unwrap(), decode(&new, MAX).unwrap());
    // Acks and desired states are never compact; the encoder validates like `encode`.
    let mut bad = up.clone();
    bad.records.swap(0, 1);
    assert_eq!(
        encode_up(&bad, MAX),
        Err(WireError::Invalid("record seq not strictly increasing"))
    );
}
