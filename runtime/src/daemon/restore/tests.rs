#![allow(clippy::unwrap_used)]

use std::sync::Mutex;

use hedge_wire::backup::RestoreGrant;
use tokio::sync::mpsc;

use super::*;
use crate::daemon::blob_ports::fake::{chunk, header, name, FakeBlob, FakeVault};
use crate::daemon::blob_ports::ChunkId;
use crate::reconcile::tests::req;

fn directive(instance: &str, source: &str, id: u64) -> RestoreDirective {
    RestoreDirective {
        instance: name(instance),
        source: name(source),
        snapshot: SnapshotId(id),
    }
}

#[test]
fn pending_means_desired_and_not_marked_with_that_snapshot() {
    let ds = [
        directive("a", "n1", 1),
        directive("b", "n1", 2),
        directive("c", "n1", 3),
        directive("gone", "n1", 4),
        directive("dead", "n1", 5),
    ];
    let desired: BTreeMap<Name, InstanceRequest> = [
        req("a", RequestedState::Started),
        req("b", RequestedState::Started),
        req("c", RequestedState::Stopped),
        req("dead", RequestedState::Destroyed),
    ]
    .into_iter()
    .map(|r| (r.name.clone(), r))
    .collect();
    let done = |n: &Name| match n.as_str() {
        // Restored from this very snapshot: done.
        "a" => Some((name("n1"), SnapshotId(1))),
        // Restored from an older one: the new directive is pending.
        "b" => Some((name("n1"), SnapshotId(1))),
        _ => None,
    };
    let p: Vec<&str> = pending(&ds, &desired, done)
        .into_iter()
        .map(|d| d.instance.as_str())
        .collect();
    assert_eq!(p, ["b", "c"]);
}

/// A snapshot at the master: its grant (the fake's root lists the ids) and chunks.
fn at_master(blob: &FakeBlob, d: &RestoreDirective, parts: &[&[u8]]) -> Vec<ChunkId> {
    let chunks: Vec<_> = parts.iter().map(|p| chunk(p)).collect();
    let n = u64::try_from(chunks.len()).unwrap();
    let mut h = header(d.source.as_str(), &d.instance, d.snapshot, n);
    h.root = chunks.iter().flat_map(|c| c.0).collect();
    let mut s = blob.s.lock().unwrap();
    s.grants.insert(
        (d.instance.clone(), d.snapshot),
        RestoreGrant {
            header: h,
            key: [1; 32],
        },
    );
    for (id, data) in &chunks {
        s.served.insert(*id, data.clone());
    }
    chunks.into_iter().map(|c| c.0).collect()
}

struct Harness {
    blob: Arc<FakeBlob>,
    vault: Arc<FakeVault>,
    reports: mpsc::UnboundedReceiver<Report>,
    restorer: Restorer<FakeBlob, FakeVault>,
}

fn harness() -> Harness {
    let (tx, reports) = mpsc::unbounded_channel();
    let tx = Mutex::new(tx);
    let blob = Arc::new(FakeBlob::default());
    let vault = Arc::new(FakeVault::default());
    let restorer = Restorer {
        blob: blob.clone(),
        vault: vault.clone(),
        report: Arc::new(move |r| tx.lock().unwrap().send(r).is_ok()),
    };
    Harness {
        blob,
        vault,
        reports,
        restorer,
    }
}

fn target() -> Target {
    (PathBuf::from("/p/db"), Some((1234, 1234)))
}

