//! Outbox quota shedding: which records to merge or drop when the outbox is too big.
//!
//! Contract: pure over a summary of the outbox. The daemon lists the records *not in
//! flight* (a record already sent in an unacknowledged batch must not change) as
//! [`OutboxEntry`]s — seq, [`RecordClass::of`] the record, its stored size — and calls
//! [`plan`] with the quota. It then applies the [`ShedPlan`] atomically (one entry of
//! the outbox log): deletes every seq in `drop`; for each [`MergeGroup`] folds the
//! group's records in `seqs` order with [`merge_usage`], writes the result at `keep`
//! and deletes the other seqs; and reports [`ShedStats`]. Nothing else is touched.
//!
//! Records the uplink holds (loaded into its look-ahead or sent, not yet acknowledged)
//! are never listed: a record that changed or vanished after the uplink read it would
//! reach the master in its old form, and whatever was merged into it would be lost.
//!
//! First, the daemon's own shed reports ([`RecordKind::Shed`]) are folded into one
//! (counts summed, `bytes_before` of the first, `bytes_after` of the last), so shedding
//! never fills the outbox with reports of shedding. Then these rules, in this order and
//! only until the total is ≤ the quota:
//! 1. usage records of one instance are merged pairwise with their adjacent successor
//!    (`a.to_ms == b.from_ms`), oldest first, in rounds (each round roughly halves the
//!    usage bytes), only among records that start on the same UTC day: a merged record
//!    crosses midnight only where one of its inputs did (never, when the accountant's
//!    intervals divide a day), so daily and monthly invoices need not split it;
//! 2. promise results and node-health records are dropped, oldest (lowest seq) first;
//! 3. usage records are merged further, across days;
//! 4. if still over, `stats.over_quota` is set: incidents, instance states, local
//!    requests and connection parameters are never dropped or changed.
//!
//! Batches held in custody for peers ([`RecordClass::Relayed`]) are neither counted
//! against the quota nor touched: `crate::relay` bounds them per origin.
//!
//! A merged record is assumed to take the size of the larger record merged (its values
//! grow, their varints rarely do); the daemon's next pass corrects any drift. Merging
//! preserves totals exactly: cpu and uptime summed, memory average time-weighted, peak
//! = max, disk = the later one, network summed only when both are known.

use std::collections::BTreeMap;

use hedge_wire::{Name, RecordKind};

/// One UTC day, ms.
pub const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// Why two records could not be merged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShedError {
    /// One of them is not a usage record.
    #[error("only usage records can be merged")]
    NotUsage,
    /// They account different instances.
    #[error("usage records of different instances cannot be merged")]
    DifferentInstances,
    /// Neither interval ends where the other starts.
    #[error("usage intervals [{0}, {1}) and [{2}, {3}) are not adjacent")]
    NotAdjacent(u64, u64, u64, u64),
    /// One of them is not a shed report.
    #[error("only shed reports can be folded together")]
    NotShedReport,
}

/// The interval a usage record covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageSpan {
    /// Which instance.
    pub instance: Name,
    /// Start, ms since the epoch.
    pub from_ms: u64,
    /// End (exclusive).
    pub to_ms: u64,
}

/// What shedding needs to know about a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordClass {
    /// Never dropped.
    Incident,
    /// Kept under pressure: the master needs the last state of every instance.
    InstanceState,
    /// Kept under pressure: an operator's request must reach the master.
    LocalRequest,
    /// Kept under pressure: consumers on other nodes depend on it.
    ConnectionParameters,
    /// A promise change or summary; dropped oldest first.
    PromiseResult,
    /// Merged into coarser intervals.
    Usage(UsageSpan),
    /// Dropped oldest first.
    NodeHealth,
    /// A report of an earlier shedding pass; folded together with the others.
    ShedReport,
    /// A peer's batch held in custody (mesh): never touched here, bounded per origin by
    /// `crate::relay` (classified there, [`crate::relay::classify`]: not decoded here, so
    /// a pass costs no decoding of what the node holds for others).
    Relayed,
}

impl RecordClass {
    /// Whether shedding may drop, merge or fold a record of this class.
    pub fn sheddable(&self) -> bool {
        matches!(
            self,
            RecordClass::PromiseResult
                | RecordClass::Usage(_)
                | RecordClass::NodeHealth
                | RecordClass::ShedReport
        )
    }
}

