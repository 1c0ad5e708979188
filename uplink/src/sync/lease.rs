//! The lease the master's acks prove: since when the master has certainly heard this
//! node.
//!
//! An `Acked { upto }` of this machine's epoch that moves the acknowledgement forward
//! and covers whole range batches this machine sent proves that the master stored
//! them, hence received one of their sends: at a real time no earlier than the batch's
//! *first* send. The lease start is the latest such first-send time seen. So:
//! - a resend never extends it (a batch counts from its first send, however often and
//!   however late it goes again);
//! - a stale, duplicate or reordered ack never extends it (only an ack that moves
//!   `acked_upto` forward is read);
//! - an ack for another epoch never counts (it is ignored before it reaches here);
//! - an ack that runs past every batch this machine sent (the master is ahead: an
//!   earlier life of the same store sent those seqs) proves nothing about this machine
//!   and is not credited; neither is a partly covered batch.
//!
//! What remains: after a daemon restart an ack for seqs that both the old and the new
//! daemon sent may be credited to the new one's first send although the master stored
//! the old one's, only if the master published it after the new link subscribed and
//! before the new batch went out (one round trip); the master's margin between the
//! lease and `lost_after` covers it.
//!
//! The driver reads [`SyncMachine::lease_since`]: an `Instant` of the clock it feeds the
//! machine with (the daemon's monotonic clock, in the same process).

use std::time::Instant;

use super::SyncMachine;

/// The latest proven contact, if any.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Lease {
    since: Option<Instant>,
}

impl SyncMachine {
    /// Credits the lease for a new ack `upto` (> the previous one); called before the
    /// acknowledged batches leave `in_flight`.
    pub(super) fn credit_lease(&mut self, upto: u64) {
        // Batches in flight, and those no longer in flight (held in custody by a next
        // hop, or re-batched since: `custody`), count alike.
        let newest_sent = self
            .in_flight
            .back()
            .map(|f| f.range.1)
            .max(self.custody.newest_end());
        if newest_sent.is_none_or(|end| upto > end) {
            return; // nothing of ours, or the master is ahead of what we sent
        }
        let proven = self
            .in_flight
            .iter()
            .filter(|f| f.range.1 <= upto)
            .map(|f| f.first_sent)
            .max()
            .max(self.custody.proven_by(upto));
        if let Some(t) = proven {
            if self.lease.since.is_none_or(|s| t > s) {
                self.lease.since = Some(t);
            }
        }
    }

