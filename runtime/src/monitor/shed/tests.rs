#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use hedge_wire::{IncidentState, Name, Record, RecordKind, Severity};

use super::*;

fn n(s: &str) -> Name {
    Name::new(s).unwrap()
}

fn usage(instance: &str, from_ms: u64, to_ms: u64, cpu_ms: u64, mem: u64) -> RecordKind {
    RecordKind::Usage {
        instance: n(instance),
        from_ms,
        to_ms,
        cpu_ms,
        mem_avg_bytes: mem,
        mem_peak_bytes: mem * 2,
        disk_bytes: from_ms / 1000,
        net_rx_bytes: None,
        net_tx_bytes: None,
        uptime_ms: (to_ms - from_ms) / 2,
    }
}

fn health(i: u64) -> RecordKind {
    RecordKind::NodeHealth {
        load1_milli: (i % 4000) as u32,
        mem_total: 1 << 30,
        mem_available: 1 << 29,
        disk_free: 1 << 33,
        temp_milli_c: Some(51_000),
        uplink_up: false,
        outbox_depth: i,
    }
}

fn summary(instance: &str, promise: &str, i: u64) -> RecordKind {
    RecordKind::PromiseResult {
        instance: n(instance),
        promise: n(promise),
        ok: i % 17 != 0,
        checks: 30,
        failures: u32::from(i % 17 == 0),
        latency_ms: Some((1, 3, 40)),
        message: String::new(),
    }
}

fn incident(id: u64, t: u64) -> RecordKind {
    RecordKind::Incident {
        id,
        instance: n("b"),
        promise: Some(n("http")),
        severity: Severity::Minor,
        state: IncidentState::Open,
        first_seen_ms: t,
        last_seen_ms: t,
        message: "connection refused".into(),
    }
}

fn size(seq: u64, kind: &RecordKind) -> u64 {
    let rec = Record {
        seq,
        time_ms: 1_700_000_000_000,
        kind: kind.clone(),
    };
    postcard::to_allocvec(&rec).unwrap().len() as u64
}

fn entry(seq: u64, kind: &RecordKind, bytes: u64) -> OutboxEntry {
    OutboxEntry {
        seq,
        class: RecordClass::of(kind),
        bytes,
    }
}

#[test]
fn merge_usage_preserves_totals() {
    let a = RecordKind::Usage {
        instance: n("a"),
        from_ms: 0,
        to_ms: 1_000,
        cpu_ms: 10,
        mem_avg_bytes: 100,
        mem_peak_bytes: 150,
        disk_bytes: 7,
        net_rx_bytes: Some(1),
        net_tx_bytes: Some(2),
        uptime_ms: 900,
    };
    let b = RecordKind::Usage {
        instance: n("a"),
        from_ms: 1_000,
        to_ms: 4_000,
        cpu_ms: 5,
        mem_avg_bytes: 300,
        mem_peak_bytes: 120,
        disk_bytes: 9,
        net_rx_bytes: Some(10),
        net_tx_bytes: None,
        uptime_ms: 3_000,
    };
    let want = RecordKind::Usage {
        instance: n("a"),
        from_ms: 0,
        to_ms: 4_000,
        cpu_ms: 15,
        mem_avg_bytes: 250, // (100·1 + 300·3) / 4
        mem_peak_bytes: 150,
        disk_bytes: 9,
        net_rx_bytes: Some(11),
        net_tx_bytes: None,
        uptime_ms: 3_900,
    };
    assert_eq!(merge_usage(&a, &b).unwrap(), want);
    assert_eq!(merge_usage(&b, &a).unwrap(), want, "order does not matter");
}

#[test]
fn merge_usage_refuses_what_it_cannot_merge() {
    let a = usage("a", 0, 10, 1, 1);
    assert_eq!(
        merge_usage(&a, &usage("a", 11, 20, 1, 1)).unwrap_err(),
        ShedError::NotAdjacent(0, 10, 11, 20)
    );
    assert_eq!(
        merge_usage(&a, &usage("b", 10, 20, 1, 1)).unwrap_err(),
        ShedError::DifferentInstances
    );
    assert_eq!(
        merge_usage(&a, &health(1)).unwrap_err(),
        ShedError::NotUsage
    );
}

