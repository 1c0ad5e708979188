//! The rate limit of the master's noisy log lines (refusals at the HTTPS endpoint:
//! artifact requests, enrollment, revoked nodes).
//!
//! Contract: [`LogLimit::allow`] says whether a line under `key` may be logged now: the
//! first time, then once per [`PERIOD`] per key; callers count what they refuse
//! themselves. Thread-safe. It reads the monotonic clock, as the I/O drivers that use it
//! do; the rule itself ([`LogLimit::allow_at`]) takes the time as input.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// At most one line per key this often.
pub const PERIOD: Duration = Duration::from_secs(10);

/// When each key last logged.
#[derive(Debug, Default)]
pub struct LogLimit {
    last: Mutex<BTreeMap<&'static str, Instant>>,
}

impl LogLimit {
    /// Whether a line under `key` may be logged now (see the module doc).
    pub fn allow(&self, key: &'static str) -> bool {
        #[allow(clippy::disallowed_methods)] // the HTTPS driver's log rate limit: real time
        let now = Instant::now();
        self.allow_at(key, now)
    }

    /// Whether a line under `key` may be logged at `now`; if so, `now` is its last time.
    pub fn allow_at(&self, key: &'static str, now: Instant) -> bool {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if last
            .get(key)
            .is_some_and(|t| now.saturating_duration_since(*t) < PERIOD)
        {
            return false;
        }
        last.insert(key, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::disallowed_methods)] // tests only: any instant will do as the origin
    fn origin() -> Instant {
        Instant::now()
    }

    #[test]
    fn once_per_period_per_key() {
        let l = LogLimit::default();
        let t0 = origin();
        assert!(l.allow_at("a", t0));
        assert!(!l.allow_at("a", t0));
        assert!(!l.allow_at("a", t0 + PERIOD - Duration::from_millis(1)));
        assert!(l.allow_at("b", t0), "keys are limited apart");
        assert!(l.allow_at("a", t0 + PERIOD));
        assert!(!l.allow_at("a", t0 + PERIOD + Duration::from_secs(9)));
        assert!(l.allow_at("a", t0 + PERIOD * 2));
        // A denied call does not push the window forward.
        assert!(!l.allow_at("b", t0 + Duration::from_secs(5)));
        assert!(l.allow_at("b", t0 + PERIOD));
    }
}
