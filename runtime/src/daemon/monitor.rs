//! The daemon's monitoring duties: promise checks, incidents and self-repair, usage
//! accounting, node health, periodic summaries, and outbox shedding.
//!
//! Contract: the pure cores in `crate::monitor` decide; this module only schedules,
//! runs checks as separate tasks (never blocking the loop), samples `/proc`, writes
//! records and persists what must survive a restart (open incidents, accounting state).
//! Checks run only for instances wanted running; a new (or restarted-by-config)
//! instance's first check comes one interval after its promises were set up.
//! When the daemon is root, a `command` check whose partition has no uid (the instance
//! broke its partition, or the uid range is exhausted) is refused, never run: counted
//! (`command_checks_refused`), logged (rate-limited), and the promise fails.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hedge_wire::{IncidentState, Name, PromiseCheck, RecordKind};

use super::disk::{self, DiskUsage, WalkLimits};
use super::{now_ms, Daemon, Event};
use crate::monitor::checks::{self, Check};
use crate::monitor::incident::{Incident, IncidentAction};
use crate::monitor::promise::{CheckResult, PromiseEvent, PromiseState};
use crate::monitor::usage::{save, Accountant, ProcessIdentity, Sample};
use crate::monitor::{health, process_usage};
use crate::render;
use crate::supervisor::lifecycle::Input;

/// Why a check could not be started.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CheckStartError {
    /// The check cannot be prepared (a template, a path); the promise fails.
    #[error("{0}")]
    Failed(String),
    /// A command that would have run as root: refused; the promise fails.
    #[error("{0}")]
    Refused(String),
}

impl From<String> for CheckStartError {
    fn from(s: String) -> Self {
        CheckStartError::Failed(s)
    }
}

/// One promise of one instance, as the daemon holds it.
pub(crate) struct PromiseSlot {
    /// The spec (unrendered).
    pub spec: hedge_wire::PromiseSpec,
    /// Its evaluation state.
    pub state: PromiseState,
    /// A check is running.
    pub in_flight: bool,
}

/// Resolved incidents kept for `status`.
const RECENT_RESOLVED: usize = 32;

/// Timers of the periodic duties.
pub(crate) struct Timers {
    pub sample: Instant,
    pub health: Instant,
    pub summary: Instant,
}

impl Timers {
    pub(crate) fn new(now: Instant) -> Self {
        Timers {
            sample: now,
            health: now,
            summary: now,
        }
    }
}

/// The last measure of a partition's disk use, and whether a walk is under way.
#[derive(Debug, Default)]
pub(crate) struct DiskMeasure {
    /// Allocated bytes at the last finished walk (a lower bound if it was incomplete).
    pub bytes: u64,
    /// A walk of this partition is running.
    pub walking: bool,
    /// When the last walk finished.
    pub walked_at: Option<Instant>,
}

impl Daemon {
    /// Promise slots for `req`, first checks one interval from now.
    pub(super) fn promise_slots(req: &hedge_wire::InstanceRequest) -> Vec<PromiseSlot> {
        let now = Instant::now();
        req.promises
            .iter()
            .map(|spec| {
                let mut state = PromiseState::new(spec);
                state.schedule(now + state.interval());
                PromiseSlot {
                    spec: spec.clone(),
                    state,
                    in_flight: false,
                }
            })
            .collect()
    }

    /// A new accountant for `name`, or the one an earlier daemon left.
    pub(super) fn accountant_for(&mut self, name: &Name) -> Option<Accountant> {
        let interval = self.cfg.monitor.usage_interval_ms;
        let restored = match self.outbox.store.usage_state(name) {
            Ok(Some(s)) if s.instance == *name && s.interval_ms == interval => {
                Accountant::restore(s, self.clk_tck).ok()
            }
            Ok(_) => None,
            Err(e) => {
                self.store_failed(&e);
                None
            }
        };
        restored.or_else(|| Accountant::new(name.clone(), interval, now_ms(), self.clk_tck).ok())
    }

