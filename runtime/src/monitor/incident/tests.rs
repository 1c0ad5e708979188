#![allow(clippy::unwrap_used)]

use hedge_wire::{IncidentState, Name, RecordKind, Severity};

use super::*;

fn n(s: &str) -> Name {
    Name::new(s).unwrap()
}

/// (id, severity, state, first, last) of each record among `actions`.
fn records(actions: &[IncidentAction]) -> Vec<(u64, Severity, IncidentState, u64, u64)> {
    actions
        .iter()
        .filter_map(|a| match a {
            IncidentAction::Record(RecordKind::Incident {
                id,
                severity,
                state,
                first_seen_ms,
                last_seen_ms,
                ..
            }) => Some((*id, *severity, *state, *first_seen_ms, *last_seen_ms)),
            _ => None,
        })
        .collect()
}

fn repairs(actions: &[IncidentAction]) -> usize {
    actions
        .iter()
        .filter(|a| matches!(a, IncidentAction::Repair(_)))
        .count()
}

#[test]
fn first_anomaly_opens_minor_and_repairs() {
    let mut inc = Incidents::new(7, 3);
    let acts = inc.on_anomaly(100, &n("web"), &n("http"), "refused".into());
    assert_eq!(acts.len(), 2);
    assert_eq!(
        acts[0],
        IncidentAction::Record(RecordKind::Incident {
            id: 7,
            instance: n("web"),
            promise: Some(n("http")),
            severity: Severity::Minor,
            state: IncidentState::Open,
            first_seen_ms: 100,
            last_seen_ms: 100,
            message: "refused".into(),
        })
    );
    assert_eq!(acts[1], IncidentAction::Repair(n("web")));
    assert_eq!(inc.next_id(), 8);
    assert_eq!(inc.open_incidents().count(), 1);
}

#[test]
fn escalates_after_k_repairs_up_to_critical_and_keeps_repairing() {
    let mut inc = Incidents::new(1, 3);
    let (w, h) = (n("web"), n("http"));
    let mut log = Vec::new();
    for i in 0..12u64 {
        let acts = inc.on_anomaly(1000 + i, &w, &h, "down".into());
        assert_eq!(repairs(&acts), 1, "anomaly {i} must repair");
        for r in records(&acts) {
            log.push((i, r.1, r.2));
        }
    }
    assert_eq!(
        log,
        vec![
            (0, Severity::Minor, IncidentState::Open),
            (3, Severity::Major, IncidentState::Escalated),
            (6, Severity::Critical, IncidentState::Escalated),
        ]
    );
    let open = inc.get(&w, &h).unwrap();
    assert_eq!(open.repairs, 12);
    assert_eq!(open.severity, Severity::Critical);
    assert_eq!((open.first_seen_ms, open.last_seen_ms), (1000, 1011));
    assert_eq!(inc.next_id(), 2, "one incident for the whole streak");
}

