//! Daemon-level tests of remote restores: an instance placed with a restore directive
//! is created and never started until its restore is done (fake vault and blob
//! service); then its marker is stored, its `Restored` record appended and it starts;
//! a restarted daemon does not restore it again; a failed restore leaves it stopped
//! with a `RestoreFailed` record.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use ed25519_dalek::Signer;
use hedge_wire::backup::RestoreGrant;
use hedge_wire::codec::encode;
use hedge_wire::{
    BackupEvent, DesiredState, Message, Name, RecordKind, RestoreDirective, SnapshotId,
};

use super::{kill_all, pump_until, sleeper};
use crate::daemon::blob_ports::fake::{chunk, header, FakeBlob, FakeVault};
use crate::daemon::desired::tests::{config, master};
use crate::daemon::restore::{self, Restorer};
use crate::daemon::{Daemon, Event};

fn n(s: &str) -> Name {
    Name::new(s).unwrap()
}

fn directive() -> RestoreDirective {
    RestoreDirective {
        instance: n("db"),
        source: n("old"),
        snapshot: SnapshotId(5),
    }
}

/// A signed state placing `db` (restored from snapshot 5 of node `old`) and `plain`.
fn frame() -> Vec<u8> {
    let mut d = DesiredState {
        node: n("n1"),
        generation: 1,
        instances: vec![sleeper("db"), sleeper("plain")],
        signature: heapless::Vec::new(),
        expires_ms: crate::daemon::now_ms() + 86_400_000,
        terms: Vec::new(),
        imports: Vec::new(),
        backups: Vec::new(),
        restores: vec![directive()],
    };
    d.signature = heapless::Vec::from_slice(&master().sign(&d.signed_bytes()).to_bytes()).unwrap();
    encode(&Message::Desired(d), hedge_wire::DEFAULT_MAX_FRAME).unwrap()
}

/// The master's side: snapshot 5 of `old`, granted; `intact` false alters a chunk.
fn blob(intact: bool) -> Arc<FakeBlob> {
    let b = Arc::new(FakeBlob::default());
    let chunks = [chunk(b"manifest"), chunk(b"data")];
    let mut h = header("old", &n("db"), SnapshotId(5), 2);
    h.root = chunks.iter().flat_map(|c| c.0).collect();
    let mut s = b.s.lock().unwrap();
    s.grants.insert(
        (n("db"), SnapshotId(5)),
        RestoreGrant {
            header: h,
            key: [1; 32],
        },
    );
    for (id, data) in chunks {
        s.served.insert(id, data);
    }
    if !intact {
        s.served.insert(chunks_id(b"data"), b"altered".to_vec());
    }
    drop(s);
    b
}

fn chunks_id(data: &[u8]) -> [u8; 32] {
    chunk(data).0
}

fn daemon(dir: &std::path::Path, blob: Arc<FakeBlob>, vault: Arc<FakeVault>) -> Daemon {
    let mut d = Daemon::boot(config(dir)).unwrap();
    let events = d.events_tx.clone();
    let r = Restorer {
        blob,
        vault,
        report: Arc::new(move |r| events.send(Event::Restore(r)).is_ok()),
    };
    d.restores.spawner = Some(Box::new(move |dir| {
        tokio::spawn(restore::run(r.clone(), dir))
    }));
    d
}

fn runs(d: &Daemon, name: &str) -> bool {
    d.instances.wants_running(&n(name))
}

fn backup_events(d: &Daemon) -> Vec<BackupEvent> {
    d.outbox
        .store
        .outbox_from(0, 10_000)
        .unwrap()
        .into_iter()
        .filter_map(|r| match r.kind {
            RecordKind::Backup { event, .. } => Some(event),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn an_instance_starts_only_after_its_restore_and_is_not_restored_twice() {
    let dir = tempfile::tempdir().unwrap();
    let vault = Arc::new(FakeVault::default());
    let mut d = daemon(dir.path(), blob(true), vault.clone());
    d.reconcile();
    assert_eq!(d.on_desired_frame(&frame()), Ok(1));
    // Created (its partition is there to restore into), not started; the other runs.
    assert!(d.instances.slots.contains_key(&n("db")));
    assert!(d.instances.partitions.path(&n("db")).is_dir());
    assert!(!runs(&d, "db"));
    assert!(runs(&d, "plain"));

    pump_until(&mut d, "the restore", |d| runs(d, "db")).await;
    let restored = vault.s.lock().unwrap().restored.clone();
    assert_eq!(restored.len(), 1);
    assert_eq!(restored[0].2, d.instances.partitions.path(&n("db")));
    assert_eq!(
        d.outbox.store.restored(&n("db")).unwrap(),
        Some((n("old"), SnapshotId(5)))
    );
    assert_eq!(
        backup_events(&d),
        [BackupEvent::Restored { source: n("old") }]
    );

    // A restart with the directive still in the desired state: it starts at once, with
    // no second restore.
    kill_all(&mut d);
    drop(d);
    let mut d = daemon(dir.path(), blob(true), vault.clone());
    d.reconcile();
    assert!(runs(&d, "db"));
    assert_eq!(vault.s.lock().unwrap().restored.len(), 1);
    kill_all(&mut d);
}

#[tokio::test]
async fn a_damaged_snapshot_leaves_the_instance_stopped_and_says_which() {
    let dir = tempfile::tempdir().unwrap();
    let vault = Arc::new(FakeVault::default());
    let mut d = daemon(dir.path(), blob(false), vault.clone());
    d.reconcile();
    assert_eq!(d.on_desired_frame(&frame()), Ok(1));
    pump_until(&mut d, "the failure", |d| {
        backup_events(d)
            .iter()
            .any(|e| matches!(e, BackupEvent::RestoreFailed { .. }))
    })
    .await;
    assert!(!runs(&d, "db"));
    assert!(vault.s.lock().unwrap().restored.is_empty());
    assert_eq!(d.outbox.store.restored(&n("db")).unwrap(), None);
    let message = d
        .outbox
        .store
        .outbox_from(0, 10_000)
        .unwrap()
        .into_iter()
        .find_map(|r| match r.kind {
            RecordKind::Backup { message, .. } => Some(message),
            _ => None,
        })
        .unwrap();
    assert!(message.contains("snapshot 0000000000000005"), "{message}");
    assert!(
        message.contains(&hedge_common::hex::encode(&chunks_id(b"data"))),
        "{message}"
    );
    // A restart does not start it either: the directive is still pending.
    kill_all(&mut d);
    drop(d);
    let mut d = daemon(dir.path(), blob(false), vault);
    d.reconcile();
    assert!(!runs(&d, "db"));
    kill_all(&mut d);
}
