#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use hedge_wire::limits::MAX_MESSAGE;
use hedge_wire::{Name, PromiseCheck, PromiseSpec, RecordKind};

use super::*;

/// An arbitrary origin: `Instant` has no constructor. The core under test is handed
/// every instant (`origin() + offset`); it never reads the clock itself.
#[allow(clippy::disallowed_methods)] // tests only: any instant will do as the origin
fn origin() -> Instant {
    Instant::now()
}

fn spec(threshold: u8) -> PromiseSpec {
    PromiseSpec {
        name: Name::new("http").unwrap(),
        check: PromiseCheck::Process,
        interval_ms: 1000,
        timeout_ms: 500,
        threshold,
    }
}

fn pass(latency_ms: u32) -> CheckResult {
    CheckResult {
        ok: true,
        latency_ms,
        message: String::new(),
    }
}

fn fail(message: &str) -> CheckResult {
    CheckResult {
        ok: false,
        latency_ms: 500,
        message: message.into(),
    }
}

fn anomalies(events: &[PromiseEvent]) -> Vec<u32> {
    events
        .iter()
        .filter_map(|e| match e {
            PromiseEvent::Anomaly { failures_in_row } => Some(*failures_in_row),
            _ => None,
        })
        .collect()
}

#[test]
fn due_at_once_then_one_interval_after_each_result() {
    let t0 = origin();
    let mut p = PromiseState::new(&spec(3));
    assert_eq!(p.due(), None);
    assert_eq!(p.last(), None);
    p.on_result(t0, 1_000, pass(5));
    assert_eq!(p.due(), Some(t0 + Duration::from_secs(1)));
    let t1 = t0 + Duration::from_millis(1_700);
    p.on_result(t1, 2_700, fail("down"));
    assert_eq!(p.due(), Some(t1 + Duration::from_secs(1)));
    assert_eq!(p.last(), Some((false, 2_700)));
}

#[test]
fn schedule_defers_the_first_check() {
    let t0 = origin();
    let mut p = PromiseState::new(&spec(3));
    p.schedule(t0 + p.interval());
    assert_eq!(p.due(), Some(t0 + Duration::from_secs(1)));
}

#[test]
fn first_result_is_a_change_and_repeats_are_not() {
    let t0 = origin();
    let mut p = PromiseState::new(&spec(3));
    assert_eq!(
        p.on_result(t0, 1, pass(7)),
        vec![PromiseEvent::Changed {
            ok: true,
            latency_ms: 7,
            message: String::new()
        }]
    );
    assert!(p.on_result(t0, 2, pass(8)).is_empty());
    assert_eq!(
        p.on_result(t0, 3, fail("refused")),
        vec![PromiseEvent::Changed {
            ok: false,
            latency_ms: 500,
            message: "refused".into()
        }]
    );
    assert!(p.on_result(t0, 4, fail("refused")).is_empty());
    let ev = p.on_result(t0, 5, pass(9));
    assert_eq!(ev.len(), 1);
    assert!(matches!(ev[0], PromiseEvent::Changed { ok: true, .. }));
}

#[test]
fn first_result_failing_is_a_change_too() {
    let mut p = PromiseState::new(&spec(3));
    let ev = p.on_result(origin(), 1, fail("x"));
    assert!(matches!(ev[..], [PromiseEvent::Changed { ok: false, .. }]));
}

#[test]
fn anomaly_once_per_streak_then_every_further_threshold() {
    let t0 = origin();
    let mut p = PromiseState::new(&spec(3));
    let mut seen = Vec::new();
    for i in 1..=10u64 {
        let ev = p.on_result(t0, i, fail("down"));
        for a in anomalies(&ev) {
            seen.push((i, a));
        }
    }
    assert_eq!(seen, vec![(3, 3), (6, 6), (9, 9)]);
    assert_eq!(p.failures_in_row(), 10);
    assert!(p.in_anomaly());
}

#[test]
fn recovered_follows_an_anomaly_only() {
    let t0 = origin();
    let mut p = PromiseState::new(&spec(3));
    p.on_result(t0, 1, fail("a"));
    p.on_result(t0, 2, fail("a"));
    // Two failures (< threshold), then a pass: a change but no recovery.
    let ev = p.on_result(t0, 3, pass(1));
    assert!(!ev.contains(&PromiseEvent::Recovered));
    assert_eq!(p.failures_in_row(), 0);
    // A new streak counts from zero.
    p.on_result(t0, 4, fail("b"));
    p.on_result(t0, 5, fail("b"));
    let ev = p.on_result(t0, 6, fail("b"));
    assert_eq!(anomalies(&ev), vec![3]);
    let ev = p.on_result(t0, 7, pass(1));
    assert_eq!(ev.len(), 2);
    assert!(matches!(ev[0], PromiseEvent::Changed { ok: true, .. }));
    assert_eq!(ev[1], PromiseEvent::Recovered);
    assert!(!p.in_anomaly());
    assert!(p.on_result(t0, 8, pass(1)).is_empty());
}

