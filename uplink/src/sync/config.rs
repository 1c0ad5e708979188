//! Tuning of the sync machine: [`Config`], its checks and its clamping.

use std::time::Duration;

use hedge_wire::limits::{DEFAULT_MAX_FRAME, MAX_RECORDS};

/// Smallest `max_frame` [`Config::validate`] accepts.
pub const MIN_FRAME: usize = 256;

/// Tuning of the sync machine. [`SyncMachine::new`](super::SyncMachine::new) clamps
/// nonsense values into range; [`Config::validate`] reports them, for a driver that loads
/// this from a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Most records in one batch (default 256; at most `MAX_RECORDS`; the node's
    /// `[uplink]` section sets its own).
    pub max_batch_records: usize,
    /// Largest encoded batch frame, envelope included (default 32 KiB). A single
    /// record larger than this is still sent alone if it fits [`Config::max_frame`].
    pub max_batch_bytes: usize,
    /// Range batches in flight, unacknowledged (default 4).
    pub window: usize,
    /// How long the oldest batch in flight may wait for its ack before everything in
    /// flight is sent again (default 10 s). On a budgeted link, keep it above the time
    /// the budget needs to send a window.
    pub ack_timeout: Duration,
    /// First reconnect delay (default 1 s).
    pub backoff_base: Duration,
    /// Longest reconnect delay (default 15 s: a returning link is used within ~15 s;
    /// measured 35 s with a 60 s cap in scripts/bench).
    pub backoff_max: Duration,
    /// Once a probe finds the path back ([`super::Input::PathBack`]), the next attempt
    /// comes within a uniformly random delay up to this (default 400 ms): nodes whose path
    /// returns at the same moment spread their reconnects instead of dialing at once.
    pub path_back_spread: Duration,
    /// Byte budget of a metered link, bytes per second (default none).
    pub budget_bytes_per_sec: Option<u32>,
    /// Largest frame the master accepts (default `DEFAULT_MAX_FRAME`).
    pub max_frame: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_batch_records: 256,
            max_batch_bytes: 32 * 1024,
            window: 4,
            ack_timeout: Duration::from_secs(10),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(15),
            path_back_spread: Duration::from_millis(400),
            budget_bytes_per_sec: None,
            max_frame: DEFAULT_MAX_FRAME,
        }
    }
}

/// Why a [`Config`] was refused by [`Config::validate`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `max_batch_records` is 0 or above the wire's limit.
    #[error("max_batch_records must be 1..={MAX_RECORDS}, not {0}")]
    BatchRecords(usize),
    /// `max_frame` is too small to carry useful batches.
    #[error("max_frame must be at least {MIN_FRAME} bytes, not {0}")]
    MaxFrame(usize),
    /// `max_batch_bytes` is not within `MIN_FRAME..=max_frame`.
    #[error("max_batch_bytes must be {MIN_FRAME}..=max_frame ({max_frame}), not {value}")]
    BatchBytes {
        /// The configured value.
        value: usize,
        /// The configured `max_frame`.
        max_frame: usize,
    },
    /// `window` is 0.
    #[error("window must be at least 1")]
    Window,
    /// `ack_timeout` is zero.
    #[error("ack_timeout must be above zero")]
    AckTimeout,
    /// `backoff_base` is zero or above `backoff_max`.
    #[error("backoff_base must be above zero and at most backoff_max")]
    Backoff,
    /// `budget_bytes_per_sec` is `Some(0)`.
    #[error("budget_bytes_per_sec must be above zero (or absent)")]
    Budget,
}

impl Config {
    /// Checks every field; `Ok` means [`SyncMachine::new`](super::SyncMachine::new) uses
    /// the values unchanged.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_batch_records == 0 || self.max_batch_records > MAX_RECORDS {
            return Err(ConfigError::BatchRecords(self.max_batch_records));
        }
        if self.max_frame < MIN_FRAME {
            return Err(ConfigError::MaxFrame(self.max_frame));
        }
        if self.max_batch_bytes < MIN_FRAME || self.max_batch_bytes > self.max_frame {
            return Err(ConfigError::BatchBytes {
                value: self.max_batch_bytes,
                max_frame: self.max_frame,
            });
        }
        if self.window == 0 {
            return Err(ConfigError::Window);
        }
        if self.ack_timeout.is_zero() {
            return Err(ConfigError::AckTimeout);
        }
        if self.backoff_base.is_zero() || self.backoff_base > self.backoff_max {
            return Err(ConfigError::Backoff);
        }
        if self.budget_bytes_per_sec == Some(0) {
            return Err(ConfigError::Budget);
        }
        Ok(())
    }

    /// The same values clamped into range, so the machine cannot spin or stall.
    pub(super) fn sanitized(mut self) -> Self {
        self.max_batch_records = self.max_batch_records.clamp(1, MAX_RECORDS);
        self.max_frame = self.max_frame.max(MIN_FRAME);
        self.max_batch_bytes = self.max_batch_bytes.clamp(MIN_FRAME, self.max_frame);
        self.window = self.window.max(1);
        let ms = Duration::from_millis(1);
        self.ack_timeout = self.ack_timeout.max(ms);
        self.backoff_base = self.backoff_base.max(ms);
        self.backoff_max = self.backoff_max.max(self.backoff_base);
        self.budget_bytes_per_sec = self.budget_bytes_per_sec.map(|b| b.max(1));
        self
    }
}