impl RecordClass {
    /// The class of a record.
    pub fn of(kind: &RecordKind) -> Self {
        match kind {
            RecordKind::Incident { .. } => RecordClass::Incident,
            RecordKind::Shed { .. } => RecordClass::ShedReport,
            RecordKind::InstanceState { .. }
            | RecordKind::Desired { .. }
            | RecordKind::DesiredExpired { .. }
            | RecordKind::Artifact { .. }
            | RecordKind::Fence { .. }
            | RecordKind::Backup { .. }
            | RecordKind::NodeInfo { .. } => RecordClass::InstanceState,
            RecordKind::LocalRequest { .. } => RecordClass::LocalRequest,
            RecordKind::ConnectionParameters { .. } => RecordClass::ConnectionParameters,
            RecordKind::PromiseResult { .. } => RecordClass::PromiseResult,
            RecordKind::NodeHealth { .. } => RecordClass::NodeHealth,
            // A peer's batch in custody is never shed by this node's own quota: the
            // relay's per-origin bound decides what it takes.
            RecordKind::Relayed(_) => RecordClass::Relayed,
            RecordKind::Usage {
                instance,
                from_ms,
                to_ms,
                ..
            } => RecordClass::Usage(UsageSpan {
                instance: instance.clone(),
                from_ms: *from_ms,
                to_ms: *to_ms,
            }),
        }
    }
}

/// One outbox record, summarised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Outbox sequence number.
    pub seq: u64,
    /// What it is.
    pub class: RecordClass,
    /// Stored size, bytes.
    pub bytes: u64,
}

/// Usage records to fold into one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeGroup {
    /// The records, in time order (fold them in this order); at least two.
    pub seqs: Vec<u64>,
    /// Where the merged record is written: the group's lowest seq. The others go.
    pub keep: u64,
    /// The merged record's interval.
    pub into: UsageSpan,
    /// Its assumed size: the largest of the group.
    pub bytes: u64,
}

/// What a plan does, for the daemon to report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShedStats {
    /// Outbox bytes listed.
    pub bytes_before: u64,
    /// Outbox bytes after the plan (merged sizes assumed).
    pub bytes_after: u64,
    /// Promise results dropped.
    pub dropped_promise: u64,
    /// Node-health records dropped.
    pub dropped_health: u64,
    /// Usage records removed by merging (each group keeps one).
    pub merged_usage: u64,
    /// Merge groups.
    pub merge_groups: u64,
    /// Shed reports folded into an earlier one.
    pub folded_reports: u64,
    /// Still over the quota: nothing more may be shed.
    pub over_quota: bool,
}

/// What to drop and merge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShedPlan {
    /// Records to delete, ascending.
    pub drop: Vec<u64>,
    /// Usage records to merge.
    pub merge: Vec<MergeGroup>,
    /// Shed reports to fold into the first of them, ascending (empty, or two or more).
    pub fold_reports: Vec<u64>,
    /// How many records the plan drops, merges and folds, for the counters and the log.
    pub stats: ShedStats,
}

impl ShedPlan {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.drop.is_empty() && self.merge.is_empty() && self.fold_reports.is_empty()
    }
}

/// A run of adjacent usage records of one instance, being merged; empty once merged
/// into its predecessor.
#[derive(Debug, Clone, Default)]
struct Group {
    seqs: Vec<u64>,
    from_ms: u64,
    to_ms: u64,
    bytes: u64,
}

