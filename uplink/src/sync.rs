//! The sync state machine: moves a node's outbox to the master.
//!
//! Contract: [`Sync`] is pure. A driver (the MQTT driver today, a mesh link later)
//! feeds it [`Input`]s with the current [`Instant`] through [`Sync::handle`] and carries
//! out the [`Output`]s it returns, in order; it calls `handle(now, Input::Tick)` again
//! at [`Sync::deadline`]. It does no I/O, reads no clock and never panics; every buffer
//! it keeps is bounded (at most [`Config::window`] frames in flight, a look-ahead of at
//! most `window * max_batch_records` records, one pending `Load`).
//!
//! What the driver promises:
//! - The first input is [`Input::Start`]. Every [`Output::Connect`] is answered by
//!   [`Input::LinkUp`] (connected *and* subscribed to the ack topic) or
//!   [`Input::ConnectFailed`]; a lost link is reported by [`Input::LinkDown`].
//! - Every [`Output::Load`] is answered by one [`Input::Loaded`] with the same `from`:
//!   *all* outbox records with `seq >= from` in increasing order, at most `limit` of
//!   them, and `end` when none exists beyond the last one returned. Stale or malformed
//!   answers are ignored or trimmed, never trusted blindly.
//! - [`Output::Send`] is published as is (QoS 1); [`Output::Delete`] deletes every
//!   outbox record with `seq <= upto`; [`Input::OutboxChanged`] follows every append.
//! - Every `Ack` from the master is fed as [`Input::Acked`], duplicates and all.
//!
//! What the machine promises:
//! - No `Send` while the link is down. Reconnects back off exponentially from
//!   [`Config::backoff_base`] to [`Config::backoff_max`] with ±20 % jitter, forever;
//!   the delay resets after a `LinkUp`.
//! - Range batches (`covers: Some((from, to))`) cover consecutive ranges: the first
//!   after an ack starts at `acked_upto + 1` (even if that seq was shed: the range
//!   vouches for missing seqs), batch k+1 starts at batch k's `to + 1`, and `to` is the
//!   last seq the batch carries or vouches for. At most [`Config::window`] range
//!   batches are unacknowledged at once (go-back-N): on `LinkUp`, and when the oldest
//!   is not acknowledged within [`Config::ack_timeout`], every unacknowledged batch is
//!   sent again. Duplicates at the master are harmless (it stores by seq).
//! - Every batch names the node's epoch (its life, given to [`Sync::new`]); an
//!   `Acked` for another epoch is ignored and counted in [`Stats::foreign_acks`], so
//!   an old life's ack never deletes a new life's records.
//! - `Acked { upto }` is cumulative: it yields `Delete { upto }` only when `upto`
//!   exceeds everything acknowledged before (so stale, duplicate and reordered acks
//!   are ignored). A fresh machine (a node restart) starts at `acked_upto = 0`; the
//!   master's first ack moves it forward, even past records the node no longer holds.
//! - A record that cannot be sent at all (its frame alone would exceed
//!   [`Config::max_frame`], or it fails the wire's validation) must not wedge the
//!   link: it is skipped, counted in [`Stats::oversized`] / [`Stats::invalid`] and
//!   logged, and the range still covers its seq, so the master acknowledges past it
//!   and the node deletes it. Such a record is lost by design; producers bound their
//!   records (`MAX_MESSAGE`) so that this does not happen.
//! - With a byte budget ([`Config::budget_bytes_per_sec`], a token bucket whose burst
//!   is one second's worth or one full batch, whichever is larger), when the pending
//!   work exceeds the tokens at hand, the machine first sends express batches
//!   (`covers: None`) of the records waiting in the look-ahead: incidents, then
//!   instance states, then promise results (usage and everything else waits for its
//!   range batch). Each record goes express at most once per connection, and it is
//!   still sent again in its range batch, because only ranges are acknowledged.
//!   Without a budget only range batches are sent, in seq order.
//!
//! Sequence numbers start at 1 (the outbox's first); seq 0 is never sent.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use hedge_wire::codec::encode;
use hedge_wire::limits::{DEFAULT_MAX_FRAME, MAX_RECORDS};
use hedge_wire::{Message, Name, Record, RecordKind, Up, WireError};

