//! The peer protocol of the mesh: what nodes of a swarm say to each other, and the signed
//! values that cross relays.
//!
//! Contract:
//! - A peer frame is [`MESH_VERSION`] followed by the postcard encoding of one
//!   [`PeerMessage`]; a beacon is [`MESH_VERSION`] followed by one [`Beacon`].
//!   [`encode_peer`] / [`decode_peer`] and [`encode_beacon`] / [`decode_beacon`] are the
//!   only ways in and out: decoding is pure over `&[u8]`, bounded like
//!   [`crate::codec::decode`] (every collection by a [`crate::limits`] or a constant
//!   here, byte strings by their own bound), validates, and never panics.
//! - Nothing here is trusted for being well formed. Who said it is proved by signatures
//!   the crates with keys check over the `signed_bytes` below, each with its own
//!   domain-separation context, so a signature made for one purpose never verifies for
//!   another:
//!   - [`SignedBatch`]: a node's own batch (an encoded [`Message::Up`] frame), signed
//!     with the node's TLS key (ECDSA P-256, SHA-256, fixed 64-byte `r || s`) over
//!     [`ORIGIN_SIGNING_CONTEXT`] `||` the frame. A relay stores a peer's batch whole as
//!     one [`RecordKind::Relayed`] record of its own outbox, so batches nest, one level
//!     per hop, at most [`MAX_RELAY_DEPTH`].
//!   - [`SignedAck`]: the master's acknowledgement of a node's records, signed with the
//!     master's ed25519 desired-state key.
//!   - [`SignedParams`]: an instance's connection parameters, signed by the node that
//!     runs it, with that node's certificate attached.
//! - A [`Beacon`] and a [`Hello`] are hints: a peer's identity is the certificate of its
//!   mutual-TLS session, never what it claims here.
//!
//! Added with the mesh; the node ⇄ master envelope ([`crate::codec`]) stays at its version:
//! [`Message::Fetch`] and [`Message::Carried`] are appended variants, which a node that
//! predates them never receives (they travel only on topics it does not use).

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::codec::{decode, whole, Capped};
use crate::error::WireError;
use crate::types::{DesiredState, Message, Name, Up};
use crate::validate::Validate;

/// The first byte of every peer frame and beacon. 2: desired states carry backups and
/// restores (wire version 5); a version-1 peer's frames are refused, not misread.
pub const MESH_VERSION: u8 = 2;
/// Domain separation of [`SignedBatch::signed_bytes`].
pub const ORIGIN_SIGNING_CONTEXT: &[u8] = b"hedge-origin-v1";
/// Domain separation of [`SignedAck::signed_bytes`].
pub const ACK_SIGNING_CONTEXT: &[u8] = b"hedge-ack-v1";
/// Domain separation of [`SignedParams::signed_bytes`].
pub const PARAMS_SIGNING_CONTEXT: &[u8] = b"hedge-params-v1";
/// The deepest nesting of relayed batches the master unwraps (hops between a node and
/// the node that reaches the broker).
pub const MAX_RELAY_DEPTH: usize = 8;
/// [`Hello::hops`] and [`Beacon::hops`] of a node with no path to the master.
pub const NO_PATH: u8 = u8::MAX;
/// [`Hello::hops`] and [`Beacon::hops`] of a ferry (a data mule: a node that moves
/// between sites) with no path of its own right now: it takes custody from peers that
/// have no path either and carries their records until it finds one. Nodes without a
/// path hand their batches to a ferry; a ferry never hands custody to another node
/// without a path, so nothing goes round in circles.
pub const FERRY: u8 = NO_PATH - 1;
/// Most entries of [`Hello::desired`].
pub const MAX_CARRIED: usize = 64;
/// Most bytes of a certificate in [`SignedParams::cert`].
pub const MAX_CERT: usize = 4096;
/// Most bytes of a signature (an ed25519 one and a fixed ECDSA P-256 one are 64).
pub const MAX_SIGNATURE: usize = 72;
/// Most bytes of [`SignedBatch::bytes`]: the largest frame a link carries.
pub const MAX_BATCH_BYTES: usize = crate::limits::DEFAULT_MAX_FRAME;
/// Most bytes one wrapping (a relay storing a batch as a record and sending it in a batch
/// of its own) adds. A node on a mesh path makes its batches at most
/// `max_frame - MAX_RELAY_DEPTH * RELAY_OVERHEAD` bytes, so they still fit after the
/// deepest nesting.
pub const RELAY_OVERHEAD: usize = 256;

