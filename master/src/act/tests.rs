#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use hedge_wire::{IncidentState, Severity};

use super::*;
use crate::alloc::Placement;
use crate::moves::{DecisionKind, Holder, IncidentRef};
use crate::store::conformance::n;
use crate::store::IncidentTransition;

const NOW: u64 = 10_000_000;
const HOUR: u64 = 3_600_000;

fn policy(fleet: u32, per_instance: u32) -> Policy {
    Policy {
        budget: MoveBudget {
            window_ms: HOUR,
            fleet,
            per_instance,
        },
        stale_after_ms: 300_000,
    }
}

fn node(name: &str, arch: &str, site: &str, allocated: u32, capacity: u32) -> NodeSummary {
    let mut s = crate::moves::tests::summary(name, arch);
    s.labels = BTreeMap::from([("site".into(), site.into())]);
    s.allocated_instances = allocated;
    s.capacity_instances = capacity;
    s.last_seen_ms = Some(NOW - 1_000);
    s
}

fn on(instance: &str, holders: &[(&str, u64, bool)], site: Option<&str>) -> InstancePlacement {
    InstancePlacement {
        instance: n(instance),
        holders: holders
            .iter()
            .map(|(node, fence, live)| Holder {
                node: n(node),
                fence: *fence,
                live: *live,
            })
            .collect(),
        criteria: site.map(|s| Placement {
            labels: BTreeMap::from([("site".into(), s.into())]),
            ..Placement::default()
        }),
    }
}

fn incident(node: &str, id: u64, instance: &str, steps: &[(u64, Severity)]) -> IncidentView {
    let timeline: Vec<IncidentTransition> = steps
        .iter()
        .map(|(seq, severity)| IncidentTransition {
            seq: *seq,
            time_ms: 1000 + seq,
            state: if *severity == Severity::Minor {
                IncidentState::Open
            } else {
                IncidentState::Escalated
            },
            severity: *severity,
            message: String::new(),
            decision: None,
        })
        .collect();
    let last = timeline.last().unwrap().clone();
    IncidentView {
        node: n(node),
        life: 1,
        id,
        instance: n(instance),
        promise: Some(n("http")),
        severity: last.severity,
        state: last.state,
        first_seen_ms: 1000,
        last_seen_ms: last.time_ms,
        message: String::new(),
        timeline,
    }
}

const CRIT: &[(u64, Severity)] = &[
    (4, Severity::Minor),
    (7, Severity::Major),
    (9, Severity::Critical),
];

fn fleet() -> Snapshot {
    Snapshot {
        incidents: vec![incident("node-3", 12, "web", CRIT)],
        placements: vec![on("web", &[("node-3", 1, true)], Some("north"))],
        nodes: vec![
            node("node-3", "aarch64-unknown-linux-gnu", "north", 3, 4),
            node("node-4", "armv7-unknown-linux-gnueabihf", "north", 0, 4),
            node("node-5", "aarch64-unknown-linux-gnu", "north", 2, 4),
            node("node-6", "aarch64-unknown-linux-gnu", "south", 0, 4),
        ],
        decisions: Vec::new(),
    }
}

fn logged(o: &Outcome, id: u64, time_ms: u64) -> Decision {
    let (kind, instance, from, to, reason, incident) = match o {
        Outcome::Move {
            instance,
            from,
            to,
            reason,
            incident,
        } => (
            DecisionKind::Move,
            instance,
            from,
            Some(to.clone()),
            reason,
            incident,
        ),
        Outcome::Refuse {
            instance,
            from,
            reason,
            incident,
        } => (
            DecisionKind::Refused,
            instance,
            from,
            None,
            reason,
            incident,
        ),
    };
    Decision {
        id,
        time_ms,
        kind,
        instance: instance.clone(),
        from: from.clone(),
        to,
        fence: None,
        reason: reason.clone(),
        incident: Some(incident.clone()),
    }
}

fn reasons(out: &[Outcome]) -> Vec<&str> {
    out.iter()
        .map(|o| match o {
            Outcome::Move { reason, .. } | Outcome::Refuse { reason, .. } => reason.as_str(),
        })
        .collect()
}

