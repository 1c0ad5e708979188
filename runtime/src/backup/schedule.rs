//! When each instance's next snapshot is due: the pure core of the node's backups.
//!
//! Contract: [`Schedule`] knows, per instance, when its last snapshot was taken (read
//! from the vault's catalog at boot, then told of each new one) and how its recent
//! attempts failed; given the policies in force and the wall-clock time `now_ms`,
//! [`Schedule::next`] names the instance due soonest and when. No I/O, no clock: the
//! driver (`daemon::backup`) reads both and hands them in.
//! - A policy's instance is due `interval_s` after its last snapshot; one never
//!   snapshotted is due at once.
//! - One backup at a time: while one runs ([`Schedule::started`] until
//!   [`Schedule::succeeded`] or [`Schedule::failed`]), nothing is due.
//! - A failure retries after a backoff that doubles from [`RETRY_BASE_MS`] up to
//!   [`RETRY_MAX_MS`] (never sooner than that, never in a tight loop), and not before
//!   the policy's own time; a success clears it.
//! - A last snapshot in the future (the clock went back) counts as taken at the time of
//!   the first [`Schedule::next`] that sees it, so a clock step never suspends backups.
//! - Ties go to the smallest name, so the order is deterministic.

use std::collections::BTreeMap;

use hedge_wire::{BackupPolicy, Name};

/// First retry after a failed backup, ms.
pub const RETRY_BASE_MS: u64 = 5_000;
/// Longest wait between retries of a failing backup, ms.
pub const RETRY_MAX_MS: u64 = 300_000;

/// The instance due next and when (ms since the Unix epoch; at or before `now_ms`: due).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// Whose snapshot.
    pub instance: Name,
    /// When it is due.
    pub at_ms: u64,
}

/// Failed attempts since the last success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Failures {
    count: u32,
    last_ms: u64,
}

/// The backup schedule of one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schedule {
    last: BTreeMap<Name, u64>,
    failures: BTreeMap<Name, Failures>,
    running: Option<Name>,
}

/// The wait before retry number `count` (1 = the first failure).
pub fn retry_after_ms(count: u32) -> u64 {
    let shift = count.saturating_sub(1).min(20);
    RETRY_BASE_MS.saturating_mul(1 << shift).min(RETRY_MAX_MS)
}

impl Schedule {
    /// A schedule that knows each instance's last snapshot time (`taken_ms` of the
    /// catalog's entries; several per instance: the newest counts).
    pub fn new(taken: impl IntoIterator<Item = (Name, u64)>) -> Schedule {
        let mut s = Schedule::default();
        for (name, ms) in taken {
            s.note_taken(&name, ms);
        }
        s
    }

    fn note_taken(&mut self, name: &Name, ms: u64) {
        let e = self.last.entry(name.clone()).or_insert(ms);
        *e = (*e).max(ms);
    }

    /// The newest snapshot time known for `instance`.
    pub fn last(&self, instance: &Name) -> Option<u64> {
        self.last.get(instance).copied()
    }

    /// The backup running now, if any.
    pub fn running(&self) -> Option<&Name> {
        self.running.as_ref()
    }

    /// When `p`'s instance is due.
    fn due_at(&self, p: &BackupPolicy, now_ms: u64) -> u64 {
        let interval = u64::from(p.interval_s.max(1)).saturating_mul(1000);
        let by_policy = match self.last.get(&p.instance) {
            // The clock went back: count it as taken now (see `next`).
            Some(&t) => t.min(now_ms).saturating_add(interval),
            None => now_ms,
        };
        match self.failures.get(&p.instance) {
            Some(f) => by_policy.max(f.last_ms.saturating_add(retry_after_ms(f.count))),
            None => by_policy,
        }
    }

