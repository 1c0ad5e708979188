//! Key files: secrets written once with an exact mode, read back only while private.
//!
//! Contract:
//! - [`write_new`] creates a file that must not exist yet, with exactly `mode` (the
//!   umask does not narrow it), writes and syncs it; [`write_atomic`] replaces a file
//!   whole (temporary file with exactly `mode`, sync, rename; the temporary is removed on
//!   failure). Both return the bare `io::Error`: the caller names the file in its error.
//! - [`read_private`] reads a file only when its mode gives group and others nothing
//!   ([`is_private`]; like `stat`, it follows a symlink and judges its target), else
//!   [`KeyFileError::Exposed`]. The bytes are wiped when the buffer is dropped.
//! - [`create_seed`] writes a 32-byte ed25519 seed (0600, never overwriting one) and its
//!   public key as hex beside it (`<path>.pub`); [`read_seed`] reads the seed back,
//!   refusing an exposed file or one that is not 32 bytes.

use std::fs::{Metadata, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// Errors of reading or creating a key file.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// I/O on the key file.
    #[error("{path}: {source}")]
    Io {
        /// The key file, or its `.pub` sibling when writing that failed.
        path: PathBuf,
        /// The operating system's error (`AlreadyExists` when creating over a key).
        source: std::io::Error,
    },
    /// The file is not a 32-byte seed.
    #[error("{0}: not an ed25519 secret key (want 32 bytes)")]
    Malformed(PathBuf),
    /// The file's mode lets group or others read it.
    #[error("{0}: mode allows group/other access; chmod 600 it")]
    Exposed(PathBuf),
}

impl KeyFileError {
    /// For `map_err`: an I/O error on the file at `path`.
    pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| KeyFileError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// Creates `path` (which must not exist) with exactly `mode` and writes `data` into it.
pub fn write_new(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    fill(&mut f, data, mode)
}

/// Replaces `path` with `data`, mode exactly `mode`: a temporary file renamed over it.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let result = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| fill(&mut f, data, mode))
        .and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn fill(f: &mut std::fs::File, data: &[u8], mode: u32) -> std::io::Result<()> {
    f.set_permissions(Permissions::from_mode(mode))?;
    f.write_all(data)?;
    f.sync_all()
}

/// Whether a file with metadata `meta` is closed to group and others.
pub fn is_private(meta: &Metadata) -> bool {
    meta.permissions().mode() & 0o077 == 0
}

/// Reads the secret file at `path`, refusing it when group or others may access it.
pub fn read_private(path: &Path) -> Result<Zeroizing<Vec<u8>>, KeyFileError> {
    let meta = std::fs::metadata(path).map_err(KeyFileError::io(path))?;
    if !is_private(&meta) {
        return Err(KeyFileError::Exposed(path.to_owned()));
    }
    Ok(Zeroizing::new(
        std::fs::read(path).map_err(KeyFileError::io(path))?,
    ))
}

/// Reads the 32-byte seed at `path` (see [`read_private`]).
pub fn read_seed(path: &Path) -> Result<Zeroizing<[u8; 32]>, KeyFileError> {
    let bytes = read_private(path)?;
    let seed: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| KeyFileError::Malformed(path.to_owned()))?;
    Ok(Zeroizing::new(seed))
}

/// Writes `seed` to a new file at `path` (0600) and `public` as hex to `path` with
/// extension `pub`; fails if `path` exists.
pub fn create_seed(path: &Path, seed: &[u8; 32], public: &[u8; 32]) -> Result<(), KeyFileError> {
    write_new(path, seed, 0o600).map_err(KeyFileError::io(path))?;
    let pub_path = path.with_extension("pub");
    std::fs::write(&pub_path, crate::hex::encode(public) + "\n")
        .map_err(KeyFileError::io(&pub_path))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn write_new_sets_the_exact_mode_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        write_new(&p, b"one", 0o600).unwrap();
        assert_eq!(mode(&p), 0o600);
        let e = write_new(&p, b"two", 0o600).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&p).unwrap(), b"one");
        // A public file stays world-readable whatever the umask.
        let q = dir.path().join("k.crt");
        write_new(&q, b"pub", 0o644).unwrap();
        assert_eq!(mode(&q), 0o644);
    }

    #[test]
    fn write_atomic_replaces_whole_with_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("floor");
        std::fs::write(&p, b"old contents").unwrap();
        std::fs::set_permissions(&p, Permissions::from_mode(0o644)).unwrap();
        write_atomic(&p, b"new", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        assert_eq!(mode(&p), 0o600);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary left"
        );
        let missing = dir.path().join("no-such-dir").join("f");
        assert!(write_atomic(&missing, b"x", 0o600).is_err());
    }

    #[test]
    fn seeds_round_trip_with_mode_0600_and_a_public_hex_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node.key");
        create_seed(&p, &[7; 32], &[0xab; 32]).unwrap();
        assert_eq!(mode(&p), 0o600);
        assert_eq!(*read_seed(&p).unwrap(), [7; 32]);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("node.pub")).unwrap(),
            format!("{}\n", "ab".repeat(32))
        );
        assert!(
            matches!(create_seed(&p, &[8; 32], &[0; 32]), Err(KeyFileError::Io { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists)
        );
        assert_eq!(*read_seed(&p).unwrap(), [7; 32], "not overwritten");
    }

    #[test]
    fn exposed_missing_or_malformed_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        assert!(matches!(read_private(&p), Err(KeyFileError::Io { .. })));
        write_new(&p, b"short", 0o600).unwrap();
        assert_eq!(read_private(&p).unwrap().as_slice(), b"short");
        assert!(matches!(read_seed(&p), Err(KeyFileError::Malformed(_))));
        for exposed in [0o640, 0o604, 0o610, 0o601] {
            std::fs::set_permissions(&p, Permissions::from_mode(exposed)).unwrap();
            assert!(
                matches!(read_private(&p), Err(KeyFileError::Exposed(_))),
                "{exposed:o}"
            );
        }
        std::fs::set_permissions(&p, Permissions::from_mode(0o400)).unwrap();
        assert!(read_private(&p).is_ok(), "owner read-only is private");
        let e = read_seed(&dir.path().join("nope")).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}: ", dir.path().join("nope").display())),
            "{e}"
        );
    }

    #[test]
    fn a_symlink_is_judged_by_its_target() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        write_new(&target, &[1; 32], 0o600).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert_eq!(*read_seed(&link).unwrap(), [1; 32]);
        std::fs::set_permissions(&target, Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(read_seed(&link), Err(KeyFileError::Exposed(_))));
    }
}
