//! `hedge node backup-probe` (hidden): the backup engine on a directory, measured, for
//! `scripts/bench --only backup`.
//!
//! Contract: opens (creates) a vault in `--vault` (`runtime::backup::Vault`, the engine
//! the node daemon uses), takes a snapshot of `--from` (a partition: the `--path`s in it,
//! default `srv`) and, with `--restore-to`, restores a snapshot into that directory
//! (the one just taken, or `--snapshot ID` without `--from`). Prints one JSON object
//! (`--json`) or one line per phase: bytes, new bytes, chunks, wall seconds, CPU seconds
//! of this process (getrusage: user + system) and its peak RSS (VmHWM; reset between the
//! phases through `/proc/self/clear_refs`, so each phase reports its own peak where the
//! kernel allows it, else the process's peak so far, flagged). No daemon, no network:
//! it runs the same in a node-only build and under qemu-user (where the CPU and RSS are
//! the emulator's, which is what a user of the emulated build pays).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use hedge_runtime::backup::{SnapshotRequest, Vault};
use hedge_wire::backup::{Consistency, SnapshotId};
use hedge_wire::Name;
use serde_json::{json, Value};

use crate::Failure;

/// The flags of `hedge node backup-probe`.
#[derive(Args)]
pub struct ProbeArgs {
    /// The vault directory (the node's would be STATE/backup); created if absent.
    #[arg(long)]
    vault: PathBuf,
    /// The partition to snapshot.
    #[arg(long)]
    from: Option<PathBuf>,
    /// A path within the partition to back up (repeatable; default `srv`).
    #[arg(long = "path")]
    paths: Vec<String>,
    /// The instance the snapshot is filed under.
    #[arg(long, default_value = "probe")]
    instance: String,
    /// Restore into this directory (a partition: its paths are replaced).
    #[arg(long)]
    restore_to: Option<PathBuf>,
    /// The snapshot to restore when no `--from` is given.
    #[arg(long)]
    snapshot: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// CPU seconds (user + system) of this process so far (NaN if getrusage fails).
fn cpu_s() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    let secs = |t: nix::sys::time::TimeVal| {
        // Seconds of CPU time: far below 2^52, exact in an f64.
        #[allow(clippy::cast_precision_loss)]
        let s = t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
        s
    };
    getrusage(UsageWho::RUSAGE_SELF)
        .map_or(f64::NAN, |r| secs(r.user_time()) + secs(r.system_time()))
}

/// VmHWM in KiB (the peak resident set), from /proc/self/status; None if unreadable.
fn peak_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Resets VmHWM to the current RSS (`echo 5 > /proc/self/clear_refs`); whether it could.
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", b"5").is_ok()
}

/// One measured phase: `f`'s result with wall and CPU seconds and the peak RSS.
fn measured<T>(
    f: impl FnOnce() -> Result<T, Failure>,
) -> Result<(T, serde_json::Map<String, Value>), Failure> {
    let reset = reset_peak();
    let before = cpu_s();
    #[allow(clippy::disallowed_methods)] // a measurement driver: wall time of one phase
    let start = Instant::now();
    let out = f()?;
    let wall = start.elapsed().as_secs_f64();
    let cpu = cpu_s() - before;
    let mut m = serde_json::Map::new();
    m.insert("wall_s".into(), json!(wall));
    m.insert("cpu_s".into(), json!(cpu));
    m.insert("peak_rss_kib".into(), json!(peak_rss_kib()));
    m.insert("peak_rss_is_phase".into(), json!(reset));
    Ok((out, m))
}

/// Bytes of regular files under `dir` (symlinks not followed).
fn tree_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                total += e.metadata().map_or(0, |m| m.len());
            }
        }
    }
    total
}

/// Runs the probe.
pub fn main(a: ProbeArgs) -> Result<(), Failure> {
    crate::process::tune_allocator();
    let instance = Name::new(&a.instance)
        .map_err(|e| Failure::usage(anyhow::anyhow!("--instance {:?}: {e}", a.instance)))?;
    let paths = if a.paths.is_empty() {
        vec!["srv".to_string()]
    } else {
        a.paths.clone()
    };
    std::fs::create_dir_all(&a.vault)
        .with_context(|| format!("cannot create {}", a.vault.display()))?;
    let vault = Vault::open(&a.vault).map_err(Failure::from)?;
    let mut out = serde_json::Map::new();
    let mut restore_id = match &a.snapshot {
        Some(s) => Some(
            s.parse::<SnapshotId>()
                .map_err(|e| Failure::usage(anyhow::anyhow!("--snapshot {s:?}: {e:?}")))?,
        ),
        None => None,
    };
    if let Some(from) = &a.from {
        let now_ms = hedge_common::clock::now_ms();
        let (snap, mut m) = measured(|| {
            vault
                .snapshot(&SnapshotRequest {
                    instance: &instance,
                    partition: from,
                    paths: &paths,
                    consistency: Consistency::Live,
                    now_ms,
                })
                .map_err(Failure::from)
        })?;
        m.insert("id".into(), json!(snap.id.to_string()));
        m.insert("bytes".into(), json!(snap.bytes));
        m.insert("new_bytes".into(), json!(snap.new_bytes));
        m.insert("chunks".into(), json!(snap.chunks));
        m.insert("vault_bytes".into(), json!(tree_bytes(&a.vault)));
        out.insert("snapshot".into(), Value::Object(m));
        restore_id.get_or_insert(snap.id);
    }
    if let Some(to) = &a.restore_to {
        let id = restore_id.ok_or_else(|| {
            Failure::usage(anyhow::anyhow!("--restore-to needs --from or --snapshot"))
        })?;
        std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
        let ((), mut m) = measured(|| {
            vault
                .restore(&instance, id, to, None)
                .map_err(Failure::from)?;
            Ok(())
        })?;
        m.insert("id".into(), json!(id.to_string()));
        m.insert("bytes".into(), json!(tree_bytes(to)));
        out.insert("restore".into(), Value::Object(m));
    }
    if out.is_empty() {
        return Err(Failure::usage(anyhow::anyhow!(
            "nothing to do: give --from and/or --restore-to"
        )));
    }
    if a.json {
        println!("{}", serde_json::to_string(&Value::Object(out))?);
    } else {
        for (phase, m) in &out {
            println!("{phase}: {m}");
        }
    }
    Ok(())
}
