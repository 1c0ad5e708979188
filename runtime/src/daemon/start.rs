//! Starting an instance's process: what the lifecycle's `Spawn` does.
//!
//! Contract: [`Daemon::spawn`] gets the software's tree (an artifact not installed yet
//! makes the instance wait, and starts its download), renders the request, prepares the
//! partition, its config files and its cgroup (with the request's limits), and starts
//! the process (`crate::supervisor::spawn`); a task waits for it and sends its exit to
//! the loop. It returns the input to feed back to the lifecycle: `Spawned`, or
//! `SpawnFailed` — waiting (a parameter or an artifact is missing) or failed (counted
//! in `spawn_failures`, logged).

use hedge_wire::{ExitStatus, Name};

use super::software::Need;
use super::{Daemon, Event};
use crate::partition::cgroup::Cgroup;
use crate::partition::limits::rlimits;
use crate::render::{self, RenderError};
use crate::supervisor::lifecycle::Input;
use crate::supervisor::process_identity;
use crate::supervisor::spawn::{self, SpawnSpec};

impl Daemon {
    /// Renders and starts `name`'s process; returns the input to feed back.
    pub(super) fn spawn(&mut self, name: &Name) -> Input {
        let Some(slot) = self.instances.slots.get(name) else {
            return Input::SpawnFailed { waiting: false };
        };
        let request = slot.request.clone();
        let artifact = match self.need(name, &request) {
            Need::Nothing => None,
            Need::Ready(dir) => Some(dir),
            Need::Pending => return Input::SpawnFailed { waiting: true },
            Need::NoVariant => {
                self.counters.spawn_failures += 1;
                tracing::warn!(instance = %name, target = super::TARGET, software = %request.software, "no artifact variant for this node's target");
                return Input::SpawnFailed { waiting: false };
            }
        };
        let Some(slot) = self.instances.slots.get(name) else {
            return Input::SpawnFailed { waiting: false };
        };
        let rendered = match render::render_instance(&slot.request, artifact.as_deref(), &|i, k| {
            self.instances.published_param(i, k)
        }) {
            Ok(r) => r,
            Err(RenderError::Missing(key)) => {
                tracing::info!(instance = %name, key, "waiting for parameter");
                return Input::SpawnFailed { waiting: true };
            }
            Err(RenderError::ArtifactMissing) => return Input::SpawnFailed { waiting: true },
            Err(e) => {
                self.counters.spawn_failures += 1;
                tracing::warn!(instance = %name, error = %e, "cannot render instance");
                return Input::SpawnFailed { waiting: false };
            }
        };
        let part = match self.instances.partitions.ensure(name) {
            Ok(p) => p,
            Err(e) => {
                self.counters.spawn_failures += 1;
                tracing::warn!(instance = %name, error = %e, "cannot prepare partition");
                return Input::SpawnFailed { waiting: false };
            }
        };
        for (rel, contents) in &rendered.files {
            if let Err(e) = self
                .instances
                .partitions
                .write_file(&part, rel, contents.as_bytes())
            {
                self.counters.spawn_failures += 1;
                tracing::warn!(instance = %name, file = rel, error = %e, "cannot write config file");
                return Input::SpawnFailed { waiting: false };
            }
        }
        let limits = slot.request.limits.clone();
        let cgroup = match &self.instances.cgroups {
            Some(cgs) => match cgs.setup(name, &limits) {
                Ok(g) => Some(g),
                Err(e) => {
                    self.counters.spawn_failures += 1;
                    tracing::warn!(instance = %name, error = %e, "cannot prepare the instance's cgroup");
                    return Input::SpawnFailed { waiting: false };
                }
            },
            None => None,
        };
        let spec = SpawnSpec {
            program: rendered.program.clone(),
            args: rendered.args.clone(),
            env: rendered.env.clone(),
            dir: part.dir.clone(),
            owner: part.owner,
            cgroup_procs: cgroup.as_ref().map(Cgroup::procs_path),
            rlimits: rlimits(&limits),
            log: spawn::log_path(&part.dir, name.as_str()),
            log_max_bytes: self.cfg.logs.max_bytes,
            log_keep: self.cfg.logs.keep,
        };
        match spawn::spawn(&spec) {
            Ok(spawned) => {
                let pid = spawned.pid;
                let Some(slot) = self.instances.slots.get_mut(name) else {
                    return Input::SpawnFailed { waiting: false };
                };
                slot.cgroup = cgroup;
                slot.rendered_hash = Some(rendered.hash);
                slot.start_ticks = process_identity::start_ticks(pid);
                slot.started_rlimits = Some(spec.rlimits.clone());
                let tx = self.events_tx.clone();
                let name = name.clone();
                let exit = spawned.exit;
                tokio::spawn(async move {
                    let status = match exit.wait().await {
                        Ok(s) => exit_status(s),
                        Err(_) => ExitStatus::Code(-1),
                    };
                    let _ = tx.send(Event::Exited { name, pid, status });
                });
                Input::Spawned { pid }
            }
            Err(e) => {
                self.counters.spawn_failures += 1;
                tracing::warn!(instance = %name, error = %e, "cannot start instance");
                Input::SpawnFailed { waiting: false }
            }
        }
    }
}

fn exit_status(s: std::process::ExitStatus) -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => ExitStatus::Code(c),
        (None, Some(sig)) => ExitStatus::Signal(sig),
        (None, None) => ExitStatus::Code(-1),
    }
}
