//! The lifecycle of one supervised instance: a pure state machine.
//!
//! Contract: `handle(now, input) -> actions`. No I/O, no clock: time comes in as
//! `now`, randomness (backoff jitter) from a seeded generator owned by the machine. The
//! driver performs the actions and feeds back what happened (`Spawned`, `SpawnFailed`,
//! `Exited`), and calls `handle(now, Tick)` when [`Lifecycle::deadline`] has passed.
//!
//! Restart policy: a process that exits while wanted is started again. The first exit
//! after a stable run (≥ `stable_after`) restarts at once; each further quick exit waits
//! `base · 2^(n-1)` (n = quick exits in a row beyond the first), capped at `max`, ±20 %
//! jitter, still capped. It never gives up. Stopping sends SIGTERM to the process group,
//! then SIGKILL after `grace`.
//!
//! Order of an immediate restart: `Spawn` comes before the exit's `Status(Backoff)`, so
//! the driver starts the new process before it writes anything; the states it records
//! keep their order (`Backoff`, then `Running` once `Spawned` is fed back).

use std::time::{Duration, Instant};

use hedge_wire::{ExitStatus, InstanceStatus};

/// Shortest wait before retrying an instance whose dependencies are missing.
const WAIT_RETRY: Duration = Duration::from_millis(500);

/// Timing of restarts and stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Delay after the second quick exit in a row.
    pub backoff_base: Duration,
    /// Ceiling of the delay.
    pub backoff_max: Duration,
    /// A run at least this long resets the quick-exit count.
    pub stable_after: Duration,
    /// Time between SIGTERM and SIGKILL.
    pub grace: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            stable_after: Duration::from_secs(10),
            grace: Duration::from_secs(5),
        }
    }
}

/// What happened, fed to [`Lifecycle::handle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The instance should run.
    Start,
    /// The instance should not run.
    Stop,
    /// Its rendered configuration changed: stop it if running, then start again.
    Restart,
    /// The driver started the process.
    Spawned {
        /// Its pid (and process group).
        pid: u32,
    },
    /// The driver could not start it; `waiting` when a dependency (e.g. another
    /// instance's connection parameter) is missing rather than the spawn failing.
    SpawnFailed {
        /// A missing dependency rather than a failure.
        waiting: bool,
    },
    /// The process `pid` ended.
    Exited {
        /// The pid that `Spawned` reported.
        pid: u32,
        /// Exit code or terminating signal.
        status: ExitStatus,
    },
    /// Time passed; acts on an expired deadline.
    Tick,
}

/// Which signal to send to a process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sig {
    /// SIGTERM: ask the group to stop (graceful stop, before the kill timeout).
    Term,
    /// SIGKILL: the kill timeout passed, or the instance is destroyed.
    Kill,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start the process now, then feed `Spawned` or `SpawnFailed`.
    Spawn,
    /// Send a signal to the process group `pgid`.
    Signal {
        /// The process group: the instance's pid, which leads it.
        pgid: u32,
        /// SIGTERM to stop, SIGKILL past the grace.
        sig: Sig,
    },
    /// The instance entered a new state: record it.
    Status(InstanceStatus),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Stopped,
    /// `Spawn` was emitted; waiting for `Spawned`/`SpawnFailed`.
    Spawning,
    Running {
        pid: u32,
        since: Instant,
    },
    Backoff {
        until: Instant,
        waiting: bool,
    },
    Stopping {
        pid: u32,
        /// `None` once SIGKILL was sent.
        kill_at: Option<Instant>,
    },
}

/// One instance's lifecycle.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    policy: Policy,
    want_running: bool,
    /// A restart was asked for while running: start again once the old process exits.
    restart_pending: bool,
    phase: Phase,
    restarts: u32,
    quick_exits: u32,
    last_exit: Option<ExitStatus>,
    rng: fastrand::Rng,
}

impl Lifecycle {
    /// A stopped instance. `seed` drives the jitter; `restarts` and `last_exit` continue
    /// what an earlier daemon observed.
    pub fn new(policy: Policy, seed: u64, restarts: u32, last_exit: Option<ExitStatus>) -> Self {
        Lifecycle {
            policy,
            want_running: false,
            restart_pending: false,
            phase: Phase::Stopped,
            restarts,
            quick_exits: 0,
            last_exit,
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// Replaces the timing policy (takes effect on the next decision).
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    /// The state to report.
    pub fn status(&self) -> InstanceStatus {
        match self.phase {
            Phase::Stopped => InstanceStatus::Stopped,
            Phase::Spawning | Phase::Running { .. } => InstanceStatus::Running,
            Phase::Backoff { waiting: true, .. } => InstanceStatus::Waiting,
            Phase::Backoff { .. } => InstanceStatus::Backoff,
            Phase::Stopping { .. } => InstanceStatus::Stopping,
        }
    }

    /// The running process, if any (also while it is being stopped).
    pub fn pid(&self) -> Option<u32> {
        match self.phase {
            Phase::Running { pid, .. } | Phase::Stopping { pid, .. } => Some(pid),
            _ => None,
        }
    }

    /// Restarts so far.
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// How the last run ended.
    pub fn last_exit(&self) -> Option<ExitStatus> {
        self.last_exit
    }

    /// Whether the instance is wanted running.
    pub fn wants_running(&self) -> bool {
        self.want_running
    }

    /// True when nothing runs and nothing is pending: safe to remove the partition.
    pub fn is_idle(&self) -> bool {
        matches!(self.phase, Phase::Stopped | Phase::Backoff { .. }) && !self.want_running
    }

    /// When the driver must call `handle(_, Tick)` next, if ever.
    pub fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Backoff { until, .. } => Some(until),
            Phase::Stopping { kill_at, .. } => kill_at,
            _ => None,
        }
    }