/// The plan that brings `entries` to at most `quota_bytes` (see the module doc).
pub fn plan(entries: &[OutboxEntry], quota_bytes: u64) -> ShedPlan {
    // Peers' batches in custody are outside the quota (bounded per origin instead).
    let mut total: u64 = entries
        .iter()
        .filter(|e| e.class != RecordClass::Relayed)
        .fold(0, |t, e| t.saturating_add(e.bytes));
    let mut stats = ShedStats {
        bytes_before: total,
        ..ShedStats::default()
    };

    let mut usage: BTreeMap<&Name, Vec<Group>> = BTreeMap::new();
    let mut droppable: Vec<(u64, bool, u64)> = Vec::new(); // (seq, is_promise, bytes)
    let mut reports: Vec<(u64, u64)> = Vec::new(); // (seq, bytes)
    for e in entries {
        match &e.class {
            RecordClass::Usage(span) => usage.entry(&span.instance).or_default().push(Group {
                seqs: vec![e.seq],
                from_ms: span.from_ms,
                to_ms: span.to_ms,
                bytes: e.bytes,
            }),
            RecordClass::PromiseResult => droppable.push((e.seq, true, e.bytes)),
            RecordClass::NodeHealth => droppable.push((e.seq, false, e.bytes)),
            RecordClass::ShedReport => reports.push((e.seq, e.bytes)),
            RecordClass::Incident
            | RecordClass::InstanceState
            | RecordClass::LocalRequest
            | RecordClass::ConnectionParameters
            | RecordClass::Relayed => {}
        }
    }
    for groups in usage.values_mut() {
        groups.sort_by_key(|g| (g.from_ms, g.to_ms, g.seqs.first().copied()));
    }

    // 0. Fold shed reports into the first (assumed to take the largest one's size).
    let mut fold_reports = Vec::new();
    if reports.len() > 1 {
        reports.sort_unstable();
        let largest = reports.iter().map(|r| r.1).max().unwrap_or(0);
        let all: u64 = reports.iter().map(|r| r.1).sum();
        total = total.saturating_sub(all - largest);
        stats.folded_reports = reports.len() as u64 - 1;
        fold_reports = reports.into_iter().map(|r| r.0).collect();
    }

    // 1. Merge within UTC days.
    merge_rounds(&mut usage, &mut total, quota_bytes, |a, b| {
        a.from_ms / DAY_MS == b.from_ms / DAY_MS
    });

    // 2. Drop promise results and node health, oldest first.
    droppable.sort_unstable_by_key(|d| d.0);
    let mut drop = Vec::new();
    for (seq, is_promise, bytes) in droppable {
        if total <= quota_bytes {
            break;
        }
        total = total.saturating_sub(bytes);
        drop.push(seq);
        if is_promise {
            stats.dropped_promise += 1;
        } else {
            stats.dropped_health += 1;
        }
    }

    // 3. Merge across days.
    merge_rounds(&mut usage, &mut total, quota_bytes, |_, _| true);

    let mut merge = Vec::new();
    for (instance, groups) in usage {
        for g in groups.into_iter().filter(|g| g.seqs.len() > 1) {
            stats.merged_usage += g.seqs.len() as u64 - 1;
            stats.merge_groups += 1;
            merge.push(MergeGroup {
                keep: g.seqs.iter().copied().min().unwrap_or_default(),
                into: UsageSpan {
                    instance: instance.clone(),
                    from_ms: g.from_ms,
                    to_ms: g.to_ms,
                },
                bytes: g.bytes,
                seqs: g.seqs,
            });
        }
    }
    merge.sort_by_key(|m| m.keep);
    stats.bytes_after = total;
    stats.over_quota = total > quota_bytes;
    ShedPlan {
        drop,
        merge,
        fold_reports,
        stats,
    }
}

/// Merges adjacent pairs allowed by `may` in rounds, oldest pair first, until `total`
/// is within `quota` or no pair is left.
fn merge_rounds(
    usage: &mut BTreeMap<&Name, Vec<Group>>,
    total: &mut u64,
    quota: u64,
    may: impl Fn(&Group, &Group) -> bool,
) {
    while *total > quota {
        // Disjoint candidate pairs (start time, instance, index of the first).
        let mut pairs = Vec::new();
        for (&instance, groups) in usage.iter() {
            let mut i = 0;
            while let (Some(a), Some(b)) = (groups.get(i), groups.get(i + 1)) {
                if a.to_ms == b.from_ms && may(a, b) {
                    pairs.push((a.from_ms, instance, i));
                    i += 2;
                } else {
                    i += 1;
                }
            }
        }
        if pairs.is_empty() {
            return;
        }
        pairs.sort_unstable();
        for (_, instance, i) in pairs {
            if *total <= quota {
                break;
            }
            let Some(groups) = usage.get_mut(instance) else {
                continue;
            };
            let Some(b) = groups.get_mut(i + 1).map(std::mem::take) else {
                continue;
            };
            if let Some(a) = groups.get_mut(i) {
                *total = total.saturating_sub(a.bytes.min(b.bytes));
                a.bytes = a.bytes.max(b.bytes);
                a.to_ms = b.to_ms;
                a.seqs.extend(b.seqs);
            }
        }
        for groups in usage.values_mut() {
            groups.retain(|g| !g.seqs.is_empty());
        }
    }
}

/// Folds shed report `later` into `earlier`: counts summed, the bytes before the first
/// pass and after the last.
pub fn fold_reports(earlier: &RecordKind, later: &RecordKind) -> Result<RecordKind, ShedError> {
    let (
        RecordKind::Shed {
            dropped_promise: p1,
            dropped_health: h1,
            merged_usage: u1,
            bytes_before,
            ..
        },
        RecordKind::Shed {
            dropped_promise: p2,
            dropped_health: h2,
            merged_usage: u2,
            bytes_after,
            ..
        },
    ) = (earlier, later)
    else {
        return Err(ShedError::NotShedReport);
    };
    Ok(RecordKind::Shed {
        dropped_promise: p1.saturating_add(*p2),
        dropped_health: h1.saturating_add(*h2),
        merged_usage: u1.saturating_add(*u2),
        bytes_before: *bytes_before,
        bytes_after: *bytes_after,
    })
}

