//! One plaintext sealed under a key used for nothing else: ChaCha20-Poly1305 with the
//! all-zero nonce. Backups use it for every chunk (whose key is derived from the chunk's
//! own plaintext, so a key never meets two plaintexts) and for a snapshot's root (under
//! the snapshot's random key, used once).
//!
//! Contract: [`seal_chunk`] returns the ciphertext followed by its 16-byte tag;
//! [`open_chunk`] returns the plaintext only when the tag verifies under `key`, else
//! [`AeadError`]. Reusing a key for two different plaintexts breaks confidentiality:
//! callers must not.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};

/// Length of the authentication tag appended to every ciphertext.
pub const TAG_LEN: usize = 16;

/// The ciphertext is not `key`'s sealing of any plaintext: altered, truncated or under
/// another key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the ciphertext does not verify under its key (altered, truncated or another key)")]
pub struct AeadError;

fn key_of(key: &[u8; 32]) -> LessSafeKey {
    // A 32-byte key is exactly what ChaCha20-Poly1305 takes: ring refuses only other lengths.
    #[allow(clippy::expect_used)]
    LessSafeKey::new(
        UnboundKey::new(&CHACHA20_POLY1305, key).expect("ChaCha20-Poly1305 takes 32-byte keys"),
    )
}

/// `plaintext` sealed under `key` (nonce 0): ciphertext then tag.
pub fn seal_chunk(key: &[u8; 32], plaintext: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(plaintext.len() + TAG_LEN);
    out.extend_from_slice(plaintext);
    // ring fails only when the input exceeds ChaCha20's 256 GiB counter space; chunks
    // are at most a few MiB.
    #[allow(clippy::expect_used)]
    key_of(key)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key([0; 12]),
            Aad::empty(),
            &mut out,
        )
        .expect("a chunk is far below ChaCha20's length limit");
    out
}

/// The plaintext `ciphertext` seals under `key`.
///
/// # Errors
///
/// [`AeadError`] when the tag does not verify (or the input is shorter than a tag).
pub fn open_chunk(key: &[u8; 32], ciphertext: &[u8]) -> Result<Vec<u8>, AeadError> {
    let mut buf = ciphertext.to_vec();
    let len = key_of(key)
        .open_in_place(
            Nonce::assume_unique_for_key([0; 12]),
            Aad::empty(),
            &mut buf,
        )
        .map_err(|_| AeadError)?
        .len();
    buf.truncate(len);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn opens_what_it_sealed_and_nothing_altered() {
        let key = [7u8; 32];
        let sealed = seal_chunk(&key, b"partition data");
        assert_eq!(sealed.len(), 14 + TAG_LEN);
        assert_ne!(&sealed[..14], b"partition data");
        assert_eq!(open_chunk(&key, &sealed).unwrap(), b"partition data");
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert_eq!(open_chunk(&key, &bad), Err(AeadError), "byte {i}");
        }
        assert_eq!(open_chunk(&[8u8; 32], &sealed), Err(AeadError));
        assert_eq!(open_chunk(&key, &sealed[..TAG_LEN - 1]), Err(AeadError));
        assert_eq!(open_chunk(&key, &seal_chunk(&key, b"")).unwrap(), b"");
    }
}