    /// The instance of `policies` due soonest, and when; `None` while a backup runs or
    /// when there is no policy. Clamps last snapshot times that lie after `now_ms`.
    pub fn next<'a>(
        &mut self,
        policies: impl IntoIterator<Item = &'a BackupPolicy>,
        now_ms: u64,
    ) -> Option<Due> {
        for t in self.last.values_mut() {
            *t = (*t).min(now_ms);
        }
        if self.running.is_some() {
            return None;
        }
        policies
            .into_iter()
            .map(|p| Due {
                instance: p.instance.clone(),
                at_ms: self.due_at(p, now_ms),
            })
            .min_by(|a, b| (a.at_ms, &a.instance).cmp(&(b.at_ms, &b.instance)))
    }

    /// A backup of `instance` started (a scheduled one or one asked for).
    pub fn started(&mut self, instance: &Name) {
        self.running = Some(instance.clone());
    }

    /// The running backup of `instance` took a snapshot at `taken_ms`.
    pub fn succeeded(&mut self, instance: &Name, taken_ms: u64) {
        self.running = None;
        self.failures.remove(instance);
        self.note_taken(instance, taken_ms);
    }

    /// The running backup of `instance` failed at `now_ms`.
    pub fn failed(&mut self, instance: &Name, now_ms: u64) {
        self.running = None;
        let f = self.failures.entry(instance.clone()).or_insert(Failures {
            count: 0,
            last_ms: now_ms,
        });
        f.count = f.count.saturating_add(1);
        f.last_ms = now_ms;
    }

    /// Forgets an instance that is gone (its policy and snapshots stay in the vault).
    pub fn forget(&mut self, instance: &Name) {
        self.failures.remove(instance);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn n(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    fn policy(name: &str, interval_s: u32) -> BackupPolicy {
        BackupPolicy {
            instance: n(name),
            interval_s,
            retain: 3,
            paths: vec!["srv".into()],
            command: vec![],
        }
    }

    #[test]
    fn never_snapshotted_is_due_at_once_then_after_its_interval() {
        let mut s = Schedule::new([]);
        let p = [policy("a", 60)];
        assert_eq!(s.next(&[], 1000), None);
        assert_eq!(
            s.next(&p, 1000),
            Some(Due {
                instance: n("a"),
                at_ms: 1000
            })
        );
        s.started(&n("a"));
        s.succeeded(&n("a"), 1200);
        assert_eq!(s.next(&p, 2000).unwrap().at_ms, 61_200);
        assert_eq!(s.last(&n("a")), Some(1200));
    }

    #[test]
    fn the_catalog_at_boot_sets_the_time_newest_wins() {
        let mut s = Schedule::new([(n("a"), 5_000), (n("a"), 9_000), (n("b"), 1_000)]);
        let p = [policy("a", 10), policy("b", 100)];
        assert_eq!(
            s.next(&p, 10_000),
            Some(Due {
                instance: n("a"),
                at_ms: 19_000
            })
        );
        // b: 1_000 + 100 s = 101_000, later than a.
        let only_b = [policy("b", 100)];
        assert_eq!(s.next(&only_b, 10_000).unwrap().at_ms, 101_000);
        // Snapshots of an instance without a policy make nothing due.
        assert_eq!(s.next(&[], 10_000), None);
    }

    #[test]
    fn one_backup_at_a_time() {
        let mut s = Schedule::new([]);
        let p = [policy("a", 1), policy("b", 1)];
        let first = s.next(&p, 0).unwrap();
        assert_eq!(first.instance, n("a"), "ties go to the smallest name");
        s.started(&first.instance);
        assert_eq!(s.running(), Some(&n("a")));
        assert_eq!(s.next(&p, 50_000), None, "nothing is due while one runs");
        s.succeeded(&n("a"), 100);
        assert_eq!(
            s.next(&p, 200),
            Some(Due {
                instance: n("b"),
                at_ms: 200
            })
        );
    }

    #[test]
    fn failures_back_off_boundedly_and_a_success_clears_them() {
        assert_eq!(retry_after_ms(1), RETRY_BASE_MS);
        assert_eq!(retry_after_ms(2), 2 * RETRY_BASE_MS);
        assert_eq!(retry_after_ms(3), 4 * RETRY_BASE_MS);
        assert_eq!(retry_after_ms(1000), RETRY_MAX_MS);
        let mut s = Schedule::new([]);
        let p = [policy("a", 1)];
        let mut now = 10_000;
        let mut waits = Vec::new();
        for _ in 0..10 {
            let due = s.next(&p, now).unwrap();
            now = now.max(due.at_ms);
            s.started(&n("a"));
            s.failed(&n("a"), now);
            let next = s.next(&p, now).unwrap().at_ms;
            assert!(next > now, "a failure is never retried at once");
            waits.push(next - now);
        }
        assert_eq!(waits[0], RETRY_BASE_MS);
        assert!(waits.windows(2).all(|w| w[0] <= w[1]), "{waits:?}");
        assert_eq!(*waits.last().unwrap(), RETRY_MAX_MS);
        s.started(&n("a"));
        s.succeeded(&n("a"), now);
        assert_eq!(s.next(&p, now).unwrap().at_ms, now + 1000);
    }

    #[test]
    fn a_retry_never_comes_before_the_policy_time() {
        let mut s = Schedule::new([(n("a"), 0)]);
        let p = [policy("a", 3600)];
        s.started(&n("a"));
        s.failed(&n("a"), 10);
        // The next policy time (3 600 000) is later than the retry (5 010).
        assert_eq!(s.next(&p, 20).unwrap().at_ms, 3_600_000);
    }

    #[test]
    fn a_clock_step_back_does_not_suspend_backups() {
        let mut s = Schedule::new([(n("a"), 1_000_000)]);
        let p = [policy("a", 10)];
        // Now is far before the last snapshot: due one interval from now, not from it.
        assert_eq!(s.next(&p, 500).unwrap().at_ms, 10_500);
        assert_eq!(s.last(&n("a")), Some(500));
    }
}
