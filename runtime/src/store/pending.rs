//! Group commit: which writes are not on disk yet, and when a flush is owed.
//!
//! Contract: a pure rule, no I/O. The store reports every write it leaves unflushed
//! ([`Pending::appended`] for an outbox record, [`Pending::marked`] for the hand-over
//! mark, [`Pending::deferred`] for a deferred state write such as an observed state)
//! and every flush that succeeded ([`Pending::flushed`]). Before an effect the store
//! asks [`Pending::owed`]: a flush is owed exactly when the effect could reveal a write
//! that is not on disk yet —
//! - [`Reveal::Show`] (the local API: `status` shows the outbox's depth and next seq, a
//!   page shows records, and the instances' states) after any unflushed append or
//!   deferred state write;
//! - [`Reveal::Send`] of records up to `upto` when one of them is unflushed, or the
//!   hand-over mark or a deferred state write is (the mark must be durable before
//!   records leave the node; a state before anything reports it).
//!
//! Appends therefore never flush: the records of one loop turn (one tick's usage
//! records, say) reach the disk together, with the first effect that needs them or
//! the store's due flush (`flush_every_ms` after the first of them), whichever comes
//! first, and a flush with nothing owed is skipped.

/// What an effect reveals of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reveal {
    /// The local API answers (the outbox's depth and next seq, or records).
    Show,
    /// Records with `seq <= upto` leave the node.
    Send {
        /// The last seq sent.
        upto: u64,
    },
}

/// The writes not flushed yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pending {
    /// The first outbox record appended since the last flush.
    first_record: Option<u64>,
    /// The hand-over mark was raised since the last flush.
    mark: bool,
    /// A deferred state write (an observed state) since the last flush.
    state: bool,
}

impl Pending {
    /// The record `seq` was appended, not flushed.
    pub fn appended(&mut self, seq: u64) {
        self.first_record = Some(self.first_record.map_or(seq, |f| f.min(seq)));
    }

    /// The hand-over mark was raised, not flushed.
    pub fn marked(&mut self) {
        self.mark = true;
    }

    /// A state the caller reports once flushed (an observed state) was written, not
    /// flushed.
    pub fn deferred(&mut self) {
        self.state = true;
    }

    /// A flush succeeded: everything written before it is on disk.
    pub fn flushed(&mut self) {
        *self = Pending::default();
    }

    /// Whether a flush must come before `reveal`.
    pub fn owed(&self, reveal: Reveal) -> bool {
        match reveal {
            Reveal::Show => self.state || self.first_record.is_some(),
            Reveal::Send { upto } => {
                self.mark || self.state || self.first_record.is_some_and(|f| f <= upto)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_written_owes_no_flush() {
        let p = Pending::default();
        assert!(!p.owed(Reveal::Show));
        assert!(!p.owed(Reveal::Send { upto: u64::MAX }));
    }

    #[test]
    fn an_unflushed_record_owes_a_flush_before_it_is_shown_and_once_only() {
        let mut p = Pending::default();
        p.appended(7);
        p.appended(8);
        assert!(p.owed(Reveal::Show));
        p.flushed();
        assert!(!p.owed(Reveal::Show), "one flush covers the whole group");
    }

    #[test]
    fn a_send_owes_a_flush_only_when_it_reaches_an_unflushed_record() {
        let mut p = Pending::default();
        p.appended(10);
        p.appended(11);
        assert!(
            !p.owed(Reveal::Send { upto: 9 }),
            "records 1..=9 are on disk"
        );
        assert!(p.owed(Reveal::Send { upto: 10 }));
        assert!(p.owed(Reveal::Send { upto: 50 }));
    }

    #[test]
    fn a_raised_hand_over_mark_owes_a_flush_before_any_send_not_before_a_show() {
        let mut p = Pending::default();
        p.marked();
        assert!(p.owed(Reveal::Send { upto: 1 }));
        assert!(!p.owed(Reveal::Show));
        p.flushed();
        assert!(!p.owed(Reveal::Send { upto: 1 }));
    }

    #[test]
    fn a_deferred_state_write_owes_a_flush_before_any_reveal() {
        let mut p = Pending::default();
        p.deferred();
        assert!(p.owed(Reveal::Show));
        assert!(p.owed(Reveal::Send { upto: 0 }));
        p.flushed();
        assert!(!p.owed(Reveal::Show));
    }

    #[test]
    fn the_first_unflushed_record_is_the_lowest_whatever_the_order() {
        let mut p = Pending::default();
        p.appended(20);
        p.appended(12);
        assert!(p.owed(Reveal::Send { upto: 12 }));
        assert!(!p.owed(Reveal::Send { upto: 11 }));
    }
}
