//! Backup policies in signed states, restores placed by `hedge master restore`
//! (placement, directive, the blob service's questions, closing) and the master's epoch.

use hedge_wire::backup::{BackupEvent, BackupPolicy, RestoreDirective, SnapshotId};
use hedge_wire::{RecordKind, RequestedState};
use zeroize::Zeroizing;

use super::moves::holders;
use super::place::{on, register, Reporter};
use super::{n, request, Harness};
use crate::alloc::Placement;
use crate::restore::RestoreRequest;
use crate::sign::{sign, verify, MasterKey};
use crate::store::{FleetStore, StoreError};

fn policy(instance: &str, interval_s: u32) -> BackupPolicy {
    BackupPolicy {
        instance: n(instance),
        interval_s,
        retain: 3,
        paths: vec!["srv".into()],
        command: Vec::new(),
    }
}

pub(crate) fn backup_policies_reach_the_signed_state_follow_moves_and_go_when_removed<
    H: Harness,
>(
    h: &H,
) {
    let s = &h.open();
    register(s, "a", 4);
    register(s, "b", 4);
    let key = MasterKey::generate();
    let signed = |d: &mut hedge_wire::DesiredState| sign(&key, d, 0);
    let p = policy("x", 60);
    s.place_with_backup(
        request("x", RequestedState::Started),
        Some(&p),
        &on("a"),
        0,
        0,
        signed,
    )
    .unwrap();
    s.place_with_backup(
        request("y", RequestedState::Started),
        None,
        &on("a"),
        0,
        0,
        signed,
    )
    .unwrap();
    let a = s.desired(&n("a")).unwrap().unwrap();
    verify(&key.public(), &a).unwrap();
    assert_eq!(a.backups, vec![p.clone()], "only x has a policy");
    assert_eq!(a.backup_of(&n("x")), Some(&p));
    assert_eq!(s.backup_policy(&n("x")).unwrap(), Some(p.clone()));
    assert_eq!(s.backup_policies().unwrap(), vec![p.clone()]);
    // Any other write of the state keeps it; a plain `place` keeps it too.
    let a = s.update_desired(&n("a"), |v| v, signed).unwrap();
    assert_eq!(a.backups, vec![p.clone()]);
    s.place(
        request("x", RequestedState::Stopped),
        &Placement::default(),
        0,
        0,
        signed,
    )
    .unwrap();
    assert_eq!(
        s.desired(&n("a")).unwrap().unwrap().backups,
        vec![p.clone()]
    );
    // A new policy replaces it; the instance carries it to the node it moves to.
    let p2 = policy("x", 3600);
    s.place_with_backup(
        request("x", RequestedState::Started),
        Some(&p2),
        &on("b"),
        0,
        0,
        signed,
    )
    .unwrap();
    let b = s.desired(&n("b")).unwrap().unwrap();
    verify(&key.public(), &b).unwrap();
    assert_eq!(b.backups, vec![p2.clone()]);
    let a = s.desired(&n("a")).unwrap().unwrap();
    assert!(a.backups.is_empty(), "x is destroyed on a: no policy there");
    // The request without [backup] removes it.
    let placed = s
        .place_with_backup(
            request("x", RequestedState::Started),
            None,
            &Placement::default(),
            0,
            0,
            signed,
        )
        .unwrap();
    assert_eq!(placed.state.node, n("b"));
    assert!(placed.state.backups.is_empty());
    assert!(s.desired(&n("b")).unwrap().unwrap().backups.is_empty());
    assert_eq!(s.backup_policy(&n("x")).unwrap(), None);
    // A policy the wire refuses is refused, and nothing is stored.
    let before = s.desired_generation(&n("b")).unwrap();
    let bad = BackupPolicy {
        interval_s: 0,
        ..policy("x", 1)
    };
    assert!(matches!(
        s.place_with_backup(
            request("x", RequestedState::Started),
            Some(&bad),
            &Placement::default(),
            0,
            0,
            signed
        ),
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(s.desired_generation(&n("b")).unwrap(), before);
}

fn restore_of(instance: &str, target: &str, source: &str, id: u64, key: u8) -> RestoreRequest {
    RestoreRequest {
        instance: n(instance),
        target: n(target),
        source: n(source),
        snapshot: SnapshotId(id),
        key: Zeroizing::new([key; 32]),
    }
}

fn restored(instance: &str, id: u64, source: &str) -> RecordKind {
    RecordKind::Backup {
        instance: n(instance),
        snapshot: SnapshotId(id),
        event: BackupEvent::Restored { source: n(source) },
        message: String::new(),
    }
}

pub(crate) fn a_restore_moves_the_instance_with_its_directive_until_the_target_reports_it_restored<
    H: Harness,
>(
    h: &H,
) {
    let s = &h.open();
    register(s, "a", 4);
    register(s, "b", 4);
    register(s, "c", 4);
    let key = MasterKey::generate();
    let signed = |d: &mut hedge_wire::DesiredState| sign(&key, d, 0);
    s.place_with_backup(
        request("x", RequestedState::Started),
        Some(&policy("x", 60)),
        &on("a"),
        0,
        0,
        signed,
    )
    .unwrap();
    // Nothing placed: nothing to restore, nothing stored.
    assert!(matches!(
        s.place_restore(&restore_of("nope", "b", "a", 1, 1), 5, 0, signed),
        Err(StoreError::NotPlaced { .. })
    ));
    assert!(s.open_restores().unwrap().is_empty());

    // x lives on a: restoring it onto b moves it, fenced, with the directive.
    let r = s
        .place_restore(&restore_of("x", "b", "a", 0xabc, 7), 5, 0, signed)
        .unwrap();
    assert_eq!(r.state.node, n("b"));
    verify(&key.public(), &r.state).unwrap();
    let directive = RestoreDirective {
        instance: n("x"),
        source: n("a"),
        snapshot: SnapshotId(0xabc),
    };
    assert_eq!(r.state.restores, vec![directive.clone()]);
    assert_eq!(r.state.backups, vec![policy("x", 60)], "the policy follows");
    assert_eq!(
        holders(s, "x"),
        vec![("a".into(), 1, false), ("b".into(), 2, true)],
        "fence + 1 on b, destroyed on a at once"
    );
    assert_eq!(r.moved_from.as_ref().map(|(n, _)| n.as_str()), Some("a"));
    assert_eq!(r.replaced, None);
    assert!(s.desired(&n("a")).unwrap().unwrap().restores.is_empty());
    // What the blob service asks.
    let (source, k) = s
        .open_restore_for(&n("b"), &n("x"), SnapshotId(0xabc))
        .unwrap()
        .unwrap();
    assert_eq!((source, k), (n("a"), [7; 32]));
    for (target, instance, id) in [("a", "x", 0xabc), ("c", "x", 0xabc), ("b", "x", 0xabd)] {
        assert!(s
            .open_restore_for(&n(target), &n(instance), SnapshotId(id))
            .unwrap()
            .is_none());
    }
    let from_a: Vec<_> = s
        .open_restores_from(&n("a"))
        .unwrap()
        .into_iter()
        .map(|o| (o.target, o.snapshot))
        .collect();
    assert_eq!(from_a, vec![(n("b"), SnapshotId(0xabc))]);
    assert!(s.open_restores_from(&n("b")).unwrap().is_empty());
    let open = s.open_restores().unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!((&open[0].target, &open[0].source), (&n("b"), &n("a")));
    // Other writes of b's state keep the directive while it is open.
    let b = s.update_desired(&n("b"), |v| v, signed).unwrap();
    assert_eq!(b.restores, vec![directive.clone()]);

    // A second restore of x replaces the open one (x is on b now: no move).
    let r = s
        .place_restore(&restore_of("x", "b", "a", 0xdef, 9), 6, 0, signed)
        .unwrap();
    assert_eq!(r.moved_from, None);
    assert_eq!(r.replaced.map(|o| o.snapshot), Some(SnapshotId(0xabc)));
    assert_eq!(r.state.restores[0].snapshot, SnapshotId(0xdef));
    assert_eq!(holders(s, "x")[1], ("b".into(), 2, true), "same copy");
    assert!(s
        .open_restore_for(&n("b"), &n("x"), SnapshotId(0xabc))
        .unwrap()
        .is_none());

    // Records that do not report this restore done leave it open.
    let mut on_b = Reporter::new("b");
    let mut on_a = Reporter::new("a");
    on_b.send(s, restored("x", 0xabc, "a"));
    on_a.send(s, restored("x", 0xdef, "a"));
    on_b.send(s, restored("x", 0xdef, "c"));
    on_b.send(
        s,
        RecordKind::Backup {
            instance: n("x"),
            snapshot: SnapshotId(0xdef),
            event: BackupEvent::RestoreFailed { source: n("a") },
            message: "chunk damaged".into(),
        },
    );
    assert!(s
        .open_restore_for(&n("b"), &n("x"), SnapshotId(0xdef))
        .unwrap()
        .is_some());
    // b's Restored record closes it: key gone, directive out of b's next state.
    on_b.send(s, restored("x", 0xdef, "a"));
    assert!(s
        .open_restore_for(&n("b"), &n("x"), SnapshotId(0xdef))
        .unwrap()
        .is_none());
    assert!(s.open_restores_from(&n("a")).unwrap().is_empty());
    assert!(s.open_restores().unwrap().is_empty());
    let b = s.update_desired(&n("b"), |v| v, signed).unwrap();
    assert!(b.restores.is_empty());
    assert_eq!(b.backups, vec![policy("x", 60)]);

    // A restore whose instance leaves its target before it is done closes there.
    s.place_restore(&restore_of("x", "b", "b", 0x1, 1), 7, 0, signed)
        .unwrap();
    assert_eq!(s.open_restores_from(&n("b")).unwrap().len(), 1);
    s.place(
        request("x", RequestedState::Destroyed),
        &on("b"),
        0,
        0,
        signed,
    )
    .unwrap();
    assert!(s.open_restores().unwrap().is_empty());
    assert!(s.desired(&n("b")).unwrap().unwrap().restores.is_empty());
}

pub(crate) fn a_restore_onto_a_node_that_does_not_fit_stores_nothing<H: Harness>(h: &H) {
    let s = &h.open();
    register(s, "a", 4);
    register(s, "full", 0);
    let key = MasterKey::generate();
    let signed = |d: &mut hedge_wire::DesiredState| sign(&key, d, 0);
    s.place(
        request("x", RequestedState::Started),
        &on("a"),
        0,
        0,
        signed,
    )
    .unwrap();
    let before = s.desired_generation(&n("a")).unwrap();
    assert!(s
        .place_restore(&restore_of("x", "full", "a", 1, 1), 5, 0, signed)
        .is_err());
    assert!(s.open_restores().unwrap().is_empty());
    assert!(s
        .open_restore_for(&n("full"), &n("x"), SnapshotId(1))
        .unwrap()
        .is_none());
    assert_eq!(s.desired_generation(&n("a")).unwrap(), before);
    assert_eq!(s.desired(&n("full")).unwrap(), None);
}

pub(crate) fn a_new_store_is_in_epoch_0<H: Harness>(h: &H) {
    let s = &h.open();
    assert_eq!(s.epoch().unwrap(), 0);
    let key = MasterKey::generate();
    let d = s
        .update_desired(&n("a"), |v| v, |d| sign(&key, d, 0))
        .unwrap();
    assert_eq!(d.generation, 1);
}
