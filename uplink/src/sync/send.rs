//! The sending side of the machine: range batches within the window, go-back-N
//! resends, express batches under a byte budget, and the frame encoding they share.
//!
//! Batches go in the compact encoding ([`hedge_wire::compact`]), which a master reads
//! beside the postcard envelope ([`hedge_wire::WIRE_VERSION`]); a record's `cost` and a
//! batch's planned size are measured in the postcard envelope, and a batch whose compact
//! form would exceed that plan (adversarial values, never seen in practice) goes in it,
//! so every bound the plan checked
//! (the frame limit, the batch size, the byte budget) holds for what is sent.

use std::time::Instant;

use hedge_wire::codec::encode;
use hedge_wire::compact::encode_up as encode_compact;
use hedge_wire::{Message, Name, Record, RecordKind, Up, WireError};

use super::{Flight, Output, SyncMachine, FRAME_SLACK};

/// Express priority of a record kind: lower goes first, `None` never goes express.
fn express_rank(kind: &RecordKind) -> Option<u8> {
    match kind {
        RecordKind::Incident { .. } => Some(0),
        RecordKind::InstanceState { .. } => Some(1),
        RecordKind::PromiseResult { .. } => Some(2),
        _ => None,
    }
}

/// Encodes `Up { node, records, covers, epoch }` in the postcard envelope and gives the records
/// back: what `cost` and the plans measure.
pub(super) fn encode_up(
    node: &Name,
    epoch: u64,
    records: Vec<Record>,
    covers: Option<(u64, u64)>,
    max: usize,
) -> (Result<Vec<u8>, WireError>, Vec<Record>) {
    encode_batch(node, epoch, records, covers, max, None)
}

/// Encodes `Up { node, records, covers, epoch }` for sending and gives the records
/// back: compact if `planned` is given and the compact frame is at most that long, else
/// in the postcard envelope.
fn encode_batch(
    node: &Name,
    epoch: u64,
    records: Vec<Record>,
    covers: Option<(u64, u64)>,
    max: usize,
    planned: Option<usize>,
) -> (Result<Vec<u8>, WireError>, Vec<Record>) {
    let up = Up {
        node: node.clone(),
        records,
        covers,
        epoch,
    };
    if let Some(planned) = planned {
        if let Ok(frame) = encode_compact(&up, max.min(planned)) {
            return (Ok(frame), up.records);
        }
    }
    let msg = Message::Up(up);
    let res = encode(&msg, max);
    let records = match msg {
        Message::Up(up) => up.records,
        _ => Vec::new(),
    };
    (res, records)
}

impl SyncMachine {
    /// Sends whatever the window, the look-ahead and the budget allow, then loads.
    pub(super) fn pump(&mut self, now: Instant, out: &mut Vec<Output>) {
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
                    self.send_express(picked, bound, out);
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
                    if self.send_range(n, bound, now, out) {
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

    /// Sends the next `n` look-ahead entries, planned at `bound` bytes, as one range
    /// batch. Returns whether the state moved on (so the caller's loop ends).
    fn send_range(&mut self, n: usize, bound: usize, now: Instant, out: &mut Vec<Output>) -> bool {
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
        let (res, back) = encode_batch(
            &self.node,
            self.epoch,
            records,
            Some((from, to)),
            self.cfg.max_frame,
            Some(bound),
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
                // Re-batched after a custody rewind: its seqs count from their first send.
                let first_sent = self.custody.first_send(to).map_or(now, |t| t.min(now));
                self.in_flight.push_back(Flight {
                    range: (from, to),
                    frame,
                    records: count,
                    sent_at: now,
                    first_sent,
                    resend: false,
                    held: false,
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

    fn send_express(&mut self, picked: Vec<usize>, bound: usize, out: &mut Vec<Output>) {
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
        let (res, _) = encode_batch(
            &self.node,
            self.epoch,
            records,
            None,
            self.cfg.max_frame,
            Some(bound),
        );
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
