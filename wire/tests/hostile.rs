//! Hostile input: random bytes, truncations and mutations never panic, and every
//! refusal the codec, the framing and the validation promise actually happens.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;

use common::{message_strategy, Chunked, Sink};
use hedge_wire::limits::*;
use hedge_wire::*;
use proptest::prelude::*;

const MAX: usize = DEFAULT_MAX_FRAME;

/// postcard of `msg` in an envelope, *without* validation: what a buggy or hostile
/// peer could send.
fn raw(msg: &Message) -> Vec<u8> {
    let mut out = vec![WIRE_VERSION];
    out.extend(postcard::to_allocvec(msg).unwrap());
    out
}

fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

fn instance(n: &str) -> InstanceRequest {
    InstanceRequest {
        name: name(n),
        software: "exec:/bin/true".parse().unwrap(),
        args: vec![],
        parameters: BTreeMap::new(),
        config_files: vec![],
        promises: vec![],
        limits: Limits::default(),
        restart: RestartPolicy::default(),
        state: RequestedState::Started,
    }
}

fn desired(instances: Vec<InstanceRequest>) -> Message {
    Message::Desired(DesiredState {
        node: name("node-1"),
        generation: 7,
        instances,
        signature: (0..64u8).collect(),
        expires_ms: 1_800_000_000_000,
        terms: vec![],
        imports: vec![],
        backups: vec![],
        restores: vec![],
    })
}

fn record(seq: u64, kind: RecordKind) -> Record {
    Record {
        seq,
        time_ms: 1,
        kind,
    }
}

fn health() -> RecordKind {
    RecordKind::NodeHealth {
        load1_milli: 1,
        mem_total: 2,
        mem_available: 1,
        disk_free: 3,
        temp_milli_c: None,
        uplink_up: true,
        outbox_depth: 0,
    }
}

fn up(records: Vec<Record>) -> Message {
    Message::Up(Up {
        node: name("node-1"),
        records,
        covers: None,
        epoch: 7,
    })
}

/// `msg` is refused both by `encode` and, sent raw, by `decode`, with `Invalid(why)`.
fn assert_invalid(msg: Message, why: &str) {
    match encode(&msg, MAX) {
        Err(WireError::Invalid(w)) => assert_eq!(w, why),
        other => panic!("encode: expected Invalid({why}), got {other:?}"),
    }
    match decode(&raw(&msg), MAX) {
        Err(WireError::Invalid(w)) => assert_eq!(w, why),
        other => panic!("decode: expected Invalid({why}), got {other:?}"),
    }
}

/// Sent raw, `msg` fails inside postcard (a bound enforced while decoding).
fn assert_decode_refused(msg: &Message) {
    assert!(
        matches!(decode(&raw(msg), usize::MAX), Err(WireError::Decode(_))),
        "expected a decode error"
    );
}

proptest! {
    #![proptest_config(common::cases(1024))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes, MAX);
        let mut buf = [0u8; 512];
        let _ = read_frame(&mut Chunked { data: &bytes, chunk: 7 }, &mut buf);
    }

    /// Past the version byte and the message tag, so postcard sees the garbage.
    #[test]
    fn random_bodies_never_panic(tag in 0u8..4, body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut bytes = vec![WIRE_VERSION, tag];
        bytes.extend(body);
        if let Ok(m) = decode(&bytes, MAX) {
            prop_assert!(m.validate().is_ok());
        }
    }
}

