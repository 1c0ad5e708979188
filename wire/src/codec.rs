//! The versioned envelope: one version byte, then the body. Version [`WIRE_VERSION`]:
//! the postcard encoding of a [`Message`]; version [`COMPACT_UP_VERSION`]: an [`Up`]
//! batch in the compact encoding of [`crate::compact`]; version [`LEGACY_VERSION`]: the
//! batches and acks of nodes and masters not yet upgraded.
//!
//! Contract: [`decode`] is pure over `&[u8]`. For any input it returns a [`Message`]
//! that passed [`Validate`] or a typed [`WireError`]; it never panics, refuses input
//! longer than `max` before decoding, and allocates only for data actually present in
//! the input (collections are bounded while decoding, see [`crate::limits`]).
//! [`encode`] validates first and never produces more than `max` bytes, so whatever it
//! returns the peer's `decode` with the same `max` accepts. Both ends of every
//! transport (MQTT payloads, [`crate::frame`] streams, the mesh) use these two functions;
//! a node sends its batches with [`crate::compact::encode_up`] instead, which `decode`
//! reads too.
//! [`DesiredState::signed_bytes`] defines what the master signs.

use alloc::vec;
use alloc::vec::Vec;

use postcard::ser_flavors::Flavor;

use crate::compact::{decode_up, COMPACT_UP_VERSION};
use crate::error::WireError;
use crate::types::{Ack, DesiredState, DesiredStateV2, DesiredStateV4, Message, Name, Up};
use crate::validate::Validate;

/// The envelope version [`encode`] writes. Any change to the encoding of [`Message`]
/// bumps it; an older peer then refuses frames with [`WireError::BadVersion`] instead of
/// misreading them. [`decode`] reads it, [`COMPACT_UP_VERSION`] and [`LEGACY_VERSION`].
///
/// History: 1, the first; 2, [`DesiredState::expires_ms`] (signed, see
/// [`DESIRED_SIGNING_CONTEXT`]) and the [`crate::RecordKind::DesiredExpired`] record;
/// 3 ([`COMPACT_UP_VERSION`]), the compact [`Up`] batch, beside 2; 4, the desired
/// state's [`DesiredState::terms`] and [`DesiredState::imports`] (signed) and the
/// [`crate::RecordKind::Fence`] record, which compact batches may carry too. Rollout:
/// masters first. A version-4 master reads version-2 and version-3 batches of nodes not
/// yet upgraded; its desired states are version 4, which such a node refuses (it keeps
/// running the state it has) until it is upgraded. 5, the desired state's
/// [`DesiredState::backups`] and [`DesiredState::restores`] (signed) and the
/// [`crate::RecordKind::Backup`] record; a version-5 master reads version-4 batches,
/// acks, fetches and carried acks ([`PREVIOUS_VERSION`]), and a version-5 node refuses a
/// version-4 desired state the same way.
pub const WIRE_VERSION: u8 = 5;

/// The envelope version before [`WIRE_VERSION`]: [`decode`] still reads everything in it
/// but a desired state, which it refuses ([`WireError::Invalid`]): its signature covers
/// version-4 bytes.
pub const PREVIOUS_VERSION: u8 = 4;

/// The previous envelope version: [`decode`] still reads its batches and acks. A
/// version-2 desired state is refused ([`WireError::Invalid`]): its signature covers
/// other bytes than [`DesiredState::signed_bytes`], so it could never be applied.
pub const LEGACY_VERSION: u8 = 2;

/// Domain separation prefix of [`DesiredState::signed_bytes`]; its version follows the
/// signed fields, so a signature over an older state never verifies as a version-4 one.
pub const DESIRED_SIGNING_CONTEXT: &[u8] = b"hedge-desired-v5";

/// [`Message`] as version 2 encoded it: only its desired state differs.
#[derive(serde::Deserialize)]
enum LegacyMessage {
    // Decoded whole (postcard has no way to skip a value), then refused unread.
    #[allow(dead_code)]
    Desired(DesiredStateV2),
    Up(Up),
    Ack(Ack),
}

/// [`Message`] as version 4 encoded it: only its desired state differs.
#[derive(serde::Deserialize)]
enum PreviousMessage {
    // Decoded whole, then refused unread, as in `LegacyMessage`.
    #[allow(dead_code)]
    Desired(DesiredStateV4),
    Up(Up),
    Ack(Ack),
    Fetch(#[serde(deserialize_with = "crate::bounded::fetch")] Vec<Name>),
    Carried(crate::mesh::SignedAck),
}

/// A postcard output that keeps at most `max` bytes but counts them all, so an
/// oversized message costs no more than `max` bytes of memory and still reports its
/// true length.
pub(crate) struct Capped {
    pub(crate) buf: Vec<u8>,
    pub(crate) len: usize,
    pub(crate) max: usize,
}

impl Flavor for Capped {
    type Output = (Vec<u8>, usize);

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        let room = self.max.saturating_sub(self.len);
        let keep = data.len().min(room);
        self.buf.extend_from_slice(&data[..keep]);
        self.len = self.len.saturating_add(data.len());
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.try_extend(&[data])
    }

