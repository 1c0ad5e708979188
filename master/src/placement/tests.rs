#![allow(clippy::unwrap_used)]

use hedge_wire::RequestedState;

use super::*;
use crate::store::conformance::{n, open, request as req};
use crate::store::NodeInfo;

fn on(node: &str) -> Placement {
    Placement {
        node: Some(n(node)),
        ..Placement::default()
    }
}

#[test]
fn a_name_stays_where_it_is_live_and_a_new_name_is_allocated() {
    let x = n("x");
    let holders = vec![(n("a"), false), (n("b"), true)];
    let any = Placement::default();
    assert_eq!(
        target(&x, &holders, &any, false).unwrap(),
        Target::On(n("b"))
    );
    assert_eq!(
        target(&x, &holders, &any, true).unwrap(),
        Target::On(n("b"))
    );
    // Held destroyed only: it goes back to the first holder.
    let gone = vec![(n("a"), false), (n("c"), false)];
    assert_eq!(target(&x, &gone, &any, false).unwrap(), Target::On(n("a")));
    assert_eq!(target(&x, &[], &any, false).unwrap(), Target::Allocate);
    // A named node is allocation's to check, wherever the name lives.
    assert_eq!(
        target(&x, &holders, &on("c"), false).unwrap(),
        Target::Allocate
    );
    assert_eq!(
        target(&x, &holders, &on("a"), true).unwrap(),
        Target::Allocate
    );
}

#[test]
fn a_destroy_must_name_where_the_instance_is_or_nothing() {
    let x = n("x");
    let holders = vec![(n("a"), true)];
    match target(&x, &holders, &on("b"), true) {
        Err(StoreError::NotPlaced { instance, node }) => {
            assert_eq!((instance, node.map(|b| *b)), (n("x"), Some(n("b"))));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        target(&x, &[], &Placement::default(), true),
        Err(StoreError::NotPlaced { node: None, .. })
    ));
    // A name no state holds (a recovered master forgot it): destroyed where it says.
    assert_eq!(target(&x, &[], &on("b"), true).unwrap(), Target::On(n("b")));
}

#[test]
fn a_move_destroys_the_instance_on_every_other_live_holder() {
    let holders = vec![
        (n("a"), true),
        (n("b"), false),
        (n("c"), true),
        (n("d"), true),
    ];
    assert_eq!(moved_from(&holders, &n("c")), vec![n("a"), n("d")]);
    assert_eq!(moved_from(&holders[..1], &n("a")), Vec::<Name>::new());
}

#[test]
fn a_destroy_applies_at_the_first_acceptance_of_its_generation_or_a_later_one() {
    // ((life, seq), generation) accepted: life 1 up to generation 4, life 2 from 5.
    let accepted = vec![((1, 10), 2), ((1, 20), 4), ((2, 3), 5), ((2, 1), 4)];
    assert_eq!(applied_at(&accepted, 3), Some((1, 20)));
    assert_eq!(applied_at(&accepted, 5), Some((2, 3)));
    assert_eq!(applied_at(&accepted, 1), Some((1, 10)));
    assert_eq!(applied_at(&accepted, 6), None);
    assert_eq!(applied_at(&[], 1), None);
}

#[test]
fn refusals_are_told_from_store_failures() {
    let refused = [
        StoreError::Alloc(crate::alloc::AllocError::NoSuchNode(n("a"))),
        StoreError::NotPlaced {
            instance: n("x"),
            node: None,
        },
        StoreError::TooLarge {
            node: n("a"),
            len: 2,
            max: 1,
        },
        StoreError::Invalid(hedge_wire::WireError::TooLarge { len: 2, max: 1 }),
    ];
    for e in refused {
        assert!(matches!(PlaceError::from(e), PlaceError::Refused(_)));
    }
    assert!(matches!(
        PlaceError::from(StoreError::BadName("?".into())),
        PlaceError::Store(_)
    ));
    assert!(matches!(
        PlaceError::from(StoreError::Batch("disk".into())),
        PlaceError::Store(_)
    ));
}

#[test]
fn a_request_is_signed_at_signing_time_and_reported_line_by_line() {
    let (_d, s) = open();
    for node in ["a", "b"] {
        s.register_node(&NodeInfo {
            node: n(node),
            board: None,
            arch: None,
            labels: Default::default(),
            region: None,
            cpus: None,
            mem_bytes: None,
            capacity_instances: 4,
        })
        .unwrap();
    }
    let key = MasterKey::generate();
    let clock = std::cell::Cell::new(1_000);
    let now = || {
        clock.set(clock.get() + 1);
        clock.get()
    };
    let placed = request(
        &s,
        &key,
        req("x", RequestedState::Started),
        None,
        &on("a"),
        60_000,
        now,
    )
    .unwrap();
    // The placement read the clock once, the signature once after it.
    assert_eq!(placed.state.expires_ms, 1_002 + crate::sign::DESIRED_TTL_MS);
    crate::sign::verify(&key.public(), &placed.state).unwrap();
    let moved = request(
        &s,
        &key,
        req("x", RequestedState::Started),
        None,
        &on("b"),
        60_000,
        now,
    )
    .unwrap();
    assert_eq!(
        report(&n("x"), &moved),
        vec![
            Line::Out("x destroyed on a (generation 2): moved".into()),
            Line::Out("x requested on b (generation 1); `hedge master run` publishes it".into()),
        ]
    );
    let pruned = Placed {
        pruned: vec![(n("a"), n("y"))],
        ..moved
    };
    assert_eq!(
        report(&n("x"), &pruned)[1],
        Line::Err("y pruned from a's desired state (destroyed, reported destroyed)".into())
    );
    assert!(matches!(
        request(
            &s,
            &key,
            req("w", RequestedState::Started),
            None,
            &on("nope"),
            1,
            now
        ),
        Err(PlaceError::Refused(StoreError::Alloc(_)))
    ));
}
