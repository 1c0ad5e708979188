//! Cleaning up after an earlier daemon, at boot, before anything of this one runs.
//!
//! Contract: [`Daemon::kill_leftovers`] kills everything left in the node's instance
//! cgroups (and removes them) or, without cgroups, every process running as a
//! partition's uid; then each process group recorded in the store is judged by
//! `crate::supervisor::process_identity::judge` — only one recorded in this very boot
//! is killed — and its record cleared. Each kill is counted (`leftovers_killed`).

use hedge_wire::Name;

use super::destroy::{kill_group, SWEEP_WAIT};
use super::{Daemon, DaemonError};
use crate::supervisor::process_identity;

impl Daemon {
    /// Kills process groups recorded by an earlier daemon of this boot that may still
    /// run (never one recorded in another or an unknown boot, see
    /// [`process_identity::judge`]), and
    /// everything left in the node's instance cgroups or, without cgroups, running as
    /// a partition's uid (nothing of this daemon runs yet).
    pub(super) fn kill_leftovers(&mut self) -> Result<(), DaemonError> {
        if let Some(cgs) = &self.instances.cgroups {
            for (name, group) in cgs.existing() {
                if !group.is_empty() {
                    self.counters.leftovers_killed += 1;
                    tracing::info!(instance = %name, "killing leftover processes in the instance's cgroup");
                }
                if let Err(e) = kill_group(&group) {
                    tracing::warn!(instance = %name, error = %e, "leftover cgroup not emptied");
                }
                let _ = group.remove();
            }
        } else {
            // No cgroups: whatever still runs as a partition's uid is a leftover.
            for name in self.instances.on_disk() {
                let Some(uid) = self.instances.partitions.uid_of(&name) else {
                    continue;
                };
                if process_identity::pids_of_uid(uid).is_empty() {
                    continue;
                }
                self.counters.leftovers_killed += 1;
                tracing::info!(instance = %name, uid, "killing leftover processes of the partition's uid");
                if let Err(e) = crate::supervisor::reap::kill_uid_and_wait(uid, SWEEP_WAIT) {
                    tracing::warn!(instance = %name, error = %e, "leftover processes not killed");
                }
            }
        }
        let this_boot = process_identity::boot_id();
        for (name, mut obs) in self.outbox.store.observed()? {
            let Some(pgid) = obs.pgid else { continue };
            let verdict = process_identity::judge(
                obs.boot_id.as_deref(),
                this_boot.as_deref(),
                obs.start_ticks,
                process_identity::start_ticks(pgid),
            );
            match verdict {
                process_identity::Leftover::Unrelated
                | process_identity::Leftover::OtherBoot
                | process_identity::Leftover::UnknownBoot => {
                    tracing::info!(instance = %name, pgid, ?verdict, "recorded process group left alone");
                }
                process_identity::Leftover::Kill | process_identity::Leftover::KillOrphans => {
                    #[allow(clippy::cast_possible_wrap)] // pids stay under pid_max (2^22)
                    let pg = nix::unistd::Pid::from_raw(pgid as i32);
                    if nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGKILL).is_ok() {
                        self.counters.leftovers_killed += 1;
                        tracing::info!(instance = %name, pgid, ?verdict, "killed leftover process group");
                    }
                }
            }
            obs.pgid = None;
            obs.start_ticks = None;
            obs.boot_id = None;
            if let Ok(n) = Name::new(&name) {
                self.outbox.store.put_observed_deferred(&n, &obs)?;
            }
        }
        // One flush for all of them, before anything of this daemon runs.
        self.outbox.store.flush_records()?;
        Ok(())
    }
}
