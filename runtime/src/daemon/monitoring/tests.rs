//! The monitoring part alone: no loop, no store, no process; its effects are the
//! assertions.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hedge_wire::{
    IncidentState, InstanceRequest, Name, PromiseCheck, PromiseSpec, RecordKind, RequestedState,
    SoftwareRelease,
};

use super::*;
use crate::monitor::incident::Incidents;
use crate::monitor::process_usage::TreeUsage;
use crate::monitor::promise::CheckResult;
use crate::monitor::usage::Accountant;

fn n(s: &str) -> Name {
    Name::new(s).unwrap()
}

fn request(name: &str, promises: &[&str]) -> InstanceRequest {
    InstanceRequest {
        name: n(name),
        software: SoftwareRelease::Exec("/bin/true".into()),
        args: vec![],
        parameters: Default::default(),
        config_files: vec![],
        promises: promises
            .iter()
            .map(|p| PromiseSpec {
                name: n(p),
                check: PromiseCheck::Tcp {
                    address: "127.0.0.1:1".into(),
                },
                interval_ms: 1000,
                timeout_ms: 500,
                threshold: 2,
            })
            .collect(),
        limits: Default::default(),
        restart: Default::default(),
        state: RequestedState::Started,
    }
}

fn monitoring(now: Instant) -> Monitoring {
    Monitoring::new(Incidents::new(1, 3), now, (100, 4096), None)
}

fn failed() -> CheckResult {
    CheckResult {
        ok: false,
        latency_ms: 0,
        message: "refused".into(),
    }
}

fn ok() -> CheckResult {
    CheckResult {
        ok: true,
        latency_ms: 1,
        message: String::new(),
    }
}

#[test]
fn checks_come_due_one_interval_on_and_only_for_instances_meant_to_run() {
    let t0 = crate::daemon::monotonic_now();
    let mut m = monitoring(t0);
    m.watch(n("a"), &request("a", &["up"]), None, t0);
    m.watch(n("b"), &request("b", &["up"]), None, t0);
    let only_a = |x: &Name| x.as_str() == "a";
    // The periodic duties are due at once; the first check one interval on.
    assert_eq!(m.deadline(only_a, t0), Some(t0));
    m.timers.sample = t0 + Duration::from_secs(60);
    m.timers.health = t0 + Duration::from_secs(60);
    m.timers.summary = t0 + Duration::from_secs(60);
    assert_eq!(m.deadline(only_a, t0), Some(t0 + Duration::from_secs(1)));
    assert!(m.due_checks(only_a, t0).is_empty());
    let due = m.due_checks(only_a, t0 + Duration::from_secs(1));
    assert_eq!(due.len(), 1, "b is not meant to run");
    assert_eq!((due[0].name.as_str(), due[0].index), ("a", 0));
    assert_eq!(due[0].timeout_ms, 500);
    // Rescheduled one interval on; a check in flight is no deadline.
    m.check_started(&n("a"), 0);
    assert_eq!(m.deadline(only_a, t0), Some(t0 + Duration::from_secs(60)));
}

#[test]
fn an_anomaly_is_saved_before_it_is_recorded_and_asks_a_repair() {
    let t0 = crate::daemon::monotonic_now();
    let mut m = monitoring(t0);
    let a = n("a");
    m.watch(a.clone(), &request("a", &["up"]), None, t0);
    let first = m.on_check(&a, 0, 0, &failed(), t0, 1_000);
    assert!(
        matches!(
            first.as_slice(),
            [Effect::Record(RecordKind::PromiseResult { ok: false, .. })]
        ),
        "{first:?}"
    );
    let second = m.on_check(&a, 0, 0, &failed(), t0, 2_000);
    let [Effect::SaveIncident(saved), Effect::Record(RecordKind::Incident { id, state, .. }), Effect::Repair(repair)] =
        second.as_slice()
    else {
        panic!("{second:?}");
    };
    assert_eq!((saved.id, *id, *state), (1, 1, IncidentState::Open));
    assert_eq!(repair, &a);
    // Recovery: the change is recorded, the incident forgotten, then its record.
    let back = m.on_check(&a, 0, 0, &ok(), t0, 3_000);
    assert!(
        matches!(
            back.as_slice(),
            [
                Effect::Record(RecordKind::PromiseResult { ok: true, .. }),
                Effect::ForgetIncident(1),
                Effect::Record(RecordKind::Incident {
                    state: IncidentState::Resolved,
                    ..
                })
            ]
        ),
        "{back:?}"
    );
    assert_eq!(m.resolved.len(), 1);
    assert_eq!(m.incidents.open_incidents().count(), 0);
}

