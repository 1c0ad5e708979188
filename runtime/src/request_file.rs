//! Request files (`hedge node request --file app.toml`) and the equivalent CLI flags.
//!
//! Contract: [`parse_toml`] and [`from_flags`] turn user input into an
//! [`InstanceRequest`] or a [`RequestError`] that names the offending key or value.
//! `software` is `exec:PROGRAM`, `sha256:HEX` (an artifact for any target) or
//! `release:NAME` (every variant the master was supplied for release NAME: only where a
//! resolver is given, see [`parse_toml_with`]); an artifact needs `entry`, the program's
//! path inside it.
//! Everything is checked here, before the daemon sees it: unknown keys, names, the
//! software spec, config-file paths (relative, no `..`), sizes, promise specs, and the
//! wire bounds. Nothing touches the disk.
//!
//! ```toml
//! name = "web"
//! software = "exec:/usr/bin/python3"   # or "sha256:HEX" / "release:NAME" with entry = "bin/app"
//! args = ["-m", "http.server", "{{port}}"]
//! state = "started"          # started | stopped | destroyed
//! [parameters]
//! port = "18080"
//! [[config_files]]
//! path = "etc/app.conf"
//! template = "listen={{port}}\n"
//! [limits]
//! memory_max = "64M"         # also cpu_max_percent, nofile, nproc
//! [restart]
//! backoff_base_ms = 100      # also backoff_max_ms
//! [[promises]]
//! name = "port"
//! kind = "tcp"               # process | tcp | http | command | file
//! address = "127.0.0.1:{{port}}"
//! [backup]
//! interval = "1h"            # seconds (3600), or "30s", "5m", "1h"
//! retain = 24                # snapshots kept (default 24)
//! paths = ["srv"]            # within the partition (default ["srv"])
//! command = ["sh", "-c", "sqlite3 srv/db .dump > srv/dump.sql"]  # optional
//! ```
//!
//! `[backup]` is not part of the [`InstanceRequest`]: [`parse_backup`] (and
//! [`parse_toml_full`]) turn it into the instance's [`BackupPolicy`], checked by the
//! wire's `Validate`, which the master carries in the node's signed desired state and a
//! node keeps with a local request.

use std::collections::BTreeMap;

use hedge_wire::backup::BackupPolicy;
use hedge_wire::{
    ArtifactVariant, ConfigFile, InstanceRequest, Limits, Name, PromiseCheck, PromiseSpec,
    RequestedState, RestartPolicy, SoftwareRelease,
};
use serde::Deserialize;

