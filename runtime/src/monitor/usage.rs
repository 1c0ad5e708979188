//! Usage accounting of one instance: samples of its process tree → usage records.
//!
//! Contract: the daemon owns one [`Accountant`] per instance, samples the instance's
//! process tree every few seconds and feeds [`Accountant::sample`]; when
//! [`Accountant::due_ms`] has passed it calls [`Accountant::close_interval`] (best right
//! after a sample) and appends the record to the outbox. Closing at `due_ms` keeps the
//! intervals aligned to multiples of the interval since the epoch. After every close — and
//! in between when [`save::due`] says so — it stores
//! [`Accountant::state`] (postcard via serde); at boot it rebuilds with
//! [`Accountant::restore`]. Intervals are contiguous: each record's `from_ms` is the
//! previous record's `to_ms`, across daemon restarts too.
//!
//! CPU: a sample carries the tree's cumulative counter (utime+stime of every live
//! process in the tree, in clock ticks; adding the root's cutime+cstime keeps it from
//! dropping when a child the root reaped exits) and the identity (pid, start time) of
//! the tree's root. Per sample:
//! - same identity as the last counter: the increase is counted; a decrease (a member
//!   of the tree exited) counts nothing and becomes the new base, so the root's own CPU
//!   is never counted twice;
//! - a different identity, or no previous counter: a new process, its whole counter is
//!   counted (it started at 0);
//! - identity unknown (`process: None` while running): a decrease is read as a new
//!   process and its counter counted from 0;
//! - not running: nothing is counted and the counter is forgotten, so the next process
//!   is counted whole. CPU a process used between its last sample and its exit is lost
//!   (at most one sample period).
//!
//! Because the last counter and its identity are part of the stored state, a daemon
//! restart neither loses nor double counts: if the same process is still observed, the
//! count continues from the stored counter; a new process is counted whole. CPU is
//! accumulated in milli-ticks and converted at close; the sub-ms rest carries over.
//! Samples belong to the interval open when they arrive.
//!
//! Memory: average = mean of the interval's samples (as given; a stopped instance's
//! sample should carry 0), peak = their max. Uptime: a sample's running state is held
//! until the next sample (sample-and-hold), clipped to the interval; at close the tail
//! since the last sample is held too. After a restore, the gap to the first sample is
//! credited only if the same process is still running. Network bytes: `None`.

use hedge_wire::{Name, RecordKind};
use serde::{Deserialize, Serialize};

/// Why an accountant could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    /// `clk_tck` (`sysconf(_SC_CLK_TCK)`) was 0.
    #[error("clock ticks per second is zero")]
    ZeroClockTick,
    /// The interval length was 0.
    #[error("usage interval is zero")]
    ZeroInterval,
}

/// Who a cumulative counter belongs to: the tree root's pid and start time (clock ticks
/// after boot, field 22 of `/proc/PID/stat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessIdentity {
    /// Root pid.
    pub pid: u32,
    /// Root start time, clock ticks after boot.
    pub start_ticks: u64,
}

/// One observation of the instance's process tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// When, ms since the epoch.
    pub wall_ms: u64,
    /// Any process of the instance is alive.
    pub running: bool,
    /// The tree root's identity; `None` when not running or unknown.
    pub process: Option<ProcessIdentity>,
    /// utime+stime of all processes in the tree, clock ticks.
    pub cpu_ticks_total: u64,
    /// Resident memory of the tree, bytes.
    pub rss_bytes: u64,
}

/// The last cumulative counter seen and whose it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    /// Its process, when known.
    pub process: Option<ProcessIdentity>,
    /// Its value, clock ticks.
    pub ticks: u64,
}

/// The last sample's time and running state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastSample {
    /// When, ms since the epoch.
    pub wall_ms: u64,
    /// Running then.
    pub running: bool,
}

/// An accountant's durable state: store it, restore it after a daemon restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountantState {
    /// The instance accounted.
    pub instance: Name,
    /// Nominal interval length, ms.
    pub interval_ms: u64,
    /// Start of the open interval, ms since the epoch.
    pub from_ms: u64,
    /// CPU counted in the open interval, clock ticks × 1000 (includes the carried rest).
    pub cpu_milliticks: u64,
    /// The last counter seen.
    pub counter: Option<Counter>,
    /// Sum of the interval's rss samples, bytes.
    pub mem_sum: u64,
    /// Number of the interval's rss samples.
    pub mem_count: u64,
    /// Largest rss sample of the interval, bytes.
    pub mem_peak: u64,
    /// Uptime counted in the open interval, ms.
    pub uptime_ms: u64,
    /// Uptime has been decided up to this wall time.
    pub credited_to_ms: u64,
    /// The last sample.
    pub last_sample: Option<LastSample>,
}

/// Usage accounting of one instance.
#[derive(Debug, Clone)]
pub struct Accountant {
    clk_tck: u64,
    state: AccountantState,
    /// Restored from storage and no sample seen since.
    resumed: bool,
}

