//! Daemon-level tests of leases: a leased copy runs only while the node holds its
//! lease, stops (not destroyed) when it lapses and starts again on a fresh one, with
//! its fence records; copies without a lease run offline as before; after a restart a
//! leased copy waits for a fresh lease.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use ed25519_dalek::Signer;
use hedge_uplink::link::ToNode;
use hedge_wire::codec::encode;
use hedge_wire::{DesiredState, InstanceTerms, Message, Name, RecordKind};

use super::{kill_all, sleeper};
use crate::daemon::desired::tests::{config, master};
use crate::daemon::links::LinkId;
use crate::daemon::{monotonic_now, Daemon};

/// A daemon for node `n1` in `dir` that trusts the master's key.
fn daemon(dir: &std::path::Path) -> Daemon {
    Daemon::boot(config(dir)).unwrap()
}

/// A signed state placing `leased` (a lease of `lease_ms`, fence 1) and `offline` (no
/// lease, fence 1).
fn frame(lease_ms: u32) -> Vec<u8> {
    let term = |name: &str, lease_ms| InstanceTerms {
        instance: Name::new(name).unwrap(),
        fence: 1,
        lease_ms,
    };
    let mut d = DesiredState {
        node: Name::new("n1").unwrap(),
        generation: 1,
        instances: vec![sleeper("leased"), sleeper("offline")],
        signature: heapless::Vec::new(),
        expires_ms: crate::daemon::now_ms() + 86_400_000,
        terms: vec![term("leased", lease_ms), term("offline", 0)],
        imports: Vec::new(),
        backups: Vec::new(),
        restores: Vec::new(),
    };
    d.signature = heapless::Vec::from_slice(&master().sign(&d.signed_bytes()).to_bytes()).unwrap();
    encode(&Message::Desired(d), hedge_wire::DEFAULT_MAX_FRAME).unwrap()
}

/// The fence records in the outbox, in order: (instance, fence, holding).
fn fences(d: &Daemon) -> Vec<(String, u64, bool)> {
    d.outbox
        .store
        .outbox_from(0, 10_000)
        .unwrap()
        .into_iter()
        .filter_map(|r| match r.kind {
            RecordKind::Fence {
                instance,
                fence,
                holding,
            } => Some((instance.to_string(), fence, holding)),
            _ => None,
        })
        .collect()
}

fn runs(d: &Daemon, name: &str) -> bool {
    d.instances.wants_running(&Name::new(name).unwrap())
}

fn view(d: &Daemon, name: &str) -> (Option<u64>, Option<bool>) {
    let s = d.status();
    let i = s.instance(name).unwrap();
    (i.fence, i.lease_held)
}

/// The uplink reports contact just now.
fn renew(d: &mut Daemon) {
    d.on_link(
        LinkId::Uplink,
        ToNode::Lease {
            since: monotonic_now(),
        },
    );
}

fn f(name: &str, holding: bool) -> (String, u64, bool) {
    (name.to_string(), 1, holding)
}

