//! The fleet's recovery key as the master keeps it: `DIR/recovery.key` (the X25519
//! secret, 0600) and `DIR/recovery.pub` (its public half, hex).
//!
//! Contract: [`create`] writes a new pair and refuses to overwrite; [`ensure`] (at
//! `hedge master run`) creates one for a master made before backups existed, unless the
//! secret or its public half is already there; [`public`] reads the public half from
//! `recovery.pub`, so the secret may be moved offline once made.

use std::path::Path;

use hedge_common::seal::RecoveryKey;

use crate::pki::PkiError;

/// Reads or writes the recovery key files.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// The key file could not be written, read, or is exposed.
    #[error(transparent)]
    Seal(#[from] hedge_common::seal::SealError),
    /// `recovery.pub` is unreadable or not 64 hex digits.
    #[error("{path}: {why}")]
    Public {
        /// The public key file.
        path: std::path::PathBuf,
        /// Why.
        why: String,
    },
}

impl From<RecoveryError> for PkiError {
    fn from(e: RecoveryError) -> Self {
        PkiError::Invalid(e.to_string())
    }
}

/// The public half's file beside `secret`.
pub fn public_path(secret: &Path) -> std::path::PathBuf {
    secret.with_extension("pub")
}

/// Writes a new recovery key at `secret` (0600) and its public half beside it.
pub fn create(secret: &Path) -> Result<[u8; 32], RecoveryError> {
    let key = RecoveryKey::generate();
    key.save(secret)?;
    Ok(key.public())
}

/// Makes a recovery key unless `secret` or its public half exists; true when made.
pub fn ensure(secret: &Path) -> Result<bool, RecoveryError> {
    if secret.exists() || public_path(secret).exists() {
        return Ok(false);
    }
    create(secret)?;
    Ok(true)
}

/// The public half, from `recovery.pub` (or, when that is missing, the secret itself).
pub fn public(secret: &Path) -> Result<[u8; 32], RecoveryError> {
    let path = public_path(secret);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let bad = |why: &str| RecoveryError::Public {
                path: path.clone(),
                why: why.to_owned(),
            };
            hedge_common::hex::decode_array::<32>(text.trim())
                .ok_or_else(|| bad("not 64 hex digits"))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(RecoveryKey::load(secret)?.public())
        }
        Err(e) => Err(RecoveryError::Public {
            path,
            why: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_key_is_made_once_and_its_public_half_read_without_the_secret() {
        let tmp = tempfile::tempdir().unwrap();
        let secret = tmp.path().join("recovery.key");
        assert!(ensure(&secret).unwrap());
        assert!(!ensure(&secret).unwrap(), "never replaced");
        let public = public(&secret).unwrap();
        assert_eq!(RecoveryKey::load(&secret).unwrap().public(), public);
        assert!(create(&secret).is_err(), "never overwritten");
        // The secret moved offline: the public half is enough, and no new key is made.
        std::fs::rename(&secret, tmp.path().join("offline.key")).unwrap();
        assert!(!ensure(&secret).unwrap());
        assert_eq!(super::public(&secret).unwrap(), public);
    }
}