#[test]
fn a_critical_incident_moves_its_instance_to_a_node_that_fits_and_says_why() {
    let out = decide(&fleet(), &policy(10, 1), NOW);
    assert_eq!(
        out,
        vec![Outcome::Move {
            instance: n("web"),
            from: n("node-3"),
            to: n("node-5"),
            reason: "moved web from node-3 to node-5: critical incident 12, node-5 fits \
                     arch=aarch64 site=north, 2 of 4 slots used"
                .into(),
            incident: IncidentRef {
                node: n("node-3"),
                life: 1,
                id: 12,
                seq: 9,
            },
        }]
    );
    // Without criteria, the least loaded node of the same arch.
    let mut s = fleet();
    s.placements[0].criteria = None;
    assert_eq!(
        reasons(&decide(&s, &policy(10, 1), NOW)),
        vec![
            "moved web from node-3 to node-6: critical incident 12, node-6 fits arch=aarch64, \
             0 of 4 slots used"
        ]
    );
}

#[test]
fn only_open_critical_incidents_of_the_masters_copy_act() {
    let p = policy(10, 1);
    let mut s = fleet();
    s.incidents = vec![
        incident("node-3", 1, "web", &[(1, Severity::Minor)]),
        incident(
            "node-3",
            2,
            "web",
            &[(2, Severity::Minor), (3, Severity::Major)],
        ),
    ];
    let mut resolved = incident("node-3", 3, "web", CRIT);
    resolved.state = IncidentState::Resolved;
    s.incidents.push(resolved);
    assert!(decide(&s, &p, NOW).is_empty());
    // A stale copy (its move is handing over) is left alone.
    let mut s = fleet();
    s.placements = vec![on("web", &[("node-3", 1, true), ("node-5", 2, true)], None)];
    assert!(decide(&s, &p, NOW).is_empty());
    // An instance the master did not place there is refused, once.
    let mut s = fleet();
    s.placements = vec![on(
        "web",
        &[("node-3", 1, false), ("node-5", 2, true)],
        None,
    )];
    s.incidents.push(incident("node-3", 13, "local", CRIT));
    let out = decide(&s, &p, NOW);
    assert_eq!(
        reasons(&out),
        vec![
            "did not move web from node-3: critical incident 12, the master did not place it there",
            "did not move local from node-3: critical incident 13, the master did not place it there",
        ]
    );
    s.decisions = out
        .iter()
        .enumerate()
        .map(|(i, o)| logged(o, i as u64, NOW))
        .collect();
    assert!(decide(&s, &p, NOW + 1).is_empty());
}

#[test]
fn an_incident_gets_one_move_and_a_refusal_is_logged_again_only_when_it_changes() {
    let p = policy(10, 1);
    let mut s = fleet();
    let out = decide(&s, &p, NOW);
    s.decisions = vec![logged(&out[0], 1, NOW)];
    // Moved, but the snapshot still shows it on node-3 (not applied yet): nothing more.
    assert!(decide(&s, &p, NOW + 1000).is_empty());
    // No node fits: refused once, and again only when the reason changes.
    let mut s = fleet();
    s.nodes.retain(|x| x.node != n("node-5"));
    let out = decide(&s, &p, NOW);
    assert_eq!(
        reasons(&out),
        vec![
            "did not move web from node-3: critical incident 12, no node fits: node-4: arch is \
             armv7-unknown-linux-gnueabihf, want aarch64; node-6: label site is south, want north"
        ]
    );
    s.decisions = vec![logged(&out[0], 1, NOW)];
    assert!(decide(&s, &p, NOW + 1000).is_empty());
    s.nodes.push(node("node-7", "aarch64", "north", 4, 4));
    let out = decide(&s, &p, NOW + 2000);
    assert_eq!(out.len(), 1);
    assert!(reasons(&out)[0].ends_with("node-7: full (4/4 instances)"));
    // Once node-7 frees a slot, the incident is still answered with a move.
    s.decisions.push(logged(&out[0], 2, NOW + 2000));
    s.nodes.last_mut().unwrap().allocated_instances = 3;
    let out = decide(&s, &p, NOW + 3000);
    assert!(matches!(&out[..], [Outcome::Move { to, .. }] if to == &n("node-7")));
}

