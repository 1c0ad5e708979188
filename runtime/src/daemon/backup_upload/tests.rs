#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::*;
use crate::daemon::blob_ports::fake::{chunk, name, FakeBlob, FakeVault};

fn chunks(n: usize, tag: u8) -> Vec<(ChunkId, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let mut data = vec![tag];
            data.extend(u32::try_from(i).unwrap().to_be_bytes());
            chunk(&data)
        })
        .collect()
}

async fn upload(
    blob: &FakeBlob,
    vault: &Arc<FakeVault>,
    i: &Name,
    id: SnapshotId,
) -> (Result<(), PortError>, Sent) {
    let mut sent = Sent::default();
    let r = upload_one(blob, vault, &mut Bucket::new(0), [7; 32], i, id, &mut sent).await;
    (r, sent)
}

#[tokio::test]
async fn only_missing_chunks_go_in_bounded_have_batches_then_the_snapshot() {
    let vault = Arc::new(FakeVault::default());
    let blob = FakeBlob::default();
    let i = name("db");
    let mut all = chunks(5000, 1);
    // A chunk listed twice is asked and sent once.
    all.push(all[0].clone());
    vault.add_snapshot(&i, SnapshotId(1), &all);
    for (id, data) in &all[..1000] {
        blob.s.lock().unwrap().stored.insert(*id, data.clone());
    }
    let (r, sent) = upload(&blob, &vault, &i, SnapshotId(1)).await;
    r.unwrap();
    let s = blob.s.lock().unwrap();
    assert_eq!(sent.chunks, 4000);
    assert_eq!(sent.stored, 1000);
    assert_eq!(s.puts, 4000);
    assert_eq!(s.duplicate_puts, 0);
    assert_eq!(s.largest_have, HAVE_BATCH);
    assert_eq!(s.snapshots.len(), 1);
    assert_eq!(s.snapshots[0].1.len(), 5000, "ids deduplicated");
}