#[test]
fn merge_usage_of_empty_intervals_averages_plainly() {
    let m = merge_usage(&usage("a", 5, 5, 0, 10), &usage("a", 5, 5, 0, 20)).unwrap();
    assert!(matches!(
        m,
        RecordKind::Usage {
            mem_avg_bytes: 15,
            ..
        }
    ));
}

#[test]
fn under_quota_is_an_empty_plan() {
    let es = vec![
        entry(1, &health(1), 50),
        entry(2, &usage("a", 0, 1, 1, 1), 50),
    ];
    let p = plan(&es, 100);
    assert!(p.is_empty());
    assert_eq!(p.stats.bytes_before, 100);
    assert_eq!(p.stats.bytes_after, 100);
    assert!(!p.stats.over_quota);
}

#[test]
fn merges_oldest_adjacent_first_and_only_as_needed() {
    let es: Vec<OutboxEntry> = (0..8u64)
        .map(|i| entry(10 + i, &usage("a", i * 100, (i + 1) * 100, 1, 1), 40))
        .chain([entry(50, &health(1), 40)])
        .collect();
    // 360 bytes; 300 allowed → two merges (−40 each).
    let p = plan(&es, 300);
    assert!(p.drop.is_empty());
    assert_eq!(p.merge.len(), 2);
    assert_eq!(p.merge[0].seqs, vec![10, 11]);
    assert_eq!(p.merge[0].keep, 10);
    assert_eq!(
        p.merge[0].into,
        UsageSpan {
            instance: n("a"),
            from_ms: 0,
            to_ms: 200
        }
    );
    assert_eq!(p.merge[1].seqs, vec![12, 13]);
    assert_eq!(p.stats.merged_usage, 2);
    assert_eq!(p.stats.bytes_after, 280);
}

#[test]
fn gaps_and_day_boundaries_are_respected() {
    let d = DAY_MS;
    let es = vec![
        entry(1, &usage("a", d - 200, d - 100, 1, 1), 40),
        // gap: d-100 .. d-50
        entry(2, &usage("a", d - 50, d, 1, 1), 40),
        // crosses into the next day only in phase 3
        entry(3, &usage("a", d, d + 100, 1, 1), 40),
        entry(4, &health(1), 40),
    ];
    // Phase 1 can merge nothing; phase 2 drops health; phase 3 merges 2+3.
    let p = plan(&es, 80);
    assert_eq!(p.drop, vec![4]);
    assert_eq!(p.merge.len(), 1);
    assert_eq!(p.merge[0].seqs, vec![2, 3]);
    assert_eq!(p.stats.bytes_after, 80);
    assert!(!p.stats.over_quota);
}

#[test]
fn kept_classes_are_never_touched() {
    let es = vec![
        entry(1, &incident(1, 0), 500),
        entry(2, &health(1), 10),
        entry(3, &summary("a", "p", 1), 10),
    ];
    let p = plan(&es, 100);
    assert_eq!(p.drop, vec![2, 3]);
    assert_eq!((p.stats.dropped_health, p.stats.dropped_promise), (1, 1));
    assert!(p.stats.over_quota);
    assert_eq!(p.stats.bytes_after, 500);
}

#[test]
fn peers_batches_in_custody_are_outside_the_quota_and_never_touched() {
    let relayed = |_origin: &str, _keep: bool| OutboxEntry {
        seq: 0,
        class: RecordClass::Relayed,
        bytes: 0,
    };
    let es = vec![
        OutboxEntry {
            seq: 1,
            bytes: 5_000,
            ..relayed("b", false)
        },
        entry(2, &health(1), 10),
        OutboxEntry {
            seq: 3,
            bytes: 5_000,
            ..relayed("c", true)
        },
        entry(4, &summary("a", "p", 1), 10),
    ];
    // 10 KB held for peers, 20 bytes of its own: under a quota of 100.
    let p = plan(&es, 100);
    assert!(p.is_empty(), "{p:?}");
    assert_eq!(p.stats.bytes_before, 20);
    // Over the quota by its own records: only those go.
    let p = plan(&es, 15);
    assert_eq!(p.drop, vec![2]);
    assert!(!p.stats.over_quota);
}

