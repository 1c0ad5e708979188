//! The uploader's bytes-per-second budget: a token bucket (pure: no clock, no I/O).
//!
//! Contract: [`Bucket::take`] charges `n` bytes at `now` and returns how long the caller
//! must wait before sending them. Tokens accrue at `rate` bytes/s up to one second's
//! worth (the burst); a charge larger than the tokens held is allowed and paid for by
//! waiting (debt), so a chunk larger than the burst still goes, and over any long run
//! the bytes sent never exceed `burst + rate × elapsed`. `rate = 0` means no limit.
//! `now` must not go backwards (an earlier `now` is treated as the latest seen).

use std::time::{Duration, Instant};

const NANOS: u128 = 1_000_000_000;

/// A token bucket of bytes.
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    rate: u64,
    burst: u64,
    tokens: u64,
    /// When `tokens` was last brought up to date (in the future while in debt).
    at: Option<Instant>,
}

impl Bucket {
    /// A full bucket of `rate` bytes/s (0: unlimited).
    pub(crate) fn new(rate: u64) -> Bucket {
        Bucket {
            rate,
            burst: rate,
            tokens: rate,
            at: None,
        }
    }

    /// Charges `n` bytes at `now`; returns the wait before they may be sent.
    pub(crate) fn take(&mut self, now: Instant, n: u64) -> Duration {
        if self.rate == 0 {
            return Duration::ZERO;
        }
        let at = *self.at.get_or_insert(now);
        if now > at {
            let earned = (now - at).as_nanos() * u128::from(self.rate) / NANOS;
            let earned = u64::try_from(earned).unwrap_or(u64::MAX);
            self.tokens = self.tokens.saturating_add(earned).min(self.burst);
            self.at = Some(now);
        }
        if self.tokens >= n {
            self.tokens -= n;
            return Duration::ZERO;
        }
        let deficit = u128::from(n - self.tokens);
        self.tokens = 0;
        // Round up: never early.
        let nanos = (deficit * NANOS).div_ceil(u128::from(self.rate));
        let pay = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        let paid_at = self.at.unwrap_or(now).max(now) + pay;
        self.at = Some(paid_at);
        paid_at - now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_full_second_goes_at_once_then_bytes_wait_their_share() {
        let t0 = crate::daemon::monotonic_now();
        let mut b = Bucket::new(1000);
        assert_eq!(b.take(t0, 1000), Duration::ZERO);
        assert_eq!(b.take(t0, 500), ms(500));
        // Asking again before the debt is paid queues behind it.
        assert_eq!(b.take(t0, 250), ms(750));
        // At the end of the debt nothing is owed and nothing was earned.
        assert_eq!(b.take(t0 + ms(750), 100), ms(100));
    }

    #[test]
    fn idle_time_refills_up_to_the_burst_only() {
        let t0 = crate::daemon::monotonic_now();
        let mut b = Bucket::new(1000);
        assert_eq!(b.take(t0, 1000), Duration::ZERO);
        // Ten idle seconds earn one second's worth, not ten.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(b.take(t1, 1000), Duration::ZERO);
        assert_eq!(b.take(t1, 1), ms(1));
    }

    #[test]
    fn a_charge_larger_than_the_burst_is_paid_by_waiting() {
        let t0 = crate::daemon::monotonic_now();
        let mut b = Bucket::new(1000);
        assert_eq!(b.take(t0, 3000), ms(2000));
    }

    #[test]
    fn the_long_run_rate_holds() {
        // 1 MiB/s, 64 KiB chunks sent as soon as allowed for a simulated minute.
        let rate = 1024 * 1024;
        let mut b = Bucket::new(rate);
        let t0 = crate::daemon::monotonic_now();
        let mut now = t0;
        let mut sent = 0u64;
        while now < t0 + Duration::from_secs(60) {
            now += b.take(now, 65536);
            sent += 65536;
        }
        let elapsed_ns = (now - t0).as_nanos();
        let allowed = u128::from(rate) * elapsed_ns / NANOS;
        let sent = u128::from(sent);
        assert!(
            sent <= allowed + u128::from(rate) + 65536,
            "sent {sent} in {elapsed_ns} ns"
        );
        assert!(sent >= allowed, "under-used: {sent} in {elapsed_ns} ns");
    }

    #[test]
    fn zero_means_unlimited() {
        let mut b = Bucket::new(0);
        assert_eq!(
            b.take(crate::daemon::monotonic_now(), u64::MAX),
            Duration::ZERO
        );
    }
}
