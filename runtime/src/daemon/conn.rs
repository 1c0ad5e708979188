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

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hedge_wire::{Name, RecordKind};
use serde_json::Value;

use super::Daemon;
use crate::render;

/// How often partitions are checked for a new `etc/connection.json`.
pub const POLL: Duration = Duration::from_secs(1);

/// Largest `connection.json` read.
pub const MAX_FILE: u64 = 64 * 1024;

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

impl Daemon {
    /// Reads every partition's `etc/connection.json` and propagates changes.
    pub(super) fn poll_connections(&mut self) {
        let names: Vec<Name> = self.slots.keys().cloned().collect();
        for name in names {
            let path = self.partitions.path(&name).join("etc/connection.json");
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if !meta.is_file() || meta.len() > MAX_FILE {
                self.bad_connection_file(&name, "not a regular file of at most 64 KiB");
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let params = match parse(&text) {
                Ok(p) => p,
                Err(e) => {
                    self.bad_connection_file(&name, &e);
                    continue;
                }
            };
            if self.conns.get(name.as_str()) == Some(&params) {
                continue;
            }
            tracing::info!(instance = %name, keys = params.len(), "connection parameters published");
            if let Err(e) = self.store.put_conn(&name, &params) {
                self.store_failed(&e);
            }
            self.conns.insert(name.as_str().to_string(), params.clone());
            self.record(RecordKind::ConnectionParameters {
                instance: name.clone(),
                parameters: params,
            });
            let consumers: Vec<Name> = self
                .slots
                .iter()
                .filter(|(_, s)| render::references(&s.request).contains(name.as_str()))
                .map(|(n, _)| n.clone())
                .collect();
            for c in consumers {
                self.restart_if_changed(&c);
            }
        }
    }

    fn bad_connection_file(&mut self, name: &Name, why: &str) {
        self.counters.bad_connection_files += 1;
        if self.conn_log.allow(Instant::now()).is_some() {
            tracing::warn!(instance = %name, error = why, "ignoring malformed etc/connection.json");
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
}
