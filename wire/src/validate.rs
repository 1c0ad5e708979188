//! Structural checks of decoded messages.
//!
//! Contract: [`Validate::validate`] is implemented for every message type and checks
//! what a receiver relies on for safety and bounded work: the counts and lengths of
//! [`crate::limits`], paths that stay inside a partition, strings that can become argv
//! or environment entries (no NUL, keys without `=`), unique names where the types say
//! "unique", timers that cannot spin (non-zero promise intervals and restart delays),
//! signature length, and strictly increasing `seq` within an `Up`.
//! [`crate::codec::decode`] calls it on every message, [`crate::codec::encode`] before
//! sending. It does *not* judge plausibility of measurements (clock order, counters):
//! a record that is odd but harmless must not wedge a node's outbox.
//!
//! Validation is pure, allocates nothing and runs in time linear in the message size
//! (quadratic only over the small bounded lists checked for uniqueness).

use alloc::collections::BTreeMap;
use alloc::string::String;

use crate::backup::{
    BackupPolicy, SnapshotHeader, MAX_BACKUP_ENTRIES, MAX_BACKUP_PATHS, MAX_ROOT, SEALED_KEY_LEN,
};
use crate::error::WireError;
use crate::limits::*;
use crate::types::*;

/// A message (or part of one) that can check its own bounds.
pub trait Validate {
    /// `Ok` if every bound and rule of this module holds.
    fn validate(&self) -> Result<(), WireError>;
}

fn check(ok: bool, what: &'static str) -> Result<(), WireError> {
    if ok {
        Ok(())
    } else {
        Err(WireError::Invalid(what))
    }
}

/// At most `max` bytes and no NUL (so it can be an argv or environment entry).
fn c_string(
    s: &str,
    max: usize,
    too_long: &'static str,
    nul: &'static str,
) -> Result<(), WireError> {
    check(s.len() <= max, too_long)?;
    check(!s.as_bytes().contains(&0), nul)
}

/// A non-empty path relative to a partition: not absolute, no `..` component, no NUL.
fn relative_path(p: &str) -> Result<(), WireError> {
    check(!p.is_empty(), "empty path")?;
    c_string(p, MAX_PATH, "path too long", "path contains NUL")?;
    check(!p.starts_with('/'), "path is absolute")?;
    check(!p.split('/').any(|c| c == ".."), "path contains '..'")
}

/// No two items share a key. The lists checked are bounded small, so O(n²) is fine and
/// needs no allocation.
fn unique<'a, T, K: PartialEq>(
    items: &'a [T],
    key: impl Fn(&'a T) -> K,
    what: &'static str,
) -> Result<(), WireError> {
    for (i, a) in items.iter().enumerate() {
        let ka = key(a);
        if items[i + 1..].iter().any(|b| key(b) == ka) {
            return Err(WireError::Invalid(what));
        }
    }
    Ok(())
}

pub(crate) fn parameters(map: &BTreeMap<String, String>) -> Result<(), WireError> {
    check(map.len() <= MAX_PARAMETERS, "too many parameters")?;
    for (k, v) in map {
        check(!k.is_empty(), "empty parameter key")?;
        c_string(
            k,
            MAX_PARAMETER_KEY,
            "parameter key too long",
            "parameter key contains NUL",
        )?;
        check(!k.contains('='), "parameter key contains '='")?;
        c_string(
            v,
            MAX_PARAMETER_VALUE,
            "parameter value too long",
            "parameter value contains NUL",
        )?;
    }
    Ok(())
}

fn argv(args: &[String]) -> Result<(), WireError> {
    check(args.len() <= MAX_ARGS, "too many arguments")?;
    for a in args {
        c_string(a, MAX_ARG_LEN, "argument too long", "argument contains NUL")?;
    }
    Ok(())
}

impl Validate for Name {
    /// Names are checked when built and when decoded; this re-checks for callers that
    /// validate generically.
    fn validate(&self) -> Result<(), WireError> {
        Name::new(self.as_str())
            .map(|_| ())
            .map_err(WireError::Name)
    }
}

impl Validate for SoftwareRelease {
    fn validate(&self) -> Result<(), WireError> {
        match self {
            SoftwareRelease::Exec(p) => {
                check(!p.is_empty(), "empty exec program")?;
                c_string(
                    p,
                    MAX_PATH,
                    "exec program too long",
                    "exec program contains NUL",
                )
            }
            SoftwareRelease::Artifact { variants, entry } => {
                check(!variants.is_empty(), "artifact without a variant")?;
                check(variants.len() <= MAX_VARIANTS, "too many artifact variants")?;
                check(
                    variants.iter().all(|v| valid_target(&v.target)),
                    "bad artifact variant target",
                )?;
                unique(variants, |v| v.target.as_str(), "duplicate artifact target")?;
                relative_path(entry).map_err(|_| WireError::Invalid("bad artifact entry path"))
            }
        }
    }
}

