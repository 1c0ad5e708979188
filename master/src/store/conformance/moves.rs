//! Moves: fences, the two-phase handover, the rules a move keeps, the decision log and
//! its budget.

use std::collections::BTreeMap;

use hedge_wire::{IncidentState, InstanceStatus, RecordKind, RequestedState, Severity};

use super::place::{names, on, register, Reporter};
use super::{n, request, Harness};
use crate::alloc::{AllocError, Placement};
use crate::moves::{
    Decision, DecisionKind, Holder, IncidentRef, MoveBudget, MoveError, MoveRequest,
};
use crate::sign::{sign, verify, MasterKey};
use crate::store::{FleetStore, StoreError};

fn mv(instance: &str, from: &str, to: Option<&str>) -> MoveRequest {
    MoveRequest {
        instance: n(instance),
        from: n(from),
        to: to.map(n),
        fenced: false,
        reason: format!("test move of {instance}"),
        incident: None,
        budget: None,
    }
}

/// `(node, fence, live)` of every holder of `instance`; each holder's signed state
/// carries that fence in its terms, with the instance's lease.
pub(crate) fn holders<S: FleetStore>(s: &S, instance: &str) -> Vec<(String, u64, bool)> {
    let out: Vec<(String, u64, bool)> = s
        .placements()
        .unwrap()
        .into_iter()
        .find(|p| p.instance == n(instance))
        .map(|p| {
            p.holders
                .into_iter()
                .map(|Holder { node, fence, live }| (node.to_string(), fence, live))
                .collect()
        })
        .unwrap_or_default();
    let lease = s.leases().unwrap().get(&n(instance)).copied().unwrap_or(0);
    for (node, fence, _) in &out {
        let d = s.desired(&n(node)).unwrap().unwrap();
        let t = d.terms_of(&n(instance)).unwrap();
        assert_eq!(
            (t.fence, t.lease_ms),
            (*fence, lease),
            "{node}'s terms of {instance}"
        );
        assert_eq!(
            d.terms.len(),
            d.instances.len(),
            "{node}: one term per instance"
        );
    }
    out
}

/// Nodes a and b, and x placed on a; the key that signed it.
fn x_on_a<S: FleetStore>(s: &S) -> MasterKey {
    register(s, "a", 4);
    register(s, "b", 4);
    let key = MasterKey::generate();
    s.place(request("x", RequestedState::Started), &on("a"), 0, 0, |d| {
        sign(&key, d, 0)
    })
    .unwrap();
    key
}

fn generation<S: FleetStore>(s: &S, node: &str) -> u64 {
    s.desired(&n(node)).unwrap().map_or(0, |d| d.generation)
}

pub(crate) fn a_move_gets_the_next_fence_and_the_old_copy_goes_once_the_new_one_runs<H: Harness>(
    h: &H,
) {
    let s = &h.open();
    let key = x_on_a(s);
    let signer = |d: &mut hedge_wire::DesiredState| sign(&key, d, 0);
    assert_eq!(holders(s, "x"), vec![("a".into(), 1, true)]);
    let moved = s
        .move_instance(&mv("x", "a", Some("b")), 5, 0, signer)
        .unwrap();
    assert_eq!((moved.fence, moved.destroyed_on.clone()), (2, None));
    assert_eq!(moved.state.node, n("b"));
    verify(&key.public(), &moved.state).unwrap();
    let d = &moved.decision;
    assert_eq!(
        (d.kind, d.from.as_str(), d.to.clone(), d.fence, d.time_ms),
        (DecisionKind::Move, "a", Some(n("b")), Some(2), 5)
    );
    // Two-phase: a keeps its copy until b's runs.
    assert_eq!(
        holders(s, "x"),
        vec![("a".into(), 1, true), ("b".into(), 2, true)]
    );
    let owner = s.placements().unwrap()[0].owner().cloned().unwrap();
    assert_eq!(owner.node, n("b"));
    assert!(s.complete_handovers(6, signer).unwrap().is_empty());
    // An update meanwhile goes to the owner and leaves a's copy to its handover.
    let p = s
        .place(
            request("x", RequestedState::Started),
            &Placement::default(),
            0,
            0,
            signer,
        )
        .unwrap();
    assert_eq!((p.state.node.as_str(), p.destroyed_on.len()), ("b", 0));
    let b_gen = p.state.generation;
    assert_eq!(holders(s, "x")[1], ("b".into(), 2, true));
    // Running before b accepted the state carrying the fence does not count; nor does
    // a's own report.
    let mut b = Reporter::new("b");
    b.state(s, "x", InstanceStatus::Running);
    let mut a = Reporter::new("a");
    a.accepted(s, generation(s, "a"));
    a.state(s, "x", InstanceStatus::Running);
    assert!(s.complete_handovers(7, signer).unwrap().is_empty());
    b.accepted(s, b_gen);
    assert!(s.complete_handovers(8, signer).unwrap().is_empty());
    b.state(s, "x", InstanceStatus::Running);
    let a_before = generation(s, "a");
    let done = s.complete_handovers(9, signer).unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(
        (
            done[0].destroyed_on.clone(),
            done[0].owner.clone(),
            done[0].fence
        ),
        ((n("a"), a_before + 1), n("b"), 2)
    );
    verify(&key.public(), &s.desired(&n("a")).unwrap().unwrap()).unwrap();
    assert_eq!(names(s, "a"), vec![("x".into(), RequestedState::Destroyed)]);
    assert_eq!(names(s, "b"), vec![("x".into(), RequestedState::Started)]);
    // Done once.
    assert!(s.complete_handovers(10, signer).unwrap().is_empty());
    let log = s.decisions(0).unwrap();
    assert_eq!(
        log.iter().map(|d| d.kind).collect::<Vec<_>>(),
        vec![DecisionKind::Move, DecisionKind::Handover]
    );
    assert_eq!((log[1].from.as_str(), log[1].time_ms), ("a", 9));
    assert!(log[0].id < log[1].id);
    // The old copy reported destroyed is pruned as usual; its fence row goes with it.
    a.accepted(s, generation(s, "a"));
    a.state(s, "x", InstanceStatus::Destroyed);
    s.place(
        request("y", RequestedState::Started),
        &on("a"),
        0,
        0,
        signer,
    )
    .unwrap();
    assert_eq!(holders(s, "x"), vec![("b".into(), 2, true)]);
    // And y, a new name, starts at 1.
    assert_eq!(holders(s, "y"), vec![("a".into(), 1, true)]);
}