/// Bytes a batch frame may need beyond its empty, range-less frame and the encoded
/// sizes of its records: the record count's varint growing from one to at most three
/// bytes, and `Some((from, to))` with two varints of at most ten bytes each instead of
/// `None`'s one byte.
const FRAME_SLACK: usize = 24;

/// Smallest `max_frame` [`Config::validate`] accepts.
pub const MIN_FRAME: usize = 256;

/// Tuning of the sync machine. [`Sync::new`] clamps nonsense values into range;
/// [`Config::validate`] reports them, for a driver that loads this from a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Most records in one batch (default 256; at most `MAX_RECORDS`).
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
    /// Checks every field; `Ok` means [`Sync::new`] uses the values unchanged.
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
    fn sanitized(mut self) -> Self {
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

/// What the driver tells the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The first call: the machine asks to connect.
    Start,
    /// The transport is connected and subscribed to its ack topic.
    LinkUp,
    /// The transport was lost (or the broker is gone).
    LinkDown,
    /// An [`Output::Connect`] attempt failed.
    ConnectFailed,
    /// Records were appended to the outbox.
    OutboxChanged,
    /// The answer to [`Output::Load`]: records with `seq >= from`, increasing, at most
    /// `limit`; `end` = no record exists beyond the last one returned.
    Loaded {
        /// The `from` of the `Load` this answers.
        from: u64,
        /// The records.
        records: Vec<Record>,
        /// The outbox holds nothing beyond the last record returned (as of now).
        end: bool,
    },
    /// The master's cumulative acknowledgement.
    Acked {
        /// Everything `<= upto` is stored at the master.
        upto: u64,
        /// The life it acknowledges; another than the machine's is ignored.
        epoch: u64,
    },
    /// Time passed; sent at [`Sync::deadline`] (sending more often is harmless).
    Tick,
}

/// What the machine asks the driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Try to (re)connect now; answer with [`Input::LinkUp`] or [`Input::ConnectFailed`].
    Connect,
    /// Read the outbox; answer with [`Input::Loaded`].
    Load {
        /// First seq wanted.
        from: u64,
        /// Most records wanted.
        limit: usize,
    },
    /// Publish this encoded `Message::Up` (QoS 1).
    Send {
        /// The frame (`hedge_wire::codec::encode` output).
        frame: Vec<u8>,
        /// The range it covers; `None` for an express batch.
        range: Option<(u64, u64)>,
        /// Records it carries.
        records: usize,
    },
    /// The master has everything `<= upto`: delete it from the outbox.
    Delete {
        /// Highest seq to delete.
        upto: u64,
    },
}

/// Counters since [`Sync::new`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames sent: range batches, their resends and express batches.
    pub sent_batches: u64,
    /// Records in those frames.
    pub sent_records: u64,
    /// Range batches sent again (after `LinkUp` or an ack timeout).
    pub resent_batches: u64,
    /// Express batches (`covers: None`) sent.
    pub express_batches: u64,
    /// The master's highest acknowledgement seen.
    pub acked_upto: u64,
    /// Range batches sent and not yet acknowledged.
    pub in_flight_batches: usize,
    /// `LinkUp`s seen.
    pub link_ups: u64,
    /// `LinkDown`s seen while up.
    pub link_downs: u64,
    /// Bytes of all frames sent.
    pub bytes_sent: u64,
    /// Records skipped because their frame alone exceeds `max_frame` (covered, lost).
    pub oversized: u64,
    /// Records skipped because the wire refuses them (covered, lost).
    pub invalid: u64,
    /// Acks for another epoch than this machine's, ignored.
    pub foreign_acks: u64,
}

