//! The versioned envelope: one byte [`WIRE_VERSION`], then the postcard encoding of a
//! [`Message`].
//!
//! Contract: [`decode`] is pure over `&[u8]`. For any input it returns a [`Message`]
//! that passed [`Validate`] or a typed [`WireError`]; it never panics, refuses input
//! longer than `max` before decoding, and allocates only for data actually present in
//! the input (collections are bounded while decoding, see [`crate::limits`]).
//! [`encode`] validates first and never produces more than `max` bytes, so whatever it
//! returns the peer's `decode` with the same `max` accepts. Both ends of every
//! transport (MQTT payloads, [`crate::frame`] streams, the mesh) use these two functions.
//! [`DesiredState::signed_bytes`] defines what the master signs.

use alloc::vec;
use alloc::vec::Vec;

use postcard::ser_flavors::Flavor;

use crate::error::WireError;
use crate::types::{DesiredState, Message};
use crate::validate::Validate;

/// The envelope version this crate writes and the only one it reads. Any change to the
/// encoding of [`Message`] bumps it; an older peer then refuses frames with
/// [`WireError::BadVersion`] instead of misreading them.
///
/// History: 1, the first; 2, [`DesiredState::expires_ms`] (signed, see
/// [`DESIRED_SIGNING_CONTEXT`]) and the [`crate::RecordKind::DesiredExpired`] record.
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
/// Checks, in order: `bytes.len() <= max`, a version byte equal to [`WIRE_VERSION`],
/// the postcard body, that no bytes follow it, and [`Validate`].
pub fn decode(bytes: &[u8], max: usize) -> Result<Message, WireError> {
    if bytes.len() > max {
        return Err(WireError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    let (&version, body) = bytes.split_first().ok_or(WireError::Empty)?;
    if version != WIRE_VERSION {
        return Err(WireError::BadVersion(version));
    }
    let (msg, rest) = postcard::take_from_bytes::<Message>(body).map_err(WireError::Decode)?;
    if !rest.is_empty() {
        return Err(WireError::TrailingBytes);
    }
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