    /// The earliest time a monitoring duty is due.
    pub(super) fn monitor_deadline(&self) -> Option<Instant> {
        let t = &self.timers;
        let promises = self
            .slots
            .values()
            .filter(|s| s.lifecycle.wants_running())
            .flat_map(|s| s.promises.iter())
            .filter(|p| !p.in_flight)
            .map(|p| p.state.due().unwrap_or_else(Instant::now));
        promises.chain([t.sample, t.health, t.summary]).min()
    }

    /// Runs every duty that is due.
    pub(super) fn monitor_tick(&mut self) {
        let now = Instant::now();
        self.recover_store();
        self.start_due_checks(now);
        if now >= self.timers.sample {
            self.timers.sample = now + Duration::from_millis(self.cfg.monitor.sample_interval_ms);
            self.sample_usage(false);
            self.start_disk_walk();
        }
        if now >= self.timers.health {
            self.timers.health = now + Duration::from_millis(self.cfg.monitor.health_interval_ms);
            self.record_health();
            self.check_expiry();
        }
        if now >= self.timers.summary {
            self.timers.summary = now + Duration::from_millis(self.cfg.monitor.summary_interval_ms);
            self.record_summaries();
        }
    }

    fn render_check(&self, name: &Name, check: &PromiseCheck) -> Result<Check, CheckStartError> {
        let slot = self.slots.get(name).ok_or("instance gone".to_string())?;
        let req = &slot.request;
        let lookup = |k: &str| -> Option<String> {
            req.parameters.get(k).cloned().or_else(|| {
                let (other, key) = k.split_once('.')?;
                self.published_param(other, key)
            })
        };
        let r = |t: &str| render::render(t, &lookup).map_err(|e| e.to_string());
        let dir = self.partitions.path(name);
        Ok(match check {
            PromiseCheck::Process => {
                return Err(CheckStartError::Failed(
                    "process checks are judged inline".into(),
                ))
            }
            PromiseCheck::Tcp { address } => Check::Tcp {
                address: r(address)?,
            },
            PromiseCheck::Http {
                url,
                status,
                max_latency_ms,
            } => Check::Http {
                url: r(url)?,
                status: *status,
                max_latency_ms: *max_latency_ms,
            },
            PromiseCheck::Command { argv } => {
                let argv = argv.iter().map(|a| r(a)).collect::<Result<_, _>>()?;
                let as_root = nix::unistd::geteuid().is_root();
                let owner = match self.partitions.ensure(name) {
                    Ok(p) => p.owner,
                    Err(e) if as_root => {
                        return Err(CheckStartError::Refused(format!(
                            "refused: partition unusable ({e}); the command never runs as root"
                        )))
                    }
                    Err(_) => None,
                };
                if let Some(why) = checks::command_refusal(as_root, owner) {
                    return Err(CheckStartError::Refused(why.into()));
                }
                Check::Command { argv, owner, dir }
            }
            PromiseCheck::File { path, max_age_s } => {
                let rel = r(path)?;
                crate::partition::check_rel_path(&rel)
                    .map_err(|e| CheckStartError::Failed(e.to_string()))?;
                Check::File {
                    path: dir.join(rel),
                    max_age_s: *max_age_s,
                }
            }
        })
    }