pub(crate) fn a_fenced_move_destroys_the_old_copy_at_once<H: Harness>(h: &H) {
    let s = &h.open();
    register(s, "a", 4);
    register(s, "b", 4);
    register(s, "c", 4);
    s.place(
        request("x", RequestedState::Started),
        &on("a"),
        0,
        0,
        |_| {},
    )
    .unwrap();
    let a_gen = generation(s, "a");
    let mut m = mv("x", "a", None);
    m.fenced = true;
    let moved = s.move_instance(&m, 0, 0, |_| {}).unwrap();
    // Allocation picked a node that fits, never a.
    assert_ne!(moved.state.node, n("a"));
    assert_eq!(moved.destroyed_on, Some((n("a"), a_gen + 1)));
    assert_eq!(names(s, "a"), vec![("x".into(), RequestedState::Destroyed)]);
    assert!(s.complete_handovers(1, |_| {}).unwrap().is_empty());
    // Moved again (fenced): the fence keeps growing.
    let to = moved.state.node.clone();
    let mut m = mv("x", to.as_str(), None);
    m.fenced = true;
    let again = s.move_instance(&m, 0, 0, |_| {}).unwrap();
    assert_eq!(again.fence, 3);
    // a holds it destroyed (not live): allocation may pick it again.
    assert_eq!(again.state.node, n("a"));
    assert_eq!(names(s, "a"), vec![("x".into(), RequestedState::Started)]);
}

