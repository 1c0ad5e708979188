//! Frames of a peer session: a `u32` big-endian length, then that many bytes of
//! [`encode_peer`] output. A zero length is a keepalive and carries nothing.
//!
//! Contract: [`read_frame`] refuses a length above [`MAX_PEER_FRAME`] *before* reading or
//! allocating the body, and fails with [`FrameError::Idle`] when no byte arrived for
//! `idle` (counted per read, so a slow but moving link is not cut). A body that does not
//! decode is [`FrameError::Wire`] with the whole frame consumed: the stream is still in
//! step and the caller may go on. Any other error leaves the stream out of step: the
//! caller closes the session. [`write_frame`] writes one encoded message (or a keepalive)
//! without flushing.

use std::time::Duration;

use hedge_wire::mesh::{decode_peer, PeerMessage, RELAY_OVERHEAD};
use hedge_wire::{WireError, DEFAULT_MAX_FRAME};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest peer frame body: a full batch of the relay's own (`DEFAULT_MAX_FRAME`) plus one
/// wrapping.
pub const MAX_PEER_FRAME: usize = DEFAULT_MAX_FRAME + RELAY_OVERHEAD;

/// One frame read: a message or a keepalive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A zero-length frame: the peer is alive.
    Keepalive,
    /// A decoded message, and the frame's body length.
    Message(Box<PeerMessage>, usize),
}

/// Reads one frame.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    idle: Duration,
) -> Result<Frame, FrameError> {
    let mut len = [0u8; 4];
    read_full(r, &mut len, idle, true).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 {
        return Ok(Frame::Keepalive);
    }
    if len > MAX_PEER_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    read_full(r, &mut body, idle, false).await?;
    decode_peer(&body, MAX_PEER_FRAME)
        .map(|m| Frame::Message(Box::new(m), len))
        .map_err(FrameError::Wire)
}

/// Fills `buf`, each read waiting at most `idle`; a clean end before the first byte of a
/// frame is [`FrameError::Closed`] when `at_boundary`.
async fn read_full<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
    idle: Duration,
    at_boundary: bool,
) -> Result<(), FrameError> {
    let mut pos = 0;
    while pos < buf.len() {
        let n = tokio::time::timeout(idle, r.read(&mut buf[pos..]))
            .await
            .map_err(|_| FrameError::Idle)??;
        if n == 0 {
            return Err(if pos == 0 && at_boundary {
                FrameError::Closed
            } else {
                FrameError::UnexpectedEof
            });
        }
        pos += n;
    }
    Ok(())
}

/// Writes one frame holding `body` (an [`encode_peer`] output; empty = keepalive).
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, body: &[u8]) -> Result<(), FrameError> {
    let len = u32::try_from(body.len()).map_err(|_| FrameError::TooLarge(body.len()))?;
    if body.len() > MAX_PEER_FRAME {
        return Err(FrameError::TooLarge(body.len()));
    }
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(body).await?;
    Ok(())
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The stream ended cleanly between two frames.
    #[error("closed")]
    Closed,
    /// The stream ended inside a frame.
    #[error("closed inside a frame")]
    UnexpectedEof,
    /// Nothing arrived for the idle time.
    #[error("idle")]
    Idle,
    /// The length exceeds [`MAX_PEER_FRAME`].
    #[error("frame of {0} bytes is larger than the peer frame limit")]
    TooLarge(usize),
    /// The body did not decode (the stream is still in step).
    #[error("undecodable frame: {0}")]
    Wire(WireError),
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use hedge_wire::mesh::{encode_peer, Hello};
    use hedge_wire::Name;

    use super::*;

    const IDLE: Duration = Duration::from_secs(5);

    fn hello() -> PeerMessage {
        PeerMessage::Hello(Hello {
            node: Name::new("node-1").unwrap(),
            hops: 2,
            outbox: 7,
            desired: vec![],
        })
    }

    #[tokio::test]
    async fn frames_round_trip_with_keepalives_between() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let body = encode_peer(&hello(), MAX_PEER_FRAME).unwrap();
        write_frame(&mut a, &[]).await.unwrap();
        write_frame(&mut a, &body).await.unwrap();
        drop(a);
        assert_eq!(read_frame(&mut b, IDLE).await.unwrap(), Frame::Keepalive);
        assert_eq!(
            read_frame(&mut b, IDLE).await.unwrap(),
            Frame::Message(Box::new(hello()), body.len())
        );
        assert!(matches!(
            read_frame(&mut b, IDLE).await,
            Err(FrameError::Closed)
        ));
    }

    #[tokio::test]
    async fn garbage_is_refused_and_the_stream_stays_in_step() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        write_frame(&mut a, b"\x01\xff\xff\xff garbage")
            .await
            .unwrap();
        write_frame(&mut a, b"\x63 wrong version").await.unwrap();
        let body = encode_peer(&hello(), MAX_PEER_FRAME).unwrap();
        write_frame(&mut a, &body).await.unwrap();
        assert!(matches!(
            read_frame(&mut b, IDLE).await,
            Err(FrameError::Wire(_))
        ));
        assert!(matches!(
            read_frame(&mut b, IDLE).await,
            Err(FrameError::Wire(WireError::BadVersion(0x63)))
        ));
        assert_eq!(
            read_frame(&mut b, IDLE).await.unwrap(),
            Frame::Message(Box::new(hello()), body.len())
        );
    }

    #[tokio::test]
    async fn an_oversized_length_is_refused_before_its_body() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        // Nothing of the announced body is ever sent: the reader must not wait for it.
        assert!(matches!(
            read_frame(&mut b, IDLE).await,
            Err(FrameError::TooLarge(_))
        ));
        let big = vec![0u8; MAX_PEER_FRAME + 1];
        assert!(matches!(
            write_frame(&mut a, &big).await,
            Err(FrameError::TooLarge(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_is_idle_and_a_cut_frame_is_not_a_clean_close() {
        let (mut a, mut b) = tokio::io::duplex(64);
        assert!(matches!(
            read_frame(&mut b, IDLE).await,
            Err(FrameError::Idle)
        ));
        a.write_all(&[0, 0, 0, 9, 1]).await.unwrap();
        drop(a);
        assert!(matches!(
            read_frame(&mut b, IDLE).await,
            Err(FrameError::UnexpectedEof)
        ));
    }
}