/// An outbox record: seq, record, stored size.
type Stored = (u64, RecordKind, u64);

/// Usage interval of the simulated week.
const STEP: u64 = 5 * 60_000;

/// A week of a node offline: usage every 5 min for 3 instances, 2 promise summaries per
/// instance every 5 min, node health every minute, an incident now and then.
fn week(offset_ms: u64) -> Vec<Stored> {
    let mut rng = fastrand::Rng::with_seed(7);
    let start = 20 * DAY_MS + 3 * 3_600_000 + offset_ms; // starts mid-day
    let step = STEP;
    let mut out = Vec::new();
    let mut seq = 1_000;
    let mut push = |k: RecordKind, out: &mut Vec<Stored>| {
        seq += 1;
        let b = size(seq, &k);
        out.push((seq, k, b));
    };
    for tick in 0..(7 * 24 * 12u64) {
        let t = start + tick * step;
        for m in 0..5 {
            push(health(tick * 5 + m), &mut out);
        }
        for inst in ["a", "b", "c"] {
            push(
                usage(
                    inst,
                    t,
                    t + step,
                    rng.u64(0..300_000),
                    rng.u64(1 << 20..1 << 28),
                ),
                &mut out,
            );
            for prom in ["http", "port"] {
                push(summary(inst, prom, tick), &mut out);
            }
        }
        if tick % 97 == 0 {
            push(incident(tick, t), &mut out);
        }
    }
    out
}

struct Applied {
    records: BTreeMap<u64, (RecordKind, u64)>,
}

impl Applied {
    /// What the daemon does with a plan.
    fn apply(input: &[Stored], p: &ShedPlan) -> Self {
        let mut records: BTreeMap<u64, (RecordKind, u64)> = input
            .iter()
            .map(|(s, k, b)| (*s, (k.clone(), *b)))
            .collect();
        for s in &p.drop {
            assert!(records.remove(s).is_some(), "drop of unknown seq {s}");
        }
        for g in &p.merge {
            assert!(g.seqs.len() >= 2);
            let mut it = g.seqs.iter().map(|s| records.remove(s).unwrap().0);
            let first = it.next().unwrap();
            let merged = it.fold(first, |acc, r| merge_usage(&acc, &r).unwrap());
            assert_eq!(RecordClass::of(&merged), RecordClass::Usage(g.into.clone()));
            assert_eq!(Some(&g.keep), g.seqs.iter().min());
            records.insert(g.keep, (merged, g.bytes));
        }
        Applied { records }
    }

    fn bytes(&self) -> u64 {
        self.records.values().map(|(_, b)| b).sum()
    }

    fn count(&self, f: impl Fn(&RecordKind) -> bool) -> usize {
        self.records.values().filter(|(k, _)| f(k)).count()
    }
}

/// Per instance: (cpu total, uptime total, spans in order).
type Totals = BTreeMap<Name, (u64, u64, Vec<(u64, u64)>)>;

fn usage_totals(records: impl Iterator<Item = RecordKind>) -> Totals {
    let mut out = Totals::new();
    for r in records {
        if let RecordKind::Usage {
            instance,
            cpu_ms,
            uptime_ms,
            from_ms,
            to_ms,
            ..
        } = r
        {
            let e = out.entry(instance).or_default();
            e.0 += cpu_ms;
            e.1 += uptime_ms;
            e.2.push((from_ms, to_ms));
        }
    }
    for e in out.values_mut() {
        e.2.sort_unstable();
    }
    out
}