#[test]
fn replaced_promises_ignore_late_results_and_resolve_the_removed_ones() {
    let t0 = crate::daemon::monotonic_now();
    let mut m = monitoring(t0);
    let a = n("a");
    let old = request("a", &["up", "web"]);
    m.watch(a.clone(), &old, None, t0);
    m.on_check(&a, 1, 0, &failed(), t0, 1_000);
    m.on_check(&a, 1, 0, &failed(), t0, 2_000);
    assert_eq!(m.incidents.open_incidents().count(), 1);
    // Same promises: nothing changes.
    assert!(m.request_changed(&a, &old, &old, t0, 3_000).is_empty());
    let new = request("a", &["up"]);
    let effects = m.request_changed(&a, &old, &new, t0, 3_000);
    assert!(
        matches!(
            effects.as_slice(),
            [
                Effect::ForgetIncident(1),
                Effect::Record(RecordKind::Incident {
                    state: IncidentState::Resolved,
                    ..
                })
            ]
        ),
        "{effects:?}"
    );
    // A result of a check started before the change is ignored.
    assert!(m.on_check(&a, 0, 0, &failed(), t0, 4_000).is_empty());
    assert!(!m.on_check(&a, 0, 1, &failed(), t0, 4_000).is_empty());
}

#[test]
fn sampling_records_due_intervals_and_saves_state_by_the_save_rule() {
    let t0 = crate::daemon::monotonic_now();
    let mut m = monitoring(t0);
    let a = n("a");
    let acc = Accountant::new(a.clone(), 60_000, 0, 100).unwrap();
    m.watch(a.clone(), &request("a", &[]), Some(acc), t0);
    m.watch(n("b"), &request("b", &[]), None, t0);
    let trees = BTreeMap::from([(
        42,
        TreeUsage {
            ticks: 10,
            rss_bytes: 4096,
            leader_start: Some(7),
        },
    )]);
    let pid_of = |x: &Name| (x.as_str() == "a").then_some(42);
    // Not due: the state is saved (never saved yet), b has no accountant.
    let effects = m.sample(&trees, pid_of, false, 1_000, t0);
    assert!(
        matches!(effects.as_slice(), [Effect::SaveUsage { instance, .. }] if *instance == a),
        "{effects:?}"
    );
    // Right after, nothing changed enough to save again.
    assert!(m.sample(&trees, pid_of, false, 2_000, t0).is_empty());
    // Closing: the interval's record, counted in the totals.
    let effects = m.sample(&trees, pid_of, true, 3_000, t0);
    let [Effect::Usage {
        instance,
        record: RecordKind::Usage { cpu_ms, .. },
        ..
    }] = effects.as_slice()
    else {
        panic!("{effects:?}");
    };
    assert_eq!(instance, &a);
    assert_eq!(m.usage_cpu_ms.get("a"), Some(cpu_ms));
}

#[test]
fn one_disk_walk_at_a_time_and_each_partition_at_most_once_per_period() {
    let t0 = crate::daemon::monotonic_now();
    let mut m = monitoring(t0);
    for x in ["a", "b"] {
        let acc = Accountant::new(n(x), 60_000, 0, 100).unwrap();
        m.watch(n(x), &request(x, &[]), Some(acc), t0);
    }
    m.watch(n("c"), &request("c", &[]), None, t0);
    let every = Duration::from_secs(30);
    assert_eq!(m.next_disk_walk(every, t0), Some(n("a")));
    assert_eq!(m.next_disk_walk(every, t0), None, "a walk runs");
    m.disk_walked(&n("a"), 8192, t0);
    assert_eq!(m.watched[&n("a")].disk.bytes, 8192);
    assert_eq!(m.next_disk_walk(every, t0), Some(n("b")));
    m.disk_walked(&n("b"), 0, t0);
    assert_eq!(m.next_disk_walk(every, t0 + Duration::from_secs(1)), None);
    assert_eq!(m.next_disk_walk(every, t0 + every), Some(n("a")));
}
