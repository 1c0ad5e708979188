//! Driving one instance: applies reconcile steps and the lifecycle's actions.
//!
//! Contract: every lifecycle input goes through [`Daemon::drive`], which feeds the
//! pure machine and performs what it asks (spawn, signal, record) until it asks for
//! nothing more. State changes are written to the store (observed state and an outbox
//! record) as they happen; the loop flushes them once the event is handled.
//!
//! A changed `[limits]` takes effect at once: `memory_max`/`cpu_max_percent` are
//! rewritten in the instance's existing cgroup (live, no restart; where the node has no
//! cgroup they are not enforced at all, so there is nothing to apply), and a changed
//! rlimit (`nofile`, `nproc`), which can only be set before `exec`, restarts the
//! instance. If the live rewrite fails the instance is restarted, so the new limit is
//! applied at its start or the start fails visibly (`spawn_failures`).
//!
//! Signals go to the instance's process group and to every member of its cgroup; what
//! survives a stop is swept, and a destroy finishes, in `daemon::destroy`. Starting a
//! process (render, partition, cgroup, spawn) is `daemon::start`.

use hedge_wire::{InstanceRequest, InstanceStatus, Name, RecordKind};

use super::instances::Slot;
use super::software::Need;
use super::Daemon;
use crate::partition::limits::rlimits;
use crate::reconcile::Step;
use crate::render;
use crate::store::ObservedInstance;
use crate::supervisor::lifecycle::{Action, Input, Lifecycle, Policy, Sig};
use crate::supervisor::process_identity;

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
                    .observed_of(&name)
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                let lifecycle = Lifecycle::new(
                    policy_for(self.cfg.policy(), &request),
                    fastrand::u64(..),
                    earlier.restarts,
                    earlier.last_exit,
                );
                let accountant = self.accountant_for(&name);
                self.monitoring
                    .watch(name.clone(), &request, accountant, super::monotonic_now());
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
                        super::monotonic_now(),
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
    /// A start whose exec is still pending is confirmed first: the lifecycle learns
    /// `Spawned` or `SpawnFailed` before anything else.
    pub(super) fn drive(&mut self, name: &Name, input: Input) {
        let mut inputs = vec![input];
        inputs.extend(self.confirm_exec(name));
        while let Some(input) = inputs.pop() {
            let Some(slot) = self.instances.slots.get_mut(name) else {
                return;
            };
            let actions = slot.lifecycle.handle(super::monotonic_now(), input);
            for a in actions {
                match a {
                    Action::Spawn => inputs.extend(self.spawn(name)),
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

    /// Writes the new state to the store: observed state, then an outbox record. The
    /// observed state is flushed by the loop once the event that changed it is handled
    /// ([`Daemon::flush_observed`]), before it answers or waits for anything: a restart
    /// or a boot costs one flush, after the processes started, not one per state.
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
        match self.outbox.store.put_observed_deferred(name, &obs) {
            Ok(()) => self.observed_unflushed = true,
            Err(e) => self.store_failed(&e),
        }
        self.record(kind);
    }
}