impl Validate for ConfigFile {
    fn validate(&self) -> Result<(), WireError> {
        relative_path(&self.path)?;
        check(
            self.template.len() <= MAX_CONFIG_TEMPLATE,
            "config template too long",
        )
    }
}

impl Validate for Limits {
    /// Any value is acceptable; what the host can enforce is the runtime's business.
    fn validate(&self) -> Result<(), WireError> {
        Ok(())
    }
}

impl Validate for RestartPolicy {
    fn validate(&self) -> Result<(), WireError> {
        check(
            self.backoff_base_ms != Some(0),
            "restart backoff base is zero",
        )?;
        if let (Some(base), Some(max)) = (self.backoff_base_ms, self.backoff_max_ms) {
            check(base <= max, "restart backoff base exceeds its maximum")?;
        }
        Ok(())
    }
}

impl Validate for PromiseCheck {
    fn validate(&self) -> Result<(), WireError> {
        match self {
            PromiseCheck::Process => Ok(()),
            PromiseCheck::Tcp { address } => {
                check(!address.is_empty(), "empty tcp promise address")?;
                check(address.len() <= MAX_TARGET, "tcp promise address too long")
            }
            PromiseCheck::Http { url, .. } => {
                check(!url.is_empty(), "empty http promise url")?;
                check(url.len() <= MAX_TARGET, "http promise url too long")
            }
            PromiseCheck::Command { argv: a } => {
                check(!a.is_empty(), "command promise without a program")?;
                argv(a)
            }
            PromiseCheck::File { path, .. } => relative_path(path),
        }
    }
}

impl Validate for PromiseSpec {
    fn validate(&self) -> Result<(), WireError> {
        self.check.validate()?;
        check(self.interval_ms > 0, "promise interval is zero")?;
        check(self.timeout_ms > 0, "promise timeout is zero")?;
        check(self.threshold > 0, "promise threshold is zero")
    }
}

impl Validate for InstanceRequest {
    fn validate(&self) -> Result<(), WireError> {
        self.software.validate()?;
        argv(&self.args)?;
        parameters(&self.parameters)?;
        check(
            self.config_files.len() <= MAX_CONFIG_FILES,
            "too many config files",
        )?;
        self.config_files.iter().try_for_each(Validate::validate)?;
        unique(
            &self.config_files,
            |c| c.path.as_str(),
            "duplicate config file path",
        )?;
        check(self.promises.len() <= MAX_PROMISES, "too many promises")?;
        self.promises.iter().try_for_each(Validate::validate)?;
        unique(&self.promises, |p| &p.name, "duplicate promise name")?;
        self.limits.validate()?;
        self.restart.validate()
    }
}

impl Validate for DesiredState {
    fn validate(&self) -> Result<(), WireError> {
        check(self.instances.len() <= MAX_INSTANCES, "too many instances")?;
        self.instances.iter().try_for_each(Validate::validate)?;
        unique(&self.instances, |i| &i.name, "duplicate instance name")?;
        check(self.terms.len() <= MAX_INSTANCES, "too many instance terms")?;
        unique(&self.terms, |t| &t.instance, "duplicate instance terms")?;
        check(
            self.terms
                .iter()
                .all(|t| self.instances.iter().any(|i| i.name == t.instance)),
            "terms for an instance the state does not carry",
        )?;
        check(self.imports.len() <= MAX_IMPORTS, "too many imports")?;
        unique(&self.imports, |i| &i.instance, "duplicate import")?;
        check(
            !self
                .imports
                .iter()
                .any(|im| self.instances.iter().any(|i| i.name == im.instance)),
            "an import names an instance of the same state",
        )?;
        self.imports
            .iter()
            .try_for_each(|im| parameters(&im.parameters))?;
        let carried = |n: &Name| self.instances.iter().any(|i| &i.name == n);
        check(
            self.backups.len() <= MAX_BACKUP_ENTRIES,
            "too many backup policies",
        )?;
        unique(&self.backups, |b| &b.instance, "duplicate backup policy")?;
        check(
            self.backups.iter().all(|b| carried(&b.instance)),
            "a backup policy for an instance the state does not carry",
        )?;
        self.backups.iter().try_for_each(Validate::validate)?;
        check(
            self.restores.len() <= MAX_BACKUP_ENTRIES,
            "too many restore directives",
        )?;
        unique(
            &self.restores,
            |r| &r.instance,
            "duplicate restore directive",
        )?;
        check(
            self.restores.iter().all(|r| carried(&r.instance)),
            "a restore directive for an instance the state does not carry",
        )?;
        check(
            self.signature.is_empty() || self.signature.len() == SIGNATURE_LEN,
            "signature is neither empty nor 64 bytes",
        )
    }
}

