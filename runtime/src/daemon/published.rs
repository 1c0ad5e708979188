//! Connection parameters: what an instance publishes for others.
//!
//! Contract: an instance publishes by writing `etc/connection.json` in its partition,
//! a JSON object whose values are strings, numbers or booleans (numbers and booleans are
//! kept as their JSON text), at most [`MAX_FILE`] bytes. The daemon polls every
//! [`POLL`]; when the object differs from what is stored it is stored, reported as a
//! `ConnectionParameters` record, and every instance that references it
//! (`{{name.key}}`) is re-rendered and restarted if its result changed — all offline.
//! A malformed file is counted and logged (rate-limited) and the last good values stay.
//! Write the file atomically (write a temp file, then rename) to avoid torn reads.
//!
//! The partition belongs to the instance, which may race the daemon: the file is opened
//! through the partition's directory handle, no component followed (`etc` must be a
//! real directory, not a link to another tenant's), non-blocking (a FIFO never stalls
//! the loop), its type judged on the opened descriptor, and at most `MAX_FILE + 1` bytes
//! are read (a link to `/dev/zero` is not followed; a file that grows is cut off).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::time::Duration;

use hedge_wire::{Name, RecordKind};
use serde_json::Value;

use super::instances::Instances;
use super::Daemon;
use crate::partition::at;

/// How often partitions are checked for a new `etc/connection.json`.
pub const POLL: Duration = Duration::from_secs(1);

/// Largest `connection.json` read.
pub const MAX_FILE: u64 = 64 * 1024;

/// Why a partition's `etc/connection.json` was not taken.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionFileError {
    /// `etc` or the file is a symlink, or `etc` is not a directory.
    #[error("etc/ or etc/connection.json is a symlink or not a directory; not followed")]
    Link,
    /// The file is not a regular file (a FIFO, a socket, a device).
    #[error("etc/connection.json is not a regular file")]
    NotRegular,
    /// The file holds more than [`MAX_FILE`] bytes.
    #[error("etc/connection.json is over {MAX_FILE} bytes")]
    TooLarge,
    /// The file could not be read.
    #[error("etc/connection.json: {0}")]
    Io(#[source] io::Error),
    /// The text is not a flat JSON object (see [`parse`]).
    #[error("etc/connection.json: {0}")]
    Malformed(String),
}

/// Reads and parses `etc/connection.json` of the partition at `partition`: `Ok(None)`
/// when there is no such file (nothing published).
pub fn read(partition: &Path) -> Result<Option<BTreeMap<String, String>>, ConnectionFileError> {
    let not_found = |e: &io::Error| e.kind() == io::ErrorKind::NotFound;
    let link = |e: &io::Error| {
        at::is_errno(e, nix::errno::Errno::ELOOP) || at::is_errno(e, nix::errno::Errno::ENOTDIR)
    };
    let classify = |e: io::Error| {
        if link(&e) {
            ConnectionFileError::Link
        } else if e.kind() == io::ErrorKind::InvalidData {
            ConnectionFileError::NotRegular
        } else {
            ConnectionFileError::Io(e)
        }
    };
    // The partition directory itself sits in the root-owned `partitions/`.
    let dir = match at::open_dir(partition) {
        Ok(d) => d,
        Err(e) if not_found(&e) => return Ok(None),
        Err(e) => return Err(classify(e)),
    };
    let etc = match at::open_dir_at(&dir, OsStr::new("etc")) {
        Ok(d) => d,
        Err(e) if not_found(&e) => return Ok(None),
        Err(e) => return Err(classify(e)),
    };
    let file = match at::open_regular_at(&etc, OsStr::new("connection.json")) {
        Ok(f) => f,
        Err(e) if not_found(&e) => return Ok(None),
        Err(e) => return Err(classify(e)),
    };
    let bytes = at::read_bounded(&file, MAX_FILE)
        .map_err(ConnectionFileError::Io)?
        .ok_or(ConnectionFileError::TooLarge)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| ConnectionFileError::Malformed("not UTF-8 text".into()))?;
    parse(&text)
        .map(Some)
        .map_err(ConnectionFileError::Malformed)
}

/// Parses a `connection.json` text into flat string parameters.
pub fn parse(text: &str) -> Result<BTreeMap<String, String>, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let Value::Object(map) = v else {
        return Err("not a JSON object".into());
    };
    map.into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k, s)),
            Value::Number(n) => Ok((k, n.to_string())),
            Value::Bool(b) => Ok((k, b.to_string())),
            _ => Err(format!(
                "value of {k:?} must be a string, number or boolean"
            )),
        })
        .collect()
}

