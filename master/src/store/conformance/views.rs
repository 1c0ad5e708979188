//! Usage, incidents and instances as every backend shows them.

use super::*;
use crate::store::Owner;

pub(crate) fn usage_selects_overlapping_intervals<H: Harness>(h: &H) {
    let s = &h.open();
    let pi = n("pi-1");
    let recs = vec![
        usage_rec(1, "web", 0, 100),   // before
        usage_rec(2, "web", 50, 150),  // straddles the start
        usage_rec(3, "web", 120, 180), // inside
        usage_rec(4, "web", 190, 250), // straddles the end
        usage_rec(5, "web", 200, 300), // at the end: excluded
        usage_rec(6, "web", 150, 150), // empty, inside
        state_rec(7, "web", InstanceStatus::Running, 0),
    ];
    s.ingest(&pi, &up("pi-1", recs, Some((1, 7))), 0).unwrap();
    let seqs: Vec<u64> = s
        .usage(100, 200)
        .unwrap()
        .iter()
        .map(|(_, r)| r.seq)
        .collect();
    assert_eq!(seqs, vec![2, 3, 4, 6]);
    assert!(s.usage(200, 100).unwrap().is_empty());
}

pub(crate) fn incidents_keep_latest_state_and_timeline<H: Harness>(h: &H) {
    let s = &h.open();
    let pi = n("pi-1");
    // Arrives out of order: resolution first (express), then the rest.
    s.ingest(
        &pi,
        &up(
            "pi-1",
            vec![incident_rec(3, 7, IncidentState::Resolved, Severity::Major)],
            None,
        ),
        0,
    )
    .unwrap();
    s.ingest(
        &pi,
        &up(
            "pi-1",
            vec![
                incident_rec(1, 7, IncidentState::Open, Severity::Minor),
                incident_rec(2, 7, IncidentState::Escalated, Severity::Major),
                incident_rec(4, 8, IncidentState::Open, Severity::Minor),
            ],
            Some((1, 4)),
        ),
        1,
    )
    .unwrap();
    let all = s.incidents().unwrap();
    assert_eq!(all.len(), 2);
    let i7 = &all[0];
    assert_eq!(
        (i7.id, i7.state, i7.severity),
        (7, IncidentState::Resolved, Severity::Major)
    );
    assert_eq!(
        i7.timeline.iter().map(|t| t.state).collect::<Vec<_>>(),
        vec![
            IncidentState::Open,
            IncidentState::Escalated,
            IncidentState::Resolved
        ]
    );
    assert_eq!(i7.message, "step 3");
    assert_eq!(all[1].state, IncidentState::Open);
}

pub(crate) fn instances_join_desired_local_requests_and_reports<H: Harness>(h: &H) {
    let s = &h.open();
    let pi = n("pi-1");
    s.update_desired(
        &pi,
        |_| {
            vec![
                request("web", RequestedState::Started),
                request("db", RequestedState::Stopped),
            ]
        },
        |_| {},
    )
    .unwrap();
    // The latest state arrives first (express); the latest by seq still wins.
    let express = up(
        "pi-1",
        vec![state_rec(3, "web", InstanceStatus::Backoff, 2)],
        None,
    );
    s.ingest(&pi, &express, 0).unwrap();
    let recs = vec![
        state_rec(1, "web", InstanceStatus::Running, 0),
        state_rec(2, "web", InstanceStatus::Running, 1),
        Record {
            seq: 4,
            time_ms: 4,
            kind: RecordKind::LocalRequest {
                request: Box::new(request("cam", RequestedState::Started)),
            },
        },
        state_rec(5, "cam", InstanceStatus::Running, 0),
        state_rec(6, "old", InstanceStatus::Stopped, 0),
    ];
    s.ingest(&pi, &up("pi-1", recs, Some((1, 6))), 0).unwrap();
    let v = s.instances().unwrap();
    let names: Vec<&str> = v.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, vec!["cam", "db", "old", "web"]);
    assert_eq!(
        (v[0].owner, v[0].status),
        (Owner::Node, Some(InstanceStatus::Running))
    );
    assert_eq!(
        (v[1].owner, v[1].requested, v[1].status),
        (Owner::Master, Some(RequestedState::Stopped), None)
    );
    assert_eq!(v[2].owner, Owner::Unknown);
    let web = &v[3];
    assert_eq!(
        (web.status, web.restarts, web.pid, web.last_seen_ms),
        (Some(InstanceStatus::Backoff), 2, None, Some(1003))
    );
}

pub(crate) fn views_and_usage_hold_every_life<H: Harness>(h: &H) {
    let s = &h.open();
    let pi = n("pi-1");
    const E2: u64 = 0xe2;
    let life = |epoch, start: u64, seq_of_state: u64| {
        up_in(
            "pi-1",
            epoch,
            vec![
                usage_rec(1, "web", start, start + 60_000),
                incident_rec(2, 1, IncidentState::Open, Severity::Minor),
                state_rec(
                    seq_of_state,
                    "web",
                    if epoch == E1 {
                        InstanceStatus::Running
                    } else {
                        InstanceStatus::Backoff
                    },
                    0,
                ),
            ],
            Some((1, seq_of_state)),
        )
    };
    // The old life got far (state at seq 50); the new one is at seq 3.
    s.ingest(&pi, &life(E1, 0, 50), 1).unwrap();
    s.ingest(&pi, &life(E2, 60_000, 3), 2).unwrap();
    let usage = s.usage(0, 120_000).unwrap();
    assert_eq!(usage.len(), 2, "both lives' usage is billed: {usage:?}");
    let incidents = s.incidents().unwrap();
    assert_eq!(
        incidents.iter().map(|i| (i.life, i.id)).collect::<Vec<_>>(),
        vec![(1, 1), (2, 1)],
        "incident ids of two lives are two incidents"
    );
    let inst = s.instances().unwrap();
    assert_eq!(inst.len(), 1);
    assert_eq!(
        inst[0].status,
        Some(InstanceStatus::Backoff),
        "the latest life's state wins, though its seq is lower"
    );
}