use crate::partition::{check_rel_path, parse_size};

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Malformed TOML or an unknown key (toml's message names the key and line).
    #[error(transparent)]
    Toml(#[from] toml::de::Error),
    /// A name that is not a valid name.
    #[error("{field} {value:?}: {reason}")]
    Name {
        /// Which field.
        field: &'static str,
        /// The value given.
        value: String,
        /// Why it is refused.
        reason: hedge_wire::NameError,
    },
    /// Any other bad value.
    #[error("{field}: {reason}")]
    Value {
        /// Which field.
        field: String,
        /// Why it is refused.
        reason: String,
    },
}

fn name(field: &'static str, value: &str) -> Result<Name, RequestError> {
    Name::new(value).map_err(|reason| RequestError::Name {
        field,
        value: value.into(),
        reason,
    })
}

fn bad(field: impl Into<String>, reason: impl ToString) -> RequestError {
    RequestError::Value {
        field: field.into(),
        reason: reason.to_string(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToml {
    name: String,
    software: String,
    #[serde(default)]
    entry: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    state: StateToml,
    #[serde(default)]
    parameters: BTreeMap<String, String>,
    #[serde(default)]
    config_files: Vec<ConfigFileToml>,
    #[serde(default)]
    promises: Vec<PromiseToml>,
    #[serde(default)]
    limits: LimitsToml,
    #[serde(default)]
    restart: RestartToml,
    #[serde(default)]
    backup: Option<BackupToml>,
}

/// `[backup]`: an instance's backup policy.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupToml {
    interval: IntervalToml,
    #[serde(default)]
    retain: Option<u16>,
    #[serde(default)]
    paths: Option<Vec<String>>,
    #[serde(default)]
    command: Vec<String>,
}

/// A time between snapshots: seconds, or a number with a unit (`s`, `m`, `h`).
#[derive(Deserialize)]
#[serde(untagged)]
enum IntervalToml {
    Seconds(i64),
    Text(String),
}

/// Snapshots kept when `[backup]` says nothing.
pub const DEFAULT_RETAIN: u16 = 24;
/// The path backed up when `[backup]` names none.
pub const DEFAULT_BACKUP_PATH: &str = "srv";

fn interval_s(i: &IntervalToml) -> Result<u32, RequestError> {
    let field = "backup.interval";
    let secs: u64 = match i {
        IntervalToml::Seconds(n) => u64::try_from(*n).map_err(|_| bad(field, "negative"))?,
        IntervalToml::Text(t) => {
            let t = t.trim();
            let (digits, unit) =
                t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
            let n: u64 = digits.parse().map_err(|_| {
                bad(
                    field,
                    format!("{t:?} is not seconds or a number with s, m or h"),
                )
            })?;
            let scale = match unit {
                "" | "s" => 1,
                "m" => 60,
                "h" => 3600,
                other => return Err(bad(field, format!("unit {other:?} is not one of s, m, h"))),
            };
            n.checked_mul(scale).ok_or_else(|| bad(field, "too long"))?
        }
    };
    if secs == 0 {
        return Err(bad(field, "must be at least 1 s"));
    }
    u32::try_from(secs).map_err(|_| bad(field, "too long"))
}

fn backup_policy(b: BackupToml, instance: Name) -> Result<BackupPolicy, RequestError> {
    use hedge_wire::validate::Validate;
    let p = BackupPolicy {
        instance,
        interval_s: interval_s(&b.interval)?,
        retain: b.retain.unwrap_or(DEFAULT_RETAIN),
        paths: b
            .paths
            .unwrap_or_else(|| vec![DEFAULT_BACKUP_PATH.to_string()]),
        command: b.command,
    };
    if p.retain == 0 {
        return Err(bad("backup.retain", "must be at least 1"));
    }
    for path in &p.paths {
        check_rel_path(path).map_err(|e| bad(format!("backup.paths {path:?}"), e))?;
    }
    p.validate().map_err(|e| bad("backup", e))?;
    Ok(p)
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum StateToml {
    #[default]
    Started,
    Stopped,
    Destroyed,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFileToml {
    path: String,
    template: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LimitsToml {
    memory_max: Option<String>,
    cpu_max_percent: Option<u32>,
    nofile: Option<u64>,
    nproc: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RestartToml {
    backoff_base_ms: Option<u32>,
    backoff_max_ms: Option<u32>,
}

/// One `[[promises]]` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PromiseToml {
    name: String,
    kind: String,
    address: Option<String>,
    url: Option<String>,
    status: Option<u16>,
    max_latency_ms: Option<u32>,
    command: Option<Vec<String>>,
    path: Option<String>,
    max_age_s: Option<u32>,
    interval_ms: Option<u32>,
    timeout_ms: Option<u32>,
    threshold: Option<u8>,
}

/// Default promise timing: every 10 s, 5 s timeout, anomaly after 3 failures.
const PROMISE_INTERVAL_MS: u32 = 10_000;
const PROMISE_TIMEOUT_MS: u32 = 5_000;
const PROMISE_THRESHOLD: u8 = 3;

fn promise(p: PromiseToml) -> Result<PromiseSpec, RequestError> {
    let field = |f: &str| format!("promises.{}.{f}", p.name);
    let need = |v: &Option<String>, f: &str| {
        v.clone()
            .ok_or_else(|| bad(field(f), format!("required for kind {:?}", p.kind)))
    };
    let check = match p.kind.as_str() {
        "process" => PromiseCheck::Process,
        "tcp" => PromiseCheck::Tcp {
            address: need(&p.address, "address")?,
        },
        "http" => PromiseCheck::Http {
            url: need(&p.url, "url")?,
            status: p.status.unwrap_or(200),
            max_latency_ms: p.max_latency_ms.unwrap_or(1000),
        },
        "command" => PromiseCheck::Command {
            argv: p.command.clone().filter(|c| !c.is_empty()).ok_or_else(|| {
                bad(
                    field("command"),
                    "required (a non-empty list) for kind \"command\"",
                )
            })?,
        },
        "file" => {
            let path = need(&p.path, "path")?;
            check_rel_path(&path).map_err(|e| bad(field("path"), e))?;
            PromiseCheck::File {
                path,
                max_age_s: p.max_age_s.unwrap_or(60),
            }
        }
        other => {
            return Err(bad(
                field("kind"),
                format!("{other:?} is not one of process, tcp, http, command, file"),
            ))
        }
    };
    let interval_ms = p.interval_ms.unwrap_or(PROMISE_INTERVAL_MS);
    let timeout_ms = p.timeout_ms.unwrap_or(PROMISE_TIMEOUT_MS.min(interval_ms));
    if interval_ms < 100 || timeout_ms == 0 || timeout_ms > interval_ms {
        return Err(bad(
            field("interval_ms"),
            "need interval_ms >= 100 and 0 < timeout_ms <= interval_ms",
        ));
    }
    let threshold = p.threshold.unwrap_or(PROMISE_THRESHOLD);
    if threshold == 0 {
        return Err(bad(field("threshold"), "must be at least 1"));
    }
    Ok(PromiseSpec {
        name: name("promise name", &p.name)?,
        check,
        interval_ms,
        timeout_ms,
        threshold,
    })
}

/// Looks up the variants of a named release (`release:NAME`); `Err` says why not.
pub type Releases<'a> = &'a dyn Fn(&Name) -> Result<Vec<ArtifactVariant>, String>;

/// The resolver of the node: releases are the master's.
pub fn no_releases(name: &Name) -> Result<Vec<ArtifactVariant>, String> {
    Err(format!(
        "release:{name} is resolved by the master only (`hedge master request`); use sha256:HEX here"
    ))
}

fn software(
    spec: &str,
    entry: Option<String>,
    releases: Releases<'_>,
) -> Result<SoftwareRelease, RequestError> {
    let software = match spec.strip_prefix("release:") {
        Some(r) => {
            let n = name("software release", r)?;
            let variants = releases(&n).map_err(|e| bad("software", e))?;
            if variants.is_empty() {
                return Err(bad("software", format!("release {n:?} has no variant")));
            }
            SoftwareRelease::Artifact {
                variants,
                entry: String::new(),
            }
        }
        None => spec.parse().map_err(|e| bad("software", e))?,
    };
    match (software, entry) {
        (SoftwareRelease::Artifact { variants, .. }, Some(entry)) => {
            check_rel_path(&entry).map_err(|e| bad("entry", e))?;
            Ok(SoftwareRelease::Artifact { variants, entry })
        }
        (SoftwareRelease::Artifact { entry, .. }, None) if entry.is_empty() => Err(bad(
            "entry",
            "required for an artifact: the program's path inside it (e.g. bin/app)",
        )),
        (a @ SoftwareRelease::Artifact { .. }, None) => Ok(a),
        (SoftwareRelease::Exec(_), Some(_)) => Err(bad(
            "entry",
            "only for artifacts (sha256:, release:); exec: names its program itself",
        )),
        (e @ SoftwareRelease::Exec(_), None) => Ok(e),
    }
}

fn build(f: FileToml, releases: Releases<'_>) -> Result<InstanceRequest, RequestError> {
    let software = software(&f.software, f.entry, releases)?;
    for k in f.parameters.keys() {
        if k.is_empty()
            || !k
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
        {
            return Err(bad(
                format!("parameters.{k}"),
                "keys may hold only A-Z a-z 0-9 _ -",
            ));
        }
    }
    let mut config_files = Vec::new();
    for c in f.config_files {
        check_rel_path(&c.path).map_err(|e| bad(format!("config_files {:?}", c.path), e))?;
        config_files.push(ConfigFile {
            path: c.path,
            template: c.template,
        });
    }
    let mut promises = Vec::new();
    for p in f.promises {
        let p = promise(p)?;
        if promises.iter().any(|q: &PromiseSpec| q.name == p.name) {
            return Err(bad(
                format!("promises.{}", p.name),
                "duplicate promise name",
            ));
        }
        promises.push(p);
    }
    let memory_max = f
        .limits
        .memory_max
        .as_deref()
        .map(parse_size)
        .transpose()
        .map_err(|e| bad("limits.memory_max", e))?;
    if f.limits.cpu_max_percent == Some(0) {
        return Err(bad("limits.cpu_max_percent", "must be at least 1"));
    }
    let req = InstanceRequest {
        name: name("name", &f.name)?,
        software,
        args: f.args,
        parameters: f.parameters,
        config_files,
        promises,
        limits: Limits {
            memory_max,
            cpu_max_percent: f.limits.cpu_max_percent,
            nofile: f.limits.nofile,
            nproc: f.limits.nproc,
        },
        restart: RestartPolicy {
            backoff_base_ms: f.restart.backoff_base_ms,
            backoff_max_ms: f.restart.backoff_max_ms,
        },
        state: match f.state {
            StateToml::Started => RequestedState::Started,
            StateToml::Stopped => RequestedState::Stopped,
            StateToml::Destroyed => RequestedState::Destroyed,
        },
    };
    check_bounds(&req)?;
    Ok(req)
}

/// Checks the wire bounds (sizes of lists and strings) so the request can be stored,
/// reported and synced.
pub fn check_bounds(req: &InstanceRequest) -> Result<(), RequestError> {
    use hedge_wire::validate::Validate;
    req.validate().map_err(|e| bad("request", e))
}

/// The backup policy of the instance a request file's text names (its `[backup]`
/// table; `None` without one), checked like the rest of the file.
pub fn parse_backup(text: &str) -> Result<Option<BackupPolicy>, RequestError> {
    let f: FileToml = toml::from_str(text)?;
    let instance = name("name", &f.name)?;
    f.backup.map(|b| backup_policy(b, instance)).transpose()
}

/// A request file's request and backup policy ([`parse_toml_with`], [`parse_backup`]).
pub fn parse_toml_full(
    text: &str,
    releases: Releases<'_>,
) -> Result<(InstanceRequest, Option<BackupPolicy>), RequestError> {
    let mut f: FileToml = toml::from_str(text)?;
    let backup = f.backup.take();
    let request = build(f, releases)?;
    let backup = backup
        .map(|b| backup_policy(b, request.name.clone()))
        .transpose()?;
    Ok((request, backup))
}

/// Parses a request file's text (`release:` is refused: see [`parse_toml_with`]).
pub fn parse_toml(text: &str) -> Result<InstanceRequest, RequestError> {
    parse_toml_with(text, &no_releases)
}

/// Parses a request file's text, resolving `release:NAME` with `releases`.
pub fn parse_toml_with(
    text: &str,
    releases: Releases<'_>,
) -> Result<InstanceRequest, RequestError> {
    build(toml::from_str(text)?, releases)
}

/// Flags of `hedge node request NAME --software S [--arg A]... [--param k=v]... [--promise SPEC]...`.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    /// Instance name.
    pub name: String,
    /// Software spec.
    pub software: String,
    /// The program inside an artifact (`--entry`).
    pub entry: Option<String>,
    /// `--arg` values, in order.
    pub args: Vec<String>,
    /// `k=v` parameters.
    pub params: Vec<String>,
    /// Promise specs: `[NAME=]KIND[:TARGET]`, e.g. `process`, `port=tcp:127.0.0.1:{{port}}`,
    /// `http:http://127.0.0.1:8080/`, `beat=file:var/beat`, `ok=command:/bin/true`.
    pub promises: Vec<String>,
    /// `started` (default), `stopped`.
    pub state: Option<String>,
}

fn promise_from_spec(spec: &str) -> Result<PromiseToml, RequestError> {
    let (pname, rest) = match spec.split_once('=') {
        Some((n, r)) if !n.contains(':') => (Some(n.to_string()), r),
        _ => (None, spec),
    };
    let (kind, target) = match rest.split_once(':') {
        Some((k, t)) => (k.to_string(), Some(t.to_string())),
        None => (rest.to_string(), None),
    };
    let mut p = PromiseToml {
        name: pname.unwrap_or_else(|| kind.clone()),
        kind: kind.clone(),
        address: None,
        url: None,
        status: None,
        max_latency_ms: None,
        command: None,
        path: None,
        max_age_s: None,
        interval_ms: None,
        timeout_ms: None,
        threshold: None,
    };
    match kind.as_str() {
        "tcp" => p.address = target,
        "http" => p.url = target,
        "file" => p.path = target,
        "command" => p.command = target.map(|t| t.split_whitespace().map(String::from).collect()),
        _ => {}
    }
    Ok(p)
}

/// Builds a request from CLI flags, with the same checks as a file (`release:` refused).
pub fn from_flags(flags: &Flags) -> Result<InstanceRequest, RequestError> {
    from_flags_with(flags, &no_releases)
}

/// Builds a request from CLI flags, resolving `release:NAME` with `releases`.
pub fn from_flags_with(
    flags: &Flags,
    releases: Releases<'_>,
) -> Result<InstanceRequest, RequestError> {
    let mut parameters = BTreeMap::new();
    for kv in &flags.params {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| bad(format!("--param {kv:?}"), "expected key=value"))?;
        parameters.insert(k.to_string(), v.to_string());
    }
    let state = match flags.state.as_deref() {
        None | Some("started") => StateToml::Started,
        Some("stopped") => StateToml::Stopped,
        Some(other) => {
            return Err(bad(
                "--state",
                format!("{other:?} is not started or stopped"),
            ))
        }
    };
    build(
        FileToml {
            name: flags.name.clone(),
            software: flags.software.clone(),
            entry: flags.entry.clone(),
            args: flags.args.clone(),
            state,
            parameters,
            config_files: vec![],
            promises: flags
                .promises
                .iter()
                .map(|s| promise_from_spec(s))
                .collect::<Result<_, _>>()?,
            limits: LimitsToml::default(),
            restart: RestartToml::default(),
            backup: None,
        },
        releases,
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const EXAMPLE: &str = r#"
name = "web"
software = "exec:/usr/bin/python3"
args = ["-m", "http.server", "{{port}}"]
state = "started"
[parameters]
port = "18080"
[[config_files]]
path = "etc/app.conf"
template = "listen={{port}}\n"
[limits]
memory_max = "64M"
[[promises]]
name = "port"
kind = "tcp"
address = "127.0.0.1:{{port}}"
"#;

    #[test]
    fn the_documented_example_parses() {
        let r = parse_toml(EXAMPLE).unwrap();
        assert_eq!(r.name.as_str(), "web");
        assert_eq!(r.limits.memory_max, Some(64 << 20));
        assert_eq!(r.parameters["port"], "18080");
        assert_eq!(r.promises[0].threshold, 3);
    }

    #[test]
    fn bad_input_names_the_problem() {
        let cases = [
            (
                EXAMPLE.replace("name = \"web\"", "name = \"../web\""),
                "name",
            ),
            (
                EXAMPLE.replace("path = \"etc/app.conf\"", "path = \"../../etc/passwd\""),
                "config_files",
            ),
            (
                EXAMPLE.replace("path = \"etc/app.conf\"", "path = \"/etc/passwd\""),
                "config_files",
            ),
            (
                EXAMPLE.replace("state = \"started\"", "state = \"running\""),
                "state",
            ),
            (
                EXAMPLE.replace("memory_max = \"64M\"", "memory_max = \"lots\""),
                "memory_max",
            ),
            (
                EXAMPLE.replace("[limits]", "colour = 1\n[limits]"),
                "colour",
            ),
            (EXAMPLE.replace("kind = \"tcp\"", "kind = \"ping\""), "kind"),
            (
                EXAMPLE.replace(
                    "software = \"exec:/usr/bin/python3\"",
                    "software = \"docker:nginx\"",
                ),
                "software",
            ),
            ("name = ".to_string(), "TOML"),
        ];
        for (text, word) in cases {
            let err = parse_toml(&text).unwrap_err().to_string();
            assert!(
                err.to_lowercase().contains(&word.to_lowercase()),
                "{word}: {err}"
            );
        }
    }

    #[test]
    fn artifacts_need_an_entry_and_releases_a_resolver() {
        let h = "ab".repeat(32);
        let file = |software: &str, entry: &str| {
            format!("name = \"a\"\nsoftware = \"{software}\"\n{entry}")
        };
        let r = parse_toml(&file(&format!("sha256:{h}"), "entry = \"bin/app\"")).unwrap();
        assert_eq!(r.software.artifact_for("any"), Some([0xab; 32]));
        assert!(
            matches!(&r.software, SoftwareRelease::Artifact { entry, .. } if entry == "bin/app")
        );
        for (software, entry, word) in [
            (format!("sha256:{h}"), "", "entry"),
            (format!("sha256:{h}"), "entry = \"../x\"", "entry"),
            (format!("sha256:{h}"), "entry = \"/bin/sh\"", "entry"),
            ("exec:/bin/true".to_string(), "entry = \"x\"", "entry"),
            ("release:web".to_string(), "entry = \"x\"", "master"),
            ("release:../x".to_string(), "entry = \"x\"", "release"),
        ] {
            let err = parse_toml(&file(&software, entry)).unwrap_err().to_string();
            assert!(err.contains(word), "{software} {entry}: {err}");
        }
        let releases = |n: &Name| -> Result<Vec<ArtifactVariant>, String> {
            match n.as_str() {
                "web" => Ok(vec![
                    ArtifactVariant {
                        target: "aarch64-unknown-linux-gnu".into(),
                        sha256: [1; 32],
                    },
                    ArtifactVariant {
                        target: "x86_64-unknown-linux-gnu".into(),
                        sha256: [2; 32],
                    },
                ]),
                other => Err(format!("no release {other}")),
            }
        };
        let r = parse_toml_with(&file("release:web", "entry = \"bin/app\""), &releases).unwrap();
        assert_eq!(
            r.software.artifact_for("x86_64-unknown-linux-gnu"),
            Some([2; 32])
        );
        assert_eq!(
            r.software.artifact_for("armv7-unknown-linux-gnueabihf"),
            None
        );
        let err = parse_toml_with(&file("release:db", "entry = \"x\""), &releases).unwrap_err();
        assert!(err.to_string().contains("no release db"), "{err}");
        let r = from_flags_with(
            &Flags {
                name: "a".into(),
                software: "release:web".into(),
                entry: Some("bin/app".into()),
                ..Default::default()
            },
            &releases,
        )
        .unwrap();
        assert_eq!(
            r.software.artifact_for("aarch64-unknown-linux-gnu"),
            Some([1; 32])
        );
    }

    #[test]
    fn backup_policies_parse_with_defaults_and_refuse_bad_values() {
        assert_eq!(parse_backup(EXAMPLE).unwrap(), None);
        let with = |backup: &str| format!("{EXAMPLE}[backup]\n{backup}\n");
        let p = parse_backup(&with("interval = \"5m\"")).unwrap().unwrap();
        assert_eq!(p.instance.as_str(), "web");
        assert_eq!(p.interval_s, 300);
        assert_eq!(p.retain, 24);
        assert_eq!(p.paths, vec!["srv".to_string()]);
        assert!(p.command.is_empty());
        let (r, p) = parse_toml_full(
            &with("interval = 90\nretain = 3\npaths = [\"srv\", \"etc/db\"]\ncommand = [\"sh\", \"-c\", \"true\"]"),
            &no_releases,
        )
        .unwrap();
        let p = p.unwrap();
        assert_eq!(r.name, p.instance);
        assert_eq!((p.interval_s, p.retain), (90, 3));
        assert_eq!(p.paths, vec!["srv".to_string(), "etc/db".to_string()]);
        assert_eq!(p.command.len(), 3);
        for (i, s) in [("\"30s\"", 30), ("\"1h\"", 3600), ("7", 7), ("\"12\"", 12)] {
            let p = parse_backup(&with(&format!("interval = {i}")))
                .unwrap()
                .unwrap();
            assert_eq!(p.interval_s, s, "{i}");
        }
        for (backup, word) in [
            ("interval = 0", "interval"),
            ("interval = -5", "interval"),
            ("interval = \"5d\"", "interval"),
            ("interval = \"soon\"", "interval"),
            ("interval = \"99999999h\"", "interval"),
            ("retain = 3", "interval"),
            ("interval = 60\nretain = 0", "retain"),
            ("interval = 60\npaths = [\"../x\"]", "paths"),
            ("interval = 60\npaths = [\"/srv\"]", "paths"),
            ("interval = 60\npaths = []", "backup"),
            ("interval = 60\npaths = [\"srv\", \"srv\"]", "backup"),
            ("interval = 60\ncolour = 1", "colour"),
        ] {
            let err = parse_backup(&with(backup)).unwrap_err().to_string();
            assert!(err.contains(word), "{backup}: {err}");
            assert!(
                parse_toml_full(&with(backup), &no_releases).is_err(),
                "{backup}"
            );
        }
        // The request alone ignores [backup] but still refuses a malformed one.
        assert!(parse_toml(&with("interval = 60")).is_ok());
        assert!(parse_toml(&with("colour = 1")).is_err());
    }

    #[test]
    fn flags_build_the_same_request() {
        let r = from_flags(&Flags {
            name: "sleeper".into(),
            software: "exec:/bin/sleep".into(),
            args: vec!["100".into()],
            params: vec!["port=80".into()],
            promises: vec!["process".into(), "up=tcp:127.0.0.1:{{port}}".into()],
            state: None,
            entry: None,
        })
        .unwrap();
        assert_eq!(r.promises.len(), 2);
        assert_eq!(r.promises[1].name.as_str(), "up");
        assert!(
            matches!(&r.promises[1].check, PromiseCheck::Tcp { address } if address == "127.0.0.1:{{port}}")
        );
        assert!(from_flags(&Flags {
            name: "x".into(),
            software: "exec:/bin/true".into(),
            params: vec!["novalue".into()],
            ..Default::default()
        })
        .is_err());
    }
}