    fn finalize(self) -> postcard::Result<Self::Output> {
        Ok((self.buf, self.len))
    }
}

/// Validates `msg` and encodes it in the envelope.
///
/// Fails with [`WireError::Invalid`] (or [`WireError::Name`]) if the message breaks a
/// rule of [`crate::validate`], and with [`WireError::TooLarge`] if the envelope would be
/// longer than `max`; in that case at most `max` bytes were buffered.
pub fn encode(msg: &Message, max: usize) -> Result<Vec<u8>, WireError> {
    msg.validate()?;
    let start = Capped {
        buf: vec![WIRE_VERSION],
        len: 1,
        max,
    };
    let (buf, len) = postcard::serialize_with_flavor(msg, start).map_err(WireError::Encode)?;
    if len > max {
        return Err(WireError::TooLarge { len, max });
    }
    Ok(buf)
}

/// Decodes and validates one envelope that must fill `bytes` exactly.
///
/// Checks, in order: `bytes.len() <= max`, a version byte of [`WIRE_VERSION`],
/// [`PREVIOUS_VERSION`], [`LEGACY_VERSION`] or [`COMPACT_UP_VERSION`], the body in that version's encoding, that no bytes follow it,
/// and [`Validate`].
pub fn decode(bytes: &[u8], max: usize) -> Result<Message, WireError> {
    if bytes.len() > max {
        return Err(WireError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    let (&version, body) = bytes.split_first().ok_or(WireError::Empty)?;
    let msg = match version {
        WIRE_VERSION => whole::<Message>(body)?,
        PREVIOUS_VERSION => match whole::<PreviousMessage>(body)? {
            PreviousMessage::Desired(_) => {
                return Err(WireError::Invalid(
                    "a version-4 desired state (its signature covers version-4 bytes)",
                ))
            }
            PreviousMessage::Up(up) => Message::Up(up),
            PreviousMessage::Ack(ack) => Message::Ack(ack),
            PreviousMessage::Fetch(nodes) => Message::Fetch(nodes),
            PreviousMessage::Carried(ack) => Message::Carried(ack),
        },
        LEGACY_VERSION => match whole::<LegacyMessage>(body)? {
            LegacyMessage::Desired(_) => {
                return Err(WireError::Invalid(
                    "a version-2 desired state (its signature covers version-2 bytes)",
                ))
            }
            LegacyMessage::Up(up) => Message::Up(up),
            LegacyMessage::Ack(ack) => Message::Ack(ack),
        },
        COMPACT_UP_VERSION => Message::Up(decode_up(body)?),
        _ => return Err(WireError::BadVersion(version)),
    };
    msg.validate()?;
    Ok(msg)
}

/// The postcard value that fills `body` exactly.
pub(crate) fn whole<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, WireError> {
    let (v, rest) = postcard::take_from_bytes::<T>(body).map_err(WireError::Decode)?;
    if rest.is_empty() {
        Ok(v)
    } else {
        Err(WireError::TrailingBytes)
    }
}

impl DesiredState {
    /// The canonical bytes the master signs and a node verifies:
    /// [`DESIRED_SIGNING_CONTEXT`] followed by the postcard encoding of the tuple
    /// `(node, generation, expires_ms, instances, terms, imports, backups, restores)`.
    /// The signature itself is not included.
    ///
    /// postcard is deterministic for these types (maps are ordered `BTreeMap`s), so the
    /// bytes depend only on the value, not on how it was decoded.
    ///
    /// # Panics
    ///
    /// Never in practice: postcard cannot fail on these types (see the body).
    pub fn signed_bytes(&self) -> Vec<u8> {
        let fields = (
            &self.node,
            self.generation,
            self.expires_ms,
            &self.instances,
            &self.terms,
            &self.imports,
            &self.backups,
            &self.restores,
        );
        // Appending to a `Vec` cannot fail and every type here serializes with a known
        // length, so postcard has no error to report. Were it to fail anyway, panicking
        // is the only safe answer: returning the bare context would make all states
        // sign alike.
        postcard::to_extend(&fields, Vec::from(DESIRED_SIGNING_CONTEXT))
            .expect("postcard cannot fail to serialize a DesiredState into a Vec")
    }
}