proptest! {
    #![proptest_config(common::cases(256))]

    #[test]
    fn every_truncation_is_refused(msg in message_strategy()) {
        let bytes = encode(&msg, MAX).unwrap();
        for i in 0..bytes.len() {
            prop_assert!(decode(&bytes[..i], MAX).is_err(), "prefix of {} bytes accepted", i);
        }
        let mut sink = Sink::new(usize::MAX);
        write_frame(&mut sink, &msg, MAX).unwrap();
        let mut buf = vec![0u8; MAX];
        for i in 0..sink.out.len() {
            let got = read_frame(&mut Chunked { data: &sink.out[..i], chunk: 5 }, &mut buf);
            let want = if i == 0 { FrameError::Closed } else { FrameError::UnexpectedEof };
            prop_assert_eq!(got, Err(want));
        }
    }

    /// Flipped bytes may decode to another valid message, never to an invalid one.
    #[test]
    fn mutations_never_panic(
        msg in message_strategy(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut bytes = encode(&msg, MAX).unwrap();
        for (i, x) in flips {
            let i = i.index(bytes.len());
            bytes[i] ^= x;
        }
        if let Ok(m) = decode(&bytes, MAX) {
            prop_assert!(m.validate().is_ok());
            let again = encode(&m, MAX).unwrap();
            prop_assert_eq!(decode(&again, MAX).unwrap(), m);
        }
    }
}

#[test]
fn empty_wrong_version_and_trailing_bytes() {
    let ok = encode(&Message::Ack(Ack { upto: 3, epoch: 5 }), MAX).unwrap();
    assert_eq!(ok, [WIRE_VERSION, 2, 3, 5]);
    // An ack without its epoch (the pre-epoch layout) is refused, not read as epoch 0.
    assert!(matches!(
        decode(&[WIRE_VERSION, 2, 3], MAX),
        Err(WireError::Decode(_))
    ));
    assert_eq!(decode(&[], MAX), Err(WireError::Empty));
    // Version 1 (before the signed expiry) is refused as a version, not misread; version
    // 3 is a compact batch, which these bytes are not; 2 and 4 are read (see below).
    for v in [0u8, 1, 6, 255] {
        let mut bad = ok.clone();
        bad[0] = v;
        assert_eq!(decode(&bad, MAX), Err(WireError::BadVersion(v)));
    }
    let mut long = ok.clone();
    long.push(0);
    assert_eq!(decode(&long, MAX), Err(WireError::TrailingBytes));
    // Unknown message tag (0..=4 are Desired, Up, Ack, Fetch, Carried).
    assert!(matches!(
        decode(&[WIRE_VERSION, 5, 0], MAX),
        Err(WireError::Decode(_))
    ));
}

#[test]
fn a_desired_state_without_its_expiry_is_refused() {
    let Message::Desired(d) = desired(vec![]) else {
        unreachable!()
    };
    // The same state as wire version 1 encoded it: no expiry at the end.
    let v1 = DesiredStateV1 {
        node: d.node.clone(),
        generation: d.generation,
        instances: d.instances.clone(),
        signature: d.signature.clone(),
    };
    let mut body = vec![WIRE_VERSION, 0];
    body.extend(postcard::to_allocvec(&v1).unwrap());
    assert_eq!(
        decode(&body, MAX),
        Err(WireError::Decode(postcard::Error::DeserializeUnexpectedEnd))
    );
    // Under its own version byte it is refused before any decoding.
    body[0] = 1;
    assert_eq!(decode(&body, MAX), Err(WireError::BadVersion(1)));
    // A version-1 state read from a store carries expiry 0 (reported as expired).
    assert_eq!(
        DesiredState::from(v1),
        DesiredState {
            expires_ms: 0,
            ..d.clone()
        }
    );
    // The expiry is signed: changing it changes what the signature covers.
    let mut later = d.clone();
    later.expires_ms += 1;
    assert_ne!(later.signed_bytes(), d.signed_bytes());
}

#[test]
fn a_version_2_desired_state_is_refused_and_version_2_batches_still_read() {
    let Message::Desired(d) = desired(vec![instance("web")]) else {
        unreachable!()
    };
    let v2 = DesiredStateV2 {
        node: d.node.clone(),
        generation: d.generation,
        instances: d.instances.clone(),
        signature: d.signature.clone(),
        expires_ms: d.expires_ms,
    };
    // Version 2's `Message::Desired` is variant 0, as in version 4.
    let mut body = vec![LEGACY_VERSION, 0];
    body.extend(postcard::to_allocvec(&v2).unwrap());
    assert!(matches!(decode(&body, MAX), Err(WireError::Invalid(_))));
    // Under version 4 the same bytes lack the terms and imports.
    body[0] = WIRE_VERSION;
    assert_eq!(
        decode(&body, MAX),
        Err(WireError::Decode(postcard::Error::DeserializeUnexpectedEnd))
    );
    // A store reads it (no terms, no imports), and a version-4 signature never covers it.
    let read = DesiredState::from_stored(&postcard::to_allocvec(&v2).unwrap()).unwrap();
    assert_eq!(read, d);
    assert_eq!(
        DesiredState::from_stored(&postcard::to_allocvec(&d).unwrap()).unwrap(),
        d
    );
    // Batches and acks of a version-2 node still decode.
    let up = Message::Up(Up {
        node: name("node-1"),
        records: vec![record(1, health())],
        covers: Some((1, 1)),
        epoch: 9,
    });
    for msg in [up, Message::Ack(Ack { upto: 3, epoch: 9 })] {
        let mut bytes = encode(&msg, MAX).unwrap();
        bytes[0] = LEGACY_VERSION;
        assert_eq!(decode(&bytes, MAX), Ok(msg));
    }
}

#[test]
fn a_version_4_desired_state_is_refused_and_version_4_messages_still_read() {
    let Message::Desired(d) = desired(vec![instance("web")]) else {
        unreachable!()
    };
    let v4 = DesiredStateV4 {
        node: d.node.clone(),
        generation: d.generation,
        instances: d.instances.clone(),
        signature: d.signature.clone(),
        expires_ms: d.expires_ms,
        terms: vec![],
        imports: vec![],
    };
    let mut body = vec![PREVIOUS_VERSION, 0];
    body.extend(postcard::to_allocvec(&v4).unwrap());
    assert!(matches!(decode(&body, MAX), Err(WireError::Invalid(_))));
    // Under version 5 the same bytes lack the backups and restores.
    body[0] = WIRE_VERSION;
    assert_eq!(
        decode(&body, MAX),
        Err(WireError::Decode(postcard::Error::DeserializeUnexpectedEnd))
    );
    // A store reads it (no backups, no restores).
    let read = DesiredState::from_stored(&postcard::to_allocvec(&v4).unwrap()).unwrap();
    assert_eq!(read, d);
    // Everything else a version-4 peer sends still decodes.
    let up = Message::Up(Up {
        node: name("node-1"),
        records: vec![record(1, health())],
        covers: Some((1, 1)),
        epoch: 9,
    });
    for msg in [
        up,
        Message::Ack(Ack { upto: 3, epoch: 9 }),
        Message::Fetch(vec![name("node-2")]),
    ] {
        let mut bytes = encode(&msg, MAX).unwrap();
        bytes[0] = PREVIOUS_VERSION;
        assert_eq!(decode(&bytes, MAX), Ok(msg));
    }
}

#[test]
fn backups_and_restores_are_checked_and_signed() {
    let Message::Desired(d) = desired(vec![instance("web"), instance("db")]) else {
        unreachable!()
    };
    let policy = |n: &str| BackupPolicy {
        instance: name(n),
        interval_s: 60,
        retain: 3,
        paths: vec!["srv".into()],
        command: vec![],
    };
    let restore = |n: &str| RestoreDirective {
        instance: name(n),
        source: name("node-2"),
        snapshot: SnapshotId(0xfeed),
    };
    let good = DesiredState {
        backups: vec![policy("web"), policy("db")],
        restores: vec![restore("web")],
        ..d.clone()
    };
    let bytes = encode(&Message::Desired(good.clone()), MAX).unwrap();
    assert_eq!(decode(&bytes, MAX), Ok(Message::Desired(good.clone())));
    assert_ne!(good.signed_bytes(), d.signed_bytes());
    let with = |backups: Vec<BackupPolicy>, restores: Vec<RestoreDirective>| DesiredState {
        backups,
        restores,
        ..d.clone()
    };
    let refused = [
        (
            with(vec![policy("other")], vec![]),
            "a backup policy for an instance the state does not carry",
        ),
        (
            with(vec![policy("web"), policy("web")], vec![]),
            "duplicate backup policy",
        ),
        (
            with(vec![], vec![restore("other")]),
            "a restore directive for an instance the state does not carry",
        ),
        (
            with(vec![], vec![restore("db"), restore("db")]),
            "duplicate restore directive",
        ),
        (
            with(
                vec![BackupPolicy {
                    paths: vec!["../etc".into()],
                    ..policy("web")
                }],
                vec![],
            ),
            "path contains '..'",
        ),
        (
            with(
                vec![BackupPolicy {
                    paths: vec!["/srv".into()],
                    ..policy("web")
                }],
                vec![],
            ),
            "path is absolute",
        ),
        (
            with(
                vec![BackupPolicy {
                    paths: vec![],
                    ..policy("web")
                }],
                vec![],
            ),
            "no backup paths",
        ),
        (
            with(
                vec![BackupPolicy {
                    interval_s: 0,
                    ..policy("web")
                }],
                vec![],
            ),
            "backup interval is 0",
        ),
        (
            with(
                vec![BackupPolicy {
                    retain: 0,
                    ..policy("web")
                }],
                vec![],
            ),
            "backup retention is 0",
        ),
    ];
    for (state, why) in refused {
        assert_eq!(state.validate(), Err(WireError::Invalid(why)), "{why}");
    }
    assert_eq!("000000000000feed".parse(), Ok(SnapshotId(0xfeed)));
    assert_eq!(SnapshotId(0xfeed).to_string(), "000000000000feed");
    assert!("feed".parse::<SnapshotId>().is_err());
    assert!("000000000000fexd".parse::<SnapshotId>().is_err());
}

#[test]
fn terms_and_imports_are_checked_and_signed() {
    let Message::Desired(d) = desired(vec![instance("web"), instance("db")]) else {
        unreachable!()
    };
    let terms = |n: &str, fence| InstanceTerms {
        instance: name(n),
        fence,
        lease_ms: 30_000,
    };
    let import = |n: &str| Import {
        instance: name(n),
        parameters: [("port".to_string(), "5432".to_string())].into(),
    };
    let good = DesiredState {
        terms: vec![terms("web", 2), terms("db", 1)],
        imports: vec![import("cache")],
        ..d.clone()
    };
    let bytes = encode(&Message::Desired(good.clone()), MAX).unwrap();
    assert_eq!(decode(&bytes, MAX), Ok(Message::Desired(good.clone())));
    assert_eq!(good.terms_of(&name("web")).map(|t| t.fence), Some(2));
    assert_eq!(good.terms_of(&name("cache")), None);
    let refused = [
        (
            DesiredState {
                terms: vec![terms("gone", 1)],
                ..good.clone()
            },
            "terms for an instance the state does not carry",
        ),
        (
            DesiredState {
                terms: vec![terms("web", 1), terms("web", 2)],
                ..good.clone()
            },
            "duplicate instance terms",
        ),
        (
            DesiredState {
                imports: vec![import("db")],
                ..good.clone()
            },
            "an import names an instance of the same state",
        ),
        (
            DesiredState {
                imports: vec![import("cache"), import("cache")],
                ..good.clone()
            },
            "duplicate import",
        ),
        (
            DesiredState {
                imports: vec![Import {
                    instance: name("cache"),
                    parameters: [("a=b".to_string(), "x".to_string())].into(),
                }],
                ..good.clone()
            },
            "parameter key contains '='",
        ),
    ];
    for (state, why) in refused {
        let msg = Message::Desired(state);
        assert_eq!(msg.validate(), Err(WireError::Invalid(why)), "{why}");
        assert!(encode(&msg, MAX).is_err(), "{why}");
    }
    // Both are signed: changing a fence, a lease or an imported value changes the bytes.
    let mut moved = good.clone();
    moved.terms[0].fence += 1;
    let mut leased = good.clone();
    leased.terms[0].lease_ms = 0;
    let mut changed = good.clone();
    changed.imports[0]
        .parameters
        .insert("port".to_string(), "5433".to_string());
    for other in [moved, leased, changed] {
        assert_ne!(other.signed_bytes(), good.signed_bytes());
    }
}

#[test]
fn oversized_length_prefix_is_refused_before_the_body() {
    let mut buf = [0u8; 100];
    for len in [101u32, 1 << 20, u32::MAX] {
        let mut stream = len.to_be_bytes().to_vec();
        stream.extend([0u8; 200]);
        let mut r = Chunked {
            data: &stream,
            chunk: 1000,
        };
        assert_eq!(
            read_frame(&mut r, &mut buf),
            Err(FrameError::Wire(WireError::TooLarge {
                len: len as usize,
                max: 100
            }))
        );
        // Only the prefix was consumed.
        assert_eq!(r.data.len(), 200);
    }
    // A frame that fits exactly is read.
    let msg = Message::Ack(Ack { upto: 1, epoch: 1 });
    let mut sink = Sink::new(4);
    write_frame(&mut sink, &msg, MAX).unwrap();
    let mut small = [0u8; 4];
    let mut r = Chunked {
        data: &sink.out,
        chunk: 1,
    };
    assert_eq!(read_frame(&mut r, &mut small), Ok(msg));
}

#[test]
fn write_frame_refuses_oversized_and_reports_stream_errors() {
    let big = Message::Up(Up {
        node: name("n"),
        records: (1..=100).map(|s| record(s, health())).collect(),
        covers: Some((1, 100)),
        epoch: 1,
    });
    let mut sink = Sink::new(64);
    assert!(matches!(
        write_frame(&mut sink, &big, 64),
        Err(FrameError::Wire(WireError::TooLarge { max: 64, .. }))
    ));
    assert!(sink.out.is_empty(), "nothing written for a refused message");

    struct Zero;
    impl embedded_io::ErrorType for Zero {
        type Error = Infallible;
    }
    impl embedded_io::Write for Zero {
        fn write(&mut self, _: &[u8]) -> Result<usize, Infallible> {
            Ok(0)
        }
        fn flush(&mut self) -> Result<(), Infallible> {
            Ok(())
        }
    }
    assert_eq!(
        write_frame(&mut Zero, &Message::Ack(Ack { upto: 0, epoch: 0 }), MAX),
        Err(FrameError::WriteZero)
    );

    struct Broken;
    impl embedded_io::ErrorType for Broken {
        type Error = embedded_io::ErrorKind;
    }
    impl embedded_io::Write for Broken {
        fn write(&mut self, _: &[u8]) -> Result<usize, embedded_io::ErrorKind> {
            Err(embedded_io::ErrorKind::BrokenPipe)
        }
        fn flush(&mut self) -> Result<(), embedded_io::ErrorKind> {
            Ok(())
        }
    }
    impl embedded_io::Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> Result<usize, embedded_io::ErrorKind> {
            Err(embedded_io::ErrorKind::ConnectionReset)
        }
    }
    assert_eq!(
        write_frame(&mut Broken, &Message::Ack(Ack { upto: 0, epoch: 0 }), MAX),
        Err(FrameError::Io(embedded_io::ErrorKind::BrokenPipe))
    );
    assert_eq!(
        read_frame(&mut Broken, &mut [0u8; 8]),
        Err(FrameError::Io(embedded_io::ErrorKind::ConnectionReset))
    );
}

