//! The node's ed25519 identity key.
//!
//! Contract: [`create`] writes a new secret key (32 raw bytes) with mode 0600, refusing
//! to overwrite one, and the public key as hex beside it (`node.pub`). [`load`] reads it
//! back and refuses a file readable by group or others. The secret lives in a
//! `SigningKey`, which zeroizes itself on drop; intermediate buffers are zeroized too.

use std::path::Path;

use ed25519_dalek::SigningKey;
use hedge_common::keyfile;
use zeroize::Zeroizing;

/// Errors of the identity key: those of any key file.
pub type IdentityError = hedge_common::KeyFileError;

/// Creates a new key at `path` (and `path` with extension `pub`); fails if it exists.
pub fn create(path: &Path) -> Result<SigningKey, IdentityError> {
    let key = SigningKey::generate(&mut rand_core::OsRng);
    let secret = Zeroizing::new(key.to_bytes());
    keyfile::create_seed(path, &secret, &key.verifying_key().to_bytes())?;
    Ok(key)
}

/// Loads the key at `path`.
pub fn load(path: &Path) -> Result<SigningKey, IdentityError> {
    Ok(SigningKey::from_bytes(&*keyfile::read_seed(path)?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn create_then_load_round_trips_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node.key");
        let k = create(&p).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(load(&p).unwrap().to_bytes(), k.to_bytes());
        assert!(create(&p).is_err(), "must not overwrite a key");
    }

    #[test]
    fn exposed_or_malformed_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node.key");
        create(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(load(&p), Err(IdentityError::Exposed(_))));
        std::fs::write(&p, b"short").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(load(&p), Err(IdentityError::Malformed(_))));
    }
}
