//! The node side of the backup keys: the node's secret S, each chunk's key and id.
//!
//! Contract (the design in `docs/architecture.md`): a chunk's key is
//! HMAC-SHA256(S, plaintext), its ciphertext `hedge_common::aead::seal_chunk(key,
//! plaintext)` (ChaCha20-Poly1305, nonce 0: one plaintext per key, which a key derived
//! from the plaintext guarantees) and its id SHA-256(ciphertext). Equal plaintexts on one
//! node give the same id (deduplication across snapshots and instances); without S
//! nobody can derive a key or confirm a guess of a chunk's content. [`open`] returns a
//! plaintext only when all three hold: the id matches the ciphertext, the tag verifies
//! under the key, the length is the reference's. Pure: no I/O.

use hedge_common::aead;
use hedge_wire::backup::ChunkRef;
use ring::{digest, hmac};

use super::ChunkId;

/// The node's backup secret S, as keys.
pub struct Secret {
    hmac: hmac::Key,
    gear_seed: u64,
}

impl Secret {
    /// The keys of the 32-byte secret `s`.
    pub fn new(s: &[u8; 32]) -> Secret {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(b"hedge backup gear seed\0");
        ctx.update(s);
        let d = ctx.finish();
        let mut seed = [0u8; 8];
        seed.copy_from_slice(&d.as_ref()[..8]);
        Secret {
            hmac: hmac::Key::new(hmac::HMAC_SHA256, s),
            gear_seed: u64::from_le_bytes(seed),
        }
    }

    /// The chunker's gear seed (cut points only S's holder can predict).
    pub fn gear_seed(&self) -> u64 {
        self.gear_seed
    }

    /// The key of the chunk `plaintext`: HMAC-SHA256(S, plaintext).
    pub fn chunk_key(&self, plaintext: &[u8]) -> [u8; 32] {
        let tag = hmac::sign(&self.hmac, plaintext);
        let mut key = [0u8; 32];
        key.copy_from_slice(tag.as_ref());
        key
    }

    /// `plaintext` sealed as a chunk: its reference and its ciphertext.
    ///
    /// # Panics
    ///
    /// Never for a chunk of at most `u32::MAX` bytes (the chunker's are 256 KiB at most).
    pub fn seal(&self, plaintext: &[u8]) -> (ChunkRef, Vec<u8>) {
        let key = self.chunk_key(plaintext);
        let ciphertext = aead::seal_chunk(&key, plaintext);
        #[allow(clippy::expect_used)] // chunks are at most chunker::MAX (256 KiB)
        let len = u32::try_from(plaintext.len()).expect("a chunk is below 4 GiB");
        let r = ChunkRef {
            id: id_of(&ciphertext),
            key,
            len,
        };
        (r, ciphertext)
    }
}

/// A chunk's id: SHA-256 of its ciphertext.
pub fn id_of(ciphertext: &[u8]) -> ChunkId {
    let mut id = [0u8; 32];
    id.copy_from_slice(digest::digest(&digest::SHA256, ciphertext).as_ref());
    id
}

/// Why a chunk does not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// SHA-256 of the ciphertext is not the id.
    Id,
    /// The tag does not verify under the key.
    Tag,
    /// The plaintext is not the length the reference says.
    Length,
}

/// The plaintext of the chunk `r` given its ciphertext, checked (see the module doc).
///
/// # Errors
///
/// Which check failed.
pub fn open(r: &ChunkRef, ciphertext: &[u8]) -> Result<Vec<u8>, OpenError> {
    if id_of(ciphertext) != r.id {
        return Err(OpenError::Id);
    }
    let plain = aead::open_chunk(&r.key, ciphertext).map_err(|_| OpenError::Tag)?;
    if u32::try_from(plain.len()).ok() != Some(r.len) {
        return Err(OpenError::Length);
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn equal_plaintexts_give_equal_ids_on_one_node_only() {
        let a = Secret::new(&[1; 32]);
        let b = Secret::new(&[2; 32]);
        let (ra, ca) = a.seal(b"same data");
        let (ra2, _) = a.seal(b"same data");
        let (rb, _) = b.seal(b"same data");
        assert_eq!(ra, ra2);
        assert_ne!(ra.id, rb.id);
        assert_ne!(ra.key, rb.key);
        assert_ne!(a.gear_seed(), b.gear_seed());
        assert_eq!(open(&ra, &ca).unwrap(), b"same data");
        assert_eq!(ra.len, 9);
        assert!(!ca.windows(9).any(|w| w == b"same data"));
    }

    #[test]
    fn open_refuses_an_altered_ciphertext_a_wrong_key_or_length() {
        let s = Secret::new(&[3; 32]);
        let (r, c) = s.seal(b"chunk");
        let mut bad = c.clone();
        bad[0] ^= 1;
        assert_eq!(open(&r, &bad), Err(OpenError::Id));
        let wrong_key = ChunkRef { key: [0; 32], ..r };
        assert_eq!(open(&wrong_key, &c), Err(OpenError::Tag));
        let wrong_len = ChunkRef { len: 4, ..r };
        assert_eq!(open(&wrong_len, &c), Err(OpenError::Length));
    }
}
