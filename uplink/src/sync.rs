//! The sync state machine: moves a node's outbox to the master.
//!
//! Contract: [`SyncMachine`] is pure. A driver (the MQTT driver today, a mesh link later)
//! feeds it [`Input`]s with the current [`Instant`] through [`SyncMachine::handle`] and carries
//! out the [`Output`]s it returns, in order; it calls `handle(now, Input::Tick)` again
//! at [`SyncMachine::deadline`]. It does no I/O, reads no clock and never panics; every buffer
//! it keeps is bounded (at most [`Config::window`] frames in flight, a look-ahead of at
//! most `window * max_batch_records` records, one pending `Load`).
//!
//! What the driver promises:
//! - The first input is [`Input::Start`]. Every [`Output::Connect`] is answered by
//!   [`Input::LinkUp`] (connected *and* subscribed to the ack topic) or
//!   [`Input::ConnectFailed`]; a lost link is reported by [`Input::LinkDown`]. A
//!   `Connect` while an attempt is in progress replaces it: the driver drops the old
//!   one and reports only the new one's outcome.
//! - Every [`Output::Load`] is answered by one [`Input::Loaded`] with the same `from`:
//!   *all* outbox records with `seq >= from` in increasing order, at most `limit` of
//!   them, and `end` when none exists beyond the last one returned. Stale or malformed
//!   answers are ignored or trimmed, never trusted blindly.
//! - [`Output::Send`] is published as is (QoS 1); [`Output::Delete`] deletes every
//!   outbox record with `seq <= upto`; [`Input::OutboxChanged`] follows appends (at
//!   least once after the last of a group).
//! - Every `Ack` from the master is fed as [`Input::Acked`], duplicates and all.
//!
//! What the machine promises:
//! - No `Send` while the link is down. Reconnects back off exponentially from
//!   [`Config::backoff_base`] to [`Config::backoff_max`] with ±20 % jitter, forever;
//!   the delay resets after a `LinkUp`.
//! - A returning path is not waited for: while [`SyncMachine::wants_probe`] says so, the
//!   driver probes the broker cheaply and reports a success as [`Input::PathBack`]; the
//!   machine then brings the next attempt forward to within a random
//!   [`Config::path_back_spread`] (so a fleet whose path returns at once does not dial
//!   at once). One early attempt per backoff period: after a `PathBack`, probing stops
//!   until a regular attempt has failed, so a broker that accepts TCP but refuses the
//!   node sees at most twice the backoff's rate.
//! - An attempt made while the path was cut can hang in TCP's own SYN retransmissions
//!   (a second or more apart) after the path returns. So an attempt still connecting
//!   after [`STALLED_AFTER`] asks for a probe too (at its [`SyncMachine::deadline`]); a
//!   `PathBack` then restarts it (a new `Connect`, the driver drops the old attempt)
//!   within a random `path_back_spread`. Once per attempt: a restarted attempt runs to
//!   its end.
//! - Range batches (`covers: Some((from, to))`) cover consecutive ranges: the first
//!   after an ack starts at `acked_upto + 1` (even if that seq was shed: the range
//!   vouches for missing seqs), batch k+1 starts at batch k's `to + 1`, and `to` is the
//!   last seq the batch carries or vouches for. At most [`Config::window`] range
//!   batches are unacknowledged at once (go-back-N): on `LinkUp`, and when the oldest
//!   is not acknowledged within [`Config::ack_timeout`], every unacknowledged batch is
//!   sent again. Duplicates at the master are harmless (it stores by seq).
//! - Every batch names the node's epoch (its life, given to [`SyncMachine::new`]); an
//!   `Acked` for another epoch is ignored and counted in [`Stats::foreign_acks`], so
//!   an old life's ack never deletes a new life's records.
//! - `Acked { upto }` is cumulative: stale, duplicate and reordered acks are ignored.
//!   What is acknowledged is deleted in large steps (each `Delete` costs the driver a
//!   store flush): `Delete { upto }` comes when nothing is left in flight, when half a
//!   look-ahead (`window * max_batch_records / 2` seqs) is acknowledged and not yet
//!   deleted, and when the link goes down. Loads are large too: once a full batch is in
//!   the look-ahead, the next `Load` waits until half of it is free. A fresh machine (a node restart) starts at `acked_upto = 0`; the
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
//!
//! - Lease: an `Acked` that newly covers whole range batches proves that the master
//!   heard this node at a real time no earlier than the *first* send of the newest of
//!   them; [`SyncMachine::lease_since`] is the latest such time (see `lease`).
//!
//! - Custody ([`Input::Custody`], from a mesh link): range batches the next hop stored
//!   durably are not sent again on an ack timeout, leave the window once every batch
//!   before them is held too, and go again only
//!   after a new `LinkUp` (re-batched from `acked_upto + 1`); custody never deletes
//!   (only `Acked` does) and never extends the lease (see `custody`).
//!
//! Files: the machine's state and its inputs and outputs here; [`Config`] in `config`;
//! loading the look-ahead and handling acks in `outbox`; the lease in `lease`; custody
//! in `custody`; batching, resending, express
//! batches and the byte budget in `send` and `bucket`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use hedge_wire::{Name, Record};