#[tokio::test(start_paused = true)]
async fn fetches_everything_then_waits_for_the_partition_then_restores() {
    let mut h = harness();
    let d = directive("db", "node-a", 7);
    at_master(&h.blob, &d, &[b"manifest", b"file one", b"file two"]);
    let task = tokio::spawn(run(h.restorer.clone(), d.clone()));
    // The instance still runs: asked again until the loop hands the partition over.
    let Some(Report::Ready { reply, .. }) = h.reports.recv().await else {
        panic!("expected Ready");
    };
    assert_eq!(h.blob.s.lock().unwrap().gets, 3);
    assert!(h.vault.s.lock().unwrap().restored.is_empty());
    reply.send(None).unwrap();
    let Some(Report::Ready { directive, reply }) = h.reports.recv().await else {
        panic!("expected Ready again");
    };
    assert_eq!(directive, d);
    reply.send(Some(target())).unwrap();
    let Some(Report::Restored { directive, fetched }) = h.reports.recv().await else {
        panic!("expected Restored");
    };
    assert_eq!((directive, fetched), (d.clone(), 3));
    assert_eq!(
        h.vault.s.lock().unwrap().restored,
        [(d.instance.clone(), d.snapshot, target().0, target().1)]
    );
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_damaged_chunk_fails_naming_snapshot_and_chunk_and_is_retried() {
    let mut h = harness();
    let d = directive("db", "node-a", 0x2a);
    let ids = at_master(&h.blob, &d, &[b"manifest", b"data"]);
    // Altered at rest on the master: same name, other bytes.
    h.blob
        .s
        .lock()
        .unwrap()
        .served
        .insert(ids[1], b"dat4".to_vec());
    let task = tokio::spawn(run(h.restorer.clone(), d.clone()));
    let Some(Report::Failed {
        message, record, ..
    }) = h.reports.recv().await
    else {
        panic!("expected Failed");
    };
    assert!(record);
    assert!(message.contains("snapshot 000000000000002a"), "{message}");
    assert!(
        message.contains(&hedge_common::hex::encode(&ids[1])),
        "{message}"
    );
    // The same failure again is not recorded again.
    let Some(Report::Failed { record, .. }) = h.reports.recv().await else {
        panic!("expected Failed");
    };
    assert!(!record);
    assert!(h.vault.s.lock().unwrap().restored.is_empty());
    // The blob store repaired: the next attempt goes through.
    h.blob
        .s
        .lock()
        .unwrap()
        .served
        .insert(ids[1], b"data".to_vec());
    let Some(Report::Ready { reply, .. }) = h.reports.recv().await else {
        panic!("expected Ready");
    };
    reply.send(Some(target())).unwrap();
    assert!(matches!(
        h.reports.recv().await,
        Some(Report::Restored { .. })
    ));
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_refused_grant_is_recorded_and_a_cut_link_only_retried() {
    let mut h = harness();
    let d = directive("db", "node-a", 3);
    let task = tokio::spawn(run(h.restorer.clone(), d.clone()));
    let Some(Report::Failed {
        message, record, ..
    }) = h.reports.recv().await
    else {
        panic!("expected Failed");
    };
    assert!(record && message.contains("403"), "{message}");
    h.blob.s.lock().unwrap().cut = true;
    let Some(Report::Failed { record, .. }) = h.reports.recv().await else {
        panic!("expected Failed");
    };
    assert!(!record, "a network error is not the master's answer");
    // Re-issued at the master and the link back: restored.
    at_master(&h.blob, &d, &[b"m"]);
    h.blob.s.lock().unwrap().cut = false;
    let Some(Report::Ready { reply, .. }) = h.reports.recv().await else {
        panic!("expected Ready");
    };
    reply.send(Some(target())).unwrap();
    assert!(matches!(
        h.reports.recv().await,
        Some(Report::Restored { .. })
    ));
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_grant_for_another_snapshot_is_refused() {
    let mut h = harness();
    let d = directive("db", "node-a", 3);
    at_master(&h.blob, &d, &[b"m"]);
    // The master answers the question about (db, 3) with node-b's snapshot.
    h.blob
        .s
        .lock()
        .unwrap()
        .grants
        .values_mut()
        .for_each(|g| g.header.node = name("node-b"));
    let task = tokio::spawn(run(h.restorer.clone(), d.clone()));
    let Some(Report::Failed { message, .. }) = h.reports.recv().await else {
        panic!("expected Failed");
    };
    assert!(message.contains("not the one asked"), "{message}");
    assert_eq!(h.vault.s.lock().unwrap().imports, 0);
    task.abort();
}