#[test]
fn threshold_one_changes_and_anomalies_on_the_same_failure() {
    let mut p = PromiseState::new(&spec(1));
    let t0 = origin();
    let ev = p.on_result(t0, 1, fail("x"));
    assert!(matches!(
        ev[..],
        [
            PromiseEvent::Changed { ok: false, .. },
            PromiseEvent::Anomaly { failures_in_row: 1 }
        ]
    ));
    assert_eq!(anomalies(&p.on_result(t0, 2, fail("x"))), vec![2]);
}

#[test]
fn zero_threshold_and_interval_are_read_as_one() {
    let mut s = spec(0);
    s.interval_ms = 0;
    let mut p = PromiseState::new(&s);
    let t0 = origin();
    assert_eq!(anomalies(&p.on_result(t0, 1, fail("x"))), vec![1]);
    assert_eq!(p.due(), Some(t0 + Duration::from_millis(1)));
}

#[test]
fn summary_counts_and_resets() {
    let t0 = origin();
    let mut p = PromiseState::new(&spec(3));
    assert_eq!(p.take_summary(), None);
    for l in [10, 30, 20] {
        p.on_result(t0, 1, pass(l));
    }
    p.on_result(t0, 2, fail("boom"));
    let s = p.take_summary().unwrap();
    assert_eq!(s.checks, 4);
    assert_eq!(s.failures, 1);
    // Sorted: 10 20 30 500 → lower median 20.
    assert_eq!(s.latency_ms, (10, 20, 500));
    assert!(!s.ok);
    assert_eq!(s.message, "boom");
    assert_eq!(p.take_summary(), None);
    p.on_result(t0, 3, pass(4));
    let s = p.take_summary().unwrap();
    assert_eq!((s.checks, s.failures, s.latency_ms), (1, 0, (4, 4, 4)));
    assert!(s.ok);
    assert_eq!(s.message, "");
}

#[test]
fn median_is_over_the_last_reservoir_latencies() {
    let t0 = origin();
    let mut p = PromiseState::new(&spec(3));
    // 100 slow checks then RESERVOIR fast ones: the median sees only the fast ones,
    // min/max see all.
    for _ in 0..100 {
        p.on_result(t0, 1, pass(1_000));
    }
    let reservoir = u32::try_from(RESERVOIR).unwrap();
    for i in 0..reservoir {
        p.on_result(t0, 1, pass(i));
    }
    let s = p.take_summary().unwrap();
    assert_eq!(s.checks, 100 + reservoir);
    assert_eq!(s.latency_ms, (0, (reservoir - 1) / 2, 1_000));
}

#[test]
fn summary_record_carries_the_counts() {
    let t0 = origin();
    let mut p = PromiseState::new(&spec(3));
    p.on_result(t0, 1, pass(3));
    let inst = Name::new("web").unwrap();
    let rec = p
        .take_summary()
        .unwrap()
        .into_record(inst.clone(), p.name().clone());
    assert_eq!(
        rec,
        RecordKind::PromiseResult {
            instance: inst,
            promise: Name::new("http").unwrap(),
            ok: true,
            checks: 1,
            failures: 0,
            latency_ms: Some((3, 3, 3)),
            message: String::new(),
        }
    );
}

#[test]
fn change_record_is_one_check() {
    let inst = Name::new("web").unwrap();
    let prom = Name::new("http").unwrap();
    let ev = PromiseEvent::Changed {
        ok: false,
        latency_ms: 42,
        message: "503".into(),
    };
    assert_eq!(
        ev.to_record(&inst, &prom),
        Some(RecordKind::PromiseResult {
            instance: inst.clone(),
            promise: prom.clone(),
            ok: false,
            checks: 1,
            failures: 1,
            latency_ms: Some((42, 42, 42)),
            message: "503".into(),
        })
    );
    assert_eq!(PromiseEvent::Recovered.to_record(&inst, &prom), None);
    assert_eq!(
        PromiseEvent::Anomaly { failures_in_row: 3 }.to_record(&inst, &prom),
        None
    );
}

#[test]
fn long_messages_are_bounded() {
    let mut p = PromiseState::new(&spec(3));
    let ev = p.on_result(origin(), 1, fail(&"x".repeat(10 * MAX_MESSAGE)));
    match &ev[0] {
        PromiseEvent::Changed { message, .. } => assert_eq!(message.len(), MAX_MESSAGE),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(p.take_summary().unwrap().message.len(), MAX_MESSAGE);
}
