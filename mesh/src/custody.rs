//! Custody: whether this relay takes a peer's batch into its own outbox, and what it
//! answers.
//!
//! Contract: [`Desk`] is a pure core (no I/O, no clock, no key). The mesh link feeds it
//! every `PeerMessage::Batch` a peer sent, with the peer's identity (its mTLS certificate
//! CN) and a closure that says whether the batch's signature verifies against that
//! peer's session certificate. [`Desk::judge`] checks, in this order:
//! 1. the bytes are one valid `Message::Up` within `max_frame`, else [`CustodyRefusal::Malformed`]; every `Relayed` record nested in it must
//!    decode too;
//! 2. the batch is the peer's own (`up.node` == the peer's CN), else
//!    [`CustodyRefusal::NotYours`]: a peer never hands over another node's batch, it
//!    wraps it in its own;
//! 3. wrapping it once more stays within `MAX_RELAY_DEPTH` nested `Relayed` layers, else
//!    [`CustodyRefusal::TooDeep`];
//! 4. the signature verifies, else [`CustodyRefusal::BadSignature`];
//! 5. a range batch `(origin, epoch, covers)` stored within the last `recent_for` is
//!    answered [`Verdict::Held`] at once and not stored twice (a go-back-N resend); one
//!    already waiting for the daemon is answered [`Verdict::Waiting`] (no answer now:
//!    the waiting one's answer covers it). The memory is short on purpose: an origin
//!    whose custody stalls sends again after a longer time, and that copy must be
//!    stored again, since this relay may have shed or lost the first;
//! 6. at most `max_pending` batches wait for the daemon at once, else
//!    [`CustodyRefusal::Full`].
//!
//! A [`Verdict::Store`] carries an id: the link hands the batch to the daemon as
//! `ToNode::Custody { id, .. }`, the daemon appends it durably and answers
//! `ToLink::CustodyStored { id, result }`, which the link feeds to [`Desk::stored`]; only
//! then is `PeerMessage::Custody` (or `Refused`) sent. The memory of recent batches is
//! bounded ([`Desk::new`]'s `recent` entries, each for `recent_for`); forgetting one
//! only costs a second copy at the master, which stores each `(node, epoch, seq)` once.
//! Time comes in as an argument (any monotonic clock).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use hedge_wire::mesh::{CustodyRefusal, SignedBatch, MAX_RELAY_DEPTH};
use hedge_wire::{Name, RecordKind, Up};

/// Which batch an answer is about: `(origin, epoch, covers)` as `PeerMessage::Custody`
/// names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct BatchKey {
    /// The node whose batch it is (the sending peer).
    pub origin: Name,
    /// Its life.
    pub epoch: u64,
    /// Its range; `None` for an express batch.
    pub covers: Option<(u64, u64)>,
}

/// What to do with a peer's batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Hand it to the daemon as `ToNode::Custody { id, batch }`.
    Store {
        /// The id the daemon's answer will carry.
        id: u64,
        /// What the answer will be about.
        key: BatchKey,
    },
    /// Already stored recently: answer `Custody` now.
    Held(BatchKey),
    /// The same range waits for the daemon: no answer now.
    Waiting,
    /// Answer `Refused` with this reason.
    Refuse {
        /// What it is about, when the batch decoded far enough to say.
        key: Option<BatchKey>,
        /// Why.
        reason: CustodyRefusal,
    },
}

/// The answer a daemon's `CustodyStored` turns into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The peer to answer.
    pub peer: Name,
    /// The batch it is about.
    pub key: BatchKey,
    /// Stored durably, or why not.
    pub result: Result<(), CustodyRefusal>,
}

/// Counters since [`Desk::new`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeskStats {
    /// Batches handed to the daemon.
    pub handed: u64,
    /// Batches answered from the memory of recent ones.
    pub held: u64,
    /// Batches refused here (not by the daemon).
    pub refused: u64,
    /// Batches the daemon stored.
    pub stored: u64,
}

/// The custody desk; see the [module docs](self).
#[derive(Debug)]
pub struct Desk {
    max_frame: usize,
    max_pending: usize,
    recent_cap: usize,
    recent_for: Duration,
    /// Range batches stored recently and when, oldest first.
    recent: VecDeque<(BatchKey, Instant)>,
    /// Batches waiting for the daemon, by id.
    pending: BTreeMap<u64, (Name, BatchKey)>,
    next_id: u64,
    stats: DeskStats,
}

impl Desk {
    /// A desk that decodes frames of at most `max_frame` bytes, lets at most
    /// `max_pending` batches wait for the daemon and remembers the last `recent` stored
    /// ranges (each at least 1) for `recent_for` each.
    pub fn new(max_frame: usize, max_pending: usize, recent: usize, recent_for: Duration) -> Self {
        Desk {
            max_frame,
            max_pending: max_pending.max(1),
            recent_cap: recent.max(1),
            recent_for,
            recent: VecDeque::new(),
            pending: BTreeMap::new(),
            next_id: 1,
            stats: DeskStats::default(),
        }
    }

