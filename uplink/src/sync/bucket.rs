//! The byte budget of a metered link: a token bucket refilled from the machine's clock
//! readings (`now` passed in; it reads no clock).

use std::time::{Duration, Instant};

/// A byte token bucket; tokens may go negative after a frame larger than the burst.
#[derive(Debug)]
pub(super) struct Bucket {
    rate: u64,
    burst: i64,
    pub(super) tokens: i64,
    /// Sub-byte remainder of the refill, in byte-nanoseconds.
    carry: u128,
    last: Option<Instant>,
}

const NANOS: u128 = 1_000_000_000;

impl Bucket {
    pub(super) fn new(rate: u32, max_batch_bytes: usize) -> Self {
        let burst = i64::try_from(u64::from(rate).max(max_batch_bytes as u64)).unwrap_or(i64::MAX);
        Bucket {
            rate: u64::from(rate).max(1),
            burst,
            tokens: burst,
            carry: 0,
            last: None,
        }
    }

    pub(super) fn refill(&mut self, now: Instant) {
        let Some(last) = self.last else {
            self.last = Some(now);
            return;
        };
        if now <= last {
            return;
        }
        let total = (now - last)
            .as_nanos()
            .saturating_mul(u128::from(self.rate))
            .saturating_add(self.carry);
        let add = i64::try_from(total / NANOS).unwrap_or(i64::MAX);
        self.carry = total % NANOS;
        self.tokens = self.tokens.saturating_add(add).min(self.burst);
        if self.tokens == self.burst {
            self.carry = 0;
        }
        self.last = Some(now);
    }

    /// Tokens a frame of `len` bytes needs before it may go.
    pub(super) fn need(&self, len: usize) -> i64 {
        i64::try_from(len).unwrap_or(i64::MAX).min(self.burst)
    }

    pub(super) fn allows(&self, len: usize) -> bool {
        self.tokens >= self.need(len)
    }

    pub(super) fn take(&mut self, len: usize) {
        let len = i64::try_from(len).unwrap_or(i64::MAX);
        self.tokens = self.tokens.saturating_sub(len);
    }

    /// When a frame of `len` bytes may go (`None` if now, or beyond `Instant`'s range).
    pub(super) fn wake(&self, len: usize) -> Option<Instant> {
        let missing = self.need(len).saturating_sub(self.tokens);
        let missing = u128::try_from(missing).ok().filter(|&m| m > 0)?;
        let nanos = missing
            .saturating_mul(NANOS)
            .saturating_sub(self.carry)
            .div_ceil(u128::from(self.rate));
        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX);
        self.last?.checked_add(Duration::from_nanos(nanos))
    }
}
