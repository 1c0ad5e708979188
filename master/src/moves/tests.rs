#![allow(clippy::unwrap_used)]

use super::*;
use crate::store::conformance::n;

fn h(node: &str, fence: u64, live: bool) -> Holder {
    Holder {
        node: n(node),
        fence,
        live,
    }
}

#[test]
fn the_owner_is_the_live_copy_with_the_highest_fence_and_lower_ones_are_stale() {
    let hs = vec![
        h("a", 1, true),
        h("b", 3, false),
        h("c", 2, true),
        h("d", 1, true),
    ];
    assert_eq!(owner(&hs).unwrap().node, n("c"));
    let old: Vec<&str> = stale(&hs).iter().map(|x| x.node.as_str()).collect();
    assert_eq!(old, vec!["a", "d"]);
    // Equal fences (copies an older master left): the first by node, none stale.
    let eq = vec![h("a", 1, true), h("b", 1, true)];
    assert_eq!(owner(&eq).unwrap().node, n("a"));
    assert!(stale(&eq).is_empty());
    assert!(owner(&[h("a", 4, false)]).is_none());
    assert!(stale(&[]).is_empty());
}

#[test]
fn requests_go_to_the_owner_and_leave_stale_copies_to_their_handover() {
    let hs = vec![h("a", 1, true), h("b", 2, true), h("c", 1, false)];
    assert_eq!(
        by_preference(&hs),
        vec![(n("b"), true), (n("a"), true), (n("c"), false)]
    );
    assert!(moved_off(&hs, &n("b")).is_empty());
    // Placed elsewhere (the operator's --node): every other live copy goes.
    assert_eq!(moved_off(&hs, &n("d")), vec![n("a"), n("b")]);
    assert_eq!(moved_off(&hs, &n("a")), vec![n("b")]);
}

#[test]
fn a_move_starts_from_the_owner_and_never_lands_on_a_live_copy() {
    let x = n("x");
    let hs = vec![h("a", 1, true), h("b", 2, true), h("c", 1, false)];
    assert!(check_move(&x, &hs, &n("b"), Some(&n("c"))).is_ok());
    assert!(check_move(&x, &hs, &n("b"), None).is_ok());
    assert!(matches!(
        check_move(&x, &hs, &n("a"), Some(&n("c"))),
        Err(e) if matches!(*e, MoveError::NotOnNode { .. })
    ));
    for to in ["a", "b"] {
        assert!(matches!(
            check_move(&x, &hs, &n("b"), Some(&n(to))),
            Err(e) if matches!(*e, MoveError::Holds { .. })
        ));
    }
    assert!(matches!(
        check_move(&x, &[], &n("b"), None),
        Err(e) if matches!(*e, MoveError::NotOnNode { .. })
    ));
}

pub(crate) fn summary(node: &str, arch: &str) -> NodeSummary {
    NodeSummary {
        node: n(node),
        first_seen_ms: None,
        last_seen_ms: None,
        records: 0,
        last_seq: 0,
        acked_upto: 0,
        lives: 0,
        repeats: 0,
        conflicts: 0,
        stale: 0,
        board: None,
        arch: Some(arch.into()),
        labels: BTreeMap::new(),
        region: None,
        reported_labels: BTreeMap::new(),
        reported_region: None,
        cpus: None,
        mem_bytes: None,
        capacity_instances: 4,
        allocated_instances: 0,
        health: None,
        state: crate::node_state::NodeState::Schedulable,
        state_since_ms: None,
        path: None,
        forged_relayed: 0,
    }
}

#[test]
fn criteria_keep_the_placement_and_default_to_the_source_arch() {
    let from = summary("a", "aarch64-unknown-linux-gnu");
    let p = criteria(None, Some(&from));
    assert_eq!(p.arch.as_deref(), Some("aarch64"));
    assert_eq!(p.node, None);
    let stored = Placement {
        node: Some(n("z")),
        arch: Some("armv7".into()),
        region: Some("eu".into()),
        ..Placement::default()
    };
    let p = criteria(Some(&stored), Some(&from));
    assert_eq!(
        (p.node, p.arch.as_deref(), p.region.as_deref()),
        (None, Some("armv7"), Some("eu"))
    );
    assert_eq!(criteria(None, None), Placement::default());
}

fn decision(instance: &str, kind: DecisionKind, time_ms: u64, incident: bool) -> Decision {
    Decision {
        id: time_ms,
        time_ms,
        kind,
        instance: n(instance),
        from: n("a"),
        to: Some(n("b")),
        fence: Some(2),
        reason: String::new(),
        incident: incident.then(|| IncidentRef {
            node: n("a"),
            life: 1,
            id: time_ms,
            seq: 1,
        }),
    }
}

#[test]
fn the_budget_counts_incident_moves_in_a_sliding_window() {
    let b = MoveBudget {
        window_ms: 600_000,
        fleet: 3,
        per_instance: 2,
    };
    let log = vec![
        decision("x", DecisionKind::Move, 1_000, true),
        decision("x", DecisionKind::Move, 500_000, true),
        decision("y", DecisionKind::Move, 500_000, false),
        decision("y", DecisionKind::Refused, 500_000, true),
        decision("y", DecisionKind::Handover, 500_000, true),
    ];
    assert_eq!(
        over_budget(&log, &[], &n("x"), 600_000, &b).as_deref(),
        Some("x moved 2 time(s) in the last 10 min (limit 2 per instance)")
    );
    // The first one left the window.
    assert_eq!(over_budget(&log, &[], &n("x"), 601_000, &b), None);
    assert_eq!(over_budget(&log, &[], &n("y"), 600_000, &b), None);
    // Moves decided in this pass count too.
    let extra = vec![(n("z"), 599_000)];
    assert_eq!(
        over_budget(&log, &extra, &n("y"), 600_000, &b).as_deref(),
        Some("3 move(s) in the last 10 min fleet-wide (limit 3)")
    );
    let odd = MoveBudget {
        window_ms: 1_500,
        ..b
    };
    assert!(over_budget(&log, &extra, &n("y"), 600_000, &odd).is_none());
    let none = MoveBudget {
        per_instance: 0,
        ..b
    };
    assert!(over_budget(&[], &[], &n("y"), 0, &none)
        .unwrap()
        .contains("limit 0 per instance"));
}