pub(crate) fn a_move_breaking_a_rule_is_refused_and_stores_nothing<H: Harness>(h: &H) {
    let s = &h.open();
    register(s, "a", 4);
    register(s, "b", 4);
    register(s, "full", 1);
    register(s, "south", 4);
    for node in ["a", "b", "full"] {
        s.update_assignment(&n(node), |x| {
            x.labels = BTreeMap::from([("site".into(), "north".into())]);
        })
        .unwrap();
    }
    let north = Placement {
        labels: BTreeMap::from([("site".into(), "north".into())]),
        ..Placement::default()
    };
    s.place(request("x", RequestedState::Started), &north, 0, 0, |_| {})
        .unwrap();
    let x_on = holders(s, "x")[0].0.clone();
    assert_eq!(x_on, "a");
    s.place(
        request("y", RequestedState::Started),
        &on("full"),
        0,
        0,
        |_| {},
    )
    .unwrap();
    s.place(
        request("z", RequestedState::Started),
        &on("b"),
        0,
        0,
        |_| {},
    )
    .unwrap();
    let before: Vec<u64> = ["a", "b", "full", "south"]
        .iter()
        .map(|x| generation(s, x))
        .collect();
    let refused = |m: MoveRequest| s.move_instance(&m, 0, 0, |_| {}).unwrap_err();
    // Not where it is, to where it is, to a node holding it live.
    assert!(matches!(
        refused(mv("x", "b", Some("south"))),
        StoreError::Move(e) if matches!(*e, MoveError::NotOnNode { .. })
    ));
    assert!(matches!(
        refused(mv("x", "a", Some("a"))),
        StoreError::Move(e) if matches!(*e, MoveError::Holds { .. })
    ));
    assert!(matches!(
        refused(mv("ghost", "a", Some("b"))),
        StoreError::Move(e) if matches!(*e, MoveError::NotOnNode { .. })
    ));
    // The placement it was allocated with still holds (south lacks the label), and so
    // does capacity; an unknown node is refused.
    match refused(mv("x", "a", Some("south"))) {
        StoreError::Alloc(AllocError::NoCandidate { reasons }) => {
            assert_eq!(reasons[0].node, n("south"));
            assert_eq!(reasons[0].mismatches.len(), 1);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        refused(mv("x", "a", Some("full"))),
        StoreError::Alloc(AllocError::NoCandidate { .. })
    ));
    assert!(matches!(
        refused(mv("x", "a", Some("nope"))),
        StoreError::Alloc(AllocError::NoSuchNode(_))
    ));
    let after: Vec<u64> = ["a", "b", "full", "south"]
        .iter()
        .map(|x| generation(s, x))
        .collect();
    assert_eq!(before, after);
    assert!(s.decisions(0).unwrap().is_empty());
    // Allocation with nothing fitting says why.
    s.update_assignment(&n("b"), |x| x.max_instances = Some(1))
        .unwrap();
    match refused(mv("x", "a", None)) {
        StoreError::Alloc(AllocError::NoCandidate { reasons }) => {
            let nodes: Vec<&str> = reasons.iter().map(|r| r.node.as_str()).collect();
            assert_eq!(nodes, vec!["b", "full", "south"]);
        }
        other => panic!("{other:?}"),
    }
    // A move from a stale copy is refused: only the owner's node can be moved from.
    s.update_assignment(&n("b"), |x| x.max_instances = Some(4))
        .unwrap();
    s.move_instance(&mv("x", "a", Some("b")), 0, 0, |_| {})
        .unwrap();
    assert!(matches!(
        refused(mv("x", "a", Some("b"))),
        StoreError::Move(e) if matches!(*e, MoveError::NotOnNode { .. })
    ));
}

fn incident(node: &str, id: u64, seq: u64) -> IncidentRef {
    IncidentRef {
        node: n(node),
        life: 1,
        id,
        seq,
    }
}

