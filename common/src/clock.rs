//! The wall clock: the one module that reads `SystemTime::now`.
//!
//! Contract: [`now_ms`] and [`now_s`] are the time since the Unix epoch, 0 for a clock set
//! before it, saturating instead of wrapping. Pure cores never call them: the I/O driver
//! reads the clock and passes the time in.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    millis(since_epoch())
}

/// Seconds since the Unix epoch.
pub fn now_s() -> i64 {
    secs(since_epoch())
}

#[allow(clippy::disallowed_methods)] // the clock module: the one reader of the wall clock
fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_convert_and_saturate() {
        assert_eq!(
            millis(Duration::from_millis(1_700_000_000_123)),
            1_700_000_000_123
        );
        assert_eq!(millis(Duration::MAX), u64::MAX);
        assert_eq!(secs(Duration::from_secs(1_700_000_000)), 1_700_000_000);
        assert_eq!(secs(Duration::MAX), i64::MAX);
        assert_eq!(secs(Duration::from_millis(1_999)), 1);
    }

    #[test]
    fn the_clock_is_past_2020() {
        assert!(now_ms() > 1_577_836_800_000);
        assert!(now_s() > 1_577_836_800);
    }
}