fn check_invariants(input: &[Stored], quota: u64) -> (ShedPlan, Applied) {
    let entries: Vec<OutboxEntry> = input.iter().map(|(s, k, b)| entry(*s, k, *b)).collect();
    let p = plan(&entries, quota);
    let after = Applied::apply(input, &p);

    assert_eq!(p.stats.bytes_after, after.bytes());
    assert_eq!(
        p.stats.bytes_before,
        input.iter().map(|(_, _, b)| b).sum::<u64>()
    );
    if !p.stats.over_quota {
        assert!(after.bytes() <= quota, "{} > {quota}", after.bytes());
    }
    // Every kept class survives untouched.
    for (s, k, _) in input {
        if matches!(k, RecordKind::Incident { .. }) {
            assert_eq!(after.records.get(s).map(|r| &r.0), Some(k));
        }
    }
    // Usage totals exact, intervals still contiguous and covering the same span.
    let before = usage_totals(input.iter().map(|r| r.1.clone()));
    let now = usage_totals(after.records.values().map(|r| r.0.clone()));
    assert_eq!(before.len(), now.len());
    for (inst, (cpu, up, spans)) in &before {
        let (cpu2, up2, spans2) = &now[inst];
        assert_eq!((cpu, up), (cpu2, up2), "totals of {inst}");
        assert_eq!(spans.first().unwrap().0, spans2.first().unwrap().0);
        assert_eq!(spans.last().unwrap().1, spans2.last().unwrap().1);
        assert!(spans2.windows(2).all(|w| w[0].1 == w[1].0));
    }
    // Stats count what was done.
    let dropped: BTreeSet<u64> = p.drop.iter().copied().collect();
    let was = |f: fn(&RecordKind) -> bool| {
        input
            .iter()
            .filter(|(s, k, _)| dropped.contains(s) && f(k))
            .count() as u64
    };
    assert_eq!(
        p.stats.dropped_promise,
        was(|k| matches!(k, RecordKind::PromiseResult { .. }))
    );
    assert_eq!(
        p.stats.dropped_health,
        was(|k| matches!(k, RecordKind::NodeHealth { .. }))
    );
    assert_eq!(
        p.drop.len() as u64,
        p.stats.dropped_promise + p.stats.dropped_health
    );
    let usage_before = input
        .iter()
        .filter(|r| matches!(r.1, RecordKind::Usage { .. }))
        .count();
    let usage_after = after.count(|k| matches!(k, RecordKind::Usage { .. }));
    assert_eq!(p.stats.merged_usage, (usage_before - usage_after) as u64);
    assert_eq!(p.stats.merge_groups, p.merge.len() as u64);
    // Dropped oldest first: every kept droppable is newer than every dropped one.
    if let Some(&newest_dropped) = p.drop.iter().max() {
        for (s, (k, _)) in &after.records {
            if matches!(
                k,
                RecordKind::PromiseResult { .. } | RecordKind::NodeHealth { .. }
            ) {
                assert!(*s > newest_dropped);
            }
        }
    }
    (p, after)
}

#[test]
fn a_week_offline_slightly_over_quota_only_merges() {
    let input = week(17);
    let total: u64 = input.iter().map(|r| r.2).sum();
    let (p, _) = check_invariants(&input, total - 2_000);
    assert!(p.drop.is_empty());
    assert!(p.stats.merged_usage > 0);
    // Only as much as needed: a handful of merges, the oldest.
    assert!(p.stats.merged_usage < 100, "{}", p.stats.merged_usage);
}

#[test]
fn a_week_offline_far_over_quota_merges_by_day_then_drops() {
    let input = week(17);
    let total: u64 = input.iter().map(|r| r.2).sum();
    let quota = total * 2 / 5;
    let (p, after) = check_invariants(&input, quota);
    assert!(!p.stats.over_quota);
    assert!(p.stats.dropped_health > 0);
    assert!(p.stats.dropped_promise > 0);
    // Merging by day did all it could: a week that starts mid-day is 8 day pieces.
    let usage_left = after.count(|k| matches!(k, RecordKind::Usage { .. }));
    assert_eq!(usage_left, 3 * 8);
    // A merged record crosses midnight only by the one input interval that did.
    for g in &p.merge {
        let midnight = (g.into.from_ms / DAY_MS + 1) * DAY_MS;
        assert!(g.into.to_ms <= midnight || g.into.to_ms - midnight < STEP);
    }
}