    /// Judges `batch` sent by `peer` (its certificate CN) at `now`; `signature_ok` is
    /// called at most once, only for a batch that passed the cheaper checks.
    pub fn judge(
        &mut self,
        now: Instant,
        peer: &Name,
        batch: &SignedBatch,
        signature_ok: impl FnOnce(&SignedBatch) -> bool,
    ) -> Verdict {
        while self
            .recent
            .front()
            .is_some_and(|(_, t)| now.saturating_duration_since(*t) >= self.recent_for)
        {
            self.recent.pop_front();
        }
        let verdict = self.judge_inner(peer, batch, signature_ok);
        match &verdict {
            Verdict::Store { .. } => self.stats.handed += 1,
            Verdict::Held(_) => self.stats.held += 1,
            Verdict::Refuse { .. } => self.stats.refused += 1,
            Verdict::Waiting => {}
        }
        verdict
    }

    fn judge_inner(
        &mut self,
        peer: &Name,
        batch: &SignedBatch,
        signature_ok: impl FnOnce(&SignedBatch) -> bool,
    ) -> Verdict {
        let refuse = |key: Option<BatchKey>, reason| Verdict::Refuse { key, reason };
        let Ok(up) = batch.up(self.max_frame) else {
            return refuse(None, CustodyRefusal::Malformed);
        };
        let key = BatchKey {
            origin: up.node.clone(),
            epoch: up.epoch,
            covers: up.covers,
        };
        if &up.node != peer {
            return refuse(Some(key), CustodyRefusal::NotYours);
        }
        match relay_depth(&up, self.max_frame) {
            Ok(d) if d < MAX_RELAY_DEPTH => {}
            Ok(_) => return refuse(Some(key), CustodyRefusal::TooDeep),
            Err(reason) => return refuse(Some(key), reason),
        }
        if !signature_ok(batch) {
            return refuse(Some(key), CustodyRefusal::BadSignature);
        }
        if key.covers.is_some() {
            if self.recent.iter().any(|(k, _)| k == &key) {
                return Verdict::Held(key);
            }
            if self.pending.values().any(|(_, k)| k == &key) {
                return Verdict::Waiting;
            }
        }
        if self.pending.len() >= self.max_pending {
            return refuse(Some(key), CustodyRefusal::Full);
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.pending.insert(id, (peer.clone(), key.clone()));
        Verdict::Store { id, key }
    }

    /// The daemon's answer to `Store { id }` at `now`: whom to answer and what. `None`
    /// for an id this desk is not waiting for (a stale or forged answer).
    pub fn stored(
        &mut self,
        now: Instant,
        id: u64,
        result: Result<(), CustodyRefusal>,
    ) -> Option<Answer> {
        let (peer, key) = self.pending.remove(&id)?;
        if result.is_ok() {
            self.stats.stored += 1;
            if key.covers.is_some() {
                if self.recent.len() >= self.recent_cap {
                    self.recent.pop_front();
                }
                self.recent.push_back((key.clone(), now));
            }
        }
        Some(Answer { peer, key, result })
    }

    /// Batches waiting for the daemon.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Counters since [`Desk::new`].
    pub fn stats(&self) -> DeskStats {
        self.stats
    }
}

/// Nested `Relayed` layers inside `up` (0 for a batch of plain records), each inner
/// batch decoded within `max_frame`. Decoding stops past `MAX_RELAY_DEPTH` layers.
///
/// # Errors
///
/// [`CustodyRefusal::Malformed`] if an inner batch does not decode,
/// [`CustodyRefusal::TooDeep`] past `MAX_RELAY_DEPTH` layers.
pub fn relay_depth(up: &Up, max_frame: usize) -> Result<usize, CustodyRefusal> {
    depth_within(up, max_frame, MAX_RELAY_DEPTH)
}

fn depth_within(up: &Up, max_frame: usize, budget: usize) -> Result<usize, CustodyRefusal> {
    let mut deepest = 0;
    for r in &up.records {
        if let RecordKind::Relayed(inner) = &r.kind {
            let Some(left) = budget.checked_sub(1) else {
                return Err(CustodyRefusal::TooDeep);
            };
            let inner = inner.up(max_frame).map_err(|_| CustodyRefusal::Malformed)?;
            deepest = deepest.max(1 + depth_within(&inner, max_frame, left)?);
        }
    }
    Ok(deepest)
}

#[cfg(test)]
#[path = "custody_tests.rs"]
mod tests;