#[test]
fn nodes_not_seen_lately_are_no_target() {
    let p = policy(10, 1);
    let mut s = fleet();
    for x in &mut s.nodes {
        if x.node == n("node-5") {
            x.last_seen_ms = Some(NOW - 300_001);
        }
    }
    s.nodes
        .retain(|x| x.node != n("node-6") && x.node != n("node-4"));
    assert_eq!(
        reasons(&decide(&s, &p, NOW)),
        vec![
            "did not move web from node-3: critical incident 12, no node fits: not seen within \
             300 s: node-5"
        ]
    );
    s.nodes.retain(|x| x.node == n("node-3"));
    assert_eq!(
        reasons(&decide(&s, &p, NOW)),
        vec!["did not move web from node-3: critical incident 12, no other node"]
    );
}

#[test]
fn the_budget_holds_per_instance_and_fleet_wide_within_a_pass() {
    let mut s = fleet();
    s.placements[0].criteria = None;
    // web moved here 10 minutes ago (its incident on the node it left).
    let earlier = Outcome::Move {
        instance: n("web"),
        from: n("node-9"),
        to: n("node-3"),
        reason: "moved web".into(),
        incident: IncidentRef {
            node: n("node-9"),
            life: 1,
            id: 1,
            seq: 3,
        },
    };
    s.decisions = vec![logged(&earlier, 1, NOW - 600_000)];
    assert_eq!(
        reasons(&decide(&s, &policy(10, 1), NOW)),
        vec![
            "did not move web from node-3: critical incident 12, web moved 1 time(s) in the last \
             hour (limit 1 per instance)"
        ]
    );
    // An hour after that move, it may move again.
    let then = NOW - 600_000 + HOUR;
    for x in &mut s.nodes {
        x.last_seen_ms = Some(then);
    }
    let later = decide(&s, &policy(10, 1), then);
    assert!(matches!(&later[..], [Outcome::Move { .. }]));
    // Fleet-wide: three instances critical at once, two moves allowed this hour, one
    // of them already made.
    let mut s = fleet();
    s.decisions = vec![logged(&earlier, 1, NOW - 600_000)];
    s.placements = ["a", "b", "c"]
        .iter()
        .map(|x| on(x, &[("node-3", 1, true)], None))
        .collect();
    s.incidents = ["a", "b", "c"]
        .iter()
        .enumerate()
        .map(|(i, x)| incident("node-3", 20 + i as u64, x, CRIT))
        .collect();
    let out = decide(&s, &policy(2, 1), NOW);
    assert_eq!(
        reasons(&out),
        vec![
            "moved a from node-3 to node-6: critical incident 20, node-6 fits arch=aarch64, 0 of \
             4 slots used",
            "did not move b from node-3: critical incident 21, 2 move(s) in the last hour \
             fleet-wide (limit 2)",
            "did not move c from node-3: critical incident 22, 2 move(s) in the last hour \
             fleet-wide (limit 2)",
        ]
    );
}

#[test]
fn slots_taken_earlier_in_the_pass_count() {
    let mut s = fleet();
    s.nodes = vec![
        node("node-3", "aarch64", "north", 2, 4),
        node("node-5", "aarch64", "north", 3, 4),
    ];
    s.placements = vec![
        on("a", &[("node-3", 1, true)], None),
        on("b", &[("node-3", 1, true)], None),
    ];
    s.incidents = vec![
        incident("node-3", 1, "a", CRIT),
        incident("node-3", 2, "b", CRIT),
    ];
    assert_eq!(
        reasons(&decide(&s, &policy(10, 2), NOW)),
        vec![
            "moved a from node-3 to node-5: critical incident 1, node-5 fits arch=aarch64, 3 of \
             4 slots used",
            "did not move b from node-3: critical incident 2, no node fits: node-5: full (4/4 \
             instances)",
        ]
    );
}