#[test]
fn a_week_offline_with_an_impossible_quota_keeps_what_must_be_kept() {
    let input = week(17);
    let incidents: u64 = input
        .iter()
        .filter(|r| matches!(r.1, RecordKind::Incident { .. }))
        .map(|r| r.2)
        .sum();
    let (p, after) = check_invariants(&input, incidents);
    assert!(p.stats.over_quota);
    // Everything droppable is gone; usage is one record per instance.
    assert_eq!(
        after.count(|k| matches!(
            k,
            RecordKind::PromiseResult { .. } | RecordKind::NodeHealth { .. }
        )),
        0
    );
    assert_eq!(after.count(|k| matches!(k, RecordKind::Usage { .. })), 3);
}

#[test]
fn aligned_intervals_merge_into_records_that_never_cross_midnight() {
    let input = week(0);
    let total: u64 = input.iter().map(|r| r.2).sum();
    let (p, _) = check_invariants(&input, total * 2 / 5);
    assert!(!p.merge.is_empty());
    for g in &p.merge {
        assert_eq!(g.into.from_ms / DAY_MS, (g.into.to_ms - 1) / DAY_MS);
    }
}

fn report(p: u32, h: u32, u: u32, before: u64, after: u64) -> RecordKind {
    RecordKind::Shed {
        dropped_promise: p,
        dropped_health: h,
        merged_usage: u,
        bytes_before: before,
        bytes_after: after,
    }
}

#[test]
fn shed_reports_fold_into_the_first_with_counts_summed() {
    let entries: Vec<OutboxEntry> = [3u64, 9, 20]
        .iter()
        .map(|&seq| OutboxEntry {
            seq,
            class: RecordClass::of(&report(1, 2, 3, 100, 90)),
            bytes: 20,
        })
        .collect();
    // Under the quota: reports fold all the same, and nothing else happens.
    let p = plan(&entries, 1_000);
    assert_eq!(p.fold_reports, vec![3, 9, 20]);
    assert_eq!(p.stats.folded_reports, 2);
    assert_eq!(p.stats.bytes_after, 20);
    assert!(p.drop.is_empty() && p.merge.is_empty());
    // One report alone is left as it is.
    assert!(plan(&entries[..1], 1_000).is_empty());

    let folded = fold_reports(&report(1, 2, 3, 500, 400), &report(10, 20, 30, 450, 300)).unwrap();
    assert_eq!(folded, report(11, 22, 33, 500, 300));
    assert_eq!(
        fold_reports(&report(1, 2, 3, 5, 4), &health(1)),
        Err(ShedError::NotShedReport)
    );
}

#[test]
fn the_gate_bounds_rescans_by_the_sheddable_bytes_appended() {
    let quota = 10_000;
    let incident = RecordClass::Incident;
    let usage = RecordClass::of(&usage("a", 0, 1000, 1, 1));
    let mut g = Gate::default();
    assert!(!g.due(quota, quota), "at the quota is not over it");
    assert!(
        g.due(quota + 1, quota),
        "the first pass over the quota runs"
    );
    // A pass that could not shrink an outbox of incidents: appending more incidents
    // never makes another pass due, however large the outbox grows.
    g.ran(80_000);
    let mut outbox = 80_000;
    for _ in 0..10_000 {
        g.appended(&incident, 100);
        outbox += 100;
        assert!(!g.due(outbox, quota));
    }
    // Sheddable bytes worth 1/RATIO of what the last pass read make one due.
    let mut appended = 0;
    while !g.due(outbox, quota) {
        g.appended(&usage, 50);
        appended += 50;
        outbox += 50;
    }
    assert_eq!(appended, 80_000 / Gate::RATIO);
    // Under the quota nothing is due, whatever was appended.
    assert!(!g.due(quota - 1, quota));
}