/// A node's own batch, signed by it (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedBatch {
    /// One encoded [`Message::Up`] frame (any version [`crate::codec::decode`] reads).
    #[serde(deserialize_with = "batch_bytes")]
    pub bytes: Vec<u8>,
    /// The signer's signature over [`SignedBatch::signed_bytes`].
    #[serde(deserialize_with = "signature")]
    pub signature: Vec<u8>,
}

impl SignedBatch {
    /// What the signature covers: [`ORIGIN_SIGNING_CONTEXT`] then the frame.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ORIGIN_SIGNING_CONTEXT.len() + self.bytes.len());
        out.extend_from_slice(ORIGIN_SIGNING_CONTEXT);
        out.extend_from_slice(&self.bytes);
        out
    }

    /// The batch the frame holds (decoded and validated; `max` bounds the frame). Says
    /// nothing about the signature.
    pub fn up(&self, max: usize) -> Result<Up, WireError> {
        match decode(&self.bytes, max)? {
            Message::Up(up) => Ok(up),
            _ => Err(WireError::Invalid("a signed batch holds no batch")),
        }
    }
}

/// The master has stored every record of `node`'s life `epoch` up to `upto`: an
/// [`crate::Ack`] that can travel through relays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedAck {
    /// Whose records.
    pub node: Name,
    /// Which life of that node.
    pub epoch: u64,
    /// Highest stored sequence number.
    pub upto: u64,
    /// The master's ed25519 signature over [`SignedAck::signed_bytes`].
    #[serde(deserialize_with = "signature")]
    pub signature: Vec<u8>,
}

impl SignedAck {
    /// What the signature covers: [`ACK_SIGNING_CONTEXT`] then postcard of
    /// `(node, epoch, upto)`.
    pub fn signed_bytes(&self) -> Vec<u8> {
        signed(ACK_SIGNING_CONTEXT, &(&self.node, self.epoch, self.upto))
    }
}

/// Connection parameters of an instance, signed by the node that runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedParams {
    /// The publishing node (its certificate's CN).
    pub node: Name,
    /// The instance on that node.
    pub instance: Name,
    /// The publisher's clock when it published, ms since the Unix epoch: of two values
    /// for the same instance, the higher generation wins.
    pub generation: u64,
    /// The published values.
    #[serde(deserialize_with = "crate::bounded::parameters")]
    pub parameters: BTreeMap<String, String>,
    /// The publisher's certificate (DER), chained to the fleet CA.
    #[serde(deserialize_with = "cert")]
    pub cert: Vec<u8>,
    /// Signature with the certificate's key over [`SignedParams::signed_bytes`].
    #[serde(deserialize_with = "signature")]
    pub signature: Vec<u8>,
}

impl SignedParams {
    /// What the signature covers: [`PARAMS_SIGNING_CONTEXT`] then postcard of
    /// `(node, instance, generation, parameters)` (not the certificate: the signature
    /// must verify under it).
    pub fn signed_bytes(&self) -> Vec<u8> {
        signed(
            PARAMS_SIGNING_CONTEXT,
            &(
                &self.node,
                &self.instance,
                self.generation,
                &self.parameters,
            ),
        )
    }
}