pub(crate) fn one_move_per_incident_and_the_budget_holds<H: Harness>(h: &H) {
    let s = &h.open();
    for node in ["a", "b", "c", "d"] {
        register(s, node, 8);
    }
    for x in ["x", "y", "z"] {
        s.place(request(x, RequestedState::Started), &on("a"), 0, 0, |_| {})
            .unwrap();
    }
    let budget = MoveBudget {
        window_ms: 3_600_000,
        fleet: 2,
        per_instance: 1,
    };
    let for_incident = |x: &str, from: &str, id: u64, now: u64| {
        let mut m = mv(x, from, None);
        m.incident = Some(incident(from, id, 10 + id));
        m.budget = Some(budget);
        m.fenced = true;
        s.move_instance(&m, now, 0, |_| {})
    };
    let first = for_incident("x", "a", 1, 1_000).unwrap();
    assert_eq!(first.decision.incident, Some(incident("a", 1, 11)));
    let x_on = first.state.node.clone();
    // The same incident again: refused, whatever the instance's node now.
    match for_incident("y", "a", 1, 1_001) {
        Err(StoreError::Move(e)) => match *e {
            MoveError::AlreadyDecided { decision, .. } => {
                assert_eq!(decision, first.decision.id);
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    // x moved once this hour: its next incident is refused.
    match for_incident("x", x_on.as_str(), 2, 2_000) {
        Err(StoreError::Move(e)) => assert_eq!(
            *e,
            MoveError::OverBudget(
                "x moved 1 time(s) in the last hour (limit 1 per instance)".into()
            )
        ),
        other => panic!("{other:?}"),
    }
    for_incident("y", "a", 3, 3_000).unwrap();
    // Two moves fleet-wide this hour: z waits.
    match for_incident("z", "a", 4, 4_000) {
        Err(StoreError::Move(e)) => assert_eq!(
            *e,
            MoveError::OverBudget("2 move(s) in the last hour fleet-wide (limit 2)".into())
        ),
        other => panic!("{other:?}"),
    }
    // A move without an incident (an operator's, a drain) is not counted nor limited.
    s.move_instance(&mv("z", "a", Some("d")), 4_500, 0, |_| {})
        .unwrap();
    // An hour after the first move, x may move again.
    for_incident("x", x_on.as_str(), 5, 3_601_001).unwrap();
    let moves = s
        .decisions(0)
        .unwrap()
        .into_iter()
        .filter(|d| d.kind == DecisionKind::Move)
        .count();
    assert_eq!(moves, 4);
    assert_eq!(s.decisions(3_000).unwrap().len(), 3);
}

pub(crate) fn fences_only_grow_and_states_written_again_keep_them<H: Harness>(h: &H) {
    let s = &h.open();
    let key = x_on_a(s);
    let signer = |d: &mut hedge_wire::DesiredState| sign(&key, d, 0);
    // Updates and re-signing keep the fence.
    s.place(
        request("x", RequestedState::Stopped),
        &Placement::default(),
        0,
        0,
        signer,
    )
    .unwrap();
    s.update_desired(&n("a"), |v| v, signer).unwrap();
    assert_eq!(holders(s, "x"), vec![("a".into(), 1, true)]);
    // The operator's move (`--node b`) places it anew: fence 2, a destroyed at once.
    s.place(
        request("x", RequestedState::Started),
        &on("b"),
        0,
        0,
        signer,
    )
    .unwrap();
    assert_eq!(
        holders(s, "x"),
        vec![("a".into(), 1, false), ("b".into(), 2, true)]
    );
    // Back on a, whose destroyed copy is still in its state: placed anew there.
    s.place(
        request("x", RequestedState::Started),
        &on("a"),
        0,
        0,
        signer,
    )
    .unwrap();
    assert_eq!(
        holders(s, "x"),
        vec![("a".into(), 3, true), ("b".into(), 2, false)]
    );
    // A copy written without a placement (an older master's) takes the current fence.
    s.update_desired(
        &n("b"),
        |mut v| {
            v.push(request("w", RequestedState::Started));
            v
        },
        signer,
    )
    .unwrap();
    assert_eq!(holders(s, "w"), vec![("b".into(), 1, true)]);
    // A refusal is logged as such.
    let d = s
        .record_decision(&Decision {
            id: 0,
            time_ms: 7,
            kind: DecisionKind::Refused,
            instance: n("x"),
            from: n("a"),
            to: None,
            fence: None,
            reason: "did not move x".into(),
            incident: Some(incident("a", 3, 4)),
        })
        .unwrap();
    assert_eq!(s.decisions(0).unwrap(), vec![d.clone()]);
    // The same refusal again (another master's pass) is not logged twice; another is.
    let mut again = d.clone();
    again.time_ms = 8;
    assert_eq!(s.record_decision(&again).unwrap(), d);
    again.reason = "did not move x, again".into();
    let other = s.record_decision(&again).unwrap();
    assert!(other.id > d.id);
    assert_eq!(s.decisions(0).unwrap(), vec![d, other]);
}

pub(crate) fn decisions_show_in_their_incidents_timeline<H: Harness>(h: &H) {
    let s = &h.open();
    register(s, "a", 4);
    register(s, "b", 4);
    s.place(
        request("web", RequestedState::Started),
        &on("a"),
        0,
        0,
        |_| {},
    )
    .unwrap();
    let mut a = Reporter::new("a");
    let step = |severity, state| RecordKind::Incident {
        id: 1,
        instance: n("web"),
        promise: Some(n("http")),
        severity,
        state,
        first_seen_ms: 1000,
        last_seen_ms: 1000,
        message: format!("{severity:?}"),
    };
    a.send(s, step(Severity::Minor, IncidentState::Open));
    a.send(s, step(Severity::Critical, IncidentState::Escalated));
    let critical_seq = 2;
    let mut m = mv("web", "a", Some("b"));
    m.reason = "moved web from a to b: critical incident 1".into();
    m.incident = Some(incident("a", 1, critical_seq));
    s.move_instance(&m, 5_000, 0, |_| {}).unwrap();
    a.send(s, step(Severity::Critical, IncidentState::Escalated));
    let list = s.incidents().unwrap();
    assert_eq!(list.len(), 1);
    let t = &list[0].timeline;
    let seqs: Vec<(u64, bool)> = t.iter().map(|e| (e.seq, e.decision.is_some())).collect();
    assert_eq!(seqs, vec![(1, false), (2, false), (2, true), (3, false)]);
    assert_eq!(t[2].message, "moved web from a to b: critical incident 1");
    assert_eq!((t[2].severity, t[2].time_ms), (Severity::Critical, 5_000));
    // The JSON of a node's entry has no decision field; the master's has one.
    let j = serde_json::to_value(t).unwrap();
    assert!(j[0].get("decision").is_none());
    assert_eq!(j[2]["decision"]["to"], "b");
}
