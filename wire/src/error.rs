//! The crate's one error type.
//!
//! Contract: every fallible function of `hedge-wire` except the framing (which adds
//! I/O errors in [`crate::frame::FrameError`]) returns [`WireError`]. It is plain data
//! (`Clone`, `PartialEq`), allocates nothing, and implements `std::error::Error` when
//! the `std` feature is on. Display texts are lower-case phrases meant to follow
//! "refused frame: ".

use core::fmt;

use crate::types::NameError;

/// Why a message could not be encoded, decoded or validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The encoded message (version byte included) is `len` bytes, more than `max`.
    TooLarge {
        /// Length of the envelope.
        len: usize,
        /// The limit it exceeded.
        max: usize,
    },
    /// No bytes at all: not even a version byte.
    Empty,
    /// The envelope's first byte is neither [`crate::codec::WIRE_VERSION`] nor
    /// [`crate::compact::COMPACT_UP_VERSION`].
    BadVersion(u8),
    /// postcard could not decode the body: short input, bad varint, bad UTF-8, unknown
    /// enum tag, a name that is not a valid [`crate::types::Name`], or a collection
    /// longer than its [`crate::limits`] bound (the last two are reported as
    /// `SerdeDeCustom`, because postcard drops custom error messages).
    Decode(postcard::Error),
    /// postcard could not encode the message (never expected for these types).
    Encode(postcard::Error),
    /// The body decoded but bytes were left after it.
    TrailingBytes,
    /// A compact batch ([`crate::compact`]) broke a rule of its encoding; the text names
    /// it.
    Compact(&'static str),
    /// A decoded or to-be-encoded message broke a rule of [`crate::validate`]; the text
    /// names the rule.
    Invalid(&'static str),
    /// A name was refused.
    Name(NameError),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::TooLarge { len, max } => {
                write!(f, "message is {len} bytes, more than the limit of {max}")
            }
            WireError::Empty => f.write_str("message is empty"),
            WireError::BadVersion(v) => write!(
                f,
                "wire version {v} is not a supported version ({} or {})",
                crate::codec::WIRE_VERSION,
                crate::compact::COMPACT_UP_VERSION
            ),
            WireError::Decode(e) => write!(f, "cannot decode message: {e}"),
            WireError::Encode(e) => write!(f, "cannot encode message: {e}"),
            WireError::TrailingBytes => f.write_str("bytes left over after the message"),
            WireError::Compact(what) => write!(f, "malformed compact batch: {what}"),
            WireError::Invalid(what) => write!(f, "invalid message: {what}"),
            WireError::Name(e) => write!(f, "invalid name: {e}"),
        }
    }
}

impl From<NameError> for WireError {
    fn from(e: NameError) -> Self {
        WireError::Name(e)
    }
}

#[cfg(feature = "std")]
impl std::error::Error for WireError {}
