//! Node states: stored per node, changed only by the rules, retired final, and never a
//! target of allocation unless schedulable and heard from within `lost_after_ms`.

use super::place::on;
use super::*;
use crate::alloc::{AllocError, Placement};
use crate::node_state::{NodeOp, NodeState, NodeStateError};
use crate::store::{NodeInfo, StoreError};

fn node_info(node: &str) -> NodeInfo {
    NodeInfo {
        node: n(node),
        board: None,
        arch: Some("aarch64".into()),
        labels: BTreeMap::new(),
        region: None,
        cpus: None,
        mem_bytes: None,
        capacity_instances: 4,
    }
}

fn state_of<S: FleetStore>(s: &S, node: &str) -> (NodeState, Option<u64>) {
    let all = s.nodes().unwrap();
    let x = all.iter().find(|x| x.node.as_str() == node).unwrap();
    (x.state, x.state_since_ms)
}

pub(crate) fn node_states_are_stored_and_retired_is_final<H: Harness>(h: &H) {
    let s = &h.open();
    for x in ["a", "b"] {
        s.register_node(&node_info(x)).unwrap();
    }
    assert!(matches!(
        s.update_node_state(&n("ghost"), NodeOp::Drain, 1),
        Err(StoreError::NoSuchNode(_))
    ));
    assert_eq!(state_of(s, "a"), (NodeState::Schedulable, None));
    assert_eq!(
        s.update_node_state(&n("a"), NodeOp::Drain, 10).unwrap(),
        NodeState::Draining
    );
    // Idempotent: the same operation keeps the first time.
    s.update_node_state(&n("a"), NodeOp::Drain, 20).unwrap();
    // Another handle (another master process) sees it.
    assert_eq!(state_of(&h.open(), "a"), (NodeState::Draining, Some(10)));
    s.update_node_state(&n("a"), NodeOp::Undrain, 30).unwrap();
    assert_eq!(state_of(s, "a"), (NodeState::Schedulable, Some(30)));
    s.update_node_state(&n("a"), NodeOp::Retire, 40).unwrap();
    assert_eq!(state_of(s, "a").0, NodeState::Retiring);
    assert!(matches!(
        s.update_node_state(&n("b"), NodeOp::Revoked, 41),
        Err(StoreError::NodeState(NodeStateError::NotRetiring { .. }))
    ));
    s.update_node_state(&n("a"), NodeOp::Revoked, 50).unwrap();
    for op in [NodeOp::Undrain, NodeOp::Drain] {
        assert!(matches!(
            s.update_node_state(&n("a"), op, 60),
            Err(StoreError::NodeState(NodeStateError::Retired { .. }))
        ));
    }
    assert_eq!(state_of(&h.open(), "a"), (NodeState::Retired, Some(50)));
    assert_eq!(state_of(s, "b"), (NodeState::Schedulable, None));
}

pub(crate) fn allocation_skips_draining_retired_and_lost_nodes<H: Harness>(h: &H) {
    let s = &h.open();
    for x in ["a", "b", "c"] {
        s.register_node(&node_info(x)).unwrap();
    }
    // c reported at t=1000, a and b at t=50 000.
    s.ingest(&n("c"), &batch("c", 1, 1), 1_000).unwrap();
    s.ingest(&n("a"), &batch("a", 1, 1), 50_000).unwrap();
    s.ingest(&n("b"), &batch("b", 1, 1), 50_000).unwrap();
    s.update_node_state(&n("a"), NodeOp::Drain, 50_000).unwrap();
    s.update_node_state(&n("b"), NodeOp::Retire, 50_000)
        .unwrap();
    let lost_after = Placement {
        lost_after_ms: Some(30_000),
        ..Placement::default()
    };
    let now = 60_000;
    let r = s.place(
        request("x", RequestedState::Started),
        &lost_after,
        now,
        1_000_000,
        |_| {},
    );
    let Err(StoreError::Alloc(AllocError::NoCandidate { reasons })) = r else {
        panic!("{r:?}")
    };
    let text = reasons
        .iter()
        .map(|r| format!("{}: {:?}", r.node, r.mismatches))
        .collect::<Vec<_>>()
        .join("; ");
    assert!(text.contains("a: [State(Draining)]"), "{text}");
    assert!(text.contains("b: [State(Retiring)]"), "{text}");
    assert!(text.contains("c: [Lost { silent_ms: 59000 }]"), "{text}");
    // Named: a draining node is refused; nothing was stored by either refusal.
    assert!(matches!(
        s.place(
            request("x", RequestedState::Started),
            &on("a"),
            now,
            1,
            |_| {}
        ),
        Err(StoreError::Alloc(AllocError::Unschedulable { .. }))
    ));
    assert!(s.desired(&n("a")).unwrap().is_none());
    // c heard from again: it is the one candidate.
    s.ingest(&n("c"), &batch("c", 2, 2), now).unwrap();
    let placed_on = |name: &str| {
        let p = s.place(
            request(name, RequestedState::Started),
            &lost_after,
            now,
            1_000_000,
            |_| {},
        );
        p.unwrap().state.node.to_string()
    };
    assert_eq!(placed_on("x"), "c");
    // Undrained, a takes the next one (less loaded than c).
    s.update_node_state(&n("a"), NodeOp::Undrain, now).unwrap();
    assert_eq!(placed_on("y"), "a");
}