#[test]
fn invalid_names_in_hand_built_frames_are_refused() {
    // Up { node: "abcd", records: [], covers: None, epoch: 9 } by hand: version, tag 1
    // (Up), name, no records, no range, epoch.
    let frame = |name: &[u8]| {
        let mut b = vec![WIRE_VERSION, 1, u8::try_from(name.len()).unwrap()];
        b.extend_from_slice(name);
        b.push(0);
        b.push(0);
        b.push(9);
        b
    };
    assert_eq!(
        decode(&frame(b"abcd"), MAX),
        Ok(Message::Up(Up {
            node: name("abcd"),
            records: vec![],
            covers: None,
            epoch: 9,
        }))
    );
    for bad in [
        &b"../x"[..],
        b"..",
        b".",
        b"a/bc",
        b"ABCD",
        b"a b",
        b"",
        b"a\0",
        &[b'a'; 65],
    ] {
        assert!(
            matches!(decode(&frame(bad), MAX), Err(WireError::Decode(_))),
            "name {:?} accepted",
            String::from_utf8_lossy(bad)
        );
    }

    // Nested: a record's instance name, patched in a valid encoding.
    let msg = up(vec![record(
        1,
        RecordKind::ConnectionParameters {
            instance: name("zzzz"),
            parameters: BTreeMap::new(),
        },
    )]);
    let mut bytes = encode(&msg, MAX).unwrap();
    let at = bytes.windows(4).position(|w| w == b"zzzz").unwrap();
    bytes[at..at + 4].copy_from_slice(b"../x");
    assert!(matches!(decode(&bytes, MAX), Err(WireError::Decode(_))));
}