#[test]
fn escalated_record_keeps_first_seen_and_says_why() {
    let mut inc = Incidents::new(1, 1);
    let (w, h) = (n("web"), n("http"));
    inc.on_anomaly(10, &w, &h, "a".into());
    let acts = inc.on_anomaly(20, &w, &h, "b".into());
    match &acts[0] {
        IncidentAction::Record(RecordKind::Incident {
            state,
            severity,
            first_seen_ms,
            last_seen_ms,
            message,
            ..
        }) => {
            assert_eq!(*state, IncidentState::Escalated);
            assert_eq!(*severity, Severity::Major);
            assert_eq!((*first_seen_ms, *last_seen_ms), (10, 20));
            assert!(message.contains("1 repairs did not help: b"), "{message}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(acts[1], IncidentAction::Repair(w));
}

#[test]
fn recovery_resolves_and_a_new_anomaly_opens_a_new_incident() {
    let mut inc = Incidents::default();
    let (w, h) = (n("web"), n("http"));
    inc.on_anomaly(10, &w, &h, "x".into());
    inc.on_anomaly(20, &w, &h, "x".into());
    let acts = inc.on_recovered(30, &w, &h);
    assert_eq!(
        records(&acts),
        vec![(1, Severity::Minor, IncidentState::Resolved, 10, 30)]
    );
    assert_eq!(repairs(&acts), 0);
    assert_eq!(inc.open_incidents().count(), 0);
    assert!(inc.on_recovered(40, &w, &h).is_empty());
    let acts = inc.on_anomaly(50, &w, &h, "y".into());
    assert_eq!(
        records(&acts),
        vec![(2, Severity::Minor, IncidentState::Open, 50, 50)]
    );
}

#[test]
fn incidents_are_per_instance_and_promise() {
    let mut inc = Incidents::default();
    inc.on_anomaly(1, &n("a"), &n("p"), "".into());
    inc.on_anomaly(1, &n("a"), &n("q"), "".into());
    inc.on_anomaly(1, &n("b"), &n("p"), "".into());
    assert_eq!(inc.open_incidents().count(), 3);
    let ids: Vec<u64> = inc.open_incidents().map(|i| i.id).collect();
    assert_eq!(ids, vec![1, 2, 3]);
    let acts = inc.on_instance_destroyed(9, &n("a"));
    let recs = records(&acts);
    assert_eq!(recs.len(), 2);
    assert!(recs
        .iter()
        .all(|r| r.2 == IncidentState::Resolved && r.4 == 9));
    assert_eq!(inc.open_incidents().count(), 1);
    assert_eq!(inc.open_incidents().next().unwrap().instance, n("b"));
    let acts = inc.on_promise_removed(10, &n("b"), &n("p"));
    assert_eq!(records(&acts).len(), 1);
    assert_eq!(inc.open_incidents().count(), 0);
}

#[test]
fn restore_continues_ids_and_escalation() {
    let mut inc = Incidents::new(1, 2);
    let (w, h) = (n("web"), n("http"));
    inc.on_anomaly(10, &w, &h, "x".into());
    inc.on_anomaly(20, &w, &h, "x".into());
    // Store through postcard as the daemon does.
    let stored: Vec<Vec<u8>> = inc
        .open_incidents()
        .map(|i| postcard::to_allocvec(i).unwrap())
        .collect();
    let next = inc.next_id();
    let loaded = stored
        .iter()
        .map(|b| postcard::from_bytes::<Incident>(b).unwrap());
    let mut back = Incidents::restore(next, 2, loaded).unwrap();
    assert_eq!(
        back.open_incidents().collect::<Vec<_>>(),
        inc.open_incidents().collect::<Vec<_>>()
    );
    // Two repairs at Minor were done before the restart: the next anomaly escalates.
    let acts = back.on_anomaly(30, &w, &h, "x".into());
    assert_eq!(
        records(&acts),
        vec![(1, Severity::Major, IncidentState::Escalated, 10, 30)]
    );
    let acts = back.on_anomaly(40, &n("other"), &h, "x".into());
    assert_eq!(records(&acts)[0].0, 2);
}

#[test]
fn restore_moves_a_lagging_counter_past_stored_ids() {
    let mut inc = Incidents::new(100, 3);
    inc.on_anomaly(1, &n("a"), &n("p"), "".into());
    let stored: Vec<Incident> = inc.open_incidents().cloned().collect();
    let back = Incidents::restore(5, 3, stored).unwrap();
    assert_eq!(back.next_id(), 101);
}

#[test]
fn restore_refuses_duplicates_and_resolved() {
    let mut inc = Incidents::default();
    inc.on_anomaly(1, &n("a"), &n("p"), "".into());
    let one = inc.open_incidents().next().unwrap().clone();
    let mut dup = one.clone();
    dup.id = 9;
    let err = Incidents::restore(1, 3, [one.clone(), dup]).unwrap_err();
    assert_eq!(err, IncidentError::Duplicate { id: 9, existing: 1 });
    assert!(err.to_string().contains("incident 1 is already open"));
    let mut resolved = one;
    resolved.state = IncidentState::Resolved;
    assert_eq!(
        Incidents::restore(1, 3, [resolved]).unwrap_err(),
        IncidentError::Resolved { id: 1 }
    );
}

#[test]
fn last_seen_never_precedes_first_seen() {
    let mut inc = Incidents::default();
    let (w, h) = (n("web"), n("http"));
    inc.on_anomaly(1_000, &w, &h, "".into());
    // The wall clock stepped back (e.g. NTP on a board without RTC).
    inc.on_anomaly(500, &w, &h, "".into());
    assert_eq!(inc.get(&w, &h).unwrap().last_seen_ms, 1_000);
    let acts = inc.on_recovered(400, &w, &h);
    assert_eq!(records(&acts)[0].4, 1_000);
}

#[test]
fn zero_escalate_after_is_read_as_one() {
    let mut inc = Incidents::new(1, 0);
    let (w, h) = (n("web"), n("http"));
    inc.on_anomaly(1, &w, &h, "".into());
    let acts = inc.on_anomaly(2, &w, &h, "".into());
    assert_eq!(records(&acts)[0].1, Severity::Major);
}