    fn start_due_checks(&mut self, now: Instant) {
        let mut due = Vec::new();
        for (name, slot) in &mut self.slots {
            if !slot.lifecycle.wants_running() {
                continue;
            }
            for (i, p) in slot.promises.iter_mut().enumerate() {
                if !p.in_flight && p.state.due().is_none_or(|d| d <= now) {
                    p.state.schedule(now + p.state.interval());
                    due.push((
                        name.clone(),
                        i,
                        slot.promises_gen,
                        p.spec.check.clone(),
                        p.spec.timeout_ms,
                    ));
                }
            }
        }
        for (name, idx, generation, check, timeout_ms) in due {
            if matches!(check, PromiseCheck::Process) {
                let alive = self.slots.get(&name).is_some_and(|s| {
                    s.lifecycle.status() == hedge_wire::InstanceStatus::Running
                        && s.lifecycle.pid().is_some_and(|p| {
                            crate::supervisor::process_identity::start_ticks(p).is_some()
                        })
                });
                let r = CheckResult {
                    ok: alive,
                    latency_ms: 0,
                    message: if alive {
                        String::new()
                    } else {
                        "process not running".into()
                    },
                };
                self.on_check(name, idx, generation, r);
                continue;
            }
            let rendered = self.render_check(&name, &check);
            match rendered {
                Err(e) => {
                    if let CheckStartError::Refused(why) = &e {
                        self.counters.command_checks_refused += 1;
                        if let Some(suppressed) = self.check_log.allow(Instant::now()) {
                            tracing::warn!(instance = %name, error = %why, suppressed, "command check refused");
                        }
                    }
                    let message = e.to_string();
                    let r = CheckResult {
                        ok: false,
                        latency_ms: 0,
                        message,
                    };
                    self.on_check(name, idx, generation, r);
                }
                Ok(check) => {
                    if let Some(p) = self
                        .slots
                        .get_mut(&name)
                        .and_then(|s| s.promises.get_mut(idx))
                    {
                        p.in_flight = true;
                    }
                    let tx = self.events_tx.clone();
                    tokio::spawn(async move {
                        let result =
                            checks::run(check, Duration::from_millis(u64::from(timeout_ms))).await;
                        let _ = tx.send(Event::Checked {
                            name,
                            index: idx,
                            generation,
                            result,
                        });
                    });
                }
            }
        }
    }

    /// A check finished: evaluate, record, open/resolve incidents, repair.
    pub(super) fn on_check(
        &mut self,
        name: Name,
        index: usize,
        generation: u64,
        result: CheckResult,
    ) {
        let wall = now_ms();
        let Some(slot) = self.slots.get_mut(&name) else {
            return;
        };
        if generation != slot.promises_gen {
            return; // the promises were replaced since this check started
        }
        let Some(p) = slot.promises.get_mut(index) else {
            return;
        };
        p.in_flight = false;
        let promise = p.spec.name.clone();
        let events = p.state.on_result(Instant::now(), wall, result.clone());
        for ev in events {
            if let Some(kind) = ev.to_record(&name, &promise) {
                self.record(kind);
            }
            let actions = match ev {
                PromiseEvent::Anomaly { failures_in_row } => {
                    tracing::warn!(instance = %name, promise = %promise, failures_in_row, message = %result.message, "anomaly");
                    self.incidents
                        .on_anomaly(wall, &name, &promise, result.message.clone())
                }
                PromiseEvent::Recovered => self.incidents.on_recovered(wall, &name, &promise),
                PromiseEvent::Changed { .. } => Vec::new(),
            };
            self.incident_actions(actions);
        }
    }

    /// Performs what the incident core decided.
    pub(super) fn incident_actions(&mut self, actions: Vec<IncidentAction>) {
        for a in actions {
            match a {
                IncidentAction::Record(kind) => {
                    if let RecordKind::Incident {
                        id,
                        instance,
                        promise,
                        state,
                        severity,
                        ..
                    } = &kind
                    {
                        tracing::warn!(id, instance = %instance, promise = ?promise.as_ref().map(Name::as_str), ?state, ?severity, "incident");
                        let stored = match state {
                            IncidentState::Resolved => {
                                self.remember_resolved(&kind);
                                self.outbox.store.remove_incident(*id)
                            }
                            _ => match promise
                                .as_ref()
                                .and_then(|p| self.incidents.get(instance, p))
                            {
                                Some(i) => self.outbox.store.put_incident(&i.clone()),
                                None => Ok(()),
                            },
                        };
                        if let Err(e) = stored {
                            self.store_failed(&e);
                        }
                    }
                    self.record(kind);
                }
                IncidentAction::Repair(instance) => {
                    let running = self.slots.get(&instance).is_some_and(|s| {
                        s.lifecycle.status() == hedge_wire::InstanceStatus::Running
                    });
                    if running {
                        tracing::info!(instance = %instance, "self-repair: restarting");
                        self.counters.repairs += 1;
                        self.drive(&instance, Input::Restart);
                    }
                }
            }
        }
    }

