//! Length-prefixed frames over blocking [`embedded_io`] streams (serial lines, TCP,
//! Unix sockets).
//!
//! Contract: a frame is a `u32` big-endian length, then that many bytes of envelope
//! ([`crate::codec`]). [`write_frame`] encodes with the caller's `max`, writes the whole
//! frame and flushes. [`read_frame`] reads exactly one frame into the caller's buffer and
//! decodes it with `max = buf.len()`; it refuses a length larger than the buffer *before*
//! reading the body, so the buffer is the only memory the stream can make it fill.
//! Short reads are retried, `Interrupted` errors too; end of stream at a frame boundary
//! is [`FrameError::Closed`], inside a frame [`FrameError::UnexpectedEof`].
//!
//! After a decode or validation error the whole frame was consumed and the stream is
//! still in step. After any other error (I/O, end of stream, a refused length whose body
//! is left unread) the stream's position is unknown: the caller drops the connection.

use core::fmt;

use embedded_io::{Error as _, ErrorKind, Read, Write};

use crate::codec::{decode, encode};
use crate::error::WireError;
use crate::types::Message;

/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;

/// Why a frame could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError<E> {
    /// The stream failed.
    Io(E),
    /// The stream ended cleanly before the first byte of a frame.
    Closed,
    /// The stream ended inside a frame (in the length prefix or the body).
    UnexpectedEof,
    /// The writer accepted zero bytes of a non-empty buffer.
    WriteZero,
    /// The frame's content was refused: too large (including a length prefix larger
    /// than the read buffer), wrong version, undecodable or invalid.
    Wire(WireError),
}

impl<E> From<WireError> for FrameError<E> {
    fn from(e: WireError) -> Self {
        FrameError::Wire(e)
    }
}

impl<E: fmt::Debug> fmt::Display for FrameError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Io(e) => write!(f, "stream error: {e:?}"),
            FrameError::Closed => f.write_str("stream closed"),
            FrameError::UnexpectedEof => f.write_str("stream ended inside a frame"),
            FrameError::WriteZero => f.write_str("stream accepted no bytes"),
            FrameError::Wire(e) => write!(f, "refused frame: {e}"),
        }
    }
}

#[cfg(feature = "std")]
impl<E: fmt::Debug> std::error::Error for FrameError<E> {}

/// Encodes `msg` (at most `max` bytes of envelope), writes length prefix and envelope,
/// and flushes.
pub fn write_frame<W: Write>(
    w: &mut W,
    msg: &Message,
    max: usize,
) -> Result<(), FrameError<W::Error>> {
    let body = encode(msg, max)?;
    let len = u32::try_from(body.len()).map_err(|_| WireError::TooLarge {
        len: body.len(),
        max: u32::MAX as usize,
    })?;
    write_all(w, &len.to_be_bytes())?;
    write_all(w, &body)?;
    w.flush().map_err(FrameError::Io)
}

/// Reads one frame into `buf` and decodes it; the largest accepted envelope is
/// `buf.len()` bytes.
pub fn read_frame<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<Message, FrameError<R::Error>> {
    let mut prefix = [0u8; LEN_PREFIX];
    match read_full(r, &mut prefix)? {
        0 => return Err(FrameError::Closed),
        LEN_PREFIX => {}
        _ => return Err(FrameError::UnexpectedEof),
    }
    let len = u32::from_be_bytes(prefix);
    let len = match usize::try_from(len) {
        Ok(len) if len <= buf.len() => len,
        _ => {
            return Err(FrameError::Wire(WireError::TooLarge {
                len: len as usize,
                max: buf.len(),
            }))
        }
    };
    let max = buf.len();
    let body = &mut buf[..len];
    if read_full(r, body)? != len {
        return Err(FrameError::UnexpectedEof);
    }
    Ok(decode(body, max)?)
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<usize, FrameError<R::Error>> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            // `min` guards against a reader that reports more than it was given.
            Ok(n) => filled = (filled + n).min(buf.len()),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    Ok(filled)
}

/// `Write::write_all` without its panic on `Ok(0)`.
fn write_all<W: Write>(w: &mut W, mut buf: &[u8]) -> Result<(), FrameError<W::Error>> {
    while !buf.is_empty() {
        match w.write(buf) {
            Ok(0) => return Err(FrameError::WriteZero),
            Ok(n) => buf = buf.get(n..).unwrap_or(&[]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    Ok(())
}
