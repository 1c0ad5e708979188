//! Driving one instance: applies reconcile actions and the lifecycle's actions.
//!
//! Contract: every lifecycle input goes through [`Daemon::drive`], which feeds the
//! pure machine and performs what it asks (spawn, signal, record) until it asks for
//! nothing more. State changes are written to the store (observed state and an outbox
//! record) as they happen.
//!
//! A changed `[limits]` takes effect at once: `memory_max`/`cpu_max_percent` are
//! rewritten in the instance's existing cgroup (live, no restart; where the node has no
//! cgroup they are not enforced at all, so there is nothing to apply), and a changed
//! rlimit (`nofile`, `nproc`), which can only be set before `exec`, restarts the
//! instance. If the live rewrite fails the instance is restarted, so the new limit is
//! applied at its start or the start fails visibly (`spawn_failures`).
//!
//! Every process of an instance dies with it: signals go to its process group and to
//! every member of its cgroup; once the instance is stopped (idle), whatever is left
//! in its cgroup — or, without cgroups, anything running as its uid — is SIGKILLed and
//! waited for (at most [`SWEEP_WAIT`]) before a destroy frees the uid.

use std::time::{Duration, Instant};

use hedge_wire::{ExitStatus, InstanceRequest, InstanceStatus, Name, RecordKind, RequestedState};