impl Accountant {
    /// A fresh accountant whose first interval starts at `start_wall_ms`; `clk_tck` is
    /// `sysconf(_SC_CLK_TCK)`.
    pub fn new(
        instance: Name,
        interval_ms: u64,
        start_wall_ms: u64,
        clk_tck: u64,
    ) -> Result<Self, UsageError> {
        Accountant::restore(
            AccountantState {
                instance,
                interval_ms,
                from_ms: start_wall_ms,
                cpu_milliticks: 0,
                counter: None,
                mem_sum: 0,
                mem_count: 0,
                mem_peak: 0,
                uptime_ms: 0,
                credited_to_ms: start_wall_ms,
                last_sample: None,
            },
            clk_tck,
        )
        .map(|mut a| {
            a.resumed = false;
            a
        })
    }

    /// Continues from a stored state (see the module doc for what a restart keeps).
    pub fn restore(state: AccountantState, clk_tck: u64) -> Result<Self, UsageError> {
        if clk_tck == 0 {
            return Err(UsageError::ZeroClockTick);
        }
        if state.interval_ms == 0 {
            return Err(UsageError::ZeroInterval);
        }
        Ok(Accountant {
            clk_tck,
            state,
            resumed: true,
        })
    }

    /// The durable state to store.
    pub fn state(&self) -> &AccountantState {
        &self.state
    }

    /// The instance accounted.
    pub fn instance(&self) -> &Name {
        &self.state.instance
    }

    /// Start of the open interval, ms since the epoch.
    pub fn from_ms(&self) -> u64 {
        self.state.from_ms
    }

    /// When the open interval should be closed, ms since the epoch: the next multiple
    /// of the interval after its start, so intervals that divide an hour or a day line
    /// up with them (the first interval may be shorter).
    pub fn due_ms(&self) -> u64 {
        let i = self.state.interval_ms.max(1);
        (self.state.from_ms / i).saturating_add(1).saturating_mul(i)
    }

    /// Takes one sample.
    pub fn sample(&mut self, s: Sample) {
        let st = &mut self.state;
        let resumed = std::mem::take(&mut self.resumed);
        let same_process = matches!(
            (st.counter, s.process),
            (Some(Counter { process: Some(a), .. }), Some(b)) if a == b
        );

        // Uptime: hold the previous sample's state up to this one. After a restore the
        // gap is credited only if the same process is still running.
        if let Some(prev) = st.last_sample {
            if prev.running && (!resumed || (s.running && same_process)) {
                let since = prev.wall_ms.max(st.credited_to_ms);
                st.uptime_ms = st.uptime_ms.saturating_add(s.wall_ms.saturating_sub(since));
            }
        }
        st.credited_to_ms = st.credited_to_ms.max(s.wall_ms);
        st.last_sample = Some(LastSample {
            wall_ms: s.wall_ms,
            running: s.running,
        });

        // CPU.
        if s.running {
            let c = s.cpu_ticks_total;
            let delta = match (st.counter, s.process) {
                (None, _) => c,
                (Some(last), Some(_)) if same_process => c.saturating_sub(last.ticks),
                (
                    Some(Counter {
                        process: Some(_), ..
                    }),
                    Some(_),
                ) => c,
                (Some(last), _) => c.checked_sub(last.ticks).unwrap_or(c),
            };
            st.cpu_milliticks = st.cpu_milliticks.saturating_add(delta.saturating_mul(1000));
            st.counter = Some(Counter {
                process: s.process,
                ticks: c,
            });
        } else {
            st.counter = None;
        }

        // Memory.
        st.mem_sum = st.mem_sum.saturating_add(s.rss_bytes);
        st.mem_count = st.mem_count.saturating_add(1);
        st.mem_peak = st.mem_peak.max(s.rss_bytes);
    }

    /// Closes the open interval at `end_wall_ms` with the partition's current disk use
    /// and starts the next one there. `None` (and nothing reset) when `end_wall_ms` is
    /// not after the interval's start, e.g. after the wall clock stepped back.
    pub fn close_interval(&mut self, end_wall_ms: u64, disk_bytes: u64) -> Option<RecordKind> {
        let st = &mut self.state;
        if end_wall_ms <= st.from_ms {
            return None;
        }
        // Hold the last sample's state up to the end (not across a restart unconfirmed).
        if let Some(last) = st.last_sample {
            if last.running && !self.resumed {
                let since = last.wall_ms.max(st.credited_to_ms);
                st.uptime_ms = st
                    .uptime_ms
                    .saturating_add(end_wall_ms.saturating_sub(since));
            }
        }
        st.credited_to_ms = st.credited_to_ms.max(end_wall_ms);
        let span = end_wall_ms - st.from_ms;
        let record = RecordKind::Usage {
            instance: st.instance.clone(),
            from_ms: st.from_ms,
            to_ms: end_wall_ms,
            cpu_ms: st.cpu_milliticks / self.clk_tck,
            mem_avg_bytes: st.mem_sum.checked_div(st.mem_count).unwrap_or(0),
            mem_peak_bytes: st.mem_peak,
            disk_bytes,
            net_rx_bytes: None,
            net_tx_bytes: None,
            uptime_ms: st.uptime_ms.min(span),
        };
        st.from_ms = end_wall_ms;
        st.cpu_milliticks %= self.clk_tck;
        st.mem_sum = 0;
        st.mem_count = 0;
        st.mem_peak = 0;
        st.uptime_ms = 0;
        Some(record)
    }
}

pub mod save;

#[cfg(test)]
mod tests;
