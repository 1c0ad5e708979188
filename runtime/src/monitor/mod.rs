//! Monitoring, self-repair and accounting: pure cores the node daemon drives.
//!
//! Contract: the cores do no I/O or reads a clock. Monotonic time comes in as
//! [`std::time::Instant`], wall time (for records) as ms since the Unix epoch. Each core
//! returns what should happen (events, records, actions, plans); the daemon performs it
//! and persists what the cores export.
//!
//! - [`promise`]: one promise's results → state changes, anomalies, periodic summaries.
//! - [`incident`]: anomalies → incidents, repairs and escalation to the master.
//! - [`usage`]: process-tree samples → usage records, surviving process and daemon restarts.
//! - [`shed`]: which outbox records to merge or drop when the outbox exceeds its quota.
//!
//! And their thin I/O companions: [`checks`] runs a promise check, [`process_usage`]
//! reads what process trees use from `/proc`, [`health`] reads the node's load, memory,
//! disk and temperature.

pub mod checks;
pub mod health;
pub mod incident;
pub mod process_usage;
pub mod promise;
pub mod shed;
pub mod usage;

use hedge_wire::limits::MAX_MESSAGE;

/// `s` cut to at most [`MAX_MESSAGE`] bytes on a character boundary, so every record
/// built from it passes the wire's validation.
pub(crate) fn bounded_message(mut s: String) -> String {
    if s.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while end > 0 && !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_cut_on_a_char_boundary() {
        assert_eq!(bounded_message("short".into()), "short");
        let long = "é".repeat(MAX_MESSAGE); // 2 bytes each
        let cut = bounded_message(long);
        assert!(cut.len() <= MAX_MESSAGE);
        assert_eq!(cut.len(), MAX_MESSAGE);
        let odd = format!("a{}", "é".repeat(MAX_MESSAGE));
        let cut = bounded_message(odd);
        assert_eq!(cut.len(), MAX_MESSAGE - 1);
    }
}