/// The first message each side of a peer session sends, and again when it changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Who the sender says it is (checked against its certificate).
    pub node: Name,
    /// Its hops to the master: 0 when it reaches the broker itself, [`NO_PATH`] for none,
    /// [`FERRY`] for a ferry without a path.
    pub hops: u8,
    /// Records waiting in its outbox.
    pub outbox: u64,
    /// The newest desired-state generation it holds for each node it knows of.
    #[serde(deserialize_with = "carried")]
    pub desired: Vec<(Name, u64)>,
}

/// A UDP multicast announcement: "a node is here". A hint for dialing, never trusted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Beacon {
    /// Who the sender says it is.
    pub node: Name,
    /// The TCP port its peer listener accepts on (same address as the beacon's).
    pub port: u16,
    /// Its hops to the master, as in [`Hello::hops`].
    pub hops: u8,
    /// Records waiting in its outbox.
    pub outbox: u64,
}

/// Why a relay did not take custody of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CustodyRefusal {
    /// It holds as much as it may for this origin (or in all) and the batch would not
    /// displace anything of lower priority.
    Full,
    /// The signature does not verify under the sender's certificate.
    BadSignature,
    /// The batch nests deeper than [`MAX_RELAY_DEPTH`], or would after this hop.
    TooDeep,
    /// The bytes are not a valid batch.
    Malformed,
    /// The batch is not the sender's own (its node is not the session's peer).
    NotYours,
}

/// Everything that travels on a peer session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMessage {
    /// Who is here and what it has.
    Hello(Hello),
    /// The sender's own batch: take custody of it.
    Batch(SignedBatch),
    /// The batch of `origin` with these `covers` is stored durably by the receiver of it.
    Custody {
        /// The batch's node (the session's peer).
        origin: Name,
        /// The batch's epoch.
        epoch: u64,
        /// The batch's `covers`.
        covers: Option<(u64, u64)>,
    },
    /// The batch of `origin` with these `covers` was not taken, and why.
    Refused {
        /// The batch's node.
        origin: Name,
        /// The batch's epoch.
        epoch: u64,
        /// The batch's `covers`.
        covers: Option<(u64, u64)>,
        /// Why.
        reason: CustodyRefusal,
    },
    /// A master's acknowledgement travelling down toward its node.
    Ack(SignedAck),
    /// A master-signed desired state travelling toward its node; newest generation wins.
    Desired(DesiredState),
    /// An instance's connection parameters, for peers' instances that reference them.
    Params(SignedParams),
}

/// Validates `m` and encodes it as a peer frame of at most `max` bytes.
pub fn encode_peer(m: &PeerMessage, max: usize) -> Result<Vec<u8>, WireError> {
    m.validate()?;
    encode_versioned(m, max)
}

/// Decodes and validates one peer frame that must fill `b` exactly (at most `max` bytes).
pub fn decode_peer(b: &[u8], max: usize) -> Result<PeerMessage, WireError> {
    let m: PeerMessage = decode_versioned(b, max)?;
    m.validate()?;
    Ok(m)
}

/// Most bytes of a beacon.
pub const MAX_BEACON: usize = 128;

/// Encodes a beacon.
pub fn encode_beacon(b: &Beacon) -> Result<Vec<u8>, WireError> {
    encode_versioned(b, MAX_BEACON)
}

/// Decodes a beacon that must fill `b` exactly.
pub fn decode_beacon(b: &[u8]) -> Result<Beacon, WireError> {
    decode_versioned(b, MAX_BEACON)
}

fn encode_versioned<T: Serialize>(v: &T, max: usize) -> Result<Vec<u8>, WireError> {
    let start = Capped {
        buf: vec![MESH_VERSION],
        len: 1,
        max,
    };
    let (buf, len) = postcard::serialize_with_flavor(v, start).map_err(WireError::Encode)?;
    if len > max {
        return Err(WireError::TooLarge { len, max });
    }
    Ok(buf)
}

