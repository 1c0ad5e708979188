//! The daemon's monitoring duties: promise checks, incidents and self-repair, usage
//! accounting, node health and periodic summaries.
//!
//! Contract: the monitoring part (`daemon::monitoring`) holds the state and decides
//! with the pure cores in `crate::monitor`; this module is its I/O: it schedules, runs
//! checks as separate tasks (never blocking the loop), samples `/proc`, walks
//! partitions off the loop, and dispatches the part's effects (records, what must
//! survive a restart: open incidents, accounting state).
//! Checks run only for instances wanted running; a new (or restarted-by-config)
//! instance's first check comes one interval after its promises were set up.
//! When the daemon is root, a `command` check whose partition has no uid (the instance
//! broke its partition, or the uid range is exhausted) is refused, never run: counted
//! (`command_checks_refused`), logged (rate-limited), and the promise fails.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hedge_wire::{IncidentState, Name, PromiseCheck, RecordKind};

use super::disk::{self, DiskUsage, WalkLimits};
use super::monitoring::DueCheck;
use super::{now_ms, Daemon, Event};
use crate::monitor::checks::{self, Check};
use crate::monitor::promise::CheckResult;
use crate::monitor::usage::Accountant;
use crate::monitor::{health, process_usage};
use crate::render;

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

/// How often a partition's disk may be walked: every half usage interval, but never
/// more often than every [`WALK_FLOOR`]. A walk opens every directory of the partition;
/// with short usage intervals (tests, benches: 100 ms) walks ran back to back and cost
/// far more than the records they fed, while disk usage moves slowly.
fn walk_every(usage_interval_ms: u64) -> Duration {
    Duration::from_millis(usage_interval_ms / 2).max(WALK_FLOOR)
}

/// The shortest time between two walks of one partition.
const WALK_FLOOR: Duration = Duration::from_secs(10);

impl Daemon {
    /// A new accountant for `name`, or the one an earlier daemon left.
    pub(super) fn accountant_for(&mut self, name: &Name) -> Option<Accountant> {
        let interval = self.cfg.monitor.usage_interval_ms;
        let restored = match self.outbox.store.usage_state(name) {
            Ok(Some(s)) if s.instance == *name && s.interval_ms == interval => {
                Accountant::restore(s, self.monitoring.clk_tck).ok()
            }
            Ok(_) => None,
            Err(e) => {
                self.store_failed(&e);
                None
            }
        };
        restored.or_else(|| {
            Accountant::new(name.clone(), interval, now_ms(), self.monitoring.clk_tck).ok()
        })
    }

    /// The earliest time a monitoring duty is due.
    pub(super) fn monitor_deadline(&self) -> Option<Instant> {
        let instances = &self.instances;
        self.monitoring
            .deadline(|n| instances.wants_running(n), super::monotonic_now())
    }

    /// Runs every duty that is due.
    pub(super) fn monitor_tick(&mut self) {
        let now = super::monotonic_now();
        self.recover_store();
        self.start_due_checks(now);
        if now >= self.monitoring.timers.sample {
            self.monitoring.timers.sample =
                now + Duration::from_millis(self.cfg.monitor.sample_interval_ms);
            self.sample_usage(false);
            self.start_disk_walk();
        }
        if now >= self.monitoring.timers.health {
            self.monitoring.timers.health =
                now + Duration::from_millis(self.cfg.monitor.health_interval_ms);
            self.record_health();
            self.check_expiry();
        }
        if now >= self.monitoring.timers.summary {
            self.monitoring.timers.summary =
                now + Duration::from_millis(self.cfg.monitor.summary_interval_ms);
            self.record_summaries();
        }
    }

    fn render_check(&self, name: &Name, check: &PromiseCheck) -> Result<Check, CheckStartError> {
        let slot = self
            .instances
            .slots
            .get(name)
            .ok_or("instance gone".to_string())?;
        let req = &slot.request;
        let lookup = |k: &str| -> Option<String> {
            req.parameters.get(k).cloned().or_else(|| {
                let (other, key) = k.split_once('.')?;
                self.instances.published_param(other, key)
            })
        };
        let r = |t: &str| render::render(t, &lookup).map_err(|e| e.to_string());
        let dir = self.instances.partitions.path(name);
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
                let owner = match self.instances.partitions.ensure(name) {
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
        let instances = &self.instances;
        let due = self
            .monitoring
            .due_checks(|n| instances.wants_running(n), now);
        for DueCheck {
            name,
            index: idx,
            generation,
            check,
            timeout_ms,
        } in due
        {
            if matches!(check, PromiseCheck::Process) {
                let alive = self.instances.slots.get(&name).is_some_and(|s| {
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
                        if let Some(suppressed) =
                            self.monitoring.check_log.allow(super::monotonic_now())
                        {
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
                    self.monitoring.check_started(&name, idx);
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
        let effects = self.monitoring.on_check(
            &name,
            index,
            generation,
            &result,
            super::monotonic_now(),
            now_ms(),
        );
        self.dispatch(effects);
    }

    /// Starts a walk of the partition most in need of one, unless a walk runs: one at a
    /// time, on a blocking thread (never on the loop), each partition at most once per
    /// [`walk_every`]; the result comes back as [`Event::DiskWalked`].
    pub(super) fn start_disk_walk(&mut self) {
        let every = walk_every(self.cfg.monitor.usage_interval_ms);
        let Some(name) = self
            .monitoring
            .next_disk_walk(every, super::monotonic_now())
        else {
            return;
        };
        let path = self.instances.partitions.path(&name);
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
            if let Some(suppressed) = self.monitoring.disk_log.allow(super::monotonic_now()) {
                tracing::warn!(
                    instance = %name,
                    counted = usage.bytes,
                    reason = usage.reason.as_deref().unwrap_or(""),
                    suppressed,
                    "partition disk walk incomplete: its disk usage is a lower bound"
                );
            }
        }
        self.monitoring
            .disk_walked(&name, usage.bytes, super::monotonic_now());
        // Next partition in line, if any is due.
        self.start_disk_walk();
    }

    /// Samples every instance's process tree; closes usage intervals that are due.
    /// `closing` also closes every interval now (used at shutdown).
    pub(super) fn sample_usage(&mut self, closing: bool) {
        let wall = now_ms();
        let trees = process_usage::tree_usage(&process_usage::scan(), self.monitoring.page_size);
        let slots = &self.instances.slots;
        let effects = self.monitoring.sample(
            &trees,
            |n| slots.get(n).and_then(|s| s.lifecycle.pid()),
            closing,
            wall,
            super::monotonic_now(),
        );
        self.dispatch(effects);
    }

    pub(super) fn record_health(&mut self) {
        let h = health::read(
            &self.cfg.state_dir(),
            self.monitoring.thermal_zone.as_deref(),
        );
        self.monitoring.last_health = Some(h);
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
        let effects = self.monitoring.summaries();
        self.dispatch(effects);
    }

    /// Promise states for `status`.
    pub(super) fn promise_status(&self, name: &Name) -> Vec<crate::local_api::PromiseView> {
        self.monitoring
            .watched
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
        self.monitoring
            .incidents
            .open_incidents()
            .chain(self.monitoring.resolved.iter())
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
        &self.monitoring.usage_cpu_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_follow_half_the_usage_interval_but_never_more_often_than_the_floor() {
        assert_eq!(walk_every(60_000), Duration::from_secs(30));
        assert_eq!(walk_every(100), WALK_FLOOR);
        assert_eq!(walk_every(20_000), WALK_FLOOR);
    }
}
