//! Frames of the outbox log: how one entry is laid out on disk, and where a log's valid
//! part ends.
//!
//! Contract: pure, no I/O. A frame is `len` (u32 little-endian, 1..=[`MAX_PAYLOAD`]),
//! `crc` (u32 little-endian, CRC-32 of the four `len` bytes followed by the payload),
//! then `len` payload bytes. [`Frames`] walks a buffer from its start and yields every
//! frame up to the first one that is incomplete, has a length out of range, or fails
//! its checksum (a torn or corrupt tail, zero-filled pages included); [`Frames::end`]
//! is then the length of the valid prefix. Nothing after an invalid frame is ever read
//! as a frame: a crash can only cut a log short, never make it say something else.

/// Bytes before a frame's payload.
pub const HEADER: usize = 8;

/// The largest payload a frame holds (a record is far smaller; anything larger on disk
/// is corruption).
pub const MAX_PAYLOAD: usize = 1 << 20;

fn checksum(len: [u8; 4], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len);
    h.update(payload);
    h.finalize()
}

/// Appends `payload` to `buf` as one frame. Returns the frame's length (header
/// included). A payload over [`MAX_PAYLOAD`] is refused (`None`, `buf` untouched).
pub fn put(buf: &mut Vec<u8>, payload: &[u8]) -> Option<usize> {
    if payload.is_empty() || payload.len() > MAX_PAYLOAD {
        return None;
    }
    let len = u32::try_from(payload.len()).ok()?.to_le_bytes();
    buf.extend_from_slice(&len);
    buf.extend_from_slice(&checksum(len, payload).to_le_bytes());
    buf.extend_from_slice(payload);
    Some(HEADER + payload.len())
}

/// The valid frames of a buffer, in order: `(offset of the frame, payload)`.
#[derive(Debug, Clone)]
pub struct Frames<'a> {
    buf: &'a [u8],
    pos: usize,
    stopped: bool,
}

impl<'a> Frames<'a> {
    /// Walks `buf` from its start.
    pub fn new(buf: &'a [u8]) -> Frames<'a> {
        Frames {
            buf,
            pos: 0,
            stopped: false,
        }
    }

    /// The length of the valid prefix walked so far (all of it once the walk ended).
    pub fn end(&self) -> usize {
        self.pos
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = (usize, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.stopped {
            return None;
        }
        let rest = &self.buf[self.pos..];
        let frame = (|| {
            let len: [u8; 4] = rest.get(..4)?.try_into().ok()?;
            let crc: [u8; 4] = rest.get(4..HEADER)?.try_into().ok()?;
            let n = usize::try_from(u32::from_le_bytes(len)).ok()?;
            if n == 0 || n > MAX_PAYLOAD {
                return None;
            }
            let payload = rest.get(HEADER..HEADER + n)?;
            (checksum(len, payload) == u32::from_le_bytes(crc)).then_some(payload)
        })();
        match frame {
            Some(payload) => {
                let at = self.pos;
                self.pos += HEADER + payload.len();
                Some((at, payload))
            }
            None => {
                self.stopped = true;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn log(payloads: &[&[u8]]) -> Vec<u8> {
        let mut buf = Vec::new();
        for p in payloads {
            put(&mut buf, p).unwrap();
        }
        buf
    }

    fn walk(buf: &[u8]) -> (Vec<Vec<u8>>, usize) {
        let mut f = Frames::new(buf);
        let got = f.by_ref().map(|(_, p)| p.to_vec()).collect();
        (got, f.end())
    }

    #[test]
    fn frames_read_back_in_order_with_their_offsets() {
        let buf = log(&[b"one", b"two!", b"3"]);
        let offsets: Vec<usize> = Frames::new(&buf).map(|(at, _)| at).collect();
        assert_eq!(offsets, vec![0, 11, 23]);
        assert_eq!(
            walk(&buf),
            (
                vec![b"one".to_vec(), b"two!".to_vec(), b"3".to_vec()],
                buf.len()
            )
        );
    }

    #[test]
    fn a_torn_tail_is_dropped_at_every_cut() {
        let buf = log(&[b"first", b"second"]);
        let first = HEADER + 5;
        for cut in 0..buf.len() {
            let (got, end) = walk(&buf[..cut]);
            if cut < first {
                assert_eq!((got.len(), end), (0, 0), "cut {cut}");
            } else {
                assert_eq!(got, vec![b"first".to_vec()], "cut {cut}");
                assert_eq!(end, first);
            }
        }
    }

    #[test]
    fn a_flipped_bit_anywhere_in_a_frame_ends_the_log_there() {
        let buf = log(&[b"keep", b"flip me", b"after"]);
        let second = HEADER + 4;
        for byte in second..second + HEADER + 7 {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[byte] ^= 1 << bit;
                let (got, end) = walk(&bad);
                assert_eq!(got, vec![b"keep".to_vec()], "byte {byte} bit {bit}");
                assert_eq!(end, second);
            }
        }
    }

    #[test]
    fn zero_filled_pages_and_absurd_lengths_are_not_frames() {
        let mut buf = log(&[b"a"]);
        buf.extend_from_slice(&[0; 4096]);
        assert_eq!(walk(&buf), (vec![b"a".to_vec()], HEADER + 1));
        let mut huge = u32::try_from(MAX_PAYLOAD + 1)
            .unwrap()
            .to_le_bytes()
            .to_vec();
        huge.extend_from_slice(&[0; 12]);
        assert_eq!(walk(&huge), (vec![], 0));
    }

    #[test]
    fn empty_and_oversized_payloads_are_refused() {
        let mut buf = Vec::new();
        assert_eq!(put(&mut buf, b""), None);
        assert_eq!(put(&mut buf, &vec![1; MAX_PAYLOAD + 1]), None);
        assert!(buf.is_empty());
    }
}