/// The driver over the store `hedge master` opens: a critical incident moves the
/// instance, the old copy goes once the new one runs, the timeline shows both, and
/// the instance failing on its new node is not moved again within the hour.
#[test]
fn the_driver_moves_hands_over_and_logs_it_in_the_incidents_timeline() {
    use hedge_wire::{InstanceStatus, RecordKind, RequestedState};

    use crate::sign::{verify, MasterKey};
    use crate::store::conformance::place::{names, on as on_node, register, Reporter};
    use crate::store::conformance::{open, request};
    use crate::store::FleetStore;

    let (_dir, s) = open();
    register(&s, "a", 4);
    register(&s, "b", 4);
    let key = MasterKey::generate();
    let p = policy(10, 1);
    s.place(
        request("web", RequestedState::Started),
        &on_node("a"),
        0,
        0,
        |d| crate::sign::sign(&key, d, 0),
    )
    .unwrap();
    let (mut a, mut b) = (Reporter::new("a"), Reporter::new("b"));
    let step = |id, severity| RecordKind::Incident {
        id,
        instance: n("web"),
        promise: Some(n("http")),
        severity,
        state: IncidentState::Escalated,
        first_seen_ms: 1000,
        last_seen_ms: 1000,
        message: format!("{severity:?}"),
    };
    b.accepted(&s, 0);
    a.send(&s, step(1, Severity::Major));
    assert!(driver::act(&s, &key, &p, 10_000)
        .unwrap()
        .decisions
        .is_empty());
    a.send(&s, step(1, Severity::Critical));
    let r = driver::act(&s, &key, &p, 10_000).unwrap();
    assert_eq!(r.decisions.len(), 1);
    assert_eq!(
        r.decisions[0].reason,
        "moved web from a to b: critical incident 1, b fits arch=aarch64, 0 of 4 slots used"
    );
    let bd = s.desired(&n("b")).unwrap().unwrap();
    verify(&key.public(), &bd).unwrap();
    assert_eq!(
        names(&s, "a"),
        vec![("web".into(), RequestedState::Started)]
    );
    // One decision per incident.
    assert!(driver::act(&s, &key, &p, 11_000)
        .unwrap()
        .decisions
        .is_empty());
    // b runs it: a's copy goes.
    b.accepted(&s, bd.generation);
    b.state(&s, "web", InstanceStatus::Running);
    let r = driver::act(&s, &key, &p, 12_000).unwrap();
    assert_eq!(r.handovers.len(), 1);
    assert_eq!(
        names(&s, "a"),
        vec![("web".into(), RequestedState::Destroyed)]
    );
    let list = s.incidents().unwrap();
    let kinds: Vec<Option<DecisionKind>> = list[0]
        .timeline
        .iter()
        .map(|t| t.decision.as_ref().map(|d| d.kind))
        .collect();
    assert_eq!(
        kinds,
        vec![
            None,
            None,
            Some(DecisionKind::Move),
            Some(DecisionKind::Handover)
        ]
    );
    // It fails on b too: not moved again this hour, and the refusal shows, once.
    b.send(&s, step(1, Severity::Critical));
    let r = driver::act(&s, &key, &p, 13_000).unwrap();
    assert_eq!(r.decisions.len(), 1);
    assert_eq!(r.decisions[0].kind, DecisionKind::Refused);
    assert_eq!(
        r.decisions[0].reason,
        "did not move web from b: critical incident 1, web moved 1 time(s) in the last hour \
         (limit 1 per instance)"
    );
    assert!(driver::act(&s, &key, &p, 14_000)
        .unwrap()
        .decisions
        .is_empty());
    let on_b = s
        .incidents()
        .unwrap()
        .into_iter()
        .find(|i| i.node == n("b"))
        .unwrap();
    assert_eq!(
        on_b.timeline
            .last()
            .unwrap()
            .decision
            .as_ref()
            .map(|d| d.kind),
        Some(DecisionKind::Refused)
    );
}

