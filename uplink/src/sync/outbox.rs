//! The outbox side of the machine: loading records into the look-ahead (measured,
//! unsendable ones skipped) and applying the master's cumulative acks.

use std::time::Instant;

use hedge_wire::{Record, Validate, WireError};

use super::{Entry, Output, SyncMachine, FRAME_SLACK};

/// The bytes `r` adds to a version-2 `Up` frame, if the wire accepts it.
pub(super) fn record_cost(r: &Record) -> Result<usize, WireError> {
    r.validate()?;
    postcard::serialize_with_flavor(r, postcard::ser_flavors::Size::default())
        .map_err(WireError::Encode)
}

impl SyncMachine {
    fn lookahead_cap(&self) -> usize {
        self.cfg
            .window
            .saturating_mul(self.cfg.max_batch_records)
            .max(self.cfg.max_batch_records)
    }

    pub(super) fn maybe_load(&mut self, out: &mut Vec<Output>) {
        if self.load_pending.is_some() || self.exhausted {
            return;
        }
        let cap = self.lookahead_cap();
        let room = cap.saturating_sub(self.lookahead.len());
        // Past u64::MAX nothing more can exist.
        let Ok(from) = u64::try_from(self.load_from) else {
            return;
        };
        // In large loads (each costs the node a store flush): once a full batch is at
        // hand, wait until half the look-ahead is free.
        if room == 0 || (self.lookahead.len() >= self.cfg.max_batch_records && room < cap / 2) {
            return;
        }
        self.load_pending = Some((from, room));
        out.push(Output::Load { from, limit: room });
    }

    pub(super) fn on_loaded(&mut self, from: u64, records: Vec<Record>, end: bool) {
        let Some((want, limit)) = self.load_pending else {
            return; // stale
        };
        if want != from {
            return; // stale
        }
        self.load_pending = None;
        if u128::from(from) > self.load_from {
            // Asked before a custody rewind moved `load_from` back: loading it would
            // leave a gap. Drop it; the next `Load` asks from `load_from`.
            self.dirty = false;
            self.exhausted = false;
            return;
        }
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
    ///
    /// A record's cost is what it adds to a version-2 frame: its own postcard encoding
    /// (the record count's growth is in [`FRAME_SLACK`]), measured without writing it,
    /// after the wire's checks that `encode` would make of it.
    fn push_entry(&mut self, r: Record) {
        let seq = r.seq;
        let entry = match record_cost(&r) {
            Ok(cost) if self.empty_len + FRAME_SLACK + cost <= self.cfg.max_frame => Entry {
                seq,
                rec: Some(r),
                cost,
                expressed: false,
            },
            Ok(_) => self.skip(seq, "record too large for a frame", true),
            Err(e) => {
                tracing::warn!(node = %self.node, seq, error = %e, "record refused by the wire");
                self.skip(seq, "record refused by the wire", false)
            }
        };
        self.lookahead_bytes += entry.cost;
        self.lookahead.push_back(entry);
    }

    pub(super) fn skip(&mut self, seq: u64, why: &'static str, oversized: bool) -> Entry {
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

    pub(super) fn pop_entry(&mut self) -> Option<Entry> {
        let e = self.lookahead.pop_front()?;
        self.lookahead_bytes = self.lookahead_bytes.saturating_sub(e.cost);
        Some(e)
    }

    // ----- acks -----

    pub(super) fn on_acked(&mut self, upto: u64, out: &mut Vec<Output>) {
        if upto <= self.acked_upto || upto <= self.deleted_upto {
            return; // duplicate, reordered, or below what is already deleted
        }
        self.acked_upto = upto;
        self.credit_lease(upto);
        self.custody.acked(upto);
        while self.in_flight.front().is_some_and(|f| f.range.1 <= upto) {
            self.in_flight.pop_front();
        }
        // Deletes in large steps (each costs the node a store flush): when nothing is
        // left in flight, or half a look-ahead is acknowledged and not yet deleted.
        let pending = upto.saturating_sub(self.deleted_upto);
        let step = u64::try_from(self.lookahead_cap() / 2).unwrap_or(u64::MAX);
        if self.in_flight.is_empty() || pending >= step {
            self.flush_deletes(out);
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

    /// Asks to delete everything acknowledged and not yet deleted.
    pub(super) fn flush_deletes(&mut self, out: &mut Vec<Output>) {
        if self.acked_upto > self.deleted_upto {
            self.deleted_upto = self.acked_upto;
            out.push(Output::Delete {
                upto: self.acked_upto,
            });
        }
    }

    pub(super) fn check_ack_timeout(&mut self, now: Instant) {
        let oldest = self
            .in_flight
            .iter()
            .filter(|f| !f.resend && !f.held)
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
            for f in self.in_flight.iter_mut().filter(|f| !f.held) {
                f.resend = true;
            }
        }
    }
}