    /// The delay before the next start after `quick_exits` quick exits in a row.
    fn backoff(&mut self) -> Duration {
        let n = self.quick_exits;
        if n == 0 {
            return Duration::ZERO;
        }
        let exp = (n - 1).min(20);
        let raw = self
            .policy
            .backoff_base
            .saturating_mul(1u32 << exp)
            .min(self.policy.backoff_max);
        let jitter = 0.8 + 0.4 * self.rng.f64();
        raw.mul_f64(jitter).min(self.policy.backoff_max)
    }

    fn spawn(&mut self, out: &mut Vec<Action>) {
        self.phase = Phase::Spawning;
        out.push(Action::Spawn);
    }

    fn enter(&mut self, phase: Phase, out: &mut Vec<Action>) {
        let before = self.status();
        self.phase = phase;
        if self.status() != before {
            out.push(Action::Status(self.status()));
        }
    }

    /// Schedules the next start after an exit or a failed spawn.
    fn retry(&mut self, now: Instant, waiting: bool, out: &mut Vec<Action>) {
        let delay = self.backoff();
        self.quick_exits = self.quick_exits.saturating_add(1);
        self.restarts = self.restarts.saturating_add(1);
        if delay.is_zero() && !waiting {
            self.spawn(out);
        } else {
            self.enter(
                Phase::Backoff {
                    until: now
                        + if waiting {
                            delay.max(WAIT_RETRY)
                        } else {
                            delay
                        },
                    waiting,
                },
                out,
            );
        }
    }

    /// SIGTERM to the process group, SIGKILL after the grace period.
    fn terminate(&mut self, now: Instant, pid: u32, out: &mut Vec<Action>) {
        out.push(Action::Signal {
            pgid: pid,
            sig: Sig::Term,
        });
        self.enter(
            Phase::Stopping {
                pid,
                kill_at: Some(now + self.policy.grace),
            },
            out,
        );
    }

    /// Advances the machine.
    pub fn handle(&mut self, now: Instant, input: Input) -> Vec<Action> {
        let mut out = Vec::new();
        match (input, self.phase) {
            (Input::Start, Phase::Stopped) => {
                self.want_running = true;
                self.quick_exits = 0;
                self.spawn(&mut out);
            }
            (Input::Start, Phase::Stopping { .. }) => {
                self.want_running = true;
                self.restart_pending = true;
            }
            (Input::Start, _) => self.want_running = true,

            (Input::Stop, Phase::Running { pid, .. }) => {
                self.want_running = false;
                self.restart_pending = false;
                self.terminate(now, pid, &mut out);
            }
            (Input::Stop, Phase::Backoff { .. }) => {
                self.want_running = false;
                self.enter(Phase::Stopped, &mut out);
            }
            (Input::Stop, _) => {
                self.want_running = false;
                self.restart_pending = false;
            }

            (Input::Restart, Phase::Running { pid, .. }) => {
                self.restart_pending = true;
                self.terminate(now, pid, &mut out);
            }
            (Input::Restart, Phase::Backoff { .. }) if self.want_running => {
                // New configuration: try it now rather than after the old delay.
                self.quick_exits = 0;
                self.spawn(&mut out);
            }
            (Input::Restart, _) => {}

            (Input::Spawned { pid }, Phase::Spawning) => {
                self.phase = Phase::Running { pid, since: now };
                out.push(Action::Status(InstanceStatus::Running));
            }
            (Input::SpawnFailed { waiting }, Phase::Spawning) => {
                if self.want_running {
                    self.retry(now, waiting, &mut out);
                } else {
                    self.enter(Phase::Stopped, &mut out);
                }
            }

            (Input::Exited { pid, status }, Phase::Running { pid: p, since }) if pid == p => {
                self.last_exit = Some(status);
                if now.saturating_duration_since(since) >= self.policy.stable_after {
                    self.quick_exits = 0;
                }
                if self.want_running {
                    self.phase = Phase::Backoff {
                        until: now,
                        waiting: false,
                    };
                    // Leaves `out` empty (a delay) or with the immediate `Spawn`.
                    self.retry(now, false, &mut out);
                    // The exit is reported even when the restart is immediate, after
                    // the `Spawn`: the new process starts before anything is written.
                    out.push(Action::Status(InstanceStatus::Backoff));
                } else {
                    self.enter(Phase::Stopped, &mut out);
                }
            }
            (Input::Exited { pid, status }, Phase::Stopping { pid: p, .. }) if pid == p => {
                self.last_exit = Some(status);
                if self.want_running && self.restart_pending {
                    self.restart_pending = false;
                    self.quick_exits = 0;
                    self.restarts = self.restarts.saturating_add(1);
                    self.phase = Phase::Stopped;
                    self.spawn(&mut out);
                } else {
                    self.want_running = false;
                    self.enter(Phase::Stopped, &mut out);
                }
            }

            (Input::Tick, Phase::Backoff { until, .. }) if now >= until => {
                if self.want_running {
                    self.spawn(&mut out);
                } else {
                    self.enter(Phase::Stopped, &mut out);
                }
            }
            (
                Input::Tick,
                Phase::Stopping {
                    pid,
                    kill_at: Some(at),
                },
            ) if now >= at => {
                out.push(Action::Signal {
                    pgid: pid,
                    sig: Sig::Kill,
                });
                self.phase = Phase::Stopping { pid, kill_at: None };
            }

            // Anything else (a stale exit of an old pid, an early tick…) changes nothing.
            _ => {}
        }
        out
    }
}

#[cfg(test)]
mod tests;