fn decode_versioned<T: serde::de::DeserializeOwned>(b: &[u8], max: usize) -> Result<T, WireError> {
    if b.len() > max {
        return Err(WireError::TooLarge { len: b.len(), max });
    }
    let (&version, body) = b.split_first().ok_or(WireError::Empty)?;
    if version != MESH_VERSION {
        return Err(WireError::BadVersion(version));
    }
    whole(body)
}

/// `context` followed by the postcard encoding of `fields`.
fn signed<T: Serialize>(context: &[u8], fields: &T) -> Vec<u8> {
    let mut out = Vec::from(context);
    // Appending to a `Vec` cannot fail and these types serialize with known lengths.
    if let Ok(v) = postcard::to_extend(fields, out.clone()) {
        out = v;
    }
    out
}

impl Validate for SignedBatch {
    fn validate(&self) -> Result<(), WireError> {
        check(!self.bytes.is_empty(), "an empty signed batch")?;
        check(
            self.bytes.len() <= MAX_BATCH_BYTES,
            "a signed batch too large",
        )?;
        check(
            self.signature.len() <= MAX_SIGNATURE,
            "a signature too long",
        )
    }
}

impl Validate for SignedAck {
    fn validate(&self) -> Result<(), WireError> {
        check(self.epoch != 0, "epoch 0 is reserved")?;
        check(
            self.signature.len() <= MAX_SIGNATURE,
            "a signature too long",
        )
    }
}

impl Validate for SignedParams {
    fn validate(&self) -> Result<(), WireError> {
        check(self.cert.len() <= MAX_CERT, "a certificate too long")?;
        check(
            self.signature.len() <= MAX_SIGNATURE,
            "a signature too long",
        )?;
        crate::validate::parameters(&self.parameters)
    }
}

impl Validate for PeerMessage {
    fn validate(&self) -> Result<(), WireError> {
        match self {
            PeerMessage::Hello(h) => check(h.desired.len() <= MAX_CARRIED, "too many nodes"),
            PeerMessage::Batch(b) => b.validate(),
            PeerMessage::Custody { covers, .. } | PeerMessage::Refused { covers, .. } => {
                check(covers.is_none_or(|(f, t)| f <= t), "covered range is empty")
            }
            PeerMessage::Ack(a) => a.validate(),
            PeerMessage::Desired(d) => d.validate(),
            PeerMessage::Params(p) => p.validate(),
        }
    }
}

fn check(ok: bool, rule: &'static str) -> Result<(), WireError> {
    if ok {
        Ok(())
    } else {
        Err(WireError::Invalid(rule))
    }
}

fn batch_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    crate::bounded::bytes(d, MAX_BATCH_BYTES)
}

fn signature<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    crate::bounded::bytes(d, MAX_SIGNATURE)
}

fn cert<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    crate::bounded::bytes(d, MAX_CERT)
}