use super::instances::Slot;
use super::software::Need;
use super::{Daemon, Event};
use crate::partition::cgroup::Cgroup;
use crate::partition::limits::rlimits;
use crate::partition::PartitionError;
use crate::reconcile::Step;
use crate::render::{self, RenderError};
use crate::store::ObservedInstance;
use crate::supervisor::lifecycle::{Action, Input, Lifecycle, Policy, Sig};
use crate::supervisor::spawn::{self, SpawnSpec};
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
    let deadline = Instant::now() + SWEEP_WAIT;
    let mut pause = Duration::from_millis(1);
    loop {
        group.kill()?;
        if group.is_empty() {
            return Ok(found);
        }
        if Instant::now() >= deadline {
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

fn policy_for(base: Policy, r: &InstanceRequest) -> Policy {
    let ms = |v: Option<u32>, d: std::time::Duration| {
        v.map(|v| std::time::Duration::from_millis(u64::from(v)))
            .unwrap_or(d)
    };
    Policy {
        backoff_base: ms(r.restart.backoff_base_ms, base.backoff_base),
        backoff_max: ms(r.restart.backoff_max_ms, base.backoff_max),
        ..base
    }
}

impl Daemon {
    /// Applies one reconcile step.
    pub(super) fn apply(&mut self, step: Step) {
        match step {
            Step::Create(request) => {
                let name = request.name.clone();
                if let Err(e) = self.instances.partitions.ensure(&name) {
                    tracing::warn!(instance = %name, error = %e, "cannot create partition");
                }
                let earlier = self
                    .outbox
                    .store
                    .observed()
                    .ok()
                    .and_then(|mut m| m.remove(name.as_str()))
                    .unwrap_or_default();
                let lifecycle = Lifecycle::new(
                    policy_for(self.cfg.policy(), &request),
                    fastrand::u64(..),
                    earlier.restarts,
                    earlier.last_exit,
                );
                let accountant = self.accountant_for(&name);
                self.monitoring
                    .watch(name.clone(), &request, accountant, Instant::now());
                self.instances.slots.insert(
                    name,
                    Slot {
                        request,
                        lifecycle,
                        rendered_hash: None,
                        start_ticks: None,
                        started_rlimits: None,
                        cgroup: None,
                        destroying: false,
                    },
                );
            }
            Step::Update(request) => {
                let name = request.name.clone();
                let policy = policy_for(self.cfg.policy(), &request);
                let mut effects = Vec::new();
                let mut limits_changed = false;
                if let Some(slot) = self.instances.slots.get_mut(&name) {
                    limits_changed = slot.request.limits != request.limits;
                    effects = self.monitoring.request_changed(
                        &name,
                        &slot.request,
                        &request,
                        Instant::now(),
                        super::now_ms(),
                    );
                    slot.request = request;
                    slot.lifecycle.set_policy(policy);
                }
                self.dispatch(effects);
                let running = self
                    .instances
                    .slots
                    .get(&name)
                    .is_some_and(|s| s.lifecycle.pid().is_some());
                if limits_changed && !self.update_cgroup_limits(&name) && running {
                    tracing::info!(instance = %name, "limits could not be changed live; restarting");
                    self.drive(&name, Input::Restart);
                }
                self.restart_if_changed(&name);
                self.prune_downloads();
            }
            Step::Start(name) => self.drive(&name, Input::Start),
            Step::Stop(name) => self.drive(&name, Input::Stop),
            Step::Destroy(name) => {
                if let Some(slot) = self.instances.slots.get_mut(&name) {
                    slot.destroying = true;
                    self.drive(&name, Input::Stop);
                } else {
                    self.finish_destroy(&name);
                }
            }
        }
    }

    /// Rewrites the memory and CPU limits in `name`'s existing cgroup (the running
    /// process keeps running under the new limits). True when done or when there is no
    /// group yet (its first start sets them up); false when the rewrite failed.
    fn update_cgroup_limits(&mut self, name: &Name) -> bool {
        let (Some(cgs), Some(slot)) = (&self.instances.cgroups, self.instances.slots.get(name))
        else {
            return true;
        };
        if slot.cgroup.is_none() {
            return true;
        }
        match cgs.setup(name, &slot.request.limits) {
            Ok(_) => {
                tracing::info!(instance = %name, memory_max = ?slot.request.limits.memory_max, cpu_max_percent = ?slot.request.limits.cpu_max_percent, "cgroup limits updated");
                true
            }
            Err(e) => {
                tracing::warn!(instance = %name, error = %e, "cannot update the instance's cgroup limits");
                false
            }
        }
    }

    /// Re-renders `name`; restarts it when it runs (or waits) with another result, or
    /// when it runs with rlimits other than those its request now asks for.
    pub(super) fn restart_if_changed(&mut self, name: &Name) {
        let Some(slot) = self.instances.slots.get(name) else {
            return;
        };
        if !slot.lifecycle.wants_running() {
            return;
        }
        let waiting = slot.lifecycle.status() == InstanceStatus::Waiting;
        let installed = self.installed_dir(&slot.request);
        if installed.is_none() && !waiting && slot.lifecycle.pid().is_some() {
            // A new artifact: keep the old one running until the new one is installed
            // (its install restarts the instance through here again).
            let request = slot.request.clone();
            if let Need::Pending = self.need(name, &request) {
                return;
            }
        }
        let Some(slot) = self.instances.slots.get(name) else {
            return;
        };
        let new_hash = render::render_instance(&slot.request, installed.as_deref(), &|i, k| {
            self.instances.published_param(i, k)
        })
        .ok()
        .map(|r| r.hash);
        let rlimits_changed = slot.lifecycle.pid().is_some()
            && slot
                .started_rlimits
                .as_ref()
                .is_some_and(|r| *r != rlimits(&slot.request.limits));
        if waiting || new_hash != slot.rendered_hash {
            tracing::info!(instance = %name, "configuration changed; restarting");
            self.drive(name, Input::Restart);
        } else if rlimits_changed {
            tracing::info!(instance = %name, "rlimits changed; restarting");
            self.drive(name, Input::Restart);
        }
    }

    /// Feeds `input` to `name`'s lifecycle and performs the actions, to a fixed point.
    pub(super) fn drive(&mut self, name: &Name, input: Input) {
        let mut inputs = vec![input];
        while let Some(input) = inputs.pop() {
            let Some(slot) = self.instances.slots.get_mut(name) else {
                return;
            };
            let actions = slot.lifecycle.handle(Instant::now(), input);
            for a in actions {
                match a {
                    Action::Spawn => inputs.push(self.spawn(name)),
                    Action::Signal { pgid, sig } => {
                        let signal = match sig {
                            Sig::Term => nix::sys::signal::Signal::SIGTERM,
                            Sig::Kill => nix::sys::signal::Signal::SIGKILL,
                        };
                        #[allow(clippy::cast_possible_wrap)] // pids stay under pid_max (2^22)
                        let pg = nix::unistd::Pid::from_raw(pgid as i32);
                        if let Err(e) = nix::sys::signal::killpg(pg, signal) {
                            tracing::debug!(instance = %name, pgid, error = %e, "signal not delivered");
                        }
                        // Members that left the process group (`setsid`) get it too.
                        if let Some(cg) = self
                            .instances
                            .slots
                            .get(name)
                            .and_then(|s| s.cgroup.as_ref())
                        {
                            match sig {
                                Sig::Term => cg.signal(signal),
                                Sig::Kill => {
                                    if let Err(e) = cg.kill() {
                                        tracing::warn!(instance = %name, error = %e, "cgroup kill failed");
                                    }
                                }
                            }
                        }
                    }
                    Action::Status(status) => self.report(name, status),
                }
            }
        }
        let (idle, destroying) = self
            .instances
            .slots
            .get(name)
            .map_or((false, false), |s| (s.lifecycle.is_idle(), s.destroying));
        if idle {
            self.sweep(name);
        }
        if idle && destroying {
            self.finish_destroy(name);
        }
    }

    /// Kills whatever of a stopped instance still runs (in its cgroup, or as its uid
    /// where there is no cgroup) and waits for it to be gone. False if some survived.
    fn sweep(&mut self, name: &Name) -> bool {
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

    /// Writes the new state to the store: observed state, then an outbox record.
    fn report(&mut self, name: &Name, status: InstanceStatus) {
        let Some(slot) = self.instances.slots.get(name) else {
            return;
        };
        let pid = slot.lifecycle.pid();
        let obs = ObservedInstance {
            pgid: pid,
            start_ticks: if pid.is_some() {
                slot.start_ticks
            } else {
                None
            },
            restarts: slot.lifecycle.restarts(),
            last_exit: slot.lifecycle.last_exit(),
            boot_id: pid.and_then(|_| process_identity::boot_id()),
        };
        let kind = RecordKind::InstanceState {
            instance: name.clone(),
            status,
            pid,
            restarts: slot.lifecycle.restarts(),
            last_exit: slot.lifecycle.last_exit(),
        };
        tracing::info!(instance = %name, state = crate::local_api::state_word(status).as_str(), pid, restarts = obs.restarts, "instance state");
        if let Err(e) = self.outbox.store.put_observed(name, &obs) {
            self.store_failed(&e);
        }
        self.record(kind);
    }

    /// Renders and starts `name`'s process; returns the input to feed back.
    fn spawn(&mut self, name: &Name) -> Input {
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
                let mut child = spawned.child;
                tokio::spawn(async move {
                    let status = match child.wait().await {
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

    /// Drops the slot, removes the partition and everything stored about it.
    fn finish_destroy(&mut self, name: &Name) {
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

fn exit_status(s: std::process::ExitStatus) -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => ExitStatus::Code(c),
        (None, Some(sig)) => ExitStatus::Signal(sig),
        (None, None) => ExitStatus::Code(-1),
    }
}