/// State of the link as the machine sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// Before `Start`.
    Idle,
    /// `Connect` emitted, waiting for `LinkUp` or `ConnectFailed`.
    Connecting,
    /// Waiting to reconnect.
    Backoff { until: Instant },
    /// Connected.
    Up,
}

/// One loaded record not yet sent in a range batch.
#[derive(Debug)]
struct Entry {
    seq: u64,
    /// `None`: unsendable (oversized or invalid); only covered by its range.
    rec: Option<Record>,
    /// Bytes the record adds to a batch frame.
    cost: usize,
    /// Sent in an express batch on this connection.
    expressed: bool,
}

/// A range batch sent and not yet acknowledged.
#[derive(Debug)]
struct Flight {
    range: (u64, u64),
    frame: Vec<u8>,
    records: usize,
    sent_at: Instant,
    /// Waiting to be sent again (after `LinkUp` or an ack timeout).
    resend: bool,
}

/// A byte token bucket; tokens may go negative after a frame larger than the burst.
#[derive(Debug)]
struct Bucket {
    rate: u64,
    burst: i64,
    tokens: i64,
    /// Sub-byte remainder of the refill, in byte-nanoseconds.
    carry: u128,
    last: Option<Instant>,
}

const NANOS: u128 = 1_000_000_000;

impl Bucket {
    fn new(rate: u32, max_batch_bytes: usize) -> Self {
        let burst = i64::try_from(u64::from(rate).max(max_batch_bytes as u64)).unwrap_or(i64::MAX);
        Bucket {
            rate: u64::from(rate).max(1),
            burst,
            tokens: burst,
            carry: 0,
            last: None,
        }
    }

