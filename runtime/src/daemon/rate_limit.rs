//! A rate limit for log lines of noisy conditions (a flapping process, a full disk, a
//! peer sending garbage): at most one line per period, with the count of lines
//! suppressed since the last one.

use std::time::{Duration, Instant};

use hedge_common::log_gate::LogGate;

/// At most one log line per period for a noisy condition.
#[derive(Debug, Default)]
pub(crate) struct RateLimit {
    gate: LogGate<Instant>,
}

impl RateLimit {
    const PERIOD: Duration = Duration::from_secs(10);

    /// `Some(suppressed since last)` when a line may be logged now.
    pub(crate) fn allow(&mut self, now: Instant) -> Option<u64> {
        self.gate
            .allow(now, |t| now.saturating_duration_since(t) < Self::PERIOD)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_with_the_count_suppressed() {
        let t0 = crate::daemon::monotonic_now();
        let mut r = RateLimit::default();
        assert_eq!(r.allow(t0), Some(0));
        assert_eq!(r.allow(t0 + Duration::from_secs(1)), None);
        assert_eq!(r.allow(t0 + Duration::from_secs(9)), None);
        assert_eq!(r.allow(t0 + RateLimit::PERIOD), Some(2));
        assert_eq!(r.allow(t0 + RateLimit::PERIOD * 2), Some(0));
    }
}
