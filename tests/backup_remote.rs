//! The node's blob service client (`hedge_runtime::backup::remote`) against the master's
//! blob service on a real listener, with certificates the nodes got by enrolling over
//! it: every request and every refusal arrives as its own value, and `hedge master
//! backups --json` shows what was stored, what a node only reported, and the counters.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use hedge_master::blobs::{recovery, BlobDir, Blobs, RECOVERY_KEY};
use hedge_master::pki::{self, InitOptions};
use hedge_master::revocation::Revoked;
use hedge_master::store::{FleetStore, MasterStore, OpenRestore};
use hedge_runtime::artifact::fetch::Source;
use hedge_runtime::backup::remote::{Put, Remote, RemoteError};
use hedge_wire::backup::{BackupEvent, Consistency, SnapshotHeader, SnapshotId};
use hedge_wire::{Name, Record, RecordKind, Up};
use sha2::{Digest, Sha256};

fn n(s: &str) -> Name {
    Name::new(s).unwrap()
}

fn id(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

/// Enrolls `node` over the endpoint at `port` as a node does: its own key, a CSR, the
/// bundle's one-time token.
async fn enroll(dir: &Path, port: u16, node: &str) -> Remote {
    let out = dir.join(format!("{node}.bundle"));
    pki::enroll(dir, &n(node), &out).unwrap();
    let b = hedge_uplink::bundle::Bundle::load(&out).unwrap();
    let key_path = dir.join(format!("{node}.key"));
    hedge_runtime::credentials::create_key(&key_path).unwrap();
    let key = std::fs::read_to_string(&key_path).unwrap();
    let csr = hedge_runtime::credentials::csr(&key, node).unwrap();
    let url = format!("https://127.0.0.1:{port}");
    let anonymous = hedge_uplink::tls::server_only_config(b.ca_cert.as_bytes()).unwrap();
    let cert = hedge_runtime::credentials::post(
        &url,
        anonymous,
        format!("token {}\n{csr}", b.token).as_bytes(),
    )
    .await
    .unwrap();
    let tls =
        hedge_uplink::tls::client_config(b.ca_cert.as_bytes(), cert.as_bytes(), key.as_bytes())
            .unwrap();
    Remote::new(Source::parse(&url, tls).unwrap())
}

fn header(node: &str, snap: u64, chunks: u64) -> SnapshotHeader {
    let mut h = SnapshotHeader {
        node: n(node),
        instance: n("web"),
        id: SnapshotId(snap),
        taken_ms: 1_000 + snap,
        consistency: Consistency::Command,
        bytes: 5_000,
        new_bytes: 2_000,
        chunks,
        root: vec![3; 64],
        sealed_key: Default::default(),
    };
    h.sealed_key.extend_from_slice(&[9; 80]).unwrap();
    h
}

fn ids(list: &[&[u8]]) -> Vec<Result<[u8; 32], std::io::Error>> {
    list.iter().map(|b| Ok(id(b))).collect()
}

#[tokio::test]
async fn the_client_gets_every_answer_and_refusal_of_the_blob_service() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    pki::init(&dir, &InitOptions::default()).unwrap();
    let toml = dir.join("master.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(
        &toml,
        text.replace(
            "# listen = \"127.0.0.1:8443\"",
            "listen = \"127.0.0.1:8443\"",
        ),
    )
    .unwrap();
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
    let server = hedge_master::artifacts::server_config(
        &read("ca.crt"),
        &read("broker.crt"),
        &read("broker.key"),
    )
    .unwrap();
    let revoked = Arc::new(Revoked::new(&dir));
    let enroller =
        hedge_master::enrollment::Enroller::load(&dir, 86_400, 0, revoked.clone()).unwrap();
    let public = recovery::public(&dir.join(RECOVERY_KEY)).unwrap();
    let store = || MasterStore::open(&dir.join("master.db")).unwrap();
    let mut blobs = Blobs::new(store(), BlobDir::new(dir.join("blobs")), 300_000, public);
    blobs.revoked = Some(revoked);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(hedge_master::artifacts::serve_with(
        listener,
        server,
        dir.join("artifacts"),
        Arc::new(|_: &Name, _: &[u8; 32]| false),
        Default::default(),
        Some(Arc::new(enroller)),
        Some(Arc::new(blobs)),
        async {
            let _ = stopped.await;
        },
    ));
    let a = enroll(&dir, port, "node-a").await;
    let b = enroll(&dir, port, "node-b").await;

    assert_eq!(a.recovery_key().await.unwrap(), public);
    let (x, y) = (vec![1u8; 1000], vec![2u8; 2000]);
    assert_eq!(a.have(&[id(&x), id(&y)]).await.unwrap(), vec![false, false]);
    assert_eq!(a.put_chunk(&id(&x), &x).await.unwrap(), Put::Stored);
    assert_eq!(a.put_chunk(&id(&x), &x).await.unwrap(), Put::Already);
    assert!(matches!(
        a.put_chunk(&id(&y), &x).await,
        Err(RemoteError::Mismatch)
    ));
    assert!(matches!(
        a.put_chunk(&id(&[7u8; 400_000]), &[7u8; 400_000]).await,
        Err(RemoteError::Quota)
    ));
    let h = header("node-a", 0x11, 2);
    match a.put_snapshot(&h, 2, ids(&[&x, &y])).await {
        Err(RemoteError::Missing(m)) => assert_eq!(m, vec![id(&y)]),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        a.put_snapshot(&h, 3, ids(&[&x, &y])).await,
        Err(RemoteError::Ids(_))
    ));
    assert_eq!(a.put_chunk(&id(&y), &y).await.unwrap(), Put::Stored);
    a.put_snapshot(&h, 2, ids(&[&x, &y])).await.unwrap();
    assert!(matches!(
        a.put_snapshot(&header("node-b", 0x12, 1), 1, ids(&[&x]))
            .await,
        Err(RemoteError::Forbidden)
    ));
    assert_eq!(a.get_chunk(&n("node-a"), &id(&y)).await.unwrap(), y);
    assert!(matches!(
        a.get_chunk(&n("node-a"), &[0; 32]).await,
        Err(RemoteError::NotFound)
    ));
    assert!(matches!(
        b.get_chunk(&n("node-a"), &id(&y)).await,
        Err(RemoteError::Forbidden)
    ));
    assert!(matches!(
        b.grant(&n("web"), SnapshotId(0x11)).await,
        Err(RemoteError::Forbidden)
    ));
    store()
        .open_restore(
            &OpenRestore {
                target: n("node-b"),
                instance: n("web"),
                source: n("node-a"),
                snapshot: SnapshotId(0x11),
            },
            &[5; 32],
            1,
        )
        .unwrap();
    let g = b.grant(&n("web"), SnapshotId(0x11)).await.unwrap();
    assert_eq!((g.header, g.key), (h, [5; 32]));
    assert_eq!(b.get_chunk(&n("node-a"), &id(&x)).await.unwrap(), x);

    // node-b reported a snapshot it has not uploaded: listed as stored on the node.
    let taken = Record {
        seq: 1,
        time_ms: 5,
        kind: RecordKind::Backup {
            instance: n("web"),
            snapshot: SnapshotId(0x99),
            event: BackupEvent::Taken {
                taken_ms: 4,
                bytes: 10,
                new_bytes: 10,
                consistency: Consistency::Live,
            },
            message: String::new(),
        },
    };
    let up = Up {
        node: n("node-b"),
        records: vec![taken],
        covers: Some((1, 1)),
        epoch: 1,
    };
    store().ingest(&n("node-b"), &up, 5).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hedge"))
        .args(["master", "backups", "--json", "--config"])
        .arg(&toml)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let snaps = v["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 2, "{v}");
    assert_eq!(snaps[0]["node"], "node-a");
    assert_eq!(snaps[0]["id"], "0000000000000011");
    assert_eq!(snaps[0]["stored"], "master");
    assert_eq!(snaps[1]["node"], "node-b");
    assert_eq!(snaps[1]["stored"], "node");
    let a_counters = &v["nodes"][0];
    assert_eq!(a_counters["node"], "node-a");
    assert_eq!(a_counters["chunk_puts"], 2);
    assert_eq!(a_counters["duplicate_puts"], 1);

    stop.send(()).unwrap();
    task.await.unwrap();
}
