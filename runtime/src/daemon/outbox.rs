//! The outbox part of the daemon: the node's store, the outbox quota, and shedding.
//!
//! Contract: [`Outbox`] owns the [`Store`] every record goes to. [`Outbox::append`]
//! writes one record and counts it towards the next shedding pass; it never sheds
//! itself. The loop then asks [`Outbox::shed_plan`], which says whether a pass is due
//! (peers' batches held in custody are outside the quota: `crate::relay` bounds them)
//! (see `crate::monitor::shed::Gate`) and returns its plan, computed over the records no
//! link holds (records handed to a link may be in its look-ahead or already stored at the
//! master as they are: the ack deletes those, shedding never touches them). The loop
//! applies the plan with [`Outbox::apply_shed`] and appends the report it returns with
//! [`Outbox::append_report`], which counts towards the next pass but cannot start one.
//!
//! Store failures are returned; [`Outbox::failed`] remembers a full disk and logs (at
//! most every ten seconds), and [`Outbox::recover`] reopens the store once space is
//! back, so records resume.

use hedge_wire::{Name, RecordKind};

use super::RateLimit;
use crate::monitor::shed::{self, RecordClass, ShedPlan, ShedStats};
use crate::monitor::usage::AccountantState;
use crate::store::{Store, StoreError};

/// The store, the outbox's quota and the shedding schedule.
pub(crate) struct Outbox {
    pub(crate) store: Store,
    quota: u64,
    /// When the next shedding pass is due.
    gate: shed::Gate,
    shed_log: RateLimit,
    store_log: RateLimit,
    /// The store hit a full disk; reopen it once space returns.
    full: bool,
}

impl Outbox {
    pub(crate) fn new(store: Store, quota: u64) -> Self {
        Outbox {
            store,
            quota,
            gate: shed::Gate::default(),
            shed_log: RateLimit::default(),
            store_log: RateLimit::default(),
            full: false,
        }
    }

    pub(crate) fn quota(&self) -> u64 {
        self.quota
    }

    /// Appends a record made at `now_ms`.
    pub(crate) fn append(&mut self, now_ms: u64, kind: RecordKind) -> Result<(), StoreError> {
        let class = RecordClass::of(&kind);
        let before = self.store.outbox_bytes();
        self.store.append(now_ms, kind)?;
        self.appended(&class, before);
        Ok(())
    }

    /// Appends a usage record and `name`'s accounting state after it, as one (see
    /// `Store::append_usage`).
    pub(crate) fn append_usage(
        &mut self,
        now_ms: u64,
        kind: RecordKind,
        name: &Name,
        state: &AccountantState,
    ) -> Result<(), StoreError> {
        let class = RecordClass::of(&kind);
        let before = self.store.outbox_bytes();
        self.store.append_usage(now_ms, kind, name, state)?;
        self.appended(&class, before);
        Ok(())
    }

    fn appended(&mut self, class: &RecordClass, before: u64) {
        let bytes = self.store.outbox_bytes().saturating_sub(before);
        self.gate.appended(class, bytes);
    }

    /// The plan of a shedding pass when one is due, `None` otherwise. `outside`: bytes
    /// of the outbox the quota does not cover (peers' batches held in custody, bounded
    /// per origin by `crate::relay`).
    pub(crate) fn shed_plan(&mut self, outside: u64) -> Result<Option<ShedPlan>, StoreError> {
        let listed = self.store.outbox_bytes().saturating_sub(outside);
        if !self.gate.due(listed, self.quota) {
            return Ok(None);
        }
        self.gate.ran(listed);
        // Aim under the quota so that shedding is not redone on every record.
        let target = self.quota - self.quota / 10;
        let held = self.store.handed_upto();
        let mut entries = self.store.outbox_entries()?;
        entries.retain(|e| e.seq > held);
        Ok(Some(shed::plan(&entries, target)))
    }

    /// Applies a pass's plan and logs it (rate-limited); returns what it did, and the
    /// report to append when it changed anything.
    pub(crate) fn apply_shed(
        &mut self,
        plan: &ShedPlan,
    ) -> Result<(ShedStats, Option<RecordKind>), StoreError> {
        let after = self.store.apply_shed(plan)?;
        let st = plan.stats.clone();
        if let Some(suppressed) = self.shed_log.allow(super::monotonic_now()) {
            tracing::warn!(
                before = st.bytes_before,
                after,
                dropped_promise = st.dropped_promise,
                dropped_health = st.dropped_health,
                merged_usage = st.merged_usage,
                folded_reports = st.folded_reports,
                over_quota = st.over_quota,
                suppressed,
                "outbox over quota: shed records"
            );
        }
        // Later passes fold the report into the first unsent one.
        #[allow(clippy::cast_possible_truncation)] // one pass sheds far fewer than 2^32 records
        let report = (!plan.is_empty()).then(|| RecordKind::Shed {
            dropped_promise: st.dropped_promise as u32,
            dropped_health: st.dropped_health as u32,
            merged_usage: st.merged_usage as u32,
            bytes_before: st.bytes_before,
            bytes_after: after,
        });
        Ok((st, report))
    }

