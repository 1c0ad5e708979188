//! Ending an instance: nothing of it outlives it.
//!
//! Contract: every process of an instance dies with it. Once the instance is stopped
//! (idle), [`Daemon::sweep`] SIGKILLs whatever is left in its cgroup — or, without
//! cgroups, anything running as its uid — and waits for it (at most [`SWEEP_WAIT`]);
//! [`Daemon::finish_destroy`] then closes its last usage interval, resolves its
//! incidents, removes its cgroup, slot, partition and everything stored about it, and
//! reports it destroyed. A destroyed local request is forgotten (the outbox holds it).

use std::time::Duration;

use hedge_wire::{InstanceStatus, Name, RecordKind, RequestedState};

use super::Daemon;
use crate::partition::cgroup::Cgroup;
use crate::partition::PartitionError;
use crate::supervisor::{process_identity, reap};

/// Longest wait for SIGKILLed processes of a stopped instance to be gone.
pub(crate) const SWEEP_WAIT: Duration = Duration::from_secs(2);

/// SIGKILLs every process in `group` and waits (at most [`SWEEP_WAIT`]) until it is
/// empty. Returns how many processes were in it.
pub(crate) fn kill_group(group: &Cgroup) -> Result<usize, PartitionError> {
    let found = group.pids().len();
    if found == 0 {
        return Ok(0);
    }
    let deadline = super::monotonic_now() + SWEEP_WAIT;
    let mut pause = Duration::from_millis(1);
    loop {
        group.kill()?;
        if group.is_empty() {
            return Ok(found);
        }
        if super::monotonic_now() >= deadline {
            return Err(PartitionError::Io {
                op: "empty",
                path: group.path().to_owned(),
                source: std::io::Error::other("processes still alive after SIGKILL"),
            });
        }
        // Killed processes take a moment to exit; poll with a growing pause.
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

impl Daemon {
    /// Kills whatever of a stopped instance still runs (in its cgroup, or as its uid
    /// where there is no cgroup) and waits for it to be gone. False if some survived.
    pub(super) fn sweep(&mut self, name: &Name) -> bool {
        let group = self
            .instances
            .slots
            .get(name)
            .and_then(|s| s.cgroup.clone());
        let result = match group {
            Some(g) => kill_group(&g).map_err(|e| e.to_string()),
            None => match self.instances.partitions.uid_of(name) {
                Some(uid) => {
                    let found = process_identity::pids_of_uid(uid).len();
                    if found == 0 {
                        Ok(0)
                    } else {
                        reap::kill_uid_and_wait(uid, SWEEP_WAIT)
                            .map(|()| found)
                            .map_err(|e| e.to_string())
                    }
                }
                None => Ok(0),
            },
        };
        match result {
            Ok(0) => true,
            Ok(n) => {
                self.counters.stragglers_killed += n as u64;
                tracing::info!(instance = %name, killed = n, "killed processes that outlived the instance");
                true
            }
            Err(e) => {
                tracing::warn!(instance = %name, error = %e, "processes of a stopped instance survive");
                false
            }
        }
    }

    /// Drops the slot, removes the partition and everything stored about it.
    pub(super) fn finish_destroy(&mut self, name: &Name) {
        // Close its last usage interval while the slot still exists.
        let effects = self.monitoring.instance_destroyed(name, super::now_ms());
        self.dispatch(effects);
        // Nothing of the instance may outlive it: its uid is freed below.
        self.sweep(name);
        let group = match (
            self.instances
                .slots
                .get(name)
                .and_then(|s| s.cgroup.clone()),
            &self.instances.cgroups,
        ) {
            (Some(g), _) => Some(g),
            // A group left by an earlier run of the daemon.
            (None, Some(cgs)) => cgs
                .existing()
                .into_iter()
                .find(|(n, _)| n == name.as_str())
                .map(|(_, g)| g),
            (None, None) => None,
        };
        if let Some(cg) = &group {
            if let Err(e) = cg.remove() {
                tracing::warn!(instance = %name, error = %e, "cannot remove cgroup");
            }
        }
        self.monitoring.unwatch(name);
        if self.instances.slots.remove(name).is_some() {
            self.prune_downloads();
        }
        if let Err(e) = self.instances.partitions.remove(name) {
            tracing::warn!(instance = %name, error = %e, "cannot remove partition");
            return;
        }
        for r in [
            self.outbox.store.remove_observed(name),
            self.outbox.store.remove_published(name),
            self.outbox.store.remove_usage(name),
        ] {
            if let Err(e) = r {
                self.store_failed(&e);
            }
        }
        self.instances.published.remove(name.as_str());
        // A destroyed local request is done: forget it (the outbox already holds it).
        if let Ok(Some(r)) = self.outbox.store.local(name) {
            if r.state == RequestedState::Destroyed {
                if let Err(e) = self.outbox.store.remove_local(name) {
                    self.store_failed(&e);
                }
            }
        }
        self.record(RecordKind::InstanceState {
            instance: name.clone(),
            status: InstanceStatus::Destroyed,
            pid: None,
            restarts: 0,
            last_exit: None,
        });
        tracing::info!(instance = %name, "instance destroyed");
    }
}
