//! The versioned envelope: one version byte, then the body. Version [`WIRE_VERSION`]:
//! the postcard encoding of a [`Message`]; version [`COMPACT_UP_VERSION`]: an [`Up`]
//! batch in the compact encoding of [`crate::compact`].
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
#[cfg(doc)]
use crate::types::Up;
use crate::types::{DesiredState, Message};
use crate::validate::Validate;

/// The envelope version [`encode`] writes. Any change to the encoding of [`Message`]
/// bumps it; an older peer then refuses frames with [`WireError::BadVersion`] instead of
/// misreading them. [`decode`] reads it and [`COMPACT_UP_VERSION`].
///
/// History: 1, the first; 2, [`DesiredState::expires_ms`] (signed, see
/// [`DESIRED_SIGNING_CONTEXT`]) and the [`crate::RecordKind::DesiredExpired`] record;
/// 3 ([`COMPACT_UP_VERSION`]), the compact [`Up`] batch, beside 2: acks and desired
/// states stay version 2, so a version-2 node still reads everything a master sends,
/// and a master reads both kinds of batch (a version-2 master refuses a compact batch:
/// upgrade masters first).
pub const WIRE_VERSION: u8 = 2;

/// Domain separation prefix of [`DesiredState::signed_bytes`]; its version follows the
/// signed fields, so a signature over a version-1 state never verifies as a version-2 one.
pub const DESIRED_SIGNING_CONTEXT: &[u8] = b"hedge-desired-v2";

/// A postcard output that keeps at most `max` bytes but counts them all, so an
/// oversized message costs no more than `max` bytes of memory and still reports its
/// true length.
struct Capped {
    buf: Vec<u8>,
    len: usize,
    max: usize,
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
/// Checks, in order: `bytes.len() <= max`, a version byte of [`WIRE_VERSION`] or
/// [`COMPACT_UP_VERSION`], the body in that version's encoding, that no bytes follow it,
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
        WIRE_VERSION => {
            let (msg, rest) =
                postcard::take_from_bytes::<Message>(body).map_err(WireError::Decode)?;
            if !rest.is_empty() {
                return Err(WireError::TrailingBytes);
            }
            msg
        }
        COMPACT_UP_VERSION => Message::Up(decode_up(body)?),
        _ => return Err(WireError::BadVersion(version)),
    };
    msg.validate()?;
    Ok(msg)
}

impl DesiredState {
    /// The canonical bytes the master signs and a node verifies:
    /// [`DESIRED_SIGNING_CONTEXT`] followed by the postcard encoding of the tuple
    /// `(node, generation, expires_ms, instances)`. The signature itself is not included.
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
        );
        // Appending to a `Vec` cannot fail and every type here serializes with a known
        // length, so postcard has no error to report. Were it to fail anyway, panicking
        // is the only safe answer: returning the bare context would make all states
        // sign alike.
        postcard::to_extend(&fields, Vec::from(DESIRED_SIGNING_CONTEXT))
            .expect("postcard cannot fail to serialize a DesiredState into a Vec")
    }
}
