#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use hedge_wire::codec::encode;
use hedge_wire::limits::DEFAULT_MAX_FRAME;
use hedge_wire::mesh::{SignedBatch, MAX_RELAY_DEPTH};
use hedge_wire::{InstanceStatus, Message, Name, Record, RecordKind, Up};
use rcgen::{KeyPair, PublicKeyData};

use super::*;
use crate::origin::tests::sign;
use hedge_uplink::origin::OriginCert;

fn n(s: &str) -> Name {
    Name::new(s).unwrap()
}

/// Real node keys; `verify` checks against them as the master's enrolled keys.
struct Keys(BTreeMap<Name, KeyPair>);

impl Keys {
    fn new(nodes: &[&str]) -> Keys {
        Keys(
            nodes
                .iter()
                .map(|s| (n(s), KeyPair::generate().unwrap()))
                .collect(),
        )
    }

    fn verify(&self, node: &Name, b: &SignedBatch) -> Result<(), RelayRefusal> {
        let key = self.0.get(node).ok_or(RelayRefusal::UnknownNode)?;
        OriginCert::from_spki_der(&key.subject_public_key_info())
            .unwrap()
            .verify_batch(b)
            .map_err(|_| RelayRefusal::BadSignature)
    }

    /// `up` framed and signed by `signer`'s key.
    fn signed(&self, signer: &str, up: &Up) -> SignedBatch {
        let bytes = encode(&Message::Up(up.clone()), DEFAULT_MAX_FRAME).unwrap();
        sign(&self.0[&n(signer)], &bytes)
    }

    fn unwrap(&self, up: &Up) -> Unwrapped {
        unwrap(up, DEFAULT_MAX_FRAME, &|node, b| self.verify(node, b))
    }
}

fn state(seq: u64) -> Record {
    Record {
        seq,
        time_ms: 1_000 + seq,
        kind: RecordKind::InstanceState {
            instance: n("db"),
            status: InstanceStatus::Running,
            pid: Some(7),
            restarts: 0,
            last_exit: None,
        },
    }
}

fn relayed(seq: u64, b: SignedBatch) -> Record {
    Record {
        seq,
        time_ms: 5_000 + seq,
        kind: RecordKind::Relayed(b),
    }
}

fn up(node: &str, records: Vec<Record>) -> Up {
    let to = records.last().map_or(0, |r| r.seq);
    Up {
        node: n(node),
        records,
        covers: Some((1, to)),
        epoch: 9,
    }
}

#[test]
fn nested_batches_unwrap_with_their_path_outer_first() {
    let k = Keys::new(&["a", "b", "c"]);
    // a's own records; b carries a's batch; c (the one with the uplink) carries b's.
    let ua = up("a", vec![state(1), state(2)]);
    let ub = up("b", vec![state(1), relayed(2, k.signed("a", &ua))]);
    let uc = up("c", vec![relayed(1, k.signed("b", &ub)), state(2)]);
    let got = k.unwrap(&uc);
    assert!(got.refused.is_empty(), "{:?}", got.refused);
    let layers: Vec<(String, String, usize)> = got
        .layers
        .iter()
        .map(|l| (l.node.to_string(), path_text(&l.via), l.up.records.len()))
        .collect();
    assert_eq!(
        layers,
        vec![
            ("b".into(), "via c".into(), 2),
            ("a".into(), "via c,b".into(), 2)
        ]
    );
    assert_eq!(
        got.layers[1].up, ua,
        "the origin's batch exactly as it signed it"
    );
    assert_eq!(path_text::<&str>(&[]), "direct");
}