#[test]
fn up_seq_must_strictly_increase() {
    let ok = up(vec![record(1, health()), record(5, health())]);
    assert!(decode(&raw(&ok), MAX).is_ok());
    assert_invalid(
        up(vec![record(5, health()), record(5, health())]),
        "record seq not strictly increasing",
    );
    assert_invalid(
        up(vec![
            record(1, health()),
            record(9, health()),
            record(4, health()),
        ]),
        "record seq not strictly increasing",
    );
}

#[test]
fn up_epoch_zero_is_reserved_and_a_batch_without_epoch_is_refused() {
    let Message::Up(mut u) = up(vec![record(1, health())]) else {
        unreachable!()
    };
    u.epoch = 0;
    assert_invalid(Message::Up(u.clone()), "epoch 0 is reserved");
    // The pre-epoch layout (no trailing epoch) is short: a decode error, never epoch 0.
    u.epoch = 1;
    let mut bytes = raw(&Message::Up(u));
    assert_eq!(bytes.pop(), Some(1));
    assert!(matches!(decode(&bytes, MAX), Err(WireError::Decode(_))));
    // The largest epoch round-trips.
    let Message::Up(mut u) = up(vec![record(1, health())]) else {
        unreachable!()
    };
    u.epoch = u64::MAX;
    let m = Message::Up(u);
    assert_eq!(decode(&encode(&m, MAX).unwrap(), MAX), Ok(m));
}