    /// The lease start: the latest time at which the master has certainly heard this
    /// machine (the first send of the newest batch it acknowledged); `None` before any
    /// such ack. Never moves backwards.
    pub fn lease_since(&self) -> Option<Instant> {
        self.lease.since
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    // Tests take `Instant::now()` as an arbitrary origin; the machine only compares instants.
    #![allow(clippy::disallowed_methods)]

    use hedge_wire::Name;

    use super::super::tests::{ms, outbox_of, ranges, serve, usage, EPOCH};
    use super::super::{Config, Input};
    use super::*;

    /// A machine whose link came up at `t0` with seqs `1..=upto` in the outbox (batches
    /// of 5, 4 in flight, ack timeout 1 s); the ranges it sent.
    fn connected(t0: Instant, upto: u64) -> (SyncMachine, Vec<(u64, u64)>) {
        let cfg = Config {
            max_batch_records: 5,
            window: 4,
            ack_timeout: ms(1000),
            ..Config::default()
        };
        let mut s = SyncMachine::new(Name::new("node-1").unwrap(), EPOCH, cfg, 3);
        s.handle(t0, Input::Start);
        let out = s.handle(t0, Input::LinkUp);
        let sent = ranges(&serve(&mut s, t0, &outbox_of((1..=upto).map(usage)), out));
        (s, sent)
    }

    /// The outbox grew to `1..=upto` at `at`: the ranges sent.
    fn grow(s: &mut SyncMachine, at: Instant, upto: u64) -> Vec<(u64, u64)> {
        let out = s.handle(at, Input::OutboxChanged);
        ranges(&serve(s, at, &outbox_of((1..=upto).map(usage)), out))
    }

    fn ack(s: &mut SyncMachine, at: Instant, upto: u64, epoch: u64) {
        s.handle(at, Input::Acked { upto, epoch });
    }

    #[test]
    fn an_ack_proves_the_first_send_of_the_newest_batch_it_covers() {
        let t0 = Instant::now();
        let (mut s, sent) = connected(t0, 10);
        assert_eq!(sent, vec![(1, 5), (6, 10)]);
        assert_eq!(s.lease_since(), None, "no ack yet");
        // A partial ack covers no whole batch: nothing proven.
        ack(&mut s, t0 + ms(50), 3, EPOCH);
        assert_eq!(s.lease_since(), None);
        ack(&mut s, t0 + ms(60), 5, EPOCH);
        assert_eq!(
            s.lease_since(),
            Some(t0),
            "the first send, not the ack's arrival"
        );
        // A later batch, acknowledged: the lease moves to its first send.
        assert_eq!(grow(&mut s, t0 + ms(100), 12), vec![(11, 12)]);
        ack(&mut s, t0 + ms(150), 12, EPOCH);
        assert_eq!(s.lease_since(), Some(t0 + ms(100)));
    }

    #[test]
    fn resends_do_not_extend_the_lease() {
        let t0 = Instant::now();
        let (mut s, sent) = connected(t0, 5);
        assert_eq!(sent, vec![(1, 5)]);
        // The ack times out: resent at t0+1s; then the link drops and comes back:
        // resent again at t0+5s.
        assert_eq!(ranges(&s.handle(t0 + ms(1000), Input::Tick)), vec![(1, 5)]);
        s.handle(t0 + ms(1200), Input::LinkDown);
        s.handle(t0 + ms(5000), Input::Tick);
        assert_eq!(
            ranges(&s.handle(t0 + ms(5000), Input::LinkUp)),
            vec![(1, 5)]
        );
        assert!(s.stats().resent_batches >= 2);
        // The master acks the last resend: it may have stored the first send, so the
        // lease starts at the first send.
        ack(&mut s, t0 + ms(5050), 5, EPOCH);
        assert_eq!(s.lease_since(), Some(t0));
    }

    #[test]
    fn stale_duplicate_and_foreign_acks_do_not_extend_the_lease() {
        let t0 = Instant::now();
        let (mut s, _) = connected(t0, 5);
        ack(&mut s, t0 + ms(10), 5, EPOCH);
        assert_eq!(s.lease_since(), Some(t0));
        // New records, sent later and not acknowledged yet.
        assert_eq!(grow(&mut s, t0 + ms(500), 10), vec![(6, 10)]);
        // A duplicate of the old ack, a reordered older one, and another life's ack
        // covering the new batch: none proves anything about the new batch.
        ack(&mut s, t0 + ms(600), 5, EPOCH);
        ack(&mut s, t0 + ms(600), 2, EPOCH);
        ack(&mut s, t0 + ms(600), 10, EPOCH + 1);
        assert_eq!(s.lease_since(), Some(t0));
        assert_eq!(s.stats().foreign_acks, 1);
        // The real one does.
        ack(&mut s, t0 + ms(700), 10, EPOCH);
        assert_eq!(s.lease_since(), Some(t0 + ms(500)));
    }

    #[test]
    fn an_ack_beyond_what_this_machine_sent_proves_nothing() {
        // A restarted node: the master holds seqs up to 40 from an earlier daemon of
        // the same store; this one sent 1..=5 so far.
        let t0 = Instant::now();
        let (mut s, _) = connected(t0, 5);
        ack(&mut s, t0 + ms(10), 40, EPOCH);
        assert_eq!(s.lease_since(), None);
        assert_eq!(s.stats().acked_upto, 40, "the ack itself is still applied");
        // Its next own batch, acknowledged, does prove contact.
        let out = s.handle(t0 + ms(20), Input::OutboxChanged);
        let more = outbox_of((41..=43).map(usage));
        assert_eq!(
            ranges(&serve(&mut s, t0 + ms(20), &more, out)),
            vec![(41, 43)]
        );
        ack(&mut s, t0 + ms(30), 43, EPOCH);
        assert_eq!(s.lease_since(), Some(t0 + ms(20)));
    }
}
