//! One promise's evaluation: a pure state machine over check results.
//!
//! Contract: the daemon owns one [`PromiseState`] per (instance, promise). It runs the
//! check when [`PromiseState::due`] says so (one check at a time per promise; a check
//! that outlives the spec's timeout is a failure), and feeds the outcome to
//! [`PromiseState::on_result`] with the monotonic `now` and the wall-clock `wall_ms`.
//! The returned [`PromiseEvent`]s go on: `Changed` becomes a `PromiseResult` record
//! ([`PromiseEvent::to_record`]), `Anomaly`/`Recovered` go to the incident core
//! ([`super::incident`]). Every few minutes the daemon calls
//! [`PromiseState::take_summary`] and records the [`Summary`].
//!
//! Scheduling: a new promise is due **at once** (`due()` is `None`, read as "now"), so a
//! broken instance is reported within one timeout and the master learns the initial
//! state promptly. A driver that prefers to give a fresh process time to boot calls
//! [`PromiseState::schedule`]`(now + interval)` first. After each result the next check
//! is one interval after that result.
//!
//! Anomalies: with threshold `t`, failures in a row reaching `t` emit
//! `Anomaly { failures_in_row: t }`; while the streak persists, every further `t`
//! failures (2t, 3t, …) emit another, so the repair loop can escalate. The first pass
//! after an anomaly emits `Recovered`. Memory is fixed: latencies for the median live in
//! a ring of [`RESERVOIR`] entries, messages are cut to the wire's bound.

use std::time::{Duration, Instant};

use hedge_wire::{Name, PromiseSpec, RecordKind};

use super::bounded_message;

/// Latencies kept for the median of a summary: the most recent ones since the last take.
pub const RESERVOIR: usize = 64;

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// The check passed.
    pub ok: bool,
    /// How long it took, ms (a timed-out check reports its timeout).
    pub latency_ms: u32,
    /// Why it failed, or a short note when it passed (may be empty).
    pub message: String,
}

/// What a result means, returned by [`PromiseState::on_result`] in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromiseEvent {
    /// The promise changed state (pass→fail, fail→pass); the very first result counts.
    Changed {
        /// Passing now.
        ok: bool,
        /// Latency of the check that changed it, ms.
        latency_ms: u32,
        /// That check's message.
        message: String,
    },
    /// Failures in a row reached the threshold (or a further multiple of it).
    Anomaly {
        /// Failures in a row so far.
        failures_in_row: u32,
    },
    /// The promise passes again after an anomaly.
    Recovered,
}

impl PromiseEvent {
    /// The `PromiseResult` record a `Changed` event makes (`checks: 1`, `failures: 0|1`);
    /// `None` for the other events, which go to the incident core.
    pub fn to_record(&self, instance: &Name, promise: &Name) -> Option<RecordKind> {
        match self {
            PromiseEvent::Changed {
                ok,
                latency_ms,
                message,
            } => Some(RecordKind::PromiseResult {
                instance: instance.clone(),
                promise: promise.clone(),
                ok: *ok,
                checks: 1,
                failures: u32::from(!ok),
                latency_ms: Some((*latency_ms, *latency_ms, *latency_ms)),
                message: message.clone(),
            }),
            PromiseEvent::Anomaly { .. } | PromiseEvent::Recovered => None,
        }
    }
}

/// The checks since the previous [`PromiseState::take_summary`].
///
/// Counts every check, including those already reported by `Changed` records, so the
/// master must not add the two kinds up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Passing at the last check.
    pub ok: bool,
    /// Checks summarised (≥ 1).
    pub checks: u32,
    /// Failed checks among them.
    pub failures: u32,
    /// Latency min / median / max, ms. Min and max over all summarised checks; the
    /// (lower) median over the last [`RESERVOIR`] of them.
    pub latency_ms: (u32, u32, u32),
    /// The last failure's message, empty when none failed.
    pub message: String,
}

impl Summary {
    /// The `PromiseResult` record of this summary.
    pub fn into_record(self, instance: Name, promise: Name) -> RecordKind {
        RecordKind::PromiseResult {
            instance,
            promise,
            ok: self.ok,
            checks: self.checks,
            failures: self.failures,
            latency_ms: Some(self.latency_ms),
            message: self.message,
        }
    }
}

/// Checks accumulated for the next summary; fixed size.
#[derive(Debug, Clone)]
struct Window {
    checks: u32,
    failures: u32,
    min: u32,
    max: u32,
    ring: [u32; RESERVOIR],
    /// Valid entries in `ring` (≤ RESERVOIR).
    len: usize,
    /// Next slot to write.
    pos: usize,
    last_failure: Option<String>,
}