fn carried<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<(Name, u64)>, D::Error> {
    crate::bounded::seq(d, MAX_CARRIED, "carried nodes")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::types::{Record, RecordKind};

    fn name(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    fn batch() -> SignedBatch {
        let up = Up {
            node: name("c"),
            records: vec![Record {
                seq: 1,
                time_ms: 5,
                kind: RecordKind::DesiredExpired {
                    generation: 1,
                    expires_ms: 2,
                    judged_at_ms: 3,
                },
            }],
            covers: Some((1, 1)),
            epoch: 9,
        };
        SignedBatch {
            bytes: crate::encode_up(&up, 4096).unwrap(),
            signature: vec![7; 64],
        }
    }

    #[test]
    fn every_peer_message_round_trips() {
        let msgs = [
            PeerMessage::Hello(Hello {
                node: name("a"),
                hops: 2,
                outbox: 10,
                desired: vec![(name("b"), 4)],
            }),
            PeerMessage::Batch(batch()),
            PeerMessage::Custody {
                origin: name("c"),
                epoch: 9,
                covers: Some((1, 1)),
            },
            PeerMessage::Refused {
                origin: name("c"),
                epoch: 9,
                covers: None,
                reason: CustodyRefusal::Full,
            },
            PeerMessage::Ack(SignedAck {
                node: name("c"),
                epoch: 9,
                upto: 1,
                signature: vec![1; 64],
            }),
            PeerMessage::Params(SignedParams {
                node: name("b"),
                instance: name("db"),
                generation: 3,
                parameters: [("port".into(), "5432".into())].into(),
                cert: vec![0x30; 300],
                signature: vec![2; 64],
            }),
        ];
        for m in msgs {
            let bytes = encode_peer(&m, 4096).unwrap();
            assert_eq!(bytes[0], MESH_VERSION);
            assert_eq!(decode_peer(&bytes, 4096).unwrap(), m);
        }
    }

    #[test]
    fn a_signed_batch_yields_its_batch() {
        let b = batch();
        let up = b.up(4096).unwrap();
        assert_eq!(up.node, name("c"));
        assert!(b.signed_bytes().starts_with(ORIGIN_SIGNING_CONTEXT));
        let not_up = SignedBatch {
            bytes: crate::encode(&Message::Ack(crate::Ack { upto: 1, epoch: 1 }), 64).unwrap(),
            signature: vec![],
        };
        assert!(matches!(not_up.up(4096), Err(WireError::Invalid(_))));
    }

    #[test]
    fn signed_bytes_differ_by_purpose_and_by_field() {
        let a = SignedAck {
            node: name("c"),
            epoch: 9,
            upto: 1,
            signature: vec![],
        };
        let mut b = a.clone();
        b.upto = 2;
        assert_ne!(a.signed_bytes(), b.signed_bytes());
        assert!(a.signed_bytes().starts_with(ACK_SIGNING_CONTEXT));
        let mut c = a.clone();
        c.signature = vec![1; 64];
        assert_eq!(
            a.signed_bytes(),
            c.signed_bytes(),
            "the signature is not signed"
        );
    }

    #[test]
    fn hostile_frames_are_refused_with_a_typed_error() {
        assert_eq!(decode_peer(&[], 64), Err(WireError::Empty));
        assert_eq!(decode_peer(&[9, 0], 64), Err(WireError::BadVersion(9)));
        assert!(matches!(
            decode_peer(&[MESH_VERSION, 200], 64),
            Err(WireError::Decode(_))
        ));
        // A claimed signature length past the bound fails before any allocation.
        let mut long = encode_peer(&PeerMessage::Batch(batch()), 4096).unwrap();
        let sig_len_at = long.len() - 65;
        long[sig_len_at] = 100;
        assert!(decode_peer(&long, 4096).is_err());
        // An empty covered range, and an oversized frame.
        let bad = PeerMessage::Custody {
            origin: name("c"),
            epoch: 1,
            covers: Some((5, 4)),
        };
        assert!(matches!(encode_peer(&bad, 64), Err(WireError::Invalid(_))));
        let big = encode_peer(&PeerMessage::Batch(batch()), 4096).unwrap();
        assert!(matches!(
            decode_peer(&big, 16),
            Err(WireError::TooLarge { .. })
        ));
        for cut in 0..big.len() {
            assert!(decode_peer(&big[..cut], 4096).is_err());
        }
    }

    #[test]
    fn a_beacon_round_trips_and_stays_small() {
        let b = Beacon {
            node: name(&"n".repeat(64)),
            port: 7441,
            hops: NO_PATH,
            outbox: u64::MAX,
        };
        let bytes = encode_beacon(&b).unwrap();
        assert!(bytes.len() <= MAX_BEACON);
        assert_eq!(decode_beacon(&bytes).unwrap(), b);
        assert!(decode_beacon(&bytes[..bytes.len() - 1]).is_err());
    }
}
