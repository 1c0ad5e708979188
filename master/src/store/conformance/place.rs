//! Placement: allocation, moves, pruning and the size limit of desired states.

use std::collections::BTreeMap;

use hedge_wire::limits::{DEFAULT_MAX_FRAME, MAX_INSTANCES};
use hedge_wire::{
    ConfigFile, InstanceRequest, InstanceStatus, Name, Record, RecordKind, RequestedState, Up,
};

use super::{n, request, Harness};
use crate::alloc::{AllocError, Placement};
use crate::sign::{sign, verify, MasterKey};
use crate::store::{FleetStore, NodeInfo, Owner, StoreError};

pub(crate) fn register<S: FleetStore>(s: &S, node: &str, capacity: u32) {
    s.register_node(&NodeInfo {
        node: n(node),
        board: None,
        arch: Some("aarch64".into()),
        labels: BTreeMap::new(),
        region: None,
        cpus: Some(4),
        mem_bytes: None,
        capacity_instances: capacity,
    })
    .unwrap();
}

pub(crate) fn on(node: &str) -> Placement {
    Placement {
        node: Some(n(node)),
        ..Placement::default()
    }
}

/// A node reporting records one at a time (seqs from 1 in its life).
pub(crate) struct Reporter {
    node: Name,
    seq: u64,
    epoch: u64,
}

impl Reporter {
    pub(crate) fn new(node: &str) -> Self {
        Reporter {
            node: n(node),
            seq: 0,
            epoch: 1,
        }
    }

    /// The node's store was wiped: a new epoch, seqs from 1 again.
    fn new_life(&mut self, epoch: u64) {
        self.epoch = epoch;
        self.seq = 0;
    }

    pub(crate) fn send<S: FleetStore>(&mut self, s: &S, kind: RecordKind) {
        self.seq += 1;
        let up = Up {
            node: self.node.clone(),
            records: vec![Record {
                seq: self.seq,
                time_ms: 1000 + self.seq,
                kind,
            }],
            covers: Some((self.seq, self.seq)),
            epoch: self.epoch,
        };
        s.ingest(&self.node, &up, 1000 + self.seq).unwrap();
    }

    pub(crate) fn accepted<S: FleetStore>(&mut self, s: &S, generation: u64) {
        self.send(
            s,
            RecordKind::Desired {
                generation,
                accepted: true,
                reason: String::new(),
            },
        );
    }

    pub(crate) fn state<S: FleetStore>(&mut self, s: &S, instance: &str, status: InstanceStatus) {
        self.send(
            s,
            RecordKind::InstanceState {
                instance: n(instance),
                status,
                pid: None,
                restarts: 0,
                last_exit: None,
            },
        );
    }
}