    /// Appends a shed report: counted towards the next pass, never a pass itself.
    pub(crate) fn append_report(
        &mut self,
        now_ms: u64,
        report: RecordKind,
    ) -> Result<(), StoreError> {
        let before = self.store.outbox_bytes();
        self.store.append(now_ms, report)?;
        let bytes = self.store.outbox_bytes().saturating_sub(before);
        self.gate.appended(&RecordClass::ShedReport, bytes);
        Ok(())
    }

    /// A store operation failed: remember a full disk; log (rate-limited).
    pub(crate) fn failed(&mut self, e: &StoreError) {
        if e.is_no_space() {
            self.full = true;
        }
        if let Some(suppressed) = self.store_log.allow(super::monotonic_now()) {
            tracing::warn!(error = %e, no_space = e.is_no_space(), suppressed, "store write failed; supervision continues");
        }
    }

    /// After a full disk: once `disk_free()` is back above a few segments, reopen the
    /// store so records resume. Nothing to do (and `disk_free` not called) otherwise.
    pub(crate) fn recover(&mut self, disk_free: impl FnOnce() -> u64) -> Result<(), StoreError> {
        /// Free bytes wanted before trying: sled grows in 512 KiB segments.
        const ROOM: u64 = 2 << 20;
        if !self.full || disk_free() < ROOM {
            return Ok(());
        }
        self.store.reopen()?;
        self.full = false;
        tracing::info!(
            next_seq = self.store.next_seq().unwrap_or(0),
            "disk space is back: store reopened, records resume"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    use crate::store::tests::health;

    fn outbox(dir: &std::path::Path, quota: u64) -> Outbox {
        Outbox::new(Store::open(&dir.join("store"), 1 << 20).unwrap(), quota)
    }

    /// Appends health records until the outbox is over its quota, checking `before`
    /// ahead of each one; returns how many.
    fn fill_past_quota(o: &mut Outbox, before: impl Fn(&mut Outbox)) -> usize {
        let mut appended = 0;
        while o.store.outbox_bytes() <= o.quota() {
            before(o);
            o.append(1, health(u32::try_from(appended).unwrap()))
                .unwrap();
            appended += 1;
        }
        appended
    }

    #[test]
    fn appending_never_sheds_the_plan_comes_once_over_quota() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = outbox(dir.path(), 2_000);
        let appended = fill_past_quota(&mut o, |o| {
            assert!(o.shed_plan(0).unwrap().is_none(), "under the quota");
        });
        // Over the quota: appending alone dropped nothing.
        assert_eq!(o.store.outbox_depth(), appended);
        let plan = o.shed_plan(0).unwrap().expect("a pass is due");
        assert!(plan.stats.dropped_health > 0);
        assert!(o.shed_plan(0).unwrap().is_none(), "no second pass at once");
        let (stats, report) = o.apply_shed(&plan).unwrap();
        assert_eq!(stats, plan.stats);
        assert!(o.store.outbox_bytes() <= 2_000 - 200);
        let Some(report @ RecordKind::Shed { dropped_health, .. }) = report else {
            panic!("no report");
        };
        assert_eq!(u64::from(dropped_health), stats.dropped_health);
        o.append_report(2, report).unwrap();
        assert!(o.shed_plan(0).unwrap().is_none(), "a report starts no pass");
    }

    #[test]
    fn records_handed_to_a_link_are_never_shed() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = outbox(dir.path(), 1_000);
        let appended = fill_past_quota(&mut o, |_| {});
        let handed = o.store.next_seq().unwrap() - 1;
        o.store.hand_over(handed).unwrap();
        let plan = o.shed_plan(0).unwrap().expect("over the quota");
        assert!(plan.is_empty(), "every record is held by the link");
        let (_, report) = o.apply_shed(&plan).unwrap();
        assert!(report.is_none(), "nothing shed, nothing reported");
        assert_eq!(o.store.outbox_depth(), appended);
    }

    #[test]
    fn a_store_that_is_not_full_is_not_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = outbox(dir.path(), 1_000);
        o.recover(|| panic!("disk space read without a full disk"))
            .unwrap();
    }
}