/// Master processes acting at once on one store: a refusal is logged once, and the
/// incident gets one move.
#[test]
fn masters_acting_at_once_move_once() {
    use hedge_wire::{RecordKind, RequestedState};

    use crate::sign::MasterKey;
    use crate::store::conformance::place::{on as on_node, register, Reporter};
    use crate::store::conformance::{open, request};
    use crate::store::{FleetStore, MasterStore};

    let (dir, s) = open();
    let mut a = Reporter::new("a");
    a.accepted(&s, 0);
    for node in ["a", "b", "c"] {
        register(&s, node, 4);
    }
    for node in ["b", "c"] {
        Reporter::new(node).accepted(&s, 0);
    }
    s.place(
        request("web", RequestedState::Started),
        &on_node("a"),
        0,
        0,
        |_| {},
    )
    .unwrap();
    a.send(
        &s,
        RecordKind::Incident {
            id: 1,
            instance: n("web"),
            promise: None,
            severity: Severity::Critical,
            state: IncidentState::Escalated,
            first_seen_ms: 1000,
            last_seen_ms: 1000,
            message: "down".into(),
        },
    );
    let key = MasterKey::generate();
    let path = dir.path().join("master.db");
    let race = |p: Policy| {
        std::thread::scope(|scope| {
            for _ in 0..4 {
                let (key, path) = (&key, &path);
                scope.spawn(move || {
                    let store = MasterStore::open(path).unwrap();
                    for t in 0..5 {
                        driver::act(&store, key, &p, 10_000 + t).unwrap();
                    }
                });
            }
        });
    };
    // No move allowed: twenty passes, one refusal.
    race(policy(10, 0));
    let kinds =
        || -> Vec<DecisionKind> { s.decisions(0).unwrap().iter().map(|d| d.kind).collect() };
    assert_eq!(kinds(), vec![DecisionKind::Refused]);
    race(policy(10, 1));
    assert_eq!(kinds(), vec![DecisionKind::Refused, DecisionKind::Move]);
}

/// A move the store refuses (the target's state would be too large to deliver) is
/// logged as a refusal, and the pass goes on with the next incident.
#[test]
fn a_move_the_store_refuses_is_logged_and_the_pass_goes_on() {
    use hedge_wire::{ConfigFile, RecordKind, RequestedState};

    use crate::sign::MasterKey;
    use crate::store::conformance::place::{on as on_node, register, Reporter};
    use crate::store::conformance::{open, request};
    use crate::store::FleetStore;

    let big = |name: &str, files: usize| {
        let mut r = request(name, RequestedState::Started);
        r.config_files = (0..files)
            .map(|i| ConfigFile {
                path: format!("etc/{i}.conf"),
                template: "x".repeat(15 * 1024),
            })
            .collect();
        r
    };
    let (_dir, s) = open();
    let mut a = Reporter::new("a");
    a.accepted(&s, 0);
    register(&s, "a", 8);
    register(&s, "b", 8);
    Reporter::new("b").accepted(&s, 0);
    for r in [big("b1", 1), big("b2", 1), big("b3", 1)] {
        s.place(r, &on_node("b"), 0, 0, |_| {}).unwrap();
    }
    s.place(big("web", 2), &on_node("a"), 0, 0, |_| {}).unwrap();
    s.place(
        request("small", RequestedState::Started),
        &on_node("a"),
        0,
        0,
        |_| {},
    )
    .unwrap();
    for (id, instance) in [(1, "web"), (2, "small")] {
        a.send(
            &s,
            RecordKind::Incident {
                id,
                instance: n(instance),
                promise: None,
                severity: Severity::Critical,
                state: IncidentState::Escalated,
                first_seen_ms: 1000,
                last_seen_ms: 1000 + id,
                message: "down".into(),
            },
        );
    }
    let r = driver::act(&s, &MasterKey::generate(), &policy(10, 1), 10_000).unwrap();
    let got: Vec<(DecisionKind, &str)> = r
        .decisions
        .iter()
        .map(|d| (d.kind, d.instance.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (DecisionKind::Refused, "web"),
            (DecisionKind::Move, "small")
        ]
    );
    let why = &r.decisions[0].reason;
    assert!(
        why.starts_with("did not move web from a: critical incident 1, desired state for b")
            && why.contains("more than the frame limit"),
        "{why}"
    );
}
