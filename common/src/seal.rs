//! A snapshot key sealed to the fleet's recovery key, so that only the holder of the
//! recovery secret (the master operator, at `hedge master restore`) can read it: nodes
//! seal with the public half, brokers, relays and the blob store see 80 opaque bytes.
//!
//! Contract: [`seal`] makes a fresh ephemeral X25519 key `e` for every call, derives
//! `k = HKDF-SHA256(salt = e_pub ‖ recipient, ikm = X25519(e, recipient), info =
//! "hedge-backup-seal-v1")` and returns `e_pub ‖ ChaCha20-Poly1305(k, nonce 0, key)`
//! ([`SEALED_LEN`] bytes). [`unseal`] returns the key only when those bytes were sealed
//! to this [`RecoveryKey`] and not altered ([`SealError`] otherwise). The recovery
//! secret is a file of 32 bytes, 0600, refused when group or others can read it, its
//! public half as hex beside it (`.pub`), zeroized in memory.

use std::path::Path;

use ring::hkdf::{Salt, HKDF_SHA256};
use x25519_dalek::{EphemeralSecret, PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::keyfile::{self, KeyFileError};

/// Length of a sealed key: the ephemeral public key, the key and the tag.
pub const SEALED_LEN: usize = 32 + 32 + crate::aead::TAG_LEN;
const INFO: &[u8] = b"hedge-backup-seal-v1";

/// Why a sealed key or a recovery key file was refused.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// Not [`SEALED_LEN`] bytes.
    #[error("a sealed key is {SEALED_LEN} bytes, not {0}")]
    Length(usize),
    /// Sealed to another recovery key, or altered.
    #[error("the sealed key does not open with this recovery key (another key, or altered)")]
    Open,
    /// The recovery key file could not be read or written, or is exposed.
    #[error(transparent)]
    File(#[from] KeyFileError),
}

/// The fleet's recovery secret (X25519).
pub struct RecoveryKey(StaticSecret);

impl RecoveryKey {
    /// A new random recovery key.
    pub fn generate() -> RecoveryKey {
        RecoveryKey(StaticSecret::random_from_rng(rand_core::OsRng))
    }

    /// Reads the secret at `path` (32 bytes, private).
    ///
    /// # Errors
    ///
    /// The file is missing, unreadable, readable by group or others, or not 32 bytes.
    pub fn load(path: &Path) -> Result<RecoveryKey, SealError> {
        let seed = keyfile::read_seed(path)?;
        Ok(RecoveryKey(StaticSecret::from(*seed)))
    }

    /// Writes the secret to a new file at `path` (0600) and its public half as hex to
    /// `path.pub`.
    ///
    /// # Errors
    ///
    /// `path` exists or cannot be written.
    pub fn save(&self, path: &Path) -> Result<(), SealError> {
        let seed = Zeroizing::new(self.0.to_bytes());
        keyfile::create_seed(path, &seed, &self.public())?;
        Ok(())
    }

    /// The public half, which nodes seal to.
    pub fn public(&self) -> [u8; 32] {
        PublicKey::from(&self.0).to_bytes()
    }
}

fn wrap_key(shared: &[u8; 32], eph: &[u8; 32], recipient: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(eph);
    salt[32..].copy_from_slice(recipient);
    let mut out = Zeroizing::new([0u8; 32]);
    // HKDF-SHA256 can expand to 255 × 32 bytes; 32 is always within it.
    #[allow(clippy::expect_used)]
    Salt::new(HKDF_SHA256, &salt)
        .extract(shared)
        .expand(&[INFO], HKDF_SHA256)
        .and_then(|okm| okm.fill(out.as_mut()))
        .expect("32 bytes are within HKDF-SHA256's output length");
    out
}

/// `key` sealed to the recovery public key `recipient`.
pub fn seal(key: &[u8; 32], recipient: &[u8; 32]) -> [u8; SEALED_LEN] {
    let eph = EphemeralSecret::random_from_rng(rand_core::OsRng);
    let eph_pub = PublicKey::from(&eph).to_bytes();
    let shared = eph.diffie_hellman(&PublicKey::from(*recipient));
    let k = wrap_key(shared.as_bytes(), &eph_pub, recipient);
    let body = crate::aead::seal_chunk(&k, key);
    let mut out = [0u8; SEALED_LEN];
    out[..32].copy_from_slice(&eph_pub);
    out[32..].copy_from_slice(&body);
    out
}

/// The key `sealed` holds, if it was sealed to `recovery`.
///
/// # Errors
///
/// [`SealError::Length`] or [`SealError::Open`].
pub fn unseal(sealed: &[u8], recovery: &RecoveryKey) -> Result<Zeroizing<[u8; 32]>, SealError> {
    if sealed.len() != SEALED_LEN {
        return Err(SealError::Length(sealed.len()));
    }
    let mut eph_pub = [0u8; 32];
    eph_pub.copy_from_slice(&sealed[..32]);
    let shared = recovery.0.diffie_hellman(&PublicKey::from(eph_pub));
    let k = wrap_key(shared.as_bytes(), &eph_pub, &recovery.public());
    let plain =
        Zeroizing::new(crate::aead::open_chunk(&k, &sealed[32..]).map_err(|_| SealError::Open)?);
    let mut key = Zeroizing::new([0u8; 32]);
    if plain.len() != 32 {
        return Err(SealError::Open);
    }
    key.copy_from_slice(&plain);
    Ok(key)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn only_the_recovery_key_unseals_and_alterations_are_refused() {
        let recovery = RecoveryKey::generate();
        let other = RecoveryKey::generate();
        let key = [42u8; 32];
        let sealed = seal(&key, &recovery.public());
        assert_eq!(*unseal(&sealed, &recovery).unwrap(), key);
        // Fresh ephemeral key each time: the same key seals differently.
        assert_ne!(seal(&key, &recovery.public()), sealed);
        assert!(matches!(unseal(&sealed, &other), Err(SealError::Open)));
        for i in [0, 31, 32, 63, 64, SEALED_LEN - 1] {
            let mut bad = sealed;
            bad[i] ^= 0x80;
            assert!(
                matches!(unseal(&bad, &recovery), Err(SealError::Open)),
                "byte {i}"
            );
        }
        assert!(matches!(
            unseal(&sealed[1..], &recovery),
            Err(SealError::Length(79))
        ));
    }

    #[test]
    fn the_file_is_private_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("recovery.key");
        let k = RecoveryKey::generate();
        k.save(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let back = RecoveryKey::load(&path).unwrap();
        assert_eq!(back.public(), k.public());
        let sealed = seal(&[1; 32], &k.public());
        assert_eq!(*unseal(&sealed, &back).unwrap(), [1; 32]);
        assert!(k.save(&path).is_err(), "never overwrites a recovery key");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(RecoveryKey::load(&path), Err(SealError::File(_))));
    }
}