mod bucket;
mod config;
mod custody;
mod lease;
mod outbox;
mod send;

use bucket::Bucket;
pub use config::{Config, ConfigError, MIN_FRAME};
use send::encode_up;

/// Bytes a batch frame may need beyond its empty, range-less frame and the encoded
/// sizes of its records: the record count's varint growing from one to at most three
/// bytes, and `Some((from, to))` with two varints of at most ten bytes each instead of
/// `None`'s one byte.
const FRAME_SLACK: usize = 24;

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
        /// Outbox records with `seq >= from`, increasing, at most `limit`.
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
    /// Time passed; sent at [`SyncMachine::deadline`] (sending more often is harmless).
    Tick,
    /// A probe reached the broker while the link is down: the path is back.
    PathBack,
    /// The current link's next hop (a mesh relay) stored durably the range batch of
    /// this connection ending at `upto` (see `custody`): it is not sent again before a
    /// new `LinkUp`, and leaves the window once the batches before it are held too;
    /// nothing is deleted.
    Custody {
        /// Last seq of the batch held (the custody answer's `covers.1`).
        upto: u64,
    },
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

/// Counters since [`SyncMachine::new`].
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
    /// Attempts restarted because they stalled while a probe reached the broker.
    pub restarted_attempts: u64,
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
    /// Range batches a next hop took into custody (`Input::Custody`).
    pub custody_batches: u64,
    /// Highest seq a next hop holds beyond the master's ack (0: none).
    pub custody_upto: u64,
}

/// State of the link as the machine sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// Before `Start`.
    Idle,
    /// `Connect` emitted at `since`, waiting for `LinkUp` or `ConnectFailed`.
    Connecting {
        since: Instant,
        restart: Restart,
    },
    /// Waiting to reconnect at `until`.
    Backoff {
        until: Instant,
    },
    Up,
}

/// How long an attempt may connect before a probe that reaches the broker restarts it:
/// TCP retransmits an unanswered SYN after one second, and on a link where a probe
/// connects (within 200 ms in the MQTT driver) a healthy attempt takes a few round trips.
pub const STALLED_AFTER: Duration = Duration::from_secs(1);

/// Where a connecting attempt is on its way to a restart ([`STALLED_AFTER`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Restart {
    /// Younger than [`STALLED_AFTER`].
    NotYet,
    /// Stalled: a `PathBack` restarts it.
    Probing,
    /// A `PathBack` came: restart at this time.
    At(Instant),
    /// Restarted once already.
    Done,
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
    /// When it was first sent (resends keep it): what an ack of it proves (`lease`).
    first_sent: Instant,
    /// Waiting to be sent again (after `LinkUp` or an ack timeout).
    resend: bool,
    /// The next hop holds it in custody (`custody`): never sent again on a timeout.
    held: bool,
}

/// The sync state machine; see the [module docs](self).
#[derive(Debug)]
pub struct SyncMachine {
    node: Name,
    /// The node's life its records belong to: sent in every batch, required of acks.
    epoch: u64,
    cfg: Config,
    rng: fastrand::Rng,
    link: Link,
    /// Reconnect attempts since the last `LinkUp` (the backoff exponent).
    attempt: u32,
    /// A `PathBack` may still bring the pending attempt forward.
    probe_armed: bool,
    /// The pending backoff deadline was brought forward by a `PathBack`.
    pulled: bool,
    /// The attempt in progress is an early one (from a `PathBack`).
    early: bool,
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
    /// The lease this machine's acks prove (see `lease`).
    lease: lease::Lease,
    /// What the next hop holds (see `custody`).
    custody: custody::Custody,
    stats: Stats,
}

