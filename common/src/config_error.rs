//! The error of loading a config-like file (`node.toml`, an enrollment bundle).
//!
//! Contract: a file is read, parsed (TOML or another format, whose error is `E`), then
//! validated; [`ConfigFileError`] says which step failed and names the file. The node's
//! binary exits 64 on one.

use std::path::{Path, PathBuf};

/// Why a config-like file could not be loaded; `E` is the parser's error.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError<E: std::error::Error + 'static> {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file, as the caller named it.
        path: PathBuf,
        /// The operating system's error (not found, permission denied, not UTF-8…).
        source: std::io::Error,
    },
    /// The file does not parse (malformed, or unknown keys).
    #[error("{path}: {source}")]
    Parse {
        /// The file that does not parse.
        path: PathBuf,
        /// The parser's message (names the key and line).
        source: E,
    },
    /// A value is out of range or unusable.
    #[error("{path}: {what}")]
    Invalid {
        /// The file holding the value.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
}

impl<E: std::error::Error + 'static> ConfigFileError<E> {
    /// Reads the file at `path` as UTF-8 text.
    pub fn read(path: &Path) -> Result<String, Self> {
        std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
            path: path.to_owned(),
            source,
        })
    }

    /// For `map_err`: the parse error `source` of the file at `path`.
    pub fn parse(path: &Path) -> impl FnOnce(E) -> Self + '_ {
        move |source| ConfigFileError::Parse {
            path: path.to_owned(),
            source,
        }
    }

    /// For `map_err`: the validation error `what` of the file at `path`.
    pub fn invalid(path: &Path) -> impl FnOnce(String) -> Self + '_ {
        move |what| ConfigFileError::Invalid {
            path: path.to_owned(),
            what,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    type E = ConfigFileError<std::num::ParseIntError>;

    fn load(path: &Path) -> Result<u8, E> {
        let text = E::read(path)?;
        let n: u8 = text.trim().parse().map_err(E::parse(path))?;
        if n == 0 {
            return Err(E::invalid(path)("must not be 0".into()));
        }
        Ok(n)
    }

    #[test]
    fn each_step_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("n.conf");
        let err = load(&p).unwrap_err();
        assert!(matches!(err, ConfigFileError::Read { .. }));
        assert!(err
            .to_string()
            .starts_with(&format!("cannot read {}: ", p.display())));
        std::fs::write(&p, "x").unwrap();
        let err = load(&p).unwrap_err();
        assert!(matches!(err, ConfigFileError::Parse { .. }));
        assert_eq!(
            err.to_string(),
            format!("{}: invalid digit found in string", p.display())
        );
        std::fs::write(&p, "0\n").unwrap();
        let err = load(&p).unwrap_err();
        assert!(matches!(err, ConfigFileError::Invalid { .. }));
        assert_eq!(err.to_string(), format!("{}: must not be 0", p.display()));
        std::fs::write(&p, "7\n").unwrap();
        assert_eq!(load(&p).unwrap(), 7);
    }
}