#[test]
fn collection_bounds_are_enforced_while_decoding() {
    let mut i = instance("a");
    i.args = vec![String::new(); MAX_ARGS + 1];
    assert_decode_refused(&desired(vec![i]));

    let mut i = instance("a");
    i.parameters = (0..=MAX_PARAMETERS)
        .map(|n| (format!("k{n}"), String::new()))
        .collect();
    assert_decode_refused(&desired(vec![i]));

    let mut i = instance("a");
    i.config_files = (0..=MAX_CONFIG_FILES)
        .map(|n| ConfigFile {
            path: format!("f{n}"),
            template: String::new(),
        })
        .collect();
    assert_decode_refused(&desired(vec![i]));

    let mut i = instance("a");
    i.promises = (0..=MAX_PROMISES)
        .map(|n| PromiseSpec {
            name: name(&format!("p{n}")),
            check: PromiseCheck::Process,
            interval_ms: 1,
            timeout_ms: 1,
            threshold: 1,
        })
        .collect();
    assert_decode_refused(&desired(vec![i]));

    let mut i = instance("a");
    i.promises = vec![PromiseSpec {
        name: name("p"),
        check: PromiseCheck::Command {
            argv: vec!["x".into(); MAX_ARGS + 1],
        },
        interval_ms: 1,
        timeout_ms: 1,
        threshold: 1,
    }];
    assert_decode_refused(&desired(vec![i]));

    let many = (0..=MAX_INSTANCES)
        .map(|n| instance(&format!("i{n}")))
        .collect();
    assert_decode_refused(&desired(many));

    assert_decode_refused(&up((1..=MAX_RECORDS as u64 + 1)
        .map(|s| record(s, health()))
        .collect()));

    assert_decode_refused(&up(vec![record(
        1,
        RecordKind::ConnectionParameters {
            instance: name("a"),
            parameters: (0..=MAX_PARAMETERS)
                .map(|n| (format!("k{n}"), String::new()))
                .collect(),
        },
    )]));

    // Exactly at the bounds is fine.
    let mut i = instance("a");
    i.args = vec![String::new(); MAX_ARGS];
    let at = desired(vec![i]);
    assert_eq!(decode(&encode(&at, MAX).unwrap(), MAX).unwrap(), at);
    let full = up((1..=MAX_RECORDS as u64)
        .map(|s| record(s, health()))
        .collect());
    assert_eq!(decode(&encode(&full, MAX).unwrap(), MAX).unwrap(), full);
}