#[test]
fn a_forged_or_altered_layer_is_refused_with_everything_under_it() {
    let k = Keys::new(&["a", "b", "c", "x"]);
    let ua = up("a", vec![state(1)]);
    // b alters a's batch after a signed it.
    let mut altered = k.signed("a", &ua);
    let n_bytes = altered.bytes.len();
    altered.bytes[n_bytes - 2] ^= 1;
    // b signs a batch in x's name with its own key: a relay cannot store for another.
    let in_xs_name = k.signed("b", &up("x", vec![state(1)]));
    // a valid batch of x, nested under a forged layer of b (signed by c in b's name).
    let ux = up("x", vec![state(5)]);
    let forged_b = k.signed("c", &up("b", vec![relayed(1, k.signed("x", &ux))]));
    // And one good layer beside them.
    let good = k.signed("a", &up("a", vec![state(2)]));
    let ub = up(
        "b",
        vec![
            relayed(1, altered),
            relayed(2, in_xs_name),
            relayed(3, good),
        ],
    );
    let uc = up(
        "c",
        vec![relayed(1, k.signed("b", &ub)), relayed(2, forged_b)],
    );
    let got = k.unwrap(&uc);
    let refused: Vec<(&str, u64, Option<&str>, RelayRefusal)> = got
        .refused
        .iter()
        .map(|r| {
            (
                r.by.as_str(),
                r.seq,
                r.origin.as_ref().map(Name::as_str),
                r.reason,
            )
        })
        .collect();
    // The altered frame may still decode (then its signature fails) or not.
    assert!(
        matches!(
            refused[0],
            ("b", 1, Some("a"), RelayRefusal::BadSignature)
                | ("b", 1, None, RelayRefusal::Malformed)
        ),
        "{refused:?}"
    );
    assert_eq!(
        refused[1..],
        [
            ("b", 2, Some("x"), RelayRefusal::BadSignature),
            ("c", 2, Some("b"), RelayRefusal::BadSignature),
        ]
    );
    let nodes: Vec<(&str, u64)> = got
        .layers
        .iter()
        .map(|l| (l.node.as_str(), l.up.records[0].seq))
        .collect();
    assert_eq!(
        nodes,
        [("b", 1), ("a", 2)],
        "x's batch under the forged layer never unwraps"
    );
}

#[test]
fn unknown_nodes_malformed_bytes_and_depth_are_refused() {
    let k = Keys::new(&["a", "r"]);
    let stranger = Keys::new(&["z"]).signed("z", &up("z", vec![state(1)]));
    let garbage = SignedBatch {
        bytes: vec![0xff; 10],
        signature: vec![1; 64],
    };
    let got = k.unwrap(&up("r", vec![relayed(1, stranger), relayed(2, garbage)]));
    assert!(got.layers.is_empty());
    let reasons: Vec<RelayRefusal> = got.refused.iter().map(|r| r.reason).collect();
    assert_eq!(
        reasons,
        [RelayRefusal::UnknownNode, RelayRefusal::Malformed]
    );

    // a's batch wrapped by r, again and again: MAX_RELAY_DEPTH layers unwrap, the next
    // one is refused.
    let mut inner = up("a", vec![state(1)]);
    for _ in 0..=MAX_RELAY_DEPTH {
        let signer = inner.node.to_string();
        inner = up("r", vec![relayed(1, k.signed(&signer, &inner))]);
    }
    let got = k.unwrap(&inner);
    assert_eq!(got.layers.len(), MAX_RELAY_DEPTH);
    assert_eq!(got.refused.len(), 1);
    assert_eq!(got.refused[0].reason, RelayRefusal::TooDeep);
    assert_eq!(got.layers.last().unwrap().via.len(), MAX_RELAY_DEPTH);
}

#[test]
fn a_frame_checks_at_most_max_layers_signatures() {
    let k = Keys::new(&["a", "r"]);
    let one = k.signed("a", &up("a", vec![state(1)]));
    let records: Vec<Record> = (1..=MAX_LAYERS as u64 + 3)
        .map(|s| relayed(s, one.clone()))
        .collect();
    let got = k.unwrap(&up("r", records));
    assert_eq!(got.layers.len(), MAX_LAYERS);
    assert_eq!(got.refused.len(), 3);
    assert!(got
        .refused
        .iter()
        .all(|r| r.reason == RelayRefusal::TooMany));
    // Not a forgery: what `forged_relayed` counts leaves it out.
    assert!(!RelayRefusal::TooMany.forged());
    assert!(RelayRefusal::BadSignature.forged() && RelayRefusal::Revoked.forged());
}

#[test]
fn the_store_keeps_a_summary_not_the_carried_bytes() {
    let k = Keys::new(&["a"]);
    let ua = up("a", (1..=50).map(state).collect());
    let b = k.signed("a", &ua);
    let kind = RecordKind::Relayed(b.clone());
    let stored = stored_kind(&kind, DEFAULT_MAX_FRAME).unwrap();
    let s = read_summary(&stored).unwrap();
    assert_eq!(
        (s.origin, s.epoch, s.covers, s.records, s.bytes as usize),
        (Some(n("a")), 9, Some((1, 50)), 50, b.bytes.len())
    );
    let RecordKind::Relayed(kept) = &stored else {
        panic!()
    };
    assert!(kept.bytes.len() < 80 && kept.bytes.len() * 10 < b.bytes.len());
    // Deterministic: a resent record is a duplicate, not a conflict.
    assert_eq!(stored_kind(&kind, DEFAULT_MAX_FRAME), Some(stored));
    assert_eq!(stored_kind(&state(1).kind, DEFAULT_MAX_FRAME), None);
    // A carried relayed record is never read as a summary.
    assert_eq!(read_summary(&kind), None);
}