    fn refill(&mut self, now: Instant) {
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
    fn need(&self, len: usize) -> i64 {
        i64::try_from(len).unwrap_or(i64::MAX).min(self.burst)
    }

    fn allows(&self, len: usize) -> bool {
        self.tokens >= self.need(len)
    }

    fn take(&mut self, len: usize) {
        let len = i64::try_from(len).unwrap_or(i64::MAX);
        self.tokens = self.tokens.saturating_sub(len);
    }

    /// When a frame of `len` bytes may go (`None` if now, or beyond `Instant`'s range).
    fn wake(&self, len: usize) -> Option<Instant> {
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

/// Express priority of a record kind: lower goes first, `None` never goes express.
fn express_rank(kind: &RecordKind) -> Option<u8> {
    match kind {
        RecordKind::Incident { .. } => Some(0),
        RecordKind::InstanceState { .. } => Some(1),
        RecordKind::PromiseResult { .. } => Some(2),
        _ => None,
    }
}

/// Encodes `Up { node, records, covers, epoch }` and gives the records back.
fn encode_up(
    node: &Name,
    epoch: u64,
    records: Vec<Record>,
    covers: Option<(u64, u64)>,
    max: usize,
) -> (Result<Vec<u8>, WireError>, Vec<Record>) {
    let msg = Message::Up(Up {
        node: node.clone(),
        records,
        covers,
        epoch,
    });
    let res = encode(&msg, max);
    let records = match msg {
        Message::Up(up) => up.records,
        _ => Vec::new(),
    };
    (res, records)
}

/// The sync state machine; see the [module docs](self).
#[derive(Debug)]
pub struct Sync {
    node: Name,
    /// The node's life its records belong to: sent in every batch, required of acks.
    epoch: u64,
    cfg: Config,
    rng: fastrand::Rng,
    link: Link,
    /// Reconnect attempts since the last `LinkUp` (the backoff exponent).
    attempt: u32,
    acked_upto: u64,
    deleted_upto: u64,
    /// First seq of the next range batch (u128: past `u64::MAX` once all is covered).
    next_from: u128,
    /// First seq of the next `Load`; `>= next_from`.
    load_from: u128,
    lookahead: VecDeque<Entry>,
    lookahead_bytes: usize,
    /// `(from, limit)` of the `Load` awaiting its `Loaded`.
    load_pending: Option<(u64, usize)>,
    /// The outbox held nothing beyond the look-ahead at the last `Loaded`.
    exhausted: bool,
    /// `OutboxChanged` arrived while a `Load` was pending.
    dirty: bool,
    in_flight: VecDeque<Flight>,
    bucket: Option<Bucket>,
    /// When the budget allows the send that is waiting.
    budget_wake: Option<Instant>,
    /// One-shot cap on the next range batch's entries after an encode failure.
    shrink: Option<usize>,
    /// Length of `Up { node, records: [], covers: None, epoch }`.
    empty_len: usize,
    stats: Stats,
}

impl Sync {
    /// A machine for `node`'s life `epoch` (its store's epoch); `seed` drives the
    /// backoff jitter. Out-of-range config values are clamped (see [`Config::validate`]).
    pub fn new(node: Name, epoch: u64, cfg: Config, seed: u64) -> Self {
        let cfg = cfg.sanitized();
        let (empty, _) = encode_up(&node, epoch, Vec::new(), None, usize::MAX);
        // The empty Up cannot fail to encode; the fallback is a safe upper bound.
        let empty_len = empty.map_or(18 + node.as_str().len(), |f| f.len());
        let bucket = cfg
            .budget_bytes_per_sec
            .map(|rate| Bucket::new(rate, cfg.max_batch_bytes));
        Sync {
            node,
            epoch,
            rng: fastrand::Rng::with_seed(seed),
            link: Link::Idle,
            attempt: 0,
            acked_upto: 0,
            deleted_upto: 0,
            next_from: 1,
            load_from: 1,
            lookahead: VecDeque::new(),
            lookahead_bytes: 0,
            load_pending: None,
            exhausted: false,
            dirty: false,
            in_flight: VecDeque::new(),
            bucket,
            budget_wake: None,
            shrink: None,
            empty_len,
            stats: Stats::default(),
            cfg,
        }
    }

    /// Feeds one input at time `now`; returns what the driver must do, in order.
    pub fn handle(&mut self, now: Instant, input: Input) -> Vec<Output> {
        let mut out = Vec::new();
        match input {
            Input::Start => {
                if self.link == Link::Idle {
                    self.connect(&mut out);
                }
            }
            Input::LinkUp => self.on_link_up(),
            Input::LinkDown => match self.link {
                Link::Up => {
                    self.stats.link_downs += 1;
                    tracing::info!(node = %self.node, "uplink down");
                    self.back_off(now);
                }
                Link::Connecting => self.back_off(now),
                Link::Idle | Link::Backoff { .. } => {}
            },
            Input::ConnectFailed => {
                if self.link == Link::Connecting {
                    self.back_off(now);
                }
            }
            Input::OutboxChanged => {
                self.exhausted = false;
                if self.load_pending.is_some() {
                    self.dirty = true;
                }
            }
            Input::Loaded { from, records, end } => self.on_loaded(from, records, end),
            Input::Acked { upto, epoch } if epoch == self.epoch => self.on_acked(upto, &mut out),
            Input::Acked { upto, epoch } => {
                self.stats.foreign_acks += 1;
                tracing::debug!(node = %self.node, epoch, upto, mine = self.epoch, "ignoring an ack for another life");
            }
            Input::Tick => {
                if let Link::Backoff { until } = self.link {
                    if now >= until {
                        self.connect(&mut out);
                    }
                }
            }
        }
        if self.link == Link::Up {
            self.check_ack_timeout(now);
            self.pump(now, &mut out);
        } else {
            self.budget_wake = None;
        }
        out
    }

    /// When to call `handle(now, Input::Tick)` next; `None`: only on other inputs.
    pub fn deadline(&self) -> Option<Instant> {
        match self.link {
            Link::Backoff { until } => Some(until),
            Link::Up => {
                let timeout = self
                    .in_flight
                    .iter()
                    .filter(|f| !f.resend)
                    .filter_map(|f| f.sent_at.checked_add(self.cfg.ack_timeout))
                    .min();
                match (timeout, self.budget_wake) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
            Link::Idle | Link::Connecting => None,
        }
    }

    /// Whether the link is up (sends may happen).
    pub fn is_connected(&self) -> bool {
        self.link == Link::Up
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        Stats {
            acked_upto: self.acked_upto,
            in_flight_batches: self.in_flight.len(),
            ..self.stats
        }
    }

    // ----- link -----

    fn connect(&mut self, out: &mut Vec<Output>) {
        self.link = Link::Connecting;
        out.push(Output::Connect);
    }

    fn back_off(&mut self, now: Instant) {
        let delay = self.backoff_delay();
        tracing::debug!(node = %self.node, delay_ms = delay.as_millis() as u64, "uplink reconnect backoff");
        // Past `Instant`'s range (absurd config): retry at the next tick.
        let until = now.checked_add(delay).unwrap_or(now);
        self.link = Link::Backoff { until };
    }

    /// `backoff_base * 2^attempt`, capped at `backoff_max`, ±20 % jitter, capped again.
    fn backoff_delay(&mut self) -> Duration {
        let exp = self.attempt.min(31);
        self.attempt = self.attempt.saturating_add(1);
        let raw = self
            .cfg
            .backoff_base
            .saturating_mul(1u32 << exp)
            .min(self.cfg.backoff_max);
        let permille = u128::from(self.rng.u32(800..=1200));
        let nanos = raw.as_nanos().saturating_mul(permille) / 1000;
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX)).min(self.cfg.backoff_max)
    }

    fn on_link_up(&mut self) {
        self.link = Link::Up;
        self.attempt = 0;
        self.stats.link_ups += 1;
        tracing::info!(node = %self.node, acked_upto = self.acked_upto, "uplink up");
        // Go-back-N: everything unacknowledged goes again, from the oldest.
        for f in &mut self.in_flight {
            f.resend = true;
        }
        // Express batches are once per record per connection.
        for e in &mut self.lookahead {
            e.expressed = false;
        }
        // Re-probe the outbox in case an `OutboxChanged` was lost.
        self.exhausted = false;
        if self.load_pending.is_some() {
            self.dirty = true;
        }
    }

    // ----- outbox -----

    fn lookahead_cap(&self) -> usize {
        self.cfg
            .window
            .saturating_mul(self.cfg.max_batch_records)
            .max(self.cfg.max_batch_records)
    }

    fn maybe_load(&mut self, out: &mut Vec<Output>) {
        if self.load_pending.is_some() || self.exhausted {
            return;
        }
        let room = self.lookahead_cap().saturating_sub(self.lookahead.len());
        // Past u64::MAX nothing more can exist.
        let Ok(from) = u64::try_from(self.load_from) else {
            return;
        };
        if room == 0 {
            return;
        }
        self.load_pending = Some((from, room));
        out.push(Output::Load { from, limit: room });
    }

    fn on_loaded(&mut self, from: u64, records: Vec<Record>, end: bool) {
        let Some((want, limit)) = self.load_pending else {
            return; // stale
        };
        if want != from {
            return; // stale
        }
        self.load_pending = None;
        let dirty = std::mem::take(&mut self.dirty);
        let mut records = records;
        if !records.windows(2).all(|w| w[0].seq < w[1].seq) {
            // Out of order or repeated: a broken driver, but lose nothing.
            records.sort_by_key(|r| r.seq);
            records.dedup_by_key(|r| r.seq);
        }
        let returned = records.len();
        // More than asked: keep the first `limit`, ask again for the rest.
        let complete = returned <= limit;
        for r in records.into_iter().take(limit) {
            if u128::from(r.seq) < self.load_from {
                continue; // already loaded, sent or acknowledged
            }
            self.load_from = u128::from(r.seq) + 1;
            self.push_entry(r);
        }
        // An empty answer without `end` would make us spin: take it as the end.
        self.exhausted = !dirty && complete && (end || returned == 0);
    }

    /// Measures `r` and appends it to the look-ahead (as a skipped entry if unsendable).
    fn push_entry(&mut self, r: Record) {
        let seq = r.seq;
        let (res, mut back) = encode_up(&self.node, self.epoch, vec![r], None, self.cfg.max_frame);
        let rec = back.pop();
        let entry = match (res, rec) {
            (Ok(frame), Some(rec)) => {
                let cost = frame.len().saturating_sub(self.empty_len);
                if self.empty_len + FRAME_SLACK + cost > self.cfg.max_frame {
                    self.skip(seq, "record too large for a frame", true)
                } else {
                    Entry {
                        seq,
                        rec: Some(rec),
                        cost,
                        expressed: false,
                    }
                }
            }
            (Err(WireError::TooLarge { .. }), _) | (Ok(_), None) => {
                self.skip(seq, "record too large for a frame", true)
            }
            (Err(e), _) => {
                tracing::warn!(node = %self.node, seq, error = %e, "record refused by the wire");
                self.skip(seq, "record refused by the wire", false)
            }
        };
        self.lookahead_bytes += entry.cost;
        self.lookahead.push_back(entry);
    }

    fn skip(&mut self, seq: u64, why: &'static str, oversized: bool) -> Entry {
        if oversized {
            self.stats.oversized += 1;
        } else {
            self.stats.invalid += 1;
        }
        tracing::warn!(node = %self.node, seq, why, "skipping unsendable record; its range still covers it");
        Entry {
            seq,
            rec: None,
            cost: 0,
            expressed: false,
        }
    }

    fn pop_entry(&mut self) -> Option<Entry> {
        let e = self.lookahead.pop_front()?;
        self.lookahead_bytes = self.lookahead_bytes.saturating_sub(e.cost);
        Some(e)
    }

    // ----- acks -----

    fn on_acked(&mut self, upto: u64, out: &mut Vec<Output>) {
        if upto <= self.acked_upto || upto <= self.deleted_upto {
            return; // duplicate, reordered, or below what is already deleted
        }
        self.acked_upto = upto;
        self.deleted_upto = upto;
        out.push(Output::Delete { upto });
        while self.in_flight.front().is_some_and(|f| f.range.1 <= upto) {
            self.in_flight.pop_front();
        }
        let next = u128::from(upto) + 1;
        if next > self.next_from {
            // The master is ahead of what this machine sent (a restart, or an old
            // session's sends): skip to it.
            self.in_flight.clear();
            self.next_from = next;
            while self
                .lookahead
                .front()
                .is_some_and(|e| u128::from(e.seq) < next)
            {
                self.pop_entry();
            }
            self.load_from = self.load_from.max(next);
        }
    }

    fn check_ack_timeout(&mut self, now: Instant) {
        let oldest = self
            .in_flight
            .iter()
            .filter(|f| !f.resend)
            .map(|f| f.sent_at)
            .min();
        let Some(oldest) = oldest else {
            return;
        };
        let expired = oldest
            .checked_add(self.cfg.ack_timeout)
            .is_some_and(|d| now >= d);
        if expired {
            tracing::debug!(node = %self.node, acked_upto = self.acked_upto, batches = self.in_flight.len(), "ack timeout; resending");
            for f in &mut self.in_flight {
                f.resend = true;
            }
        }
    }

    // ----- sending -----

    /// Sends whatever the window, the look-ahead and the budget allow, then loads.
    fn pump(&mut self, now: Instant, out: &mut Vec<Output>) {
        self.budget_wake = None;
        if let Some(b) = &mut self.bucket {
            b.refill(now);
        }
        loop {
            if self.budget_limited() {
                if let Some((picked, bound)) = self.plan_express() {
                    if !self.budget_allows(bound) {
                        break;
                    }
                    self.send_express(picked, out);
                    continue;
                }
            }
            if let Some(i) = self.in_flight.iter().position(|f| f.resend) {
                let len = self.in_flight.get(i).map_or(0, |f| f.frame.len());
                if !self.budget_allows(len) {
                    break;
                }
                self.resend(i, now, out);
                continue;
            }
            if self.in_flight.len() < self.cfg.window {
                if let Some((n, bound)) = self.plan_range() {
                    if !self.budget_allows(bound) {
                        break;
                    }
                    if self.send_range(n, now, out) {
                        continue;
                    }
                    break;
                }
            }
            break;
        }
        self.maybe_load(out);
    }

    /// Whether the budget lets a frame of `len` bytes go now; if not, sets the wake-up.
    fn budget_allows(&mut self, len: usize) -> bool {
        let Some(b) = &self.bucket else {
            return true;
        };
        if b.allows(len) {
            return true;
        }
        self.budget_wake = b.wake(len);
        false
    }

    fn spend(&mut self, frame: &[u8], records: usize) {
        if let Some(b) = &mut self.bucket {
            b.take(frame.len());
        }
        self.stats.sent_batches += 1;
        self.stats.sent_records += records as u64;
        self.stats.bytes_sent += frame.len() as u64;
    }

    /// The pending work (look-ahead and resends) exceeds the tokens at hand.
    fn budget_limited(&self) -> bool {
        let Some(b) = &self.bucket else {
            return false;
        };
        let resends: usize = self
            .in_flight
            .iter()
            .filter(|f| f.resend)
            .map(|f| f.frame.len())
            .sum();
        let work = self.lookahead_bytes + resends + self.empty_len + FRAME_SLACK;
        i64::try_from(work).unwrap_or(i64::MAX) > b.tokens
    }

    /// Entries of the next range batch and its size bound; `None` if nothing should go
    /// yet (empty look-ahead, or a partial batch while more may be loaded).
    fn plan_range(&self) -> Option<(usize, usize)> {
        if self.lookahead.is_empty() {
            return None;
        }
        let max_entries = self
            .shrink
            .unwrap_or(self.cfg.max_batch_records)
            .clamp(1, self.cfg.max_batch_records);
        let mut n = 0usize;
        let mut records = 0usize;
        let mut bytes = self.empty_len + FRAME_SLACK;
        let mut full = false;
        for e in &self.lookahead {
            if n == max_entries {
                full = true;
                break;
            }
            if e.rec.is_some() {
                if records > 0 && bytes + e.cost > self.cfg.max_batch_bytes {
                    full = true;
                    break;
                }
                records += 1;
                bytes += e.cost;
            }
            n += 1;
        }
        if n == max_entries {
            full = true;
        }
        if !full && !self.exhausted {
            return None; // wait for the pending Load to fill the batch
        }
        Some((n, bytes))
    }

    /// Sends the next `n` look-ahead entries as one range batch. Returns whether the
    /// state moved on (so the caller's loop ends).
    fn send_range(&mut self, n: usize, now: Instant, out: &mut Vec<Output>) -> bool {
        let Ok(from) = u64::try_from(self.next_from) else {
            return false;
        };
        let mut taken = Vec::with_capacity(n);
        let mut had = Vec::with_capacity(n);
        let mut records = Vec::with_capacity(n);
        for _ in 0..n {
            let Some(mut e) = self.pop_entry() else {
                break;
            };
            let r = e.rec.take();
            had.push(r.is_some());
            records.extend(r);
            taken.push(e);
        }
        let Some(to) = taken.last().map(|e| e.seq) else {
            return false;
        };
        let count = records.len();
        let (res, back) = encode_up(
            &self.node,
            self.epoch,
            records,
            Some((from, to)),
            self.cfg.max_frame,
        );
        match res {
            Ok(frame) => {
                self.shrink = None;
                self.next_from = u128::from(to) + 1;
                self.spend(&frame, count);
                out.push(Output::Send {
                    frame: frame.clone(),
                    range: Some((from, to)),
                    records: count,
                });
                self.in_flight.push_back(Flight {
                    range: (from, to),
                    frame,
                    records: count,
                    sent_at: now,
                    resend: false,
                });
                true
            }
            Err(e) => {
                // Cannot happen: every record was encoded alone and the size bound
                // holds. Still, lose nothing and never spin: put the entries back and
                // halve the batch, down to skipping a lone record.
                tracing::error!(node = %self.node, from, to, error = %e, "range batch failed to encode");
                let mut back = back.into_iter();
                for (t, had) in taken.iter_mut().zip(had) {
                    if had {
                        t.rec = back.next();
                    }
                }
                for t in taken.into_iter().rev() {
                    self.lookahead_bytes += t.cost;
                    self.lookahead.push_front(t);
                }
                match count {
                    0 => false,
                    1 if n == 1 => {
                        if let Some(front) = self.lookahead.pop_front() {
                            let seq = front.seq;
                            self.lookahead_bytes = self.lookahead_bytes.saturating_sub(front.cost);
                            let skipped = self.skip(seq, "record refused in a batch", false);
                            self.lookahead.push_front(skipped);
                        }
                        true
                    }
                    _ => {
                        self.shrink = Some((n / 2).max(1));
                        true
                    }
                }
            }
        }
    }

    fn resend(&mut self, i: usize, now: Instant, out: &mut Vec<Output>) {
        let Some(f) = self.in_flight.get_mut(i) else {
            return;
        };
        f.resend = false;
        f.sent_at = now;
        let frame = f.frame.clone();
        let (range, records) = (f.range, f.records);
        self.stats.resent_batches += 1;
        self.spend(&frame, records);
        out.push(Output::Send {
            frame,
            range: Some(range),
            records,
        });
    }

    /// Look-ahead indices (increasing) of the next express batch and its size bound.
    fn plan_express(&self) -> Option<(Vec<usize>, usize)> {
        let mut picked = Vec::new();
        let mut bytes = self.empty_len + FRAME_SLACK;
        'ranks: for rank in 0..3u8 {
            for (i, e) in self.lookahead.iter().enumerate() {
                let Some(r) = &e.rec else { continue };
                if e.expressed || express_rank(&r.kind) != Some(rank) {
                    continue;
                }
                if picked.len() == self.cfg.max_batch_records {
                    break 'ranks;
                }
                if !picked.is_empty() && bytes + e.cost > self.cfg.max_batch_bytes {
                    continue;
                }
                picked.push(i);
                bytes += e.cost;
            }
        }
        if picked.is_empty() {
            return None;
        }
        picked.sort_unstable();
        Some((picked, bytes))
    }

    fn send_express(&mut self, picked: Vec<usize>, out: &mut Vec<Output>) {
        let mut records = Vec::with_capacity(picked.len());
        for &i in &picked {
            if let Some(e) = self.lookahead.get_mut(i) {
                e.expressed = true;
                if let Some(r) = &e.rec {
                    records.push(r.clone());
                }
            }
        }
        let count = records.len();
        let (res, _) = encode_up(&self.node, self.epoch, records, None, self.cfg.max_frame);
        match res {
            Ok(frame) => {
                self.stats.express_batches += 1;
                self.spend(&frame, count);
                out.push(Output::Send {
                    frame,
                    range: None,
                    records: count,
                });
            }
            // Cannot happen; the records still go in their range batches.
            Err(e) => {
                tracing::error!(node = %self.node, error = %e, "express batch failed to encode")
            }
        }
    }
}

#[cfg(test)]
mod tests;