#[tokio::test]
async fn a_leased_copy_runs_only_while_the_lease_is_held_and_waits_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = daemon(dir.path());
    d.reconcile();
    assert_eq!(d.on_desired_frame(&frame(1000)), Ok(1));

    // No contact yet: the copy without a lease runs (offline, as ever), the leased one
    // is created but waits.
    assert!(runs(&d, "offline"));
    assert!(!runs(&d, "leased"));
    assert!(d
        .instances
        .slots
        .contains_key(&Name::new("leased").unwrap()));
    assert_eq!(view(&d, "leased"), (Some(1), Some(false)));
    assert_eq!(view(&d, "offline"), (Some(1), None));
    assert_eq!(fences(&d), vec![f("offline", true)]);

    // An ack proves contact a little while ago: the leased copy starts, its fence
    // reported before it.
    let since = monotonic_now() - Duration::from_millis(700);
    d.on_link(LinkId::Uplink, ToNode::Lease { since });
    assert!(runs(&d, "leased"));
    assert_eq!(view(&d, "leased"), (Some(1), Some(true)));
    assert_eq!(fences(&d), vec![f("offline", true), f("leased", true)]);
    let lapse = d.lease_deadline().unwrap();
    assert!(lapse <= since + Duration::from_millis(1000));

    // No further contact: at the lapse the copy stops (self-fenced), not destroyed.
    let deadline = monotonic_now() + Duration::from_secs(5);
    while runs(&d, "leased") {
        assert!(monotonic_now() < deadline, "the lease never lapsed");
        let wake = d.lease_deadline().unwrap_or(deadline).min(deadline);
        tokio::time::sleep_until(tokio::time::Instant::from_std(wake)).await;
        d.lease_tick();
    }
    assert!(monotonic_now() >= since + Duration::from_millis(1000));
    let leased = Name::new("leased").unwrap();
    assert!(!d.instances.slots[&leased].destroying);
    assert!(d.instances.partitions.path(&leased).exists());
    assert!(runs(&d, "offline"), "a copy without a lease runs on");
    assert_eq!(view(&d, "leased"), (Some(1), Some(false)));
    assert_eq!(
        fences(&d),
        vec![f("offline", true), f("leased", true), f("leased", false)]
    );
    // A stale lease start changes nothing.
    d.on_link(LinkId::Uplink, ToNode::Lease { since });
    assert!(!runs(&d, "leased"));

    // A fresh lease: it runs again under the same fence.
    renew(&mut d);
    assert!(runs(&d, "leased"));
    assert_eq!(fences(&d).last(), Some(&f("leased", true)));

    // A restart (no monotonic clock survives it): the leased copy waits for a fresh
    // lease, the other starts offline at once.
    kill_all(&mut d);
    drop(d);
    let mut d = daemon(dir.path());
    d.reconcile();
    assert!(runs(&d, "offline"));
    assert!(!runs(&d, "leased"));
    assert_eq!(view(&d, "leased"), (Some(1), Some(false)));
    renew(&mut d);
    assert!(runs(&d, "leased"));
    kill_all(&mut d);
}

#[tokio::test]
async fn without_leases_instances_run_offline_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = daemon(dir.path());
    d.reconcile();
    assert_eq!(d.on_desired_frame(&frame(0)), Ok(1));
    assert!(runs(&d, "leased") && runs(&d, "offline"));
    assert_eq!(view(&d, "leased"), (Some(1), None));
    // Nothing to lapse, no heartbeat to make.
    assert_eq!(d.lease_deadline(), None);
    kill_all(&mut d);
    drop(d);
    // A restart offline: both start at boot, with no contact at all.
    let mut d = daemon(dir.path());
    d.reconcile();
    assert!(runs(&d, "leased") && runs(&d, "offline"));
    kill_all(&mut d);
}

/// A leased copy's heartbeats go out while only the mesh link is up: the master hears
/// the node through its peers and its signed acks renew the lease as a direct link's do.
#[tokio::test]
async fn heartbeats_go_out_while_only_the_mesh_link_is_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = daemon(dir.path());
    d.reconcile();
    assert_eq!(d.on_desired_frame(&frame(600)), Ok(1));
    let (to_node_tx, to_node_rx) = tokio::sync::mpsc::unbounded_channel();
    let (to_link_tx, _to_link_rx) = tokio::sync::mpsc::unbounded_channel();
    drop(to_node_tx);
    let task = tokio::spawn(std::future::pending::<()>());
    d.links.add(crate::daemon::links::LinkHandle::new(
        LinkId::Mesh,
        to_link_tx,
        to_node_rx,
        task,
    ));
    d.on_link(LinkId::Mesh, ToNode::Link(true));
    d.on_link(
        LinkId::Mesh,
        ToNode::Lease {
            since: monotonic_now(),
        },
    );
    assert!(runs(&d, "leased"));
    let health = |d: &Daemon| {
        d.outbox
            .store
            .outbox_from(0, 10_000)
            .unwrap()
            .iter()
            .filter(|r| matches!(r.kind, RecordKind::NodeHealth { .. }))
            .count()
    };
    let before = health(&d);
    // A third of the lease after its start, a heartbeat.
    let deadline = monotonic_now() + Duration::from_secs(5);
    while health(&d) == before {
        assert!(
            monotonic_now() < deadline,
            "no heartbeat over the mesh link"
        );
        let wake = d.lease_deadline().unwrap_or(deadline).min(deadline);
        tokio::time::sleep_until(tokio::time::Instant::from_std(wake)).await;
        d.lease_tick();
    }
    kill_all(&mut d);
}