pub(crate) fn names<S: FleetStore>(s: &S, node: &str) -> Vec<(String, RequestedState)> {
    s.desired(&n(node))
        .unwrap()
        .map(|d| {
            d.instances
                .into_iter()
                .map(|r| (r.name.to_string(), r.state))
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn a_state_too_large_to_deliver_is_refused_and_nothing_is_stored<H: Harness>(h: &H) {
    let s = &h.open();
    register(s, "pi", 64);
    let key = MasterKey::generate();
    let big = |name: &str| {
        let mut r = request(name, RequestedState::Started);
        r.config_files = vec![ConfigFile {
            path: "etc/big.conf".into(),
            template: "x".repeat(15 * 1024),
        }];
        r
    };
    let mut accepted = 0;
    let err = loop {
        match s.place(big(&format!("big{accepted}")), &on("pi"), 0, 0, |d| {
            sign(&key, d, 0)
        }) {
            Ok(p) => {
                accepted += 1;
                assert_eq!(p.state.generation, accepted);
            }
            Err(e) => break e,
        }
        assert!(accepted < 10, "never refused");
    };
    assert_eq!(accepted, 4, "four 15 KiB files fit in 64 KiB, five do not");
    let StoreError::TooLarge { node, len, max } = &err else {
        panic!("{err:?}")
    };
    assert_eq!((node.as_str(), *max), ("pi", DEFAULT_MAX_FRAME));
    assert!(*len > DEFAULT_MAX_FRAME, "{len}");
    let text = err.to_string();
    assert!(
        text.contains(&len.to_string()) && text.contains("65536"),
        "{text}"
    );
    // Nothing stored: the stored state is the last accepted one, and it encodes.
    let d = s.desired(&n("pi")).unwrap().unwrap();
    assert_eq!((d.generation, d.instances.len()), (4, 4));
    verify(&key.public(), &d).unwrap();
    hedge_wire::codec::encode(&hedge_wire::Message::Desired(d.clone()), DEFAULT_MAX_FRAME).unwrap();
    // A small request still fits and gets the next generation.
    let p = s
        .place(
            request("small", RequestedState::Started),
            &on("pi"),
            0,
            0,
            |d| sign(&key, d, 0),
        )
        .unwrap();
    assert_eq!(p.state.generation, 5);
    // put_desired refuses the same way.
    let mut too_big = p.state.clone();
    too_big.generation = 6;
    too_big.instances.push(big("big9"));
    too_big.instances.push(big("big10"));
    assert!(matches!(
        s.put_desired(&too_big),
        Err(StoreError::TooLarge { .. })
    ));
    assert_eq!(s.desired(&n("pi")).unwrap().unwrap().generation, 5);
}

pub(crate) fn destroyed_instances_are_pruned_only_once_reported_destroyed_after_that_generation<
    H: Harness,
>(
    h: &H,
) {
    let s = &h.open();
    register(s, "pi", 8);
    let mut node = Reporter::new("pi");
    let put = |r: InstanceRequest| s.place(r, &on("pi"), 0, 0, |_| {}).unwrap();
    use RequestedState::{Destroyed, Started};

    // First life of x: started, applied, running, destroyed, applied, reported destroyed.
    assert_eq!(put(request("x", Started)).state.generation, 1);
    node.accepted(s, 1);
    node.state(s, "x", InstanceStatus::Running);
    put(request("x", Destroyed));
    // Not reported yet: a later write keeps it.
    put(request("y", Started));
    assert_eq!(
        names(s, "pi"),
        vec![("x".into(), Destroyed), ("y".into(), Started)]
    );
    // Applied (generation 3 >= 2) and reported destroyed: the next write prunes it.
    node.accepted(s, 3);
    node.state(s, "x", InstanceStatus::Destroyed);
    let p = put(request("y", Started));
    assert_eq!(p.pruned, vec![(n("pi"), n("x"))]);
    assert_eq!(names(s, "pi"), vec![("y".into(), Started)]);
    let view = s.instances().unwrap();
    let x = view.iter().find(|i| i.name == n("x")).unwrap();
    assert_eq!(
        (x.owner, x.requested, x.status),
        (
            Owner::Master,
            Some(Destroyed),
            Some(InstanceStatus::Destroyed)
        )
    );

    // Second life: requested again (generation 5), destroyed before the node applied
    // it. The first life's `Destroyed` report is the newest the master has; it must not
    // prune the new destroy.
    let g = put(request("x", Started)).state.generation;
    assert_eq!(g, 5);
    let g = put(request("x", Destroyed)).state.generation;
    put(request("z", Started));
    assert!(names(s, "pi").contains(&("x".into(), Destroyed)));
    // Applying an older generation and reporting is not enough either.
    node.accepted(s, g - 1);
    node.state(s, "x", InstanceStatus::Destroyed);
    put(request("z", Started));
    assert!(names(s, "pi").contains(&("x".into(), Destroyed)));
    // Applied at last, then reported destroyed: pruned.
    node.accepted(s, g + 2);
    node.state(s, "x", InstanceStatus::Destroyed);
    put(request("z", Started));
    assert!(!names(s, "pi").iter().any(|(i, _)| i == "x"));
}

/// Seqs of a node's new life restart at 1: an old life's `Destroyed` report at a high
/// seq is older than the new life's acceptance, and must not prune a new destroy.
pub(crate) fn an_old_lifes_destroyed_report_does_not_prune_after_the_node_was_wiped<H: Harness>(
    h: &H,
) {
    let s = &h.open();
    register(s, "pi", 8);
    let mut node = Reporter::new("pi");
    let put = |r: InstanceRequest| s.place(r, &on("pi"), 0, 0, |_| {}).unwrap();
    use RequestedState::{Destroyed, Started};
    put(request("x", Started));
    node.accepted(s, 1);
    let g = put(request("x", Destroyed)).state.generation;
    node.accepted(s, g);
    node.seq = 100;
    node.state(s, "x", InstanceStatus::Destroyed);
    put(request("y", Started));
    assert!(!names(s, "pi").iter().any(|(i, _)| i == "x"), "pruned");
    // x again, then destroyed; the node is wiped and applies it in its new life.
    put(request("x", Started));
    let g = put(request("x", Destroyed)).state.generation;
    node.new_life(2);
    node.accepted(s, g);
    put(request("z", Started));
    assert!(
        names(s, "pi").contains(&("x".into(), Destroyed)),
        "not reported destroyed in the new life yet: {:?}",
        names(s, "pi")
    );
    node.state(s, "x", InstanceStatus::Destroyed);
    put(request("z", Started));
    assert!(!names(s, "pi").iter().any(|(i, _)| i == "x"));
}

pub(crate) fn many_names_destroyed_in_turn_never_fill_the_desired_state<H: Harness>(h: &H) {
    let s = &h.open();
    register(s, "pi", 8);
    let mut node = Reporter::new("pi");
    // More names than one state may hold.
    for i in 0..MAX_INSTANCES + 20 {
        let name = format!("job{i}");
        let p = s
            .place(
                request(&name, RequestedState::Started),
                &on("pi"),
                0,
                0,
                |_| {},
            )
            .unwrap();
        node.accepted(s, p.state.generation);
        node.state(s, &name, InstanceStatus::Running);
        let p = s
            .place(
                request(&name, RequestedState::Destroyed),
                &on("pi"),
                0,
                0,
                |_| {},
            )
            .unwrap();
        node.accepted(s, p.state.generation);
        node.state(s, &name, InstanceStatus::Destroyed);
        assert!(p.state.instances.len() <= 2, "{:?}", names(s, "pi"));
    }
}

pub(crate) fn requesting_an_instance_on_another_node_moves_it<H: Harness>(h: &H) {
    let s = &h.open();
    register(s, "a", 4);
    register(s, "b", 4);
    register(s, "c", 4);
    let key = MasterKey::generate();
    let put = |r: InstanceRequest, p: &Placement| s.place(r, p, 0, 0, |d| sign(&key, d, 0));
    put(request("x", RequestedState::Started), &on("a")).unwrap();
    let p = put(request("x", RequestedState::Started), &on("b")).unwrap();
    assert_eq!(p.state.node, n("b"));
    assert_eq!(p.destroyed_on, vec![(n("a"), 2)]);
    assert_eq!(names(s, "a"), vec![("x".into(), RequestedState::Destroyed)]);
    assert_eq!(names(s, "b"), vec![("x".into(), RequestedState::Started)]);
    verify(&key.public(), &s.desired(&n("a")).unwrap().unwrap()).unwrap();
    // Without --node it stays on b; a is not written again.
    let p = put(request("x", RequestedState::Stopped), &Placement::default()).unwrap();
    assert_eq!((p.state.node.as_str(), p.destroyed_on.len()), ("b", 0));
    assert_eq!(s.desired(&n("a")).unwrap().unwrap().generation, 2);
    // Destroying names where it is, or nothing.
    assert!(matches!(
        put(request("x", RequestedState::Destroyed), &on("c")),
        Err(StoreError::NotPlaced { .. })
    ));
    assert!(matches!(
        put(
            request("ghost", RequestedState::Destroyed),
            &Placement::default()
        ),
        Err(StoreError::NotPlaced { node: None, .. })
    ));
    assert!(names(s, "c").is_empty());
    let p = put(
        request("x", RequestedState::Destroyed),
        &Placement::default(),
    )
    .unwrap();
    assert_eq!(p.state.node, n("b"));
    assert_eq!(names(s, "b"), vec![("x".into(), RequestedState::Destroyed)]);
    // An unknown node is refused, nothing written.
    assert!(matches!(
        put(request("w", RequestedState::Started), &on("nope")),
        Err(StoreError::Alloc(AllocError::NoSuchNode(_)))
    ));
}

pub(crate) fn copies_left_by_an_older_master_are_reduced_to_one<H: Harness>(h: &H) {
    let s = &h.open();
    register(s, "a", 4);
    register(s, "b", 4);
    // The old request path let `--node b` add a second live copy.
    for node in ["a", "b"] {
        s.update_desired(
            &n(node),
            |mut v| {
                v.push(request("x", RequestedState::Started));
                v
            },
            |_| {},
        )
        .unwrap();
    }
    let p = s
        .place(
            request("x", RequestedState::Started),
            &Placement::default(),
            0,
            0,
            |_| {},
        )
        .unwrap();
    assert_eq!(p.state.node, n("a"));
    assert_eq!(p.destroyed_on, vec![(n("b"), 2)]);
    assert_eq!(names(s, "b"), vec![("x".into(), RequestedState::Destroyed)]);
}
