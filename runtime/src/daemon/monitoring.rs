//! The monitoring part of the daemon: each instance's promises, accounting and disk
//! measure, the incidents, node health, and the schedule of the periodic duties.
//!
//! Contract: [`Monitoring`] owns this state and drives the pure cores of
//! `crate::monitor` with it. It never appends a record, writes the store or restarts an
//! instance: it returns [`Effect`]s in the order they must happen, and the loop performs
//! them. What it needs to know of the instances (whether one is meant to run) is passed
//! in. Running checks, sampling `/proc` and walking partitions are the loop's I/O
//! (`daemon::monitor`), whose results come back here.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hedge_wire::{IncidentState, InstanceRequest, Name, PromiseCheck, PromiseSpec, RecordKind};

use super::effect::Effect;
use super::RateLimit;
use crate::monitor::health::Health;
use crate::monitor::incident::{Incident, IncidentAction, Incidents};
use crate::monitor::process_usage::TreeUsage;
use crate::monitor::promise::{CheckResult, PromiseEvent, PromiseState};
use crate::monitor::usage::{save, Accountant, ProcessIdentity, Sample};

/// Resolved incidents kept for `status`.
const RECENT_RESOLVED: usize = 32;

/// One promise of one instance, as the daemon holds it.
pub(crate) struct PromiseSlot {
    /// The spec (unrendered).
    pub spec: PromiseSpec,
    /// Its evaluation state.
    pub state: PromiseState,
    /// A check is running.
    pub in_flight: bool,
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

/// What is monitored of one instance.
pub(crate) struct Watched {
    pub promises: Vec<PromiseSlot>,
    /// Bumped when the promises are replaced, so late check results are ignored.
    pub promises_gen: u64,
    /// Its usage accounting.
    pub accountant: Option<Accountant>,
    /// The last save of its accounting state between usage records.
    pub saved: Option<save::Saved>,
    /// The last measure of its partition's disk use (see `daemon::disk`).
    pub disk: DiskMeasure,
}

/// Timers of the periodic duties.
pub(crate) struct Timers {
    pub sample: Instant,
    pub health: Instant,
    pub summary: Instant,
}

/// A check that is due: which promise, of which generation, and what to run.
pub(crate) struct DueCheck {
    pub name: Name,
    pub index: usize,
    pub generation: u64,
    pub check: PromiseCheck,
    pub timeout_ms: u32,
}

/// Everything monitored on the node.
pub(crate) struct Monitoring {
    pub(crate) watched: BTreeMap<Name, Watched>,
    pub(crate) incidents: Incidents,
    /// Recently resolved incidents, for `status`.
    pub(crate) resolved: VecDeque<Incident>,
    pub(crate) timers: Timers,
    pub(crate) clk_tck: u64,
    pub(crate) page_size: u64,
    /// Per-instance CPU ms recorded in usage records by this daemon run.
    pub(crate) usage_cpu_ms: BTreeMap<String, u64>,
    pub(crate) thermal_zone: Option<PathBuf>,
    pub(crate) last_health: Option<Health>,
    pub(crate) check_log: RateLimit,
    pub(crate) disk_log: RateLimit,
}

/// Promise slots for `req`, first checks one interval from `now`.
fn promise_slots(req: &InstanceRequest, now: Instant) -> Vec<PromiseSlot> {
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

impl Monitoring {
    /// Nothing watched yet; every periodic duty due at `now`.
    pub(crate) fn new(
        incidents: Incidents,
        now: Instant,
        (clk_tck, page_size): (u64, u64),
        thermal_zone: Option<PathBuf>,
    ) -> Self {
        Monitoring {
            watched: BTreeMap::new(),
            incidents,
            resolved: VecDeque::new(),
            timers: Timers {
                sample: now,
                health: now,
                summary: now,
            },
            clk_tck,
            page_size,
            usage_cpu_ms: BTreeMap::new(),
            thermal_zone,
            last_health: None,
            check_log: RateLimit::default(),
            disk_log: RateLimit::default(),
        }
    }

    /// Starts watching `name` as `req` asks, with `accountant`; first checks one
    /// interval from `now`.
    pub(crate) fn watch(
        &mut self,
        name: Name,
        req: &InstanceRequest,
        accountant: Option<Accountant>,
        now: Instant,
    ) {
        self.watched.insert(
            name,
            Watched {
                promises: promise_slots(req, now),
                promises_gen: 0,
                accountant,
                saved: None,
                disk: DiskMeasure::default(),
            },
        );
    }

    /// `name`'s request changed to `req`: when its promises differ, replaces them
    /// (results of checks under way are then ignored) and returns the effects of the
    /// promises that are gone (their incidents resolve).
    pub(crate) fn request_changed(
        &mut self,
        name: &Name,
        old: &InstanceRequest,
        req: &InstanceRequest,
        now: Instant,
        wall_ms: u64,
    ) -> Vec<Effect> {
        let Some(w) = self.watched.get_mut(name) else {
            return Vec::new();
        };
        if old.promises == req.promises {
            return Vec::new();
        }
        let removed: Vec<Name> = w
            .promises
            .iter()
            .map(|p| p.spec.name.clone())
            .filter(|n| !req.promises.iter().any(|q| &q.name == n))
            .collect();
        w.promises = promise_slots(req, now);
        w.promises_gen += 1;
        let mut out = Vec::new();
        for p in removed {
            let actions = self.incidents.on_promise_removed(wall_ms, name, &p);
            out.extend(self.incident_effects(actions));
        }
        out
    }

    /// `name` is being destroyed at `wall_ms`: its last usage interval closes (its
    /// record first), then its incidents resolve. Its watch ends with its slot
    /// ([`Monitoring::unwatch`]).
    pub(crate) fn instance_destroyed(&mut self, name: &Name, wall_ms: u64) -> Vec<Effect> {
        let mut out: Vec<Effect> = self
            .watched
            .get_mut(name)
            .and_then(|w| w.accountant.as_mut())
            .and_then(|a| a.close_interval(wall_ms, 0))
            .map(Effect::Record)
            .into_iter()
            .collect();
        let actions = self.incidents.on_instance_destroyed(wall_ms, name);
        out.extend(self.incident_effects(actions));
        out
    }

    /// Stops watching `name` (its slot is gone).
    pub(crate) fn unwatch(&mut self, name: &Name) {
        self.watched.remove(name);
    }

    /// The earliest time a duty is due: a promise check of an instance meant to run
    /// (`now` when one is overdue), or a periodic duty.
    pub(crate) fn deadline(
        &self,
        wants_running: impl Fn(&Name) -> bool,
        now: Instant,
    ) -> Option<Instant> {
        let t = &self.timers;
        let promises = self
            .watched
            .iter()
            .filter(|(n, _)| wants_running(n))
            .flat_map(|(_, w)| w.promises.iter())
            .filter(|p| !p.in_flight)
            .map(|p| p.state.due().unwrap_or(now));
        promises.chain([t.sample, t.health, t.summary]).min()
    }

    /// The checks due at `now` of instances meant to run, each rescheduled one
    /// interval on.
    pub(crate) fn due_checks(
        &mut self,
        wants_running: impl Fn(&Name) -> bool,
        now: Instant,
    ) -> Vec<DueCheck> {
        let mut due = Vec::new();
        for (name, w) in &mut self.watched {
            if !wants_running(name) {
                continue;
            }
            for (index, p) in w.promises.iter_mut().enumerate() {
                if !p.in_flight && p.state.due().is_none_or(|d| d <= now) {
                    p.state.schedule(now + p.state.interval());
                    due.push(DueCheck {
                        name: name.clone(),
                        index,
                        generation: w.promises_gen,
                        check: p.spec.check.clone(),
                        timeout_ms: p.spec.timeout_ms,
                    });
                }
            }
        }
        due
    }

    /// A check of promise `index` of `name` was started.
    pub(crate) fn check_started(&mut self, name: &Name, index: usize) {
        if let Some(p) = self
            .watched
            .get_mut(name)
            .and_then(|w| w.promises.get_mut(index))
        {
            p.in_flight = true;
        }
    }

    /// A check finished at `now` (`wall_ms`): evaluates it; returns its records, the
    /// incidents it opens or resolves and the repairs they ask. A result for promises
    /// since replaced (another `generation`) is ignored.
    pub(crate) fn on_check(
        &mut self,
        name: &Name,
        index: usize,
        generation: u64,
        result: &CheckResult,
        now: Instant,
        wall_ms: u64,
    ) -> Vec<Effect> {
        let Some(w) = self.watched.get_mut(name) else {
            return Vec::new();
        };
        if generation != w.promises_gen {
            return Vec::new();
        }
        let Some(p) = w.promises.get_mut(index) else {
            return Vec::new();
        };
        p.in_flight = false;
        let promise = p.spec.name.clone();
        let events = p.state.on_result(now, wall_ms, result.clone());
        let mut out = Vec::new();
        for ev in events {
            if let Some(kind) = ev.to_record(name, &promise) {
                out.push(Effect::Record(kind));
            }
            let actions = match ev {
                PromiseEvent::Anomaly { failures_in_row } => {
                    tracing::warn!(instance = %name, promise = %promise, failures_in_row, message = %result.message, "anomaly");
                    self.incidents
                        .on_anomaly(wall_ms, name, &promise, result.message.clone())
                }
                PromiseEvent::Recovered => self.incidents.on_recovered(wall_ms, name, &promise),
                PromiseEvent::Changed { .. } => Vec::new(),
            };
            out.extend(self.incident_effects(actions));
        }
        out
    }

    /// The effects of what the incident core decided: an incident's record, after its
    /// durable state (saved while open, forgotten once resolved); repairs.
    pub(crate) fn incident_effects(&mut self, actions: Vec<IncidentAction>) -> Vec<Effect> {
        let mut out = Vec::new();
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
                        match state {
                            IncidentState::Resolved => {
                                self.remember_resolved(&kind);
                                out.push(Effect::ForgetIncident(*id));
                            }
                            _ => {
                                if let Some(i) = promise
                                    .as_ref()
                                    .and_then(|p| self.incidents.get(instance, p))
                                {
                                    out.push(Effect::SaveIncident(i.clone()));
                                }
                            }
                        }
                    }
                    out.push(Effect::Record(kind));
                }
                IncidentAction::Repair(instance) => out.push(Effect::Repair(instance)),
            }
        }
        out
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

    /// The promise summaries due, as records.
    pub(crate) fn summaries(&mut self) -> Vec<Effect> {
        let mut out = Vec::new();
        for (name, w) in &mut self.watched {
            for p in &mut w.promises {
                if let Some(s) = p.state.take_summary() {
                    out.push(Effect::Record(
                        s.into_record(name.clone(), p.spec.name.clone()),
                    ));
                }
            }
        }
        out
    }

    /// Samples every watched instance at `wall_ms` from `trees` (usage per process
    /// group) and `pid_of` (its process, when it has one); closes the usage intervals
    /// that are due, or all of them when `closing` (shutdown). Returns the usage
    /// records with the state after each, and the states to save between records
    /// (see [`save::due`]).
    pub(crate) fn sample(
        &mut self,
        trees: &BTreeMap<u32, TreeUsage>,
        pid_of: impl Fn(&Name) -> Option<u32>,
        closing: bool,
        wall_ms: u64,
        now: Instant,
    ) -> Vec<Effect> {
        let mut out = Vec::new();
        for (name, w) in &mut self.watched {
            let Some(acc) = w.accountant.as_mut() else {
                continue;
            };
            let tree = pid_of(name).and_then(|pid| trees.get(&pid).map(|t| (pid, *t)));
            acc.sample(Sample {
                wall_ms,
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
            let record = if (closing || wall_ms >= acc.due_ms()) && !idle {
                // The last walk's figure: walks run off the loop.
                acc.close_interval(wall_ms, w.disk.bytes)
            } else {
                None
            };
            let state = acc.state().clone();
            match record {
                Some(kind) => {
                    if let RecordKind::Usage { cpu_ms, .. } = &kind {
                        *self
                            .usage_cpu_ms
                            .entry(name.as_str().to_string())
                            .or_default() += cpu_ms;
                    }
                    out.push(Effect::Usage {
                        instance: name.clone(),
                        record: kind,
                        state: Box::new(state),
                    });
                }
                None if save::due(w.saved, state.cpu_milliticks, self.clk_tck, now) => {
                    w.saved = Some(save::Saved {
                        cpu_milliticks: state.cpu_milliticks,
                        at: now,
                    });
                    out.push(Effect::SaveUsage {
                        instance: name.clone(),
                        state: Box::new(state),
                    });
                }
                None => {}
            }
        }
        out
    }

    /// The instance whose partition most needs a disk walk (one walk at a time, each
    /// partition at most once per `every`), marked as walking; `None` when a walk runs
    /// or none is due at `now`.
    pub(crate) fn next_disk_walk(&mut self, every: Duration, now: Instant) -> Option<Name> {
        if self.watched.values().any(|w| w.disk.walking) {
            return None;
        }
        let name = self
            .watched
            .iter()
            .filter(|(_, w)| w.accountant.is_some())
            .filter(|(_, w)| {
                w.disk
                    .walked_at
                    .is_none_or(|t| now.saturating_duration_since(t) >= every)
            })
            .min_by_key(|(_, w)| w.disk.walked_at)
            .map(|(n, _)| n.clone())?;
        if let Some(w) = self.watched.get_mut(&name) {
            w.disk.walking = true;
        }
        Some(name)
    }

    /// A walk of `name`'s partition finished at `now`, counting `bytes`.
    pub(crate) fn disk_walked(&mut self, name: &Name, bytes: u64, now: Instant) {
        if let Some(w) = self.watched.get_mut(name) {
            w.disk.walking = false;
            w.disk.walked_at = Some(now);
            w.disk.bytes = bytes;
        }
    }
}

#[cfg(test)]
mod tests;
