//! The node's ed25519 identity key.
//!
//! Contract: [`create`] writes a new secret key (32 raw bytes) with mode 0600, refusing
//! to overwrite one, and the public key as hex beside it (`node.pub`). [`load`] reads it
//! back and refuses a file readable by group or others. The secret lives in a
//! `SigningKey`, which zeroizes itself on drop; intermediate buffers are zeroized too.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use zeroize::Zeroizing;

/// Errors of the identity key.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// I/O on the key file.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a 32-byte key.
    #[error("{0}: not an ed25519 secret key (want 32 bytes)")]
    Malformed(PathBuf),
    /// The file is readable by others.
    #[error("{0}: mode allows group/other access; chmod 600 it")]
    Exposed(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Creates a new key at `path` (and `path` with extension `pub`); fails if it exists.
pub fn create(path: &Path) -> Result<SigningKey, IdentityError> {
    let key = SigningKey::generate(&mut rand_core::OsRng);
    let secret = Zeroizing::new(key.to_bytes());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    f.write_all(secret.as_ref()).map_err(io(path))?;
    f.sync_all().map_err(io(path))?;
    let public: String = key
        .verifying_key()
        .to_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let pub_path = path.with_extension("pub");
    std::fs::write(&pub_path, public + "\n").map_err(io(&pub_path))?;
    Ok(key)
}

/// Loads the key at `path`.
pub fn load(path: &Path) -> Result<SigningKey, IdentityError> {
    let meta = std::fs::metadata(path).map_err(io(path))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(IdentityError::Exposed(path.to_owned()));
    }
    let bytes = Zeroizing::new(std::fs::read(path).map_err(io(path))?);
    let secret: Zeroizing<[u8; 32]> = Zeroizing::new(
        bytes
            .as_slice()
            .try_into()
            .map_err(|_| IdentityError::Malformed(path.to_owned()))?,
    );
    Ok(SigningKey::from_bytes(&secret))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

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
