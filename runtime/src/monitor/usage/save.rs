//! When an instance's accounting state is saved between usage intervals.
//!
//! Contract: pure (time comes in). The state is saved with every usage record (one
//! write, see `Store::append_usage`); between records [`due`] decides. SD cards wear
//! and a sled write costs whole pages, so it saves only when it matters: when the state
//! was never saved by this daemon, once the instance used about 100 ms of CPU since the
//! last save (`milliticks ≥ 1000 × clk_tck / 10`), or [`EVERY`] after it. A daemon
//! crash then loses at most that much CPU per instance (its processes die with the
//! daemon), or [`EVERY`] of memory and uptime samples.

use std::time::{Duration, Instant};

/// The longest time between two saves of a state that changes.
pub const EVERY: Duration = Duration::from_secs(60);

/// CPU since the last save that makes a save due, in milliticks per clock tick per
/// second: 1000 milliticks × `clk_tck` / 10 is 100 ms of CPU.
const CPU_MILLITICKS_PER_TICK: u64 = 1000;

/// What was saved last, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Saved {
    /// The state's CPU counter (milliticks) when it was saved.
    pub cpu_milliticks: u64,
    /// When it was saved.
    pub at: Instant,
}

/// Whether a state whose CPU counter is `cpu_milliticks` must be saved at `now`, given
/// the `last` save (`None`: never saved by this daemon) and the system's `clk_tck`.
pub fn due(last: Option<Saved>, cpu_milliticks: u64, clk_tck: u64, now: Instant) -> bool {
    last.is_none_or(|s| {
        cpu_milliticks.saturating_sub(s.cpu_milliticks) >= CPU_MILLITICKS_PER_TICK * clk_tck / 10
            || now.saturating_duration_since(s.at) >= EVERY
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCK: u64 = 100;

    /// An arbitrary origin: `Instant` has no constructor; the rule is handed every
    /// instant.
    #[allow(clippy::disallowed_methods)] // tests only: any instant will do as the origin
    fn origin() -> Instant {
        Instant::now()
    }

    fn saved(cpu_milliticks: u64, at: Instant) -> Option<Saved> {
        Some(Saved { cpu_milliticks, at })
    }

    #[test]
    fn a_state_never_saved_is_saved_at_once() {
        assert!(due(None, 0, TCK, origin()));
    }

    #[test]
    fn a_hundred_ms_of_cpu_makes_a_save_due() {
        let t0 = origin();
        // 100 ms at 100 ticks/s is 10 ticks, 10 000 milliticks.
        assert!(!due(saved(5_000, t0), 14_999, TCK, t0));
        assert!(due(saved(5_000, t0), 15_000, TCK, t0));
        // Another tick rate: 250 ticks/s, so 25 000 milliticks.
        assert!(!due(saved(0, t0), 24_999, 250, t0));
        assert!(due(saved(0, t0), 25_000, 250, t0));
    }

    #[test]
    fn a_minute_makes_a_save_due_even_without_cpu() {
        let t0 = origin();
        assert!(!due(
            saved(7, t0),
            7,
            TCK,
            t0 + EVERY - Duration::from_millis(1)
        ));
        assert!(due(saved(7, t0), 7, TCK, t0 + EVERY));
    }

    #[test]
    fn a_counter_that_went_down_or_a_clock_behind_makes_nothing_due() {
        let t0 = origin() + Duration::from_secs(10);
        // A new process counts from a lower counter: no underflow into "due".
        assert!(!due(saved(50_000, t0), 10, TCK, t0));
        // `now` before the save (never happens with a monotonic clock): not due.
        assert!(!due(saved(0, t0), 0, TCK, t0 - Duration::from_secs(5)));
    }
}
