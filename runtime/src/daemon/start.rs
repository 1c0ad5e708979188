//! Starting an instance's process: what the lifecycle's `Spawn` does.
//!
//! Contract: [`Daemon::spawn`] gets the software's tree (an artifact not installed yet
//! makes the instance wait, and starts its download), renders the request, prepares the
//! partition, its config files and its cgroup (with the request's limits), and starts
//! the process (`crate::supervisor::spawn`). It returns the input to feed back to the
//! lifecycle: `SpawnFailed` — waiting (a parameter or an artifact is missing) or failed
//! (counted in `spawn_failures`, logged) — or nothing yet: the child exists and its
//! `exec` is not confirmed. [`Daemon::confirm_execs`] collects those confirmations once
//! the turn's spawns are all started (a boot starts every instance, then waits for
//! none in particular), and before any other input reaches that instance
//! ([`Daemon::confirm_exec`]): a confirmed start feeds `Spawned` and a task waits for
//! the exit and sends it to the loop; a failed `exec` feeds `SpawnFailed`, never an exit.

use hedge_wire::{ExitStatus, Name};

use super::software::Need;
use super::{Daemon, Event};
use crate::partition::cgroup::Cgroup;
use crate::partition::limits::rlimits;
use crate::render::{self, RenderError};
use crate::supervisor::lifecycle::Input;
use crate::supervisor::process_identity;
use crate::supervisor::spawn::{self, ExecPending, Exit, SpawnSpec};

/// A child started in this turn whose `exec` is not confirmed yet (its slot already
/// holds what it was started with: group, rendered hash, rlimits, start time).
#[derive(Debug)]
pub(super) struct PendingExec {
    pid: u32,
    program: String,
    exec: ExecPending,
    exit: Exit,
}

impl Daemon {
    /// Renders and starts `name`'s process; returns the input to feed back, or `None`
    /// while its exec is to be confirmed ([`Daemon::confirm_exec`]).
    pub(super) fn spawn(&mut self, name: &Name) -> Option<Input> {
        self.start(name).err()
    }

    /// Confirms the exec of every child started in this turn, one by one, and feeds each
    /// instance the outcome (which may start it again: those are confirmed too).
    pub(crate) fn confirm_execs(&mut self) {
        while let Some(name) = self.execs.keys().next().cloned() {
            if let Some(input) = self.confirm_exec(&name) {
                self.drive(&name, input);
            }
        }
    }

    /// Waits for `name`'s pending exec, if any: `Spawned` (and its exit is awaited from
    /// now on) or `SpawnFailed` (counted, logged; the child has been reaped).
    pub(super) fn confirm_exec(&mut self, name: &Name) -> Option<Input> {
        let p = self.execs.remove(name)?;
        let pid = p.pid;
        if let Err(e) = p.exec.wait(&p.program) {
            self.counters.spawn_failures += 1;
            tracing::warn!(instance = %name, error = %e, "cannot start instance");
            return Some(Input::SpawnFailed { waiting: false });
        }
        let tx = self.events_tx.clone();
        let name = name.clone();
        let exit = p.exit;
        tokio::spawn(async move {
            let status = match exit.wait().await {
                Ok(s) => exit_status(s),
                Err(_) => ExitStatus::Code(-1),
            };
            let _ = tx.send(Event::Exited { name, pid, status });
        });
        Some(Input::Spawned { pid })
    }

    /// Starts `name`'s process: `Ok` once the child exists (its exec pending), else
    /// the input to feed back.
    fn start(&mut self, name: &Name) -> Result<(), Input> {
        let Some(slot) = self.instances.slots.get(name) else {
            return Err(Input::SpawnFailed { waiting: false });
        };
        let request = slot.request.clone();
        let artifact = match self.need(name, &request) {
            Need::Nothing => None,
            Need::Ready(dir) => Some(dir),
            Need::Pending => return Err(Input::SpawnFailed { waiting: true }),
            Need::NoVariant => {
                self.counters.spawn_failures += 1;
                tracing::warn!(instance = %name, target = super::TARGET, software = %request.software, "no artifact variant for this node's target");
                return Err(Input::SpawnFailed { waiting: false });
            }
        };
        let Some(slot) = self.instances.slots.get(name) else {
            return Err(Input::SpawnFailed { waiting: false });
        };
        let rendered = match render::render_instance(&slot.request, artifact.as_deref(), &|i, k| {
            self.instances.published_param(i, k)
        }) {
            Ok(r) => r,
            Err(RenderError::Missing(key)) => {
                tracing::info!(instance = %name, key, "waiting for parameter");
                return Err(Input::SpawnFailed { waiting: true });
            }
            Err(RenderError::ArtifactMissing) => return Err(Input::SpawnFailed { waiting: true }),
            Err(e) => {
                self.counters.spawn_failures += 1;
                tracing::warn!(instance = %name, error = %e, "cannot render instance");
                return Err(Input::SpawnFailed { waiting: false });
            }
        };
        let part = match self.instances.partitions.ensure(name) {
            Ok(p) => p,
            Err(e) => {
                self.counters.spawn_failures += 1;
                tracing::warn!(instance = %name, error = %e, "cannot prepare partition");
                return Err(Input::SpawnFailed { waiting: false });
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
                return Err(Input::SpawnFailed { waiting: false });
            }
        }
        let limits = slot.request.limits.clone();
        let cgroup = match &self.instances.cgroups {
            Some(cgs) => match cgs.setup(name, &limits) {
                Ok(g) => Some(g),
                Err(e) => {
                    self.counters.spawn_failures += 1;
                    tracing::warn!(instance = %name, error = %e, "cannot prepare the instance's cgroup");
                    return Err(Input::SpawnFailed { waiting: false });
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
                    return Err(Input::SpawnFailed { waiting: false });
                };
                slot.cgroup = cgroup;
                slot.rendered_hash = Some(rendered.hash);
                slot.start_ticks = process_identity::start_ticks(pid);
                slot.started_rlimits = Some(spec.rlimits);
                self.execs.insert(
                    name.clone(),
                    PendingExec {
                        pid,
                        program: spec.program,
                        exec: spawned.exec,
                        exit: spawned.exit,
                    },
                );
                Ok(())
            }
            Err(e) => {
                self.counters.spawn_failures += 1;
                tracing::warn!(instance = %name, error = %e, "cannot start instance");
                Err(Input::SpawnFailed { waiting: false })
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