    fn remember_resolved(&mut self, kind: &RecordKind) {
        if let RecordKind::Incident {
            id,
            instance,
            promise: Some(promise),
            severity,
            first_seen_ms,
            last_seen_ms,
            message,
            ..
        } = kind
        {
            self.resolved.push_back(Incident {
                id: *id,
                instance: instance.clone(),
                promise: promise.clone(),
                severity: *severity,
                state: IncidentState::Resolved,
                first_seen_ms: *first_seen_ms,
                last_seen_ms: *last_seen_ms,
                repairs: 0,
                repairs_at_severity: 0,
                message: message.clone(),
            });
            while self.resolved.len() > RECENT_RESOLVED {
                self.resolved.pop_front();
            }
        }
    }

    /// Starts a walk of the partition most in need of one, unless a walk runs: one at a
    /// time, on a blocking thread (never on the loop), each partition at most once per
    /// half usage interval; the result comes back as [`Event::DiskWalked`].
    pub(super) fn start_disk_walk(&mut self) {
        if self.slots.values().any(|s| s.disk.walking) {
            return;
        }
        let every = Duration::from_millis(self.cfg.monitor.usage_interval_ms / 2);
        let due = self
            .slots
            .iter()
            .filter(|(_, s)| s.accountant.is_some())
            .filter(|(_, s)| s.disk.walked_at.is_none_or(|t| t.elapsed() >= every))
            .min_by_key(|(_, s)| s.disk.walked_at)
            .map(|(n, _)| n.clone());
        let Some(name) = due else { return };
        let Some(slot) = self.slots.get_mut(&name) else {
            return;
        };
        slot.disk.walking = true;
        let path = self.partitions.path(&name);
        let tx = self.events_tx.clone();
        tokio::task::spawn_blocking(move || {
            // The daemon gone (its receiver dropped): stop, do not hold up its exit.
            let cancelled = || tx.is_closed();
            let usage =
                std::panic::catch_unwind(|| disk::walk(&path, WalkLimits::default(), &cancelled))
                    .unwrap_or_else(|_| DiskUsage {
                        bytes: 0,
                        complete: false,
                        reason: Some("the walk panicked".into()),
                    });
            let _ = tx.send(Event::DiskWalked { name, usage });
        });
    }

    /// A walk finished: keep its figure; an incomplete one is counted and logged.
    pub(super) fn on_disk_walked(&mut self, name: Name, usage: DiskUsage) {
        if !usage.complete {
            self.counters.disk_walks_incomplete += 1;
            if let Some(suppressed) = self.disk_log.allow(Instant::now()) {
                tracing::warn!(
                    instance = %name,
                    counted = usage.bytes,
                    reason = usage.reason.as_deref().unwrap_or(""),
                    suppressed,
                    "partition disk walk incomplete: its disk usage is a lower bound"
                );
            }
        }
        if let Some(slot) = self.slots.get_mut(&name) {
            slot.disk.walking = false;
            slot.disk.walked_at = Some(Instant::now());
            slot.disk.bytes = usage.bytes;
        }
        // Next partition in line, if any is due.
        self.start_disk_walk();
    }