#[test]
fn validation_rules() {
    let with = |f: &dyn Fn(&mut InstanceRequest)| {
        let mut i = instance("a");
        f(&mut i);
        desired(vec![i])
    };
    let promise = |check: PromiseCheck| PromiseSpec {
        name: name("p"),
        check,
        interval_ms: 1000,
        timeout_ms: 100,
        threshold: 3,
    };

    // The baseline is valid.
    assert!(encode(&with(&|_| {}), MAX).is_ok());

    assert_invalid(
        with(&|i| i.software = SoftwareRelease::Exec(String::new())),
        "empty exec program",
    );
    assert_invalid(
        with(&|i| i.software = SoftwareRelease::Exec("a\0b".into())),
        "exec program contains NUL",
    );
    assert_invalid(
        with(&|i| i.software = SoftwareRelease::Exec("x".repeat(MAX_PATH + 1))),
        "exec program too long",
    );
    let artifact = |targets: &[&str], entry: &str| SoftwareRelease::Artifact {
        variants: targets
            .iter()
            .map(|t| ArtifactVariant {
                target: (*t).into(),
                sha256: [7; 32],
            })
            .collect(),
        entry: entry.into(),
    };
    assert!(encode(
        &with(&|i| i.software = artifact(&["*", "aarch64-unknown-linux-gnu"], "bin/app")),
        MAX
    )
    .is_ok());
    assert_invalid(
        with(&|i| i.software = artifact(&[], "bin/app")),
        "artifact without a variant",
    );
    // Over MAX_VARIANTS is refused by `encode`, and already while decoding.
    let too_many = with(&|i| i.software = artifact(&["*"; MAX_VARIANTS + 1], "bin/app"));
    assert_eq!(
        encode(&too_many, MAX),
        Err(WireError::Invalid("too many artifact variants"))
    );
    assert_decode_refused(&too_many);
    assert_invalid(
        with(&|i| i.software = artifact(&["*", "*"], "bin/app")),
        "duplicate artifact target",
    );
    for bad in ["", "A-B", "x/y", "**"] {
        assert_invalid(
            with(&|i| i.software = artifact(&[bad], "bin/app")),
            "bad artifact variant target",
        );
    }
    for bad in ["", "/bin/sh", "../x", "bin/../../x", "a\0b"] {
        assert_invalid(
            with(&|i| i.software = artifact(&["*"], bad)),
            "bad artifact entry path",
        );
    }
    assert_invalid(
        with(&|i| i.args = vec!["a\0".into()]),
        "argument contains NUL",
    );
    assert_invalid(
        with(&|i| i.args = vec!["x".repeat(MAX_ARG_LEN + 1)]),
        "argument too long",
    );
    assert_invalid(
        with(&|i| {
            i.parameters.insert("K=V".into(), "v".into());
        }),
        "parameter key contains '='",
    );
    assert_invalid(
        with(&|i| {
            i.parameters.insert(String::new(), "v".into());
        }),
        "empty parameter key",
    );
    assert_invalid(
        with(&|i| {
            i.parameters
                .insert("k".repeat(MAX_PARAMETER_KEY + 1), "v".into());
        }),
        "parameter key too long",
    );
    assert_invalid(
        with(&|i| {
            i.parameters
                .insert("k".into(), "v".repeat(MAX_PARAMETER_VALUE + 1));
        }),
        "parameter value too long",
    );
    assert_invalid(
        with(&|i| {
            i.parameters.insert("k".into(), "\0".into());
        }),
        "parameter value contains NUL",
    );
    for (path, why) in [
        ("", "empty path"),
        ("/etc/passwd", "path is absolute"),
        ("..", "path contains '..'"),
        ("../x", "path contains '..'"),
        ("a/../../b", "path contains '..'"),
        ("a\0", "path contains NUL"),
    ] {
        assert_invalid(
            with(&|i| {
                i.config_files = vec![ConfigFile {
                    path: path.into(),
                    template: String::new(),
                }]
            }),
            why,
        );
        assert_invalid(
            with(&|i| {
                i.promises = vec![promise(PromiseCheck::File {
                    path: path.into(),
                    max_age_s: 1,
                })]
            }),
            why,
        );
    }
    // `..` inside a component is just a name.
    assert!(encode(
        &with(&|i| i.config_files = vec![ConfigFile {
            path: "etc/a..b/.conf".into(),
            template: String::new()
        }]),
        MAX
    )
    .is_ok());
    assert_invalid(
        with(&|i| {
            i.config_files = vec![ConfigFile {
                path: "x".into(),
                template: "t".repeat(MAX_CONFIG_TEMPLATE + 1),
            }]
        }),
        "config template too long",
    );
    assert_invalid(
        with(&|i| {
            let c = ConfigFile {
                path: "x".into(),
                template: String::new(),
            };
            i.config_files = vec![c.clone(), c];
        }),
        "duplicate config file path",
    );
    assert_invalid(
        with(&|i| i.promises = vec![promise(PromiseCheck::Process); 2]),
        "duplicate promise name",
    );
    assert_invalid(
        with(&|i| {
            i.promises = vec![PromiseSpec {
                interval_ms: 0,
                ..promise(PromiseCheck::Process)
            }]
        }),
        "promise interval is zero",
    );
    assert_invalid(
        with(&|i| {
            i.promises = vec![PromiseSpec {
                timeout_ms: 0,
                ..promise(PromiseCheck::Process)
            }]
        }),
        "promise timeout is zero",
    );
    assert_invalid(
        with(&|i| {
            i.promises = vec![PromiseSpec {
                threshold: 0,
                ..promise(PromiseCheck::Process)
            }]
        }),
        "promise threshold is zero",
    );
    assert_invalid(
        with(&|i| i.promises = vec![promise(PromiseCheck::Command { argv: vec![] })]),
        "command promise without a program",
    );
    assert_invalid(
        with(&|i| {
            i.promises = vec![promise(PromiseCheck::Tcp {
                address: String::new(),
            })]
        }),
        "empty tcp promise address",
    );
    assert_invalid(
        with(&|i| {
            i.promises = vec![promise(PromiseCheck::Http {
                url: "u".repeat(MAX_TARGET + 1),
                status: 200,
                max_latency_ms: 1,
            })]
        }),
        "http promise url too long",
    );
    assert_invalid(
        with(&|i| i.restart.backoff_base_ms = Some(0)),
        "restart backoff base is zero",
    );
    assert_invalid(
        with(&|i| {
            i.restart = RestartPolicy {
                backoff_base_ms: Some(10),
                backoff_max_ms: Some(5),
            }
        }),
        "restart backoff base exceeds its maximum",
    );
    assert_invalid(
        desired(vec![instance("a"), instance("b"), instance("a")]),
        "duplicate instance name",
    );

    let mut unsigned = desired(vec![]);
    if let Message::Desired(d) = &mut unsigned {
        d.signature = Default::default();
    }
    assert!(encode(&unsigned, MAX).is_ok());
    if let Message::Desired(d) = &mut unsigned {
        d.signature = (0..10u8).collect();
    }
    assert_invalid(unsigned, "signature is neither empty nor 64 bytes");

    let long = "m".repeat(MAX_MESSAGE + 1);
    assert_invalid(
        up(vec![record(
            1,
            RecordKind::Incident {
                id: 1,
                instance: name("a"),
                promise: None,
                severity: Severity::Major,
                state: IncidentState::Open,
                first_seen_ms: 9,
                last_seen_ms: 1,
                message: long.clone(),
            },
        )]),
        "incident message too long",
    );
    assert_invalid(
        up(vec![record(
            1,
            RecordKind::PromiseResult {
                instance: name("a"),
                promise: name("p"),
                ok: false,
                checks: 1,
                failures: 1,
                latency_ms: None,
                message: long,
            },
        )]),
        "promise result message too long",
    );
    let mut bad = instance("a");
    bad.args = vec!["\0".into()];
    assert_invalid(
        up(vec![record(
            1,
            RecordKind::LocalRequest {
                request: Box::new(bad),
            },
        )]),
        "argument contains NUL",
    );

    // Counts, checked by `validate` itself (decode stops earlier, see above).
    let many = Up {
        node: name("n"),
        records: (1..=MAX_RECORDS as u64 + 1)
            .map(|s| record(s, health()))
            .collect(),
        covers: None,
        epoch: 1,
    };
    assert_eq!(many.validate(), Err(WireError::Invalid("too many records")));
    let many = DesiredState {
        node: name("n"),
        generation: 1,
        instances: (0..=MAX_INSTANCES)
            .map(|n| instance(&format!("i{n}")))
            .collect(),
        signature: Default::default(),
        expires_ms: 0,
        terms: vec![],
        imports: vec![],
        backups: vec![],
        restores: vec![],
    };
    assert_eq!(
        many.validate(),
        Err(WireError::Invalid("too many instances"))
    );
    let many = DesiredState {
        instances: vec![],
        imports: (0..=MAX_IMPORTS)
            .map(|n| Import {
                instance: name(&format!("i{n}")),
                parameters: Default::default(),
            })
            .collect(),
        ..many
    };
    assert_eq!(many.validate(), Err(WireError::Invalid("too many imports")));
}

#[test]
fn errors_display() {
    let errors = [
        WireError::TooLarge { len: 2, max: 1 },
        WireError::Empty,
        WireError::BadVersion(9),
        WireError::Decode(postcard::Error::DeserializeUnexpectedEnd),
        WireError::Encode(postcard::Error::SerializeBufferFull),
        WireError::TrailingBytes,
        WireError::Compact("why"),
        WireError::Invalid("why"),
        WireError::Name(NameError::Dots),
    ];
    for e in errors {
        let text = e.to_string();
        assert!(!text.is_empty());
        let boxed: Box<dyn std::error::Error> = Box::new(e.clone());
        assert_eq!(boxed.to_string(), text);
        let f: FrameError<embedded_io::ErrorKind> = e.into();
        assert!(f.to_string().contains(&text));
    }
    assert_eq!(
        WireError::from(NameError::TooLong),
        WireError::Name(NameError::TooLong)
    );
    for f in [
        FrameError::Io(embedded_io::ErrorKind::Other),
        FrameError::Closed,
        FrameError::UnexpectedEof,
        FrameError::WriteZero,
    ] {
        assert!(!f.to_string().is_empty());
    }
}