impl Instances {
    /// Reads `name`'s `etc/connection.json`: the parameters when they differ from what
    /// it published before (kept as published from now on); `None` when unchanged,
    /// absent, or malformed (counted in `bad_files`, logged rate-limited).
    pub(super) fn read_published(
        &mut self,
        name: &Name,
        bad_files: &mut u64,
    ) -> Option<BTreeMap<String, String>> {
        let params = match read(&self.partitions.path(name)) {
            Ok(Some(p)) => p,
            Ok(None) => return None,
            Err(e) => {
                *bad_files += 1;
                if self.published_log.allow(super::monotonic_now()).is_some() {
                    let why = e.to_string();
                    tracing::warn!(instance = %name, error = why.as_str(), "ignoring malformed etc/connection.json");
                }
                return None;
            }
        };
        if self.published.get(name.as_str()) == Some(&params) {
            return None;
        }
        self.published
            .insert(name.as_str().to_string(), params.clone());
        Some(params)
    }
}

impl Daemon {
    /// Reads every partition's `etc/connection.json` and propagates changes: stored,
    /// reported, and every consumer re-rendered (restarted if its result changed).
    pub(super) fn poll_connections(&mut self) {
        for name in self.instances.names() {
            let Some(params) = self
                .instances
                .read_published(&name, &mut self.counters.bad_connection_files)
            else {
                continue;
            };
            tracing::info!(instance = %name, keys = params.len(), "connection parameters published");
            if let Err(e) = self.outbox.store.put_published(&name, &params) {
                self.store_failed(&e);
            }
            self.record(RecordKind::ConnectionParameters {
                instance: name.clone(),
                parameters: params,
            });
            self.tell_params(&name);
            for c in self.instances.consumers_of(&name) {
                self.restart_if_changed(&c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn flat_values_parse_and_nested_ones_are_refused() {
        let p = parse(r#"{"host":"127.0.0.1","port":5432,"tls":true}"#).unwrap();
        assert_eq!(p["port"], "5432");
        assert_eq!(p["tls"], "true");
        assert!(parse(r#"{"a":{"b":1}}"#).is_err());
        assert!(parse("[1]").is_err());
        assert!(parse("{").is_err());
    }

    #[test]
    fn read_takes_only_a_bounded_regular_file_through_real_directories() {
        use std::os::unix::fs::symlink;
        let tmp = tempfile::tempdir().unwrap();
        let part = tmp.path().join("mine");
        let other = tmp.path().join("other");
        std::fs::create_dir_all(part.join("etc")).unwrap();
        std::fs::create_dir_all(other.join("etc")).unwrap();
        std::fs::write(
            other.join("etc/connection.json"),
            r#"{"password":"theirs"}"#,
        )
        .unwrap();
        let file = part.join("etc/connection.json");

        assert!(read(&part).unwrap().is_none());
        assert!(read(&tmp.path().join("absent")).unwrap().is_none());
        std::fs::write(&file, r#"{"port":1}"#).unwrap();
        assert_eq!(read(&part).unwrap().unwrap()["port"], "1");

        std::fs::remove_file(&file).unwrap();
        nix::unistd::mkfifo(&file, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(matches!(read(&part), Err(ConnectionFileError::NotRegular)));

        std::fs::remove_file(&file).unwrap();
        symlink("/dev/zero", &file).unwrap();
        assert!(matches!(read(&part), Err(ConnectionFileError::Link)));

        std::fs::remove_file(&file).unwrap();
        std::fs::write(&file, vec![b' '; usize::try_from(MAX_FILE).unwrap() + 1]).unwrap();
        assert!(matches!(read(&part), Err(ConnectionFileError::TooLarge)));
        std::fs::write(&file, b"{\"a\":\"\xff\"}").unwrap();
        assert!(matches!(
            read(&part),
            Err(ConnectionFileError::Malformed(_))
        ));

        // `etc -> ../other/etc`: another tenant's file is never read.
        std::fs::remove_dir_all(part.join("etc")).unwrap();
        symlink("../other/etc", part.join("etc")).unwrap();
        assert!(matches!(read(&part), Err(ConnectionFileError::Link)));
        std::fs::remove_file(part.join("etc")).unwrap();
        std::fs::write(part.join("etc"), b"").unwrap();
        assert!(matches!(read(&part), Err(ConnectionFileError::Link)));
    }
}
