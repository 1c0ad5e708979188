//! Evacuation over a store ([`crate::act::evacuate::driver::pass`]): a draining node's
//! instances move two-phase, a lost node's `move` instances move fenced, a retiring node
//! is revoked once it reported its copies destroyed, or at once when lost.

use hedge_wire::{InstanceStatus, RequestedState};

use super::moves::holders;
use super::place::{on, register, Reporter};
use super::{batch, n, request, Harness};
use crate::act::evacuate::driver::{pass, Done, Settings};
use crate::alloc::Placement;
use crate::node_state::{NodeOp, NodeState};
use crate::sign::{sign, MasterKey};
use crate::store::FleetStore;

const SETTINGS: Settings = Settings {
    lost_after_ms: 10_000,
    stale_after_ms: 1_000_000,
    listening_since_ms: 0,
};

/// `(instance, fence, lease_ms)` of `node`'s stored state's terms.
fn terms<S: FleetStore>(s: &S, node: &str) -> Vec<(String, u64, u32)> {
    let d = s.desired(&n(node)).unwrap().unwrap();
    let mut t: Vec<_> = d
        .terms
        .into_iter()
        .map(|t| (t.instance.to_string(), t.fence, t.lease_ms))
        .collect();
    t.sort();
    t
}

fn lines(done: &[Done]) -> String {
    done.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

fn no_revoke(node: &hedge_wire::Name) -> Result<(), String> {
    panic!("{node} revoked")
}

fn place_on<S: FleetStore>(s: &S, key: &MasterKey, name: &str, node: &str, lease_ms: u32) {
    let placement = Placement {
        lease_ms: Some(lease_ms),
        ..on(node)
    };
    s.place(
        request(name, RequestedState::Started),
        &placement,
        0,
        1_000_000,
        |d: &mut hedge_wire::DesiredState| sign(key, d, 0),
    )
    .unwrap();
}

pub(crate) fn draining_moves_two_phase_and_a_lost_node_loses_its_move_instances_fenced<
    H: Harness,
>(
    h: &H,
) {
    let s = &h.open();
    let key = MasterKey::generate();
    for x in ["a", "b", "c"] {
        register(s, x, 4);
        Reporter::new(x).state(s, "none", InstanceStatus::Stopped);
    }
    place_on(s, &key, "x", "a", 0);
    place_on(s, &key, "y", "a", 4_000);
    assert_eq!(s.leases().unwrap().get(&n("y")), Some(&4_000));
    assert_eq!(s.leases().unwrap().get(&n("x")), None, "wait: no lease");
    // The signed terms carry each instance's fence and lease.
    assert_eq!(
        terms(s, "a"),
        vec![("x".into(), 1, 0), ("y".into(), 1, 4_000)]
    );
    // Schedulable and heard from: nothing to do.
    assert_eq!(
        pass(s, &key, 2_000, &SETTINGS, None, &mut no_revoke).unwrap(),
        vec![]
    );

    s.update_node_state(&n("a"), NodeOp::Drain, 2_000).unwrap();
    let done = pass(s, &key, 2_000, &SETTINGS, None, &mut no_revoke).unwrap();
    let text = lines(&done);
    assert_eq!(done.len(), 2, "{text}");
    assert!(
        text.contains(
            "moved x from a to b: node a draining, b fits arch=aarch64, 0 of 4 slots used"
        ),
        "{text}"
    );
    assert!(
        text.contains("moved y from a to c: node a draining"),
        "{text}"
    );
    // Two-phase: a keeps its copies until the new ones run.
    assert_eq!(
        holders(s, "x"),
        vec![("a".into(), 1, true), ("b".into(), 2, true)]
    );
    // Moved once: the next pass leaves them alone.
    assert_eq!(
        pass(s, &key, 2_500, &SETTINGS, None, &mut no_revoke).unwrap(),
        vec![]
    );

    // At 30 s only b was heard from again: a and c are lost. c's `move` instance y
    // moves fenced (to b: a is draining); a holds no owner copy; x (wait) stays on b.
    s.ingest(&n("b"), &batch("b", 1, 1), 30_000).unwrap();
    let done = pass(s, &key, 30_000, &SETTINGS, None, &mut no_revoke).unwrap();
    let text = lines(&done);
    assert_eq!(done.len(), 1, "{text}");
    assert!(
        text.contains(
            "moved y from c to b: node c lost (silent 28 s), policy move, old copy fenced"
        ),
        "{text}"
    );
    assert_eq!(
        holders(s, "y"),
        vec![
            ("a".into(), 1, true),
            ("b".into(), 3, true),
            ("c".into(), 2, false)
        ],
        "destroyed on c at once; a's copy waits for its handover"
    );
    // The lease follows the instance; each placement elsewhere is a new fence.
    assert_eq!(
        terms(s, "b"),
        vec![("x".into(), 2, 0), ("y".into(), 3, 4_000)]
    );
    // The master that just started listening does not count the silence before.
    let fresh = Settings {
        listening_since_ms: 30_000,
        ..SETTINGS
    };
    place_on(s, &key, "z", "b", 4_000);
    assert_eq!(
        pass(s, &key, 39_000, &fresh, None, &mut no_revoke).unwrap(),
        vec![]
    );
}

pub(crate) fn a_retiring_node_is_revoked_once_empty_or_at_once_when_lost<H: Harness>(h: &H) {
    let s = &h.open();
    let key = MasterKey::generate();
    let (mut ra, mut rb) = (Reporter::new("a"), Reporter::new("b"));
    register(s, "a", 4);
    register(s, "b", 4);
    ra.state(s, "none", InstanceStatus::Stopped);
    rb.state(s, "none", InstanceStatus::Stopped);
    place_on(s, &key, "x", "a", 0);
    s.update_node_state(&n("a"), NodeOp::Retire, 2_000).unwrap();
    let done = pass(s, &key, 2_000, &SETTINGS, None, &mut no_revoke).unwrap();
    assert!(lines(&done).contains("moved x from a to b: node a retiring"));
    // The new copy runs: the handover destroys a's copy; a has not reported it yet.
    let gen_b = s.desired(&n("b")).unwrap().unwrap().generation;
    rb.accepted(s, gen_b);
    rb.state(s, "x", InstanceStatus::Running);
    s.complete_handovers(2_000, |d: &mut hedge_wire::DesiredState| sign(&key, d, 0))
        .unwrap();
    assert_eq!(
        holders(s, "x"),
        vec![("a".into(), 1, false), ("b".into(), 2, true)]
    );
    assert_eq!(
        pass(s, &key, 2_000, &SETTINGS, None, &mut no_revoke).unwrap(),
        vec![]
    );
    // a reports it destroyed: revoked, retired.
    let gen_a = s.desired(&n("a")).unwrap().unwrap().generation;
    ra.accepted(s, gen_a);
    ra.state(s, "x", InstanceStatus::Destroyed);
    let mut revoked = Vec::new();
    let done = pass(s, &key, 3_000, &SETTINGS, None, &mut |node| {
        revoked.push(node.to_string());
        Ok(())
    })
    .unwrap();
    assert_eq!(
        done,
        vec![Done::Revoked {
            node: n("a"),
            lost: false
        }]
    );
    assert_eq!(revoked, vec!["a".to_string()]);
    let nodes = s.nodes().unwrap();
    assert_eq!(nodes[0].state, NodeState::Retired);

    // A lost retiring node: its instances move fenced, whatever their policy, and it is
    // revoked in the same pass.
    register(s, "c", 4);
    Reporter::new("c").state(s, "none", InstanceStatus::Stopped);
    place_on(s, &key, "w", "c", 0);
    s.update_node_state(&n("c"), NodeOp::Retire, 3_000).unwrap();
    s.ingest(&n("b"), &batch("b", 1, 1), 30_000).unwrap();
    let done = pass(s, &key, 30_000, &SETTINGS, None, &mut |_| Ok(())).unwrap();
    let text = lines(&done);
    assert!(
        text.contains("moved w from c to b: node c retiring and lost (silent 28 s)"),
        "{text}"
    );
    assert!(text.ends_with("c revoked: retiring and lost"), "{text}");
    assert_eq!(
        holders(s, "w"),
        vec![("b".into(), 2, true), ("c".into(), 1, false)]
    );
}