/// When a shedding pass is worth its cost: a pass reads the whole unheld outbox, so
/// after one it waits until sheddable records (usage, promise results, health, shed
/// reports) worth 1/[`Gate::RATIO`] of the bytes it read have been appended. Reading is
/// then at most `RATIO` bytes per sheddable byte appended (amortised O(1) per append),
/// and an outbox of incidents and states alone, which nothing can shrink, is never
/// rescanned. The outbox may exceed the quota by that 1/`RATIO` before the next pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gate {
    /// Bytes the last pass listed.
    scanned: u64,
    /// Sheddable bytes appended since.
    sheddable: u64,
}

impl Gate {
    /// Bytes read per sheddable byte appended, at most.
    pub const RATIO: u64 = 8;

    /// A record of `class` taking `bytes` was appended.
    pub fn appended(&mut self, class: &RecordClass, bytes: u64) {
        if class.sheddable() {
            self.sheddable = self.sheddable.saturating_add(bytes);
        }
    }

    /// Whether a pass should run for an outbox of `outbox_bytes` and this quota.
    pub fn due(&self, outbox_bytes: u64, quota_bytes: u64) -> bool {
        outbox_bytes > quota_bytes && self.sheddable.saturating_mul(Self::RATIO) >= self.scanned
    }

    /// A pass listed `scanned` bytes.
    pub fn ran(&mut self, scanned: u64) {
        self.scanned = scanned;
        self.sheddable = 0;
    }
}

/// Merges two adjacent usage records of one instance (in either order) into one
/// covering both intervals, preserving totals.
pub fn merge_usage(a: &RecordKind, b: &RecordKind) -> Result<RecordKind, ShedError> {
    let (
        RecordKind::Usage {
            instance: ia,
            from_ms: fa,
            to_ms: ta,
            ..
        },
        RecordKind::Usage {
            instance: ib,
            from_ms: fb,
            to_ms: tb,
            ..
        },
    ) = (a, b)
    else {
        return Err(ShedError::NotUsage);
    };
    if ia != ib {
        return Err(ShedError::DifferentInstances);
    }
    let (first, second) = if ta == fb {
        (a, b)
    } else if tb == fa {
        (b, a)
    } else {
        return Err(ShedError::NotAdjacent(*fa, *ta, *fb, *tb));
    };
    let (
        RecordKind::Usage {
            instance,
            from_ms: f1,
            to_ms: t1,
            cpu_ms: c1,
            mem_avg_bytes: m1,
            mem_peak_bytes: p1,
            net_rx_bytes: rx1,
            net_tx_bytes: tx1,
            uptime_ms: u1,
            ..
        },
        RecordKind::Usage {
            from_ms: f2,
            to_ms: t2,
            cpu_ms: c2,
            mem_avg_bytes: m2,
            mem_peak_bytes: p2,
            disk_bytes: d2,
            net_rx_bytes: rx2,
            net_tx_bytes: tx2,
            uptime_ms: u2,
            ..
        },
    ) = (first, second)
    else {
        return Err(ShedError::NotUsage);
    };
    let (w1, w2) = (
        u128::from(t1.saturating_sub(*f1)),
        u128::from(t2.saturating_sub(*f2)),
    );
    let (m1, m2) = (u128::from(*m1), u128::from(*m2));
    let mem_avg = (m1 * w1 + m2 * w2)
        .checked_div(w1 + w2)
        .unwrap_or((m1 + m2) / 2);
    let sum = |x: &Option<u64>, y: &Option<u64>| Some(x.as_ref()?.saturating_add(*y.as_ref()?));
    Ok(RecordKind::Usage {
        instance: instance.clone(),
        from_ms: *f1,
        to_ms: *t2,
        cpu_ms: c1.saturating_add(*c2),
        // A weighted mean of two u64 values fits in a u64.
        mem_avg_bytes: u64::try_from(mem_avg).unwrap_or(u64::MAX),
        mem_peak_bytes: *p1.max(p2),
        disk_bytes: *d2,
        net_rx_bytes: sum(rx1, rx2),
        net_tx_bytes: sum(tx1, tx2),
        uptime_ms: u1.saturating_add(*u2),
    })
}

#[cfg(test)]
mod tests;