    /// Samples every instance's process tree; closes usage intervals that are due.
    /// `closing` also closes every interval now (used at shutdown and destroy).
    pub(super) fn sample_usage(&mut self, closing: bool) {
        let wall = now_ms();
        let trees = process_usage::tree_usage(&process_usage::scan(), self.page_size);
        let names: Vec<Name> = self.slots.keys().cloned().collect();
        for name in names {
            let Some(slot) = self.slots.get_mut(&name) else {
                continue;
            };
            let Some(acc) = slot.accountant.as_mut() else {
                continue;
            };
            let tree = slot
                .lifecycle
                .pid()
                .and_then(|pid| trees.get(&pid).map(|t| (pid, *t)));
            acc.sample(Sample {
                wall_ms: wall,
                running: tree.is_some(),
                process: tree.and_then(|(pid, t)| {
                    t.leader_start
                        .map(|start_ticks| ProcessIdentity { pid, start_ticks })
                }),
                cpu_ticks_total: tree.map_or(0, |(_, t)| t.ticks),
                rss_bytes: tree.map_or(0, |(_, t)| t.rss_bytes),
            });
            // An instance that did nothing in the interval (stopped, nothing ran) reports
            // nothing: its interval stretches until there is something to say, so
            // records stay contiguous and totals unchanged, and the outbox stays quiet.
            let idle = acc.state().uptime_ms == 0 && acc.state().cpu_milliticks == 0;
            let record = if (closing || wall >= acc.due_ms()) && !idle {
                // The last walk's figure: walks run off the loop (see `start_disk_walk`).
                acc.close_interval(wall, slot.disk.bytes)
            } else {
                None
            };
            let state = acc.state().clone();
            let result = match record {
                Some(kind) => {
                    if let RecordKind::Usage { cpu_ms, .. } = &kind {
                        *self
                            .usage_cpu_ms
                            .entry(name.as_str().to_string())
                            .or_default() += cpu_ms;
                    }
                    // The record and the state after it, as one (Store::append_usage).
                    let appended = self.outbox.append_usage(now_ms(), kind, &name, &state);
                    self.after_append(appended);
                    Ok(())
                }
                None => {
                    // Between records, saved only when it matters (see `save::due`).
                    let now = Instant::now();
                    match self.slots.get_mut(&name) {
                        Some(s) if save::due(s.saved, state.cpu_milliticks, self.clk_tck, now) => {
                            s.saved = Some(save::Saved {
                                cpu_milliticks: state.cpu_milliticks,
                                at: now,
                            });
                            self.outbox.store.put_usage(&name, &state)
                        }
                        _ => Ok(()),
                    }
                }
            };
            if let Err(e) = result {
                self.store_failed(&e);
            }
        }
    }

    fn record_health(&mut self) {
        let h = health::read(&self.cfg.state_dir(), self.thermal_zone.as_deref());
        self.last_health = Some(h);
        self.record(RecordKind::NodeHealth {
            load1_milli: h.load1_milli,
            mem_total: h.mem_total,
            mem_available: h.mem_available,
            disk_free: h.disk_free,
            temp_milli_c: h.temp_milli_c,
            uplink_up: self
                .links
                .get(super::links::LinkId::Uplink)
                .is_some_and(|l| l.up),
            outbox_depth: self.outbox.store.outbox_depth() as u64,
        });
    }

    fn record_summaries(&mut self) {
        let mut out = Vec::new();
        for (name, slot) in &mut self.slots {
            for p in &mut slot.promises {
                if let Some(s) = p.state.take_summary() {
                    out.push(s.into_record(name.clone(), p.spec.name.clone()));
                }
            }
        }
        for kind in out {
            self.record(kind);
        }
    }

    /// Promise states for `status`.
    pub(super) fn promise_status(&self, name: &Name) -> Vec<crate::local_api::PromiseView> {
        self.slots
            .get(name)
            .map(|s| {
                s.promises
                    .iter()
                    .map(|p| {
                        let last = p.state.last();
                        crate::local_api::PromiseView {
                            name: p.spec.name.to_string(),
                            ok: last.map(|(ok, _)| ok),
                            last_check: last.map(|(_, t)| t),
                            failures_in_row: p.state.failures_in_row(),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Open and recently resolved incidents for `status`.
    pub(super) fn incident_status(&self) -> Vec<crate::local_api::IncidentView> {
        self.incidents
            .open_incidents()
            .chain(self.resolved.iter())
            .map(|i| crate::local_api::IncidentView {
                id: i.id,
                instance: i.instance.to_string(),
                promise: i.promise.to_string(),
                state: i.state.into(),
                escalated: i.state == IncidentState::Escalated,
                severity: i.severity,
                first_seen_ms: i.first_seen_ms,
                last_seen_ms: i.last_seen_ms,
                message: i.message.clone(),
            })
            .collect()
    }

    /// Per-instance CPU ms recorded in usage records by this daemon run.
    pub(super) fn usage_totals(&self) -> &BTreeMap<String, u64> {
        &self.usage_cpu_ms
    }
}
