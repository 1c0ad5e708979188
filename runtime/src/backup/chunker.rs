//! Content-defined chunking: FastCDC (2020, `fastcdc::v2020::StreamCDC`) over a
//! `Read`, every file on its own, with cut points keyed by the node's secret.
//!
//! Contract: [`chunks`] yields the stream's bytes, in order, as chunks of [`MIN`] to
//! [`MAX`] bytes (only the last may be shorter than [`MIN`]), holding at most one
//! [`MAX`]-byte buffer plus the chunk it yields. The same bytes with the same seed
//! always give the same cuts, so an edit only changes the chunks around it.
//!
//! Why these sizes (min 16 KiB, average 64 KiB, max 256 KiB):
//! - SD cards and eMMC write in erase blocks of 64 KiB to 4 MiB: a chunk file much
//!   smaller than that costs a whole-page program and a file-system metadata update
//!   for little data, so tiny chunks wear the card and crawl. 64 KiB on average keeps
//!   one chunk file about one write unit.
//! - Every chunk costs ~100 bytes besides its data: its ChunkRef in the manifest (id,
//!   key, length: ~70 B), its 32-byte id in the snapshot's id list and the upload's
//!   `have` query, the AEAD tag (16 B), and an inode. At 64 KiB that is ~0.15%; at the
//!   4 KiB of a classic block-level dedup it would be ~2.5%, and the 1 GiB partition's
//!   id list would grow from 16k to 256k ids.
//! - Deduplication granularity: a change of n bytes rewrites about n plus one average
//!   chunk on each side of it, so for the 1%-change set (a few small edits) 64 KiB
//!   chunks cost ~1% plus ~128 KiB per edited region. The 4x spread between min/avg
//!   and avg/max (FastCDC's normalisation level 1) keeps most chunks near the average
//!   while a long run without a cut (zeros, already compressed data) ends at 256 KiB,
//!   which bounds the buffer the chunker holds.
//!
//! The gear hash is seeded from the node's secret ([`super::crypto::Secret::gear_seed`]):
//! chunk lengths are visible to whoever stores the ciphertext, and unseeded cut points
//! would let them recognise known content by its sequence of lengths.

use std::io::{self, Read};

use fastcdc::v2020::{Normalization, StreamCDC};

/// Smallest chunk (but a file's last).
pub const MIN: usize = 16 * 1024;
/// Target average chunk.
pub const AVG: usize = 64 * 1024;
/// Largest chunk; the chunker's buffer.
pub const MAX: usize = 256 * 1024;

/// The chunks of `source`, cut with the gear table seeded by `seed`.
pub fn chunks<R: Read>(source: R, seed: u64) -> impl Iterator<Item = io::Result<Vec<u8>>> {
    StreamCDC::with_level_and_seed(source, MIN, AVG, MAX, Normalization::Level1, seed)
        .map(|r| r.map(|c| c.data).map_err(io::Error::from))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn data(len: usize, mut x: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()[0]
            })
            .collect()
    }

    fn cut(bytes: &[u8], seed: u64) -> Vec<Vec<u8>> {
        chunks(bytes, seed).map(Result::unwrap).collect()
    }

    #[test]
    fn chunks_cover_the_input_within_the_bounds() {
        let input = data(3 * 1024 * 1024 + 123, 1);
        let out = cut(&input, 7);
        assert_eq!(out.concat(), input);
        let (last, rest) = out.split_last().unwrap();
        assert!(rest.iter().all(|c| (MIN..=MAX).contains(&c.len())));
        assert!(last.len() <= MAX);
        // Zeros have no cut point: they end at the maximum.
        let zeros = cut(&vec![0; 3 * MAX], 7);
        assert!(zeros.iter().all(|c| c.len() == MAX), "{}", zeros.len());
        assert!(cut(&[], 7).is_empty());
    }

    #[test]
    fn an_edit_changes_only_the_chunks_around_it() {
        let mut input = data(4 * 1024 * 1024, 2);
        let before = cut(&input, 9);
        input[2 * 1024 * 1024] ^= 0xff;
        let after = cut(&input, 9);
        let changed = after.iter().filter(|c| !before.contains(c)).count();
        assert!(changed <= 2, "{changed} of {} chunks changed", after.len());
    }

    #[test]
    fn the_seed_moves_the_cut_points() {
        let input = data(1024 * 1024, 3);
        let a: Vec<usize> = cut(&input, 1).iter().map(Vec::len).collect();
        let b: Vec<usize> = cut(&input, 2).iter().map(Vec::len).collect();
        assert_ne!(a, b);
    }
}
