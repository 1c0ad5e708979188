//! The rule for log lines of noisy conditions: at most one line per period, and the
//! line that is let through carries the count of lines suppressed since the last one.
//!
//! Contract: [`LogGate`] is pure: the caller passes the time `now` (any clock: an
//! `Instant`, wall milliseconds) and says whether the last logged line is still within
//! the period; the gate reads no clock.

/// At most one log line per period, counting the ones it holds back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogGate<T> {
    last: Option<T>,
    suppressed: u64,
}

impl<T> Default for LogGate<T> {
    fn default() -> Self {
        LogGate {
            last: None,
            suppressed: 0,
        }
    }
}

impl<T: Copy> LogGate<T> {
    /// `Some(lines suppressed since the last one)` when a line may be logged at `now`:
    /// none was logged yet, or `within_period(last)` is false; else `None`, and the line
    /// is counted as suppressed.
    pub fn allow(&mut self, now: T, within_period: impl FnOnce(T) -> bool) -> Option<u64> {
        match self.last {
            Some(t) if within_period(t) => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_carrying_the_count_held_back() {
        let mut g = LogGate::<u64>::default();
        let recent = |now: u64| move |t: u64| now - t < 10;
        assert_eq!(g.allow(0, recent(0)), Some(0));
        assert_eq!(g.allow(3, recent(3)), None);
        assert_eq!(g.allow(9, recent(9)), None);
        // The period is measured from the last line let through, not the last attempt.
        assert_eq!(g.allow(10, recent(10)), Some(2));
        assert_eq!(g.allow(19, recent(19)), None);
        assert_eq!(g.allow(40, recent(40)), Some(1));
        assert_eq!(g.allow(41, recent(41)), None);
    }
}