impl Validate for BackupPolicy {
    fn validate(&self) -> Result<(), WireError> {
        check(self.interval_s >= 1, "backup interval is 0")?;
        check(self.retain >= 1, "backup retention is 0")?;
        check(!self.paths.is_empty(), "no backup paths")?;
        check(
            self.paths.len() <= MAX_BACKUP_PATHS,
            "too many backup paths",
        )?;
        self.paths.iter().try_for_each(|p| relative_path(p))?;
        unique(&self.paths, String::as_str, "duplicate backup path")?;
        argv(&self.command)
    }
}

impl Validate for SnapshotHeader {
    fn validate(&self) -> Result<(), WireError> {
        check(self.root.len() <= MAX_ROOT, "snapshot root too long")?;
        check(
            self.sealed_key.len() == SEALED_KEY_LEN,
            "sealed snapshot key is not 80 bytes",
        )
    }
}

impl Validate for RecordKind {
    fn validate(&self) -> Result<(), WireError> {
        match self {
            RecordKind::PromiseResult { message, .. } => check(
                message.len() <= MAX_MESSAGE,
                "promise result message too long",
            ),
            RecordKind::NodeInfo {
                board,
                arch,
                labels,
                region,
                ..
            } => {
                check(
                    board.len() <= NAME_MAX && arch.len() <= NAME_MAX && region.len() <= NAME_MAX,
                    "node info field too long",
                )?;
                parameters(labels)
            }
            RecordKind::Desired { reason, .. } => {
                check(reason.len() <= MAX_MESSAGE, "desired-state reason too long")
            }
            RecordKind::Incident { message, .. } => {
                check(message.len() <= MAX_MESSAGE, "incident message too long")
            }
            RecordKind::LocalRequest { request } => request.validate(),
            RecordKind::Artifact {
                target, message, ..
            } => {
                check(valid_target(target), "bad artifact record target")?;
                check(message.len() <= MAX_MESSAGE, "artifact message too long")
            }
            RecordKind::ConnectionParameters { parameters: p, .. } => parameters(p),
            RecordKind::InstanceState { .. }
            | RecordKind::Usage { .. }
            | RecordKind::NodeHealth { .. }
            | RecordKind::Shed { .. }
            | RecordKind::DesiredExpired { .. }
            | RecordKind::Fence { .. } => Ok(()),
            RecordKind::Relayed(batch) => batch.validate(),
            RecordKind::Backup { message, .. } => {
                check(message.len() <= MAX_MESSAGE, "backup message too long")
            }
        }
    }
}

impl Validate for Record {
    fn validate(&self) -> Result<(), WireError> {
        self.kind.validate()
    }
}

impl Validate for Up {
    fn validate(&self) -> Result<(), WireError> {
        check(self.records.len() <= MAX_RECORDS, "too many records")?;
        check(self.epoch != 0, "epoch 0 is reserved")?;
        check(
            self.records.windows(2).all(|w| w[0].seq < w[1].seq),
            "record seq not strictly increasing",
        )?;
        if let Some((from, to)) = self.covers {
            check(from <= to, "covered range is empty")?;
            check(
                self.records.iter().all(|r| from <= r.seq && r.seq <= to),
                "record outside the covered range",
            )?;
        }
        self.records.iter().try_for_each(Validate::validate)
    }
}

impl Validate for Ack {
    fn validate(&self) -> Result<(), WireError> {
        Ok(())
    }
}

impl Validate for Message {
    fn validate(&self) -> Result<(), WireError> {
        match self {
            Message::Desired(d) => d.validate(),
            Message::Up(u) => u.validate(),
            Message::Ack(a) => a.validate(),
            Message::Fetch(nodes) => check(
                nodes.len() <= crate::mesh::MAX_CARRIED,
                "too many nodes to fetch",
            ),
            Message::Carried(a) => a.validate(),
        }
    }
}
