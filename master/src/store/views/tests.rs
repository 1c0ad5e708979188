#![allow(clippy::unwrap_used)]

use super::*;
use crate::store::conformance::{health_rec, incident_rec, n, request, state_rec};

fn desired(node: &str, instances: Vec<hedge_wire::InstanceRequest>) -> DesiredState {
    DesiredState {
        node: n(node),
        generation: 1,
        instances,
        signature: heapless::Vec::new(),
        expires_ms: 0,
        terms: vec![],
        imports: vec![],
        backups: Vec::new(),
        restores: Vec::new(),
    }
}

fn local(seq: u64, name: &str, state: RequestedState) -> Record {
    Record {
        seq,
        time_ms: seq,
        kind: RecordKind::LocalRequest {
            request: Box::new(request(name, state)),
        },
    }
}

#[test]
fn an_incident_is_its_latest_record_with_every_step_in_its_timeline() {
    let pi = n("pi");
    let mut first = incident_rec(1, 7, IncidentState::Open, Severity::Minor);
    if let RecordKind::Incident { first_seen_ms, .. } = &mut first.kind {
        *first_seen_ms = 1500;
    }
    let records = vec![
        (pi.clone(), 1, first),
        (pi.clone(), 1, health_rec(2, 1)),
        (
            pi.clone(),
            1,
            incident_rec(3, 7, IncidentState::Escalated, Severity::Major),
        ),
        (
            pi.clone(),
            1,
            incident_rec(4, 8, IncidentState::Open, Severity::Minor),
        ),
        (
            pi.clone(),
            2,
            incident_rec(1, 7, IncidentState::Open, Severity::Critical),
        ),
    ];
    let all = incidents(records);
    assert_eq!(
        all.iter().map(|i| (i.life, i.id)).collect::<Vec<_>>(),
        vec![(1, 7), (1, 8), (2, 7)],
        "keyed by (node, life, id); other kinds skipped"
    );
    let i7 = &all[0];
    assert_eq!(
        (i7.state, i7.severity, i7.message.as_str()),
        (IncidentState::Escalated, Severity::Major, "step 3")
    );
    assert_eq!((i7.first_seen_ms, i7.last_seen_ms), (1500, 2003));
    assert_eq!(
        i7.timeline
            .iter()
            .map(|t| (t.seq, t.state))
            .collect::<Vec<_>>(),
        vec![(1, IncidentState::Open), (3, IncidentState::Escalated)]
    );
    assert_eq!(all[2].severity, Severity::Critical);
    assert!(incidents(Vec::new()).is_empty());
}

#[test]
fn instances_join_what_was_requested_with_what_was_reported() {
    let (a, b) = (n("a"), n("b"));
    let sources = InstanceSources {
        desired: vec![desired(
            "a",
            vec![
                request("web", RequestedState::Started),
                request("db", RequestedState::Destroyed),
            ],
        )],
        pruned: vec![(a.clone(), n("db")), (a.clone(), n("old"))],
        local_requests: vec![
            // The master's wins over a local request of the same name.
            (a.clone(), local(1, "web", RequestedState::Stopped)),
            (b.clone(), local(2, "cam", RequestedState::Started)),
        ],
        states: vec![
            (a.clone(), state_rec(5, "web", InstanceStatus::Running, 3)),
            (b.clone(), state_rec(6, "stray", InstanceStatus::Stopped, 0)),
        ],
    };
    let v = instances(sources);
    let keys: Vec<(&str, &str, Owner, Option<RequestedState>)> = v
        .iter()
        .map(|i| (i.node.as_str(), i.name.as_str(), i.owner, i.requested))
        .collect();
    assert_eq!(
        keys,
        vec![
            ("a", "db", Owner::Master, Some(RequestedState::Destroyed)),
            ("a", "old", Owner::Master, Some(RequestedState::Destroyed)),
            ("a", "web", Owner::Master, Some(RequestedState::Started)),
            ("b", "cam", Owner::Node, Some(RequestedState::Started)),
            ("b", "stray", Owner::Unknown, None),
        ]
    );
    let web = &v[2];
    assert_eq!(
        (web.status, web.pid, web.restarts, web.last_seen_ms),
        (Some(InstanceStatus::Running), Some(105), 3, Some(1005))
    );
    assert_eq!((v[0].status, v[0].last_seen_ms), (None, None));
    assert!(instances(InstanceSources::default()).is_empty());
}

#[test]
fn only_a_node_health_record_is_a_health() {
    let h = health_of(health_rec(4, 8_000)).unwrap();
    assert_eq!(
        (
            h.seq,
            h.time_ms,
            h.mem_total,
            h.mem_available,
            h.outbox_depth
        ),
        (4, 3004, 8_000, 4_000, 3)
    );
    assert_eq!(
        health_of(state_rec(1, "web", InstanceStatus::Running, 0)),
        None
    );
}