#[tokio::test]
async fn a_cut_upload_resumes_without_sending_a_stored_chunk_again() {
    let vault = Arc::new(FakeVault::default());
    let blob = FakeBlob::default();
    let i = name("db");
    vault.add_snapshot(&i, SnapshotId(2), &chunks(50, 2));
    // The 20th put is stored but its answer is lost (in flight when the link went).
    blob.s.lock().unwrap().cut_after_puts = Some(20);
    let (r, _) = upload(&blob, &vault, &i, SnapshotId(2)).await;
    assert!(r.unwrap_err().transient());
    assert!(blob.s.lock().unwrap().snapshots.is_empty());
    blob.s.lock().unwrap().cut = false;
    let (r, sent) = upload(&blob, &vault, &i, SnapshotId(2)).await;
    r.unwrap();
    let s = blob.s.lock().unwrap();
    assert_eq!(sent.stored, 20, "what the master holds is not sent again");
    assert_eq!(s.puts, 50);
    assert_eq!(s.duplicate_puts, 0);
    assert_eq!(s.snapshots.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_budget_spaces_the_puts() {
    let vault = Arc::new(FakeVault::default());
    let blob = FakeBlob::default();
    let i = name("db");
    // 10 chunks of 1000 bytes at 2000 B/s: one second's burst, then 4 s of waiting.
    let big: Vec<_> = (0..10u8).map(|n| chunk(&[n; 1000])).collect();
    vault.add_snapshot(&i, SnapshotId(3), &big);
    let start = tokio::time::Instant::now();
    let mut sent = Sent::default();
    upload_one(
        &blob,
        &vault,
        &mut Bucket::new(2000),
        [7; 32],
        &i,
        SnapshotId(3),
        &mut sent,
    )
    .await
    .unwrap();
    let waited = start.elapsed();
    assert!(waited >= Duration::from_secs(4), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
}

struct Loop {
    up: Arc<AtomicBool>,
    wake: Arc<Notify>,
    reports: mpsc::UnboundedReceiver<Report>,
    task: tokio::task::JoinHandle<()>,
}

fn start(blob: Arc<FakeBlob>, vault: Arc<FakeVault>) -> Loop {
    struct Shared(Arc<FakeBlob>);
    impl BlobPort for Shared {
        async fn recovery_key(&self) -> Result<[u8; 32], PortError> {
            self.0.recovery_key().await
        }
        async fn have(&self, ids: &[ChunkId]) -> Result<Vec<bool>, PortError> {
            self.0.have(ids).await
        }
        async fn put_chunk(&self, id: &ChunkId, c: &[u8]) -> Result<(), PortError> {
            self.0.put_chunk(id, c).await
        }
        async fn put_snapshot(
            &self,
            h: &hedge_wire::backup::SnapshotHeader,
            ids: &[ChunkId],
        ) -> Result<(), PortError> {
            self.0.put_snapshot(h, ids).await
        }
        async fn grant(
            &self,
            i: &Name,
            id: SnapshotId,
        ) -> Result<hedge_wire::backup::RestoreGrant, PortError> {
            self.0.grant(i, id).await
        }
        async fn get_chunk(&self, s: &Name, id: &ChunkId) -> Result<Vec<u8>, PortError> {
            self.0.get_chunk(s, id).await
        }
    }
    let up = Arc::new(AtomicBool::new(false));
    let wake = Arc::new(Notify::new());
    let (tx, reports) = mpsc::unbounded_channel();
    let tx = Mutex::new(tx);
    let u = Uploader {
        blob: Shared(blob),
        vault,
        rate: 0,
        uplink_up: {
            let up = up.clone();
            Box::new(move || up.load(Ordering::SeqCst))
        },
        wake: wake.clone(),
        report: Box::new(move |r| tx.lock().unwrap().send(r).is_ok()),
    };
    Loop {
        up,
        wake,
        reports,
        task: tokio::spawn(run(u)),
    }
}

#[tokio::test(start_paused = true)]
async fn uploads_wait_for_the_uplink_and_mark_only_after_the_record() {
    let vault = Arc::new(FakeVault::default());
    let blob = Arc::new(FakeBlob::default());
    let i = name("db");
    vault.add_snapshot(&i, SnapshotId(1), &chunks(3, 1));
    vault.add_snapshot(&i, SnapshotId(2), &chunks(4, 1));
    let mut l = start(blob.clone(), vault.clone());
    // Down: a minute passes and nothing is asked of the master.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(blob.s.lock().unwrap().recovery_fetches, 0);
    assert!(l.reports.try_recv().is_err());

    l.up.store(true, Ordering::SeqCst);
    l.wake.notify_one();
    let Report::Uploaded {
        snapshot,
        sent,
        recorded,
        ..
    } = l.reports.recv().await.unwrap()
    else {
        panic!("expected an upload");
    };
    assert_eq!((snapshot, sent.chunks), (SnapshotId(1), 3));
    // Not marked before the loop recorded it.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(vault.s.lock().unwrap().uploaded.is_empty());
    recorded.send(()).unwrap();
    let Report::Uploaded {
        snapshot,
        sent,
        recorded,
        ..
    } = l.reports.recv().await.unwrap()
    else {
        panic!("expected an upload");
    };
    // The second snapshot shares three chunks with the first: one goes.
    assert_eq!((snapshot, sent.chunks, sent.stored), (SnapshotId(2), 1, 3));
    recorded.send(()).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let v = vault.s.lock().unwrap();
    assert_eq!(v.uploaded.len(), 2);
    assert_eq!(v.recovery, Some([7; 32]));
    assert_eq!(
        blob.s.lock().unwrap().recovery_fetches,
        1,
        "fetched once, then kept"
    );
    l.task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_refusal_is_reported_once_and_retried_with_backoff() {
    let vault = Arc::new(FakeVault::default());
    let blob = Arc::new(FakeBlob::default());
    let i = name("db");
    vault.add_snapshot(&i, SnapshotId(9), &chunks(2, 9));
    vault.s.lock().unwrap().recovery = Some([7; 32]);
    blob.s.lock().unwrap().refuse = Some("507: over quota".into());
    let mut l = start(blob.clone(), vault.clone());
    l.up.store(true, Ordering::SeqCst);
    l.wake.notify_one();
    let Report::Failed {
        snapshot, message, ..
    } = l.reports.recv().await.unwrap()
    else {
        panic!("expected a failure");
    };
    assert_eq!(snapshot, SnapshotId(9));
    assert!(message.contains("507"), "{message}");
    // Ten minutes of retries say nothing more.
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert!(l.reports.try_recv().is_err());
    // Once the master takes it, it goes.
    blob.s.lock().unwrap().refuse = None;
    let r = tokio::time::timeout(Duration::from_secs(600), l.reports.recv())
        .await
        .unwrap();
    assert!(matches!(r, Some(Report::Uploaded { .. })));
    l.task.abort();
}
