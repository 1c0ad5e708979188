//! Software artifacts: the node's content-addressed cache of extracted `.tar.gz`
//! releases, and how an artifact gets into it.
//!
//! Contract: [`Cache`] is `<state_dir>/software/`. `<hex>/` is a complete, checked,
//! extracted artifact (its existence is the only readiness marker: it appears by one
//! `rename` after everything in it reached the disk), so it is used offline and after
//! any reboot. `<hex>.part` is a download in progress (resumed from its length),
//! `<hex>.tmp/` an extraction in progress (removed before each attempt).
//! [`install`] does one attempt: download (resumable, [`fetch`]), check the sha256,
//! extract ([`extract`]) into `<hex>.tmp/`, rename to `<hex>/`. A wrong hash deletes the
//! `.part`; a refused archive leaves nothing; both are reported as an [`InstallError`]
//! the daemon counts, records and (for everything but a refusal) retries with backoff.
//!
//! Driven by the daemon (`daemon::software`), which runs one attempt loop per missing
//! artifact in a background task and starts the waiting instances once it is installed.

pub mod extract;
pub mod fetch;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use hedge_wire::Sha256Hex;
use sha2::{Digest, Sha256};

pub use extract::{Limits, Refusal};
pub use fetch::{FetchError, Source};

/// The node's artifact cache, `<state_dir>/software/`.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// The cache under `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        Cache {
            root: state_dir.join("software"),
        }
    }

    /// The cache directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/<hex>`: the extracted tree (whether or not it exists).
    pub fn dir(&self, sha256: &[u8; 32]) -> PathBuf {
        self.root.join(Sha256Hex(sha256).to_string())
    }

    /// `<root>/<hex>.part`: the download in progress.
    pub fn part(&self, sha256: &[u8; 32]) -> PathBuf {
        self.root.join(format!("{}.part", Sha256Hex(sha256)))
    }

    /// `<root>/<hex>.tmp`: the extraction in progress.
    pub fn tmp(&self, sha256: &[u8; 32]) -> PathBuf {
        self.root.join(format!("{}.tmp", Sha256Hex(sha256)))
    }

    /// Whether the artifact is installed (a real directory, not a symlink).
    pub fn ready(&self, sha256: &[u8; 32]) -> bool {
        std::fs::symlink_metadata(self.dir(sha256)).is_ok_and(|m| m.is_dir())
    }

    /// Creates the cache directory, mode 0755 (partitions read and run what is in it).
    pub fn ensure(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.root)?;
        std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o755))
    }
}

/// Why one [`install`] attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The download failed (network, TLS, HTTP status); the `.part` is kept to resume.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The downloaded bytes have another sha256: deleted.
    #[error("sha256 mismatch: got {got}")]
    HashMismatch {
        /// The hash of what was downloaded, hex.
        got: String,
    },
    /// The archive is unsafe or malformed: nothing kept. Permanent for these bytes.
    #[error("archive refused: {0}")]
    Refused(#[from] Refusal),
    /// Local I/O failed (disk full, permissions).
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done (`create`, `rename`, …).
        what: &'static str,
        /// The path it was done on.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> InstallError + 'a {
    move |source| InstallError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// The sha256 of a file's contents.
pub fn sha256_file(path: &Path) -> std::io::Result<[u8; 32]> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finalize().into());
        }
        h.update(&buf[..n]);
    }
}

/// Checks `part` against `sha256` and extracts it into the cache: `<hex>.tmp/`, then
/// renamed to `<hex>/`. Blocking. A wrong hash deletes `part`; a refusal leaves nothing
/// but `part`, which the caller deletes.
pub fn check_and_extract(
    cache: &Cache,
    sha256: &[u8; 32],
    part: &Path,
    limits: Limits,
) -> Result<(), InstallError> {
    let got = sha256_file(part).map_err(io("read", part))?;
    if &got != sha256 {
        let _ = std::fs::remove_file(part);
        return Err(InstallError::HashMismatch {
            got: Sha256Hex(&got).to_string(),
        });
    }
    let tmp = cache.tmp(sha256);
    remove_tree(&tmp).map_err(io("remove", &tmp))?;
    let file = std::fs::File::open(part).map_err(io("open", part))?;
    match extract::extract(std::io::BufReader::new(file), &tmp, limits) {
        Ok(_) => {}
        Err(extract::ExtractError::Refused(r)) => return Err(InstallError::Refused(r)),
        Err(extract::ExtractError::Io { op, path, source }) => {
            return Err(InstallError::Io {
                what: op,
                path: path.into(),
                source,
            })
        }
    }
    let dir = cache.dir(sha256);
    std::fs::rename(&tmp, &dir).map_err(io("rename", &tmp))?;
    std::fs::File::open(&cache.root)
        .and_then(|d| d.sync_all())
        .map_err(io("sync", &cache.root))?;
    let _ = std::fs::remove_file(part);
    Ok(())
}

/// Removes a file or a tree (never following symlinks); absent is fine.
fn remove_tree(p: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
    }
}

/// One attempt: resume or start the download from `source`, check the hash, extract.
pub async fn install(
    source: &Source,
    cache: &Cache,
    sha256: [u8; 32],
    limits: Limits,
) -> Result<(), InstallError> {
    cache.ensure().map_err(io("create", &cache.root))?;
    if cache.ready(&sha256) {
        return Ok(());
    }
    let part = cache.part(&sha256);
    // An archive larger than its contents' bound plus generous framing is refused while
    // downloading.
    let max_archive = limits.max_bytes.saturating_add(64 << 20);
    fetch::download(source, &sha256, &part, max_archive).await?;
    let cache2 = cache.clone();
    let part2 = part.clone();
    let result =
        tokio::task::spawn_blocking(move || check_and_extract(&cache2, &sha256, &part2, limits))
            .await
            .unwrap_or_else(|e| {
                Err(InstallError::Io {
                    what: "extract",
                    path: part.clone(),
                    source: std::io::Error::other(e.to_string()),
                })
            });
    if matches!(result, Err(InstallError::Refused(_))) {
        let _ = std::fs::remove_file(&part);
    }
    result
}
