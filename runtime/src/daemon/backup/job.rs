//! One backup or restore, as the backup thread runs it.
//!
//! Contract: [`snapshot`] makes the instance consistent — the policy's command (exit 0)
//! → `Command`; else its cgroup frozen (at most `freeze_max`, thawed always, see
//! `freeze.rs`) → `Frozen`; else, or when the freeze fails or outlasts its bound →
//! `Live` — takes the snapshot with the vault, then prunes the instance's snapshots
//! to the policy's `retain` ([`keep`] says which not-uploaded ones survive). [`restore`]
//! rebuilds the instance's paths from a local snapshot. Both block: the daemon runs them
//! on a blocking thread, one at a time, and gets [`super::Done`] back as an event.

use std::path::PathBuf;
use std::time::Duration;

use hedge_wire::{Consistency, Name, SnapshotId};

use super::command::{self, CommandSpec};
use super::freeze;
use crate::backup::{LocalSnapshot, PruneSummary, RestoreSummary, SnapshotRequest, Vault};
use crate::partition::cgroup::Cgroup;

/// Everything one snapshot needs, gathered on the loop.
#[derive(Debug, Clone)]
pub(crate) struct SnapshotJob {
    pub instance: Name,
    pub partition: PathBuf,
    pub paths: Vec<String>,
    /// The policy's command, if it has one.
    pub command: Option<CommandSpec>,
    /// The instance's cgroup, where the node has cgroup v2 and it was started.
    pub cgroup: Option<Cgroup>,
    pub freeze_max: Duration,
    /// `(retain, uploads)`: prune to the policy's retain after the snapshot; `uploads`:
    /// the node uploads snapshots (it has a master), so not-uploaded ones are kept
    /// longer. `None`: no policy, nothing pruned.
    pub prune: Option<(u16, bool)>,
}

/// What a snapshot job did.
#[derive(Debug)]
pub(crate) struct Taken {
    pub snapshot: LocalSnapshot,
    /// Why the consistency is weaker than it could have been (empty otherwise).
    pub note: String,
    /// How long the instance was frozen, ms (a `Frozen` snapshot).
    pub frozen_ms: Option<u64>,
    pub pruned: Option<Result<PruneSummary, String>>,
}

/// The snapshots pruning must spare beyond the newest `retain`: the not-uploaded ones
/// among the newest `2 × retain` when the node uploads (the uploader has not sent them
/// yet; a node that cannot upload for long keeps at most twice its retain, the oldest
/// unsent go), none when it does not. `snapshots` oldest first. Pure.
pub(crate) fn keep(snapshots: &[LocalSnapshot], retain: u16, uploads: bool) -> Vec<SnapshotId> {
    if !uploads {
        return Vec::new();
    }
    snapshots
        .iter()
        .rev()
        .take(usize::from(retain).saturating_mul(2))
        .filter(|s| !s.uploaded && s.source.is_none())
        .map(|s| s.id)
        .collect()
}

/// Takes the snapshot `job` describes.
pub(crate) fn snapshot(vault: &Vault, job: &SnapshotJob) -> Result<Taken, String> {
    let started = super::super::monotonic_now();
    let mut note = String::new();
    let mut frozen_ms = None;
    let take = |consistency| {
        vault
            .snapshot(&SnapshotRequest {
                instance: &job.instance,
                partition: &job.partition,
                paths: &job.paths,
                consistency,
                now_ms: hedge_common::clock::now_ms(),
            })
            .map_err(|e| e.to_string())
    };
    let snapshot = if let Some(cmd) = &job.command {
        command::run(cmd, started)?;
        take(Consistency::Command)?
    } else if let Some(group) = &job.cgroup {
        match freeze::freeze(group, job.freeze_max, started) {
            Ok(frozen) => {
                let taken = take(Consistency::Frozen);
                let held = frozen.held();
                drop(frozen);
                let ms = super::super::monotonic_now().saturating_duration_since(started);
                frozen_ms = Some(u64::try_from(ms.as_millis()).unwrap_or(u64::MAX));
                let mut s = taken?;
                if !held {
                    s.consistency = Consistency::Live;
                    note = format!(
                        "thawed after freeze_max_ms ({} ms) before the snapshot ended: live",
                        job.freeze_max.as_millis()
                    );
                }
                s
            }
            Err(why) => {
                note = format!("cannot freeze ({why}): live");
                take(Consistency::Live)?
            }
        }
    } else {
        take(Consistency::Live)?
    };
    let pruned = job.prune.map(|(retain, uploads)| {
        let all = vault
            .snapshots(Some(&job.instance))
            .map_err(|e| e.to_string())?;
        let keep = keep(&all, retain, uploads);
        vault
            .prune(&job.instance, retain, &keep)
            .map_err(|e| e.to_string())
    });
    Ok(Taken {
        snapshot,
        note,
        frozen_ms,
        pruned,
    })
}

/// Restores `id` into the instance's partition (the instance is stopped).
pub(crate) fn restore(
    vault: &Vault,
    instance: &Name,
    id: SnapshotId,
    partition: &std::path::Path,
    owner: Option<(u32, u32)>,
) -> Result<RestoreSummary, String> {
    vault
        .restore(instance, id, partition, owner)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn snap(id: u64, uploaded: bool) -> LocalSnapshot {
        LocalSnapshot {
            instance: Name::new("db").unwrap(),
            id: SnapshotId(id),
            taken_ms: id,
            bytes: 1,
            new_bytes: 1,
            chunks: 1,
            consistency: Consistency::Live,
            uploaded,
            source: None,
        }
    }

    #[test]
    fn not_uploaded_snapshots_are_kept_up_to_twice_the_retain() {
        // Oldest first: 1..=7, only 3 uploaded.
        let all: Vec<_> = (1..=7).map(|i| snap(i, i == 3)).collect();
        // retain 2: the newest 4 are looked at (7, 6, 5, 4), all unsent.
        assert_eq!(
            keep(&all, 2, true),
            vec![SnapshotId(7), SnapshotId(6), SnapshotId(5), SnapshotId(4)]
        );
        // retain 3: 7..=2, minus 3 (uploaded).
        assert_eq!(keep(&all, 3, true).len(), 5);
        assert!(!keep(&all, 3, true).contains(&SnapshotId(3)));
        // A node without a master keeps only its retain.
        assert!(keep(&all, 2, false).is_empty());
        // Imported snapshots are not the uploader's business.
        let mut imported = snap(9, false);
        imported.source = Some(Name::new("other").unwrap());
        assert!(keep(&[imported], 2, true).is_empty());
    }
}