impl Window {
    fn new() -> Self {
        Window {
            checks: 0,
            failures: 0,
            min: u32::MAX,
            max: 0,
            ring: [0; RESERVOIR],
            len: 0,
            pos: 0,
            last_failure: None,
        }
    }

    fn add(&mut self, ok: bool, latency_ms: u32, message: &str) {
        self.checks = self.checks.saturating_add(1);
        if !ok {
            self.failures = self.failures.saturating_add(1);
            self.last_failure = Some(message.to_owned());
        }
        self.min = self.min.min(latency_ms);
        self.max = self.max.max(latency_ms);
        if let Some(slot) = self.ring.get_mut(self.pos) {
            *slot = latency_ms;
        }
        self.pos = (self.pos + 1) % RESERVOIR;
        self.len = (self.len + 1).min(RESERVOIR);
    }

    /// Lower median of the ring's valid entries.
    fn median(&self) -> u32 {
        let mut sorted = self.ring;
        let valid = sorted.get_mut(..self.len).unwrap_or_default();
        valid.sort_unstable();
        valid
            .get(self.len.saturating_sub(1) / 2)
            .copied()
            .unwrap_or(0)
    }
}

/// The evaluation state of one promise.
#[derive(Debug, Clone)]
pub struct PromiseState {
    name: Name,
    interval: Duration,
    threshold: u32,
    next_due: Option<Instant>,
    last: Option<(bool, u64)>,
    failures_in_row: u32,
    in_anomaly: bool,
    window: Window,
}

impl PromiseState {
    /// A promise never checked yet: due at once. A zero interval or threshold (refused
    /// by the wire's validation) is read as 1.
    pub fn new(spec: &PromiseSpec) -> Self {
        PromiseState {
            name: spec.name.clone(),
            interval: Duration::from_millis(u64::from(spec.interval_ms.max(1))),
            threshold: u32::from(spec.threshold.max(1)),
            next_due: None,
            last: None,
            failures_in_row: 0,
            in_anomaly: false,
            window: Window::new(),
        }
    }

    /// The promise's name.
    pub fn name(&self) -> &Name {
        &self.name
    }

    /// Time between checks.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// When the next check is due; `None` means now (never checked, never scheduled).
    pub fn due(&self) -> Option<Instant> {
        self.next_due
    }

    /// Sets the next check time, e.g. `now + interval()` to let a fresh process boot
    /// before the first check. The next result schedules as usual.
    pub fn schedule(&mut self, at: Instant) {
        self.next_due = Some(at);
    }

    /// Failures in a row up to the last result.
    pub fn failures_in_row(&self) -> u32 {
        self.failures_in_row
    }

    /// An anomaly was reported and the promise has not passed since.
    pub fn in_anomaly(&self) -> bool {
        self.in_anomaly
    }

    /// The last result: passing, and its wall time (ms since the epoch).
    pub fn last(&self) -> Option<(bool, u64)> {
        self.last
    }

    /// Takes one check's result at monotonic `now` / wall `wall_ms`; schedules the next
    /// check one interval later.
    pub fn on_result(
        &mut self,
        now: Instant,
        wall_ms: u64,
        result: CheckResult,
    ) -> Vec<PromiseEvent> {
        let CheckResult {
            ok,
            latency_ms,
            message,
        } = result;
        let message = bounded_message(message);
        self.next_due = Some(now + self.interval);
        self.window.add(ok, latency_ms, &message);

        let mut events = Vec::new();
        let changed = self.last.map(|(was_ok, _)| was_ok) != Some(ok);
        self.last = Some((ok, wall_ms));
        if changed {
            events.push(PromiseEvent::Changed {
                ok,
                latency_ms,
                message,
            });
        }
        if ok {
            self.failures_in_row = 0;
            if self.in_anomaly {
                self.in_anomaly = false;
                events.push(PromiseEvent::Recovered);
            }
        } else {
            self.failures_in_row = self.failures_in_row.saturating_add(1);
            if self.failures_in_row % self.threshold == 0 {
                self.in_anomaly = true;
                events.push(PromiseEvent::Anomaly {
                    failures_in_row: self.failures_in_row,
                });
            }
        }
        events
    }

    /// The checks since the previous take, and starts a new window; `None` when there
    /// was no check since.
    pub fn take_summary(&mut self) -> Option<Summary> {
        if self.window.checks == 0 {
            return None;
        }
        let w = std::mem::replace(&mut self.window, Window::new());
        Some(Summary {
            ok: self.last.is_some_and(|(ok, _)| ok),
            checks: w.checks,
            failures: w.failures,
            latency_ms: (w.min, w.median(), w.max),
            message: w.last_failure.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests;
