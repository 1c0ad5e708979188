//! Property tests: every valid message survives encode/decode and
//! write_frame/read_frame unchanged, whatever the read and write chunking.
#![allow(clippy::unwrap_used)]

mod common;

use common::{message_strategy, Chunked, Sink};
use hedge_wire::*;
use proptest::prelude::*;

#[test]
fn software_specs() {
    let h = "ab".repeat(32);
    let one: SoftwareRelease = format!("sha256:{h}").parse().unwrap();
    assert_eq!(
        one,
        SoftwareRelease::Artifact {
            variants: vec![ArtifactVariant {
                target: "*".into(),
                sha256: [0xab; 32]
            }],
            entry: String::new()
        }
    );
    assert_eq!(
        one.artifact_for("x86_64-unknown-linux-gnu"),
        Some([0xab; 32])
    );
    let two: SoftwareRelease = format!(
        "artifact:*=sha256:{h},aarch64-unknown-linux-gnu=sha256:{}/bin/app",
        "cd".repeat(32)
    )
    .parse()
    .unwrap();
    assert_eq!(
        two.artifact_for("aarch64-unknown-linux-gnu"),
        Some([0xcd; 32])
    );
    assert_eq!(
        two.artifact_for("armv7-unknown-linux-gnueabihf"),
        Some([0xab; 32])
    );
    let only: SoftwareRelease = format!("artifact:aarch64-unknown-linux-gnu=sha256:{h}/a")
        .parse()
        .unwrap();
    assert_eq!(only.artifact_for("x86_64-unknown-linux-gnu"), None);
    assert_eq!(
        SoftwareRelease::Exec("/bin/sh".into()).artifact_for("x"),
        None
    );
    for bad in [
        "sha256:".to_string(),
        format!("sha256:{}", "AB".repeat(32)),
        format!("sha256:{h}0"),
        format!("artifact:*=sha256:{h}"),
        format!("artifact:Bad=sha256:{h}/a"),
        format!("artifact:*={h}/a"),
        "docker:nginx".into(),
        "exec:".into(),
    ] {
        assert!(bad.parse::<SoftwareRelease>().is_err(), "{bad}");
    }
}

proptest! {
    #![proptest_config(common::cases(256))]

    #[test]
    fn codec_roundtrip(msg in message_strategy()) {
        let bytes = encode(&msg, DEFAULT_MAX_FRAME).unwrap();
        prop_assert_eq!(bytes[0], WIRE_VERSION);
        prop_assert_eq!(decode(&bytes, DEFAULT_MAX_FRAME).unwrap(), msg.clone());
        // The exact length is enough; one byte less is refused.
        prop_assert_eq!(decode(&bytes, bytes.len()).unwrap(), msg.clone());
        prop_assert_eq!(
            encode(&msg, bytes.len() - 1),
            Err(WireError::TooLarge { len: bytes.len(), max: bytes.len() - 1 })
        );
        prop_assert_eq!(
            decode(&bytes, bytes.len() - 1),
            Err(WireError::TooLarge { len: bytes.len(), max: bytes.len() - 1 })
        );
    }

    #[test]
    fn software_spec_roundtrip(s in common::software()) {
        let text = s.to_string();
        prop_assert_eq!(text.parse::<SoftwareRelease>().unwrap(), s);
    }

    #[test]
    fn frame_roundtrip(
        msgs in proptest::collection::vec(message_strategy(), 1..4),
        wchunk in 1usize..64,
        rchunk in 1usize..64,
    ) {
        let mut sink = Sink::new(wchunk);
        for m in &msgs {
            write_frame(&mut sink, m, DEFAULT_MAX_FRAME).unwrap();
        }
        prop_assert_eq!(sink.flushes, msgs.len());
        let mut r = Chunked { data: &sink.out, chunk: rchunk };
        let mut buf = vec![0u8; DEFAULT_MAX_FRAME];
        for m in &msgs {
            prop_assert_eq!(&read_frame(&mut r, &mut buf).unwrap(), m);
        }
        prop_assert_eq!(read_frame(&mut r, &mut buf), Err(FrameError::Closed));
    }

    #[test]
    fn signed_bytes_cover_all_but_signature(d in common::desired(), g in any::<u64>(), e in any::<u64>()) {
        let bytes = d.signed_bytes();
        prop_assert!(bytes.starts_with(codec::DESIRED_SIGNING_CONTEXT));
        let mut other = d.clone();
        other.signature = (0..64u8).collect();
        prop_assert_eq!(other.signed_bytes(), bytes.clone());
        other.generation = g;
        prop_assert_eq!(other.signed_bytes() == bytes, g == d.generation);
        let mut other = d.clone();
        other.expires_ms = e;
        prop_assert_eq!(other.signed_bytes() == bytes, e == d.expires_ms);
        // Deterministic through the wire.
        let again = decode(&encode(&Message::Desired(d), DEFAULT_MAX_FRAME).unwrap(), DEFAULT_MAX_FRAME).unwrap();
        match again {
            Message::Desired(d2) => prop_assert_eq!(d2.signed_bytes(), bytes),
            _ => prop_assert!(false, "not a desired state"),
        }
    }
}
