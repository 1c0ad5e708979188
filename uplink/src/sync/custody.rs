//! Custody: range batches a mesh link's next hop has stored durably for this node.
//!
//! Contract: [`Input::Custody`](super::Input::Custody) `{ upto }` says that the current
//! link's next hop holds, durably, the range batch of this connection ending at `upto`
//! (a driver feeds one per custody answer: `upto` is the answer's `covers.1`; answers
//! may come in any order, and a refused batch simply gets none). A held batch is never
//! sent again on an ack timeout; held batches leave the window (more can be sent) once
//! every batch before them is held too, so the range batches up to the newest such one
//! are held; they are sent again only after a new `LinkUp` (the next hop may have
//! changed, or been destroyed): then the machine starts over from `acked_upto + 1`,
//! re-batching from the outbox, since it kept no frame of them. Custody deletes nothing
//! (only `Acked` does: the origin keeps its records until the master's ack, whatever
//! path it takes) and proves nothing about the master, so it never extends the lease.
//! A custody that names no batch in flight, or comes while the link is down, is ignored.
//!
//! Memory stays bounded however much is held: the machine keeps no frame of a held
//! batch, only `held_upto` and a log of at most [`LOG_MAX`] `(end, first send)` pairs
//! of batches sent and no longer in flight, which an ack still credits to the lease
//! and re-batched sends inherit (a seq's first send never moves later, so a re-batched
//! send never extends the lease; when the log is full, neighbours merge and later
//! entries gather as many batches each, an even grain that only makes a first send
//! earlier and an ack's proof later).

use std::collections::VecDeque;
use std::time::Instant;

use super::SyncMachine;

/// Most `(end, first send)` pairs kept; beyond it neighbours merge (conservatively).
pub(super) const LOG_MAX: usize = 64;

/// What the next hop holds and when held batches were first sent.
#[derive(Debug)]
pub(super) struct Custody {
    /// Range batches ending at or before this are held by the next hop (meaningful
    /// only above `acked_upto`).
    held_upto: u64,
    /// `(last seq, first send, batches)` of batches sent and no longer in flight, ends
    /// increasing; a seq's first send is that of the first entry whose end reaches it.
    log: VecDeque<(u64, Instant, u32)>,
    /// Batches one log entry gathers before a new one starts (doubles when the log
    /// is halved; back to 1 when it empties), so the grain stays even.
    grain: u32,
}

impl Default for Custody {
    fn default() -> Self {
        Custody {
            held_upto: 0,
            log: VecDeque::new(),
            grain: 1,
        }
    }
}

impl Custody {
    /// Records that the batch ending at `end` was first sent at `first_sent`.
    fn remember(&mut self, end: u64, first_sent: Instant) {
        // An end within what the log already covers is already there, as early or earlier.
        if self.log.back().is_some_and(|&(e, _, _)| e >= end) {
            return;
        }
        if let Some(last) = self.log.back_mut().filter(|l| l.2 < self.grain) {
            // Gathered into the newest entry: its seqs count from the entry's (older)
            // first send, and an ack must reach the new end to prove it (conservative).
            last.0 = end;
            last.2 += 1;
            return;
        }
        self.log.push_back((end, first_sent, 1));
        if self.log.len() > LOG_MAX {
            // Halve the log by merging neighbours (conservative, as above) and gather
            // twice as many batches per entry from now on.
            let old = std::mem::take(&mut self.log);
            let mut pairs = old.into_iter();
            while let Some((end, t, n)) = pairs.next() {
                let (end, n) = pairs
                    .next()
                    .map_or((end, n), |(e, _, m)| (e, n.saturating_add(m)));
                self.log.push_back((end, t, n));
            }
            self.grain = self.grain.saturating_mul(2);
        }
    }

    /// The first send of `seq`, if a batch no longer in flight carried it.
    pub(super) fn first_send(&self, seq: u64) -> Option<Instant> {
        self.log
            .iter()
            .find(|&&(e, _, _)| e >= seq)
            .map(|&(_, t, _)| t)
    }

    /// Pairs in the log (at most [`LOG_MAX`]).
    #[cfg(test)]
    pub(super) fn log_len(&self) -> usize {
        self.log.len()
    }

    /// The last seq of the newest batch in the log.
    pub(super) fn newest_end(&self) -> Option<u64> {
        self.log.back().map(|&(e, _, _)| e)
    }

    /// The latest first send among logged batches ending at or before `upto`.
    pub(super) fn proven_by(&self, upto: u64) -> Option<Instant> {
        self.log
            .iter()
            .take_while(|&&(e, _, _)| e <= upto)
            .map(|&(_, t, _)| t)
            .max()
    }

    /// Forgets what the master acknowledged (`<= upto`).
    pub(super) fn acked(&mut self, upto: u64) {
        while self.log.front().is_some_and(|&(e, _, _)| e <= upto) {
            self.log.pop_front();
        }
        if self.log.is_empty() {
            self.grain = 1;
        }
    }
}

impl SyncMachine {
    /// `Input::Custody { upto }` while the link is up.
    pub(super) fn on_custody(&mut self, upto: u64) {
        let Some(f) = self
            .in_flight
            .iter_mut()
            .find(|f| f.range.1 == upto && !f.held)
        else {
            tracing::debug!(node = %self.node, upto, "custody for no batch in flight; ignored");
            return;
        };
        f.held = true;
        f.resend = false;
        self.stats.custody_batches += 1;
        // Held batches leave the window once every batch before them is held too (a
        // refused one stays, and goes again on its ack timeout).
        while self.in_flight.front().is_some_and(|f| f.held) {
            if let Some(f) = self.in_flight.pop_front() {
                self.custody.remember(f.range.1, f.first_sent);
                self.custody.held_upto = self.custody.held_upto.max(f.range.1);
            }
        }
    }

    /// The highest seq the next hop holds for this node beyond the master's ack (0: none).
    pub(super) fn custody_upto(&self) -> u64 {
        if self.custody.held_upto > self.acked_upto {
            self.custody.held_upto
        } else {
            0
        }
    }

    /// On `LinkUp`: if a next hop held batches, start over from `acked_upto + 1`
    /// (everything unacknowledged is re-batched from the outbox and sent again).
    pub(super) fn rewind_custody(&mut self) {
        if self.custody_upto() == 0 {
            return;
        }
        self.custody.held_upto = 0;
        for f in std::mem::take(&mut self.in_flight) {
            self.custody.remember(f.range.1, f.first_sent);
        }
        self.lookahead.clear();
        self.lookahead_bytes = 0;
        self.shrink = None;
        let from = u128::from(self.acked_upto) + 1;
        self.next_from = from;
        self.load_from = from;
        // A `Load` still pending asked from beyond `from`: its answer is discarded
        // (`on_loaded`), and the next `Load` asks from `from`.
        self.exhausted = false;
        tracing::info!(node = %self.node, from = self.acked_upto + 1, "custody held by the previous hop: sending again from the master's ack");
    }
}