impl SyncMachine {
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
        SyncMachine {
            node,
            epoch,
            rng: fastrand::Rng::with_seed(seed),
            link: Link::Idle,
            attempt: 0,
            probe_armed: false,
            pulled: false,
            early: false,
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
            lease: lease::Lease::default(),
            custody: custody::Custody::default(),
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
                    self.connect(now, &mut out);
                }
            }
            Input::LinkUp => self.on_link_up(),
            Input::LinkDown => match self.link {
                Link::Up => {
                    self.stats.link_downs += 1;
                    self.flush_deletes(&mut out);
                    tracing::info!(node = %self.node, "uplink down");
                    self.back_off(now);
                }
                Link::Connecting { .. } => self.back_off(now),
                Link::Idle | Link::Backoff { .. } => {}
            },
            Input::ConnectFailed => {
                if matches!(self.link, Link::Connecting { .. }) {
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
            Input::Tick => match self.link {
                Link::Backoff { until } if now >= until => self.connect(now, &mut out),
                Link::Connecting { since, restart } => {
                    self.on_connecting(now, since, restart, &mut out)
                }
                _ => {}
            },
            Input::PathBack => self.on_path_back(now),
            Input::Custody { upto } if self.link == Link::Up => self.on_custody(upto),
            Input::Custody { upto } => {
                tracing::debug!(node = %self.node, upto, "custody while the link is down; ignored");
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
                    .filter(|f| !f.resend && !f.held)
                    .filter_map(|f| f.sent_at.checked_add(self.cfg.ack_timeout))
                    .min();
                match (timeout, self.budget_wake) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
            Link::Connecting { since, restart } => match restart {
                Restart::NotYet => since.checked_add(STALLED_AFTER),
                Restart::At(at) => Some(at),
                Restart::Probing | Restart::Done => None,
            },
            Link::Idle => None,
        }
    }

    /// Whether the driver should probe the broker (and report a success as
    /// [`Input::PathBack`]): the link is waiting to reconnect and no early attempt has
    /// been granted in this backoff period, or an attempt has been connecting for
    /// [`STALLED_AFTER`] and was not restarted yet.
    pub fn wants_probe(&self) -> bool {
        match self.link {
            Link::Backoff { .. } => self.probe_armed,
            Link::Connecting { restart, .. } => restart == Restart::Probing,
            Link::Idle | Link::Up => false,
        }
    }

    /// Whether the link is up (sends may happen).
    pub fn is_connected(&self) -> bool {
        self.link == Link::Up
    }

    /// Counters since [`SyncMachine::new`], with the current ack and batches in flight.
    pub fn stats(&self) -> Stats {
        Stats {
            acked_upto: self.acked_upto,
            in_flight_batches: self.in_flight.len(),
            custody_upto: self.custody_upto(),
            ..self.stats
        }
    }

    // ----- link -----

    fn connect(&mut self, now: Instant, out: &mut Vec<Output>) {
        self.link = Link::Connecting {
            since: now,
            restart: Restart::NotYet,
        };
        self.early = std::mem::take(&mut self.pulled);
        out.push(Output::Connect);
    }

    /// A `Tick` while an attempt connects: it has stalled, or its restart is due.
    fn on_connecting(
        &mut self,
        now: Instant,
        since: Instant,
        restart: Restart,
        out: &mut Vec<Output>,
    ) {
        match restart {
            Restart::NotYet if since.checked_add(STALLED_AFTER).is_some_and(|t| now >= t) => {
                self.link = Link::Connecting {
                    since,
                    restart: Restart::Probing,
                };
            }
            Restart::At(at) if now >= at => {
                tracing::debug!(node = %self.node, "uplink attempt stalled while the path is back: restarting it");
                self.stats.restarted_attempts += 1;
                self.link = Link::Connecting {
                    since: now,
                    restart: Restart::Done,
                };
                out.push(Output::Connect);
            }
            _ => {}
        }
    }

    /// A random delay up to `path_back_spread`.
    fn spread(&mut self) -> Duration {
        let spread = self.cfg.path_back_spread.as_nanos();
        if spread == 0 {
            Duration::ZERO
        } else {
            let n = u64::try_from(spread).unwrap_or(u64::MAX);
            Duration::from_nanos(self.rng.u64(0..n))
        }
    }

    /// Brings the pending attempt forward to within `path_back_spread`, once; or
    /// schedules the restart of a stalled attempt within it.
    fn on_path_back(&mut self, now: Instant) {
        match self.link {
            Link::Backoff { until } if self.probe_armed => {
                self.probe_armed = false;
                self.pulled = true;
                let offset = self.spread();
                let early = now.checked_add(offset).unwrap_or(now);
                tracing::debug!(node = %self.node, in_ms = u64::try_from(offset.as_millis()).unwrap_or(u64::MAX), "uplink path back: reconnecting early");
                self.link = Link::Backoff {
                    until: until.min(early),
                };
            }
            Link::Connecting {
                since,
                restart: Restart::Probing,
            } => {
                let at = now.checked_add(self.spread()).unwrap_or(now);
                self.link = Link::Connecting {
                    since,
                    restart: Restart::At(at),
                };
            }
            _ => {}
        }
    }

    fn back_off(&mut self, now: Instant) {
        // A failed early attempt waits for the regular one; any other failure (or a
        // link lost while up) lets a probe bring the next attempt forward.
        self.probe_armed = !std::mem::take(&mut self.early);
        self.pulled = false;
        let delay = self.backoff_delay();
        tracing::debug!(node = %self.node, delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), "uplink reconnect backoff");
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
        self.early = false;
        self.probe_armed = false;
        self.stats.link_ups += 1;
        tracing::info!(node = %self.node, acked_upto = self.acked_upto, "uplink up");
        // Batches a previous hop held are sent again, re-batched from the outbox.
        self.rewind_custody();
        // Go-back-N: everything unacknowledged goes again, from the oldest.
        for f in &mut self.in_flight {
            f.resend = true;
            f.held = false;
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
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_custody;
#[cfg(test)]
mod tests_drain;
#[cfg(test)]
mod tests_reconnect;
