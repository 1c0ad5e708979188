//! The blob service over real TLS with enrolled nodes' certificates: chunks stored once
//! (a second put is counted as a duplicate), checked against their name, bounded by the
//! node's quota; snapshots refused while chunks are missing (listing them); a node reads
//! only its own chunks, and another's only as the target of an open restore, which alone
//! gets the restore's grant; retention keeps the newest snapshots and what an open
//! restore names, and the sweep removes only chunks nothing kept references.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use hedge_master::artifacts;
use hedge_master::blobs::{recovery, BlobDir, Blobs, RECOVERY_KEY};
use hedge_master::pki::{self, InitOptions};
use hedge_master::sign::{sign, MasterKey};
use hedge_master::store::{FleetStore, MasterStore, OpenRestore};
use hedge_wire::backup::{BackupPolicy, Consistency, RestoreGrant, SnapshotHeader, SnapshotId};
use hedge_wire::{InstanceRequest, Limits, Name, RestartPolicy};
use rustls::pki_types::ServerName;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn n(s: &str) -> Name {
    Name::new(s).unwrap()
}

/// A master directory, its blob service on a real listener, and three enrolled nodes.
struct Service {
    tmp: tempfile::TempDir,
    dir: PathBuf,
    port: u16,
    nodes: BTreeMap<&'static str, Arc<rustls::ClientConfig>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Service {
    async fn start(quota: u64) -> Service {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("m");
        pki::init(&dir, &InitOptions::default()).unwrap();
        let mut nodes = BTreeMap::new();
        for node in ["node-a", "node-b", "node-c"] {
            let c = common::enroll(&dir, node);
            let tls = hedge_uplink::tls::client_config(
                c.ca_cert.as_bytes(),
                c.cert.as_bytes(),
                c.key.as_bytes(),
            )
            .unwrap();
            nodes.insert(node, tls);
        }
        let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
        let server =
            artifacts::server_config(&read("ca.crt"), &read("broker.crt"), &read("broker.key"))
                .unwrap();
        let public = recovery::public(&dir.join(RECOVERY_KEY)).unwrap();
        let mut blobs = Blobs::new(
            MasterStore::open(&dir.join("master.db")).unwrap(),
            BlobDir::new(dir.join("blobs")),
            quota,
            public,
        );
        blobs.sweep_grace_ms = 0;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(artifacts::serve_with(
            listener,
            server,
            dir.join("artifacts"),
            Arc::new(|_: &Name, _: &[u8; 32]| false),
            Default::default(),
            None,
            Some(Arc::new(blobs)),
            async {
                let _ = stopped.await;
            },
        ));
        Service {
            tmp,
            dir,
            port,
            nodes,
            stop: Some(stop),
            task: Some(task),
        }
    }

    fn store(&self) -> MasterStore {
        MasterStore::open(&self.dir.join("master.db")).unwrap()
    }

    /// `method path` with `body` as `node`: (status, body).
    async fn call(&self, node: &str, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .unwrap();
        let mut s = tokio_rustls::TlsConnector::from(self.nodes[node].clone())
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .unwrap();
        let len = if method == "GET" {
            String::new()
        } else {
            format!("Content-Length: {}\r\n", body.len())
        };
        s.write_all(
            format!("{method} /backup/v1/{path} HTTP/1.1\r\nHost: x\r\n{len}\r\n").as_bytes(),
        )
        .await
        .unwrap();
        s.write_all(body).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        let end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8(out[..end].to_vec()).unwrap();
        let status = head[9..12].parse().unwrap();
        (status, out[end + 4..].to_vec())
    }

    async fn put_chunk(&self, node: &str, body: &[u8]) -> u16 {
        self.call(node, "PUT", &format!("chunk/{}", hex(&id(body))), body)
            .await
            .0
    }

    async fn put_snapshot(
        &self,
        node: &str,
        h: &SnapshotHeader,
        ids: &[[u8; 32]],
    ) -> (u16, Vec<u8>) {
        let hb = postcard::to_allocvec(h).unwrap();
        let mut body = u32::try_from(hb.len()).unwrap().to_be_bytes().to_vec();
        body.extend_from_slice(&hb);
        body.extend_from_slice(&ids.concat());
        self.call(node, "PUT", "snapshot", &body).await
    }

    fn counters(&self, node: &str) -> (u64, u64, u64, u64) {
        self.store()
            .blob_counters()
            .unwrap()
            .into_iter()
            .find(|c| c.node.as_str() == node)
            .map_or((0, 0, 0, 0), |c| {
                (c.bytes, c.chunk_puts, c.duplicate_puts, c.refused)
            })
    }

    fn chunk_file(&self, node: &str, body: &[u8]) -> PathBuf {
        BlobDir::new(self.dir.join("blobs")).chunk_path(&n(node), &id(body))
    }

    async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        self.task.take().unwrap().await.unwrap();
        drop(self.tmp);
    }
}

fn id(body: &[u8]) -> [u8; 32] {
    Sha256::digest(body).into()
}

fn hex(id: &[u8; 32]) -> String {
    hedge_common::hex::encode(id)
}

fn chunk(tag: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| tag ^ u8::try_from(i % 251).unwrap())
        .collect()
}

fn header(node: &str, instance: &str, snap: u64, taken_ms: u64, chunks: u64) -> SnapshotHeader {
    SnapshotHeader {
        node: n(node),
        instance: n(instance),
        id: SnapshotId(snap),
        taken_ms,
        consistency: Consistency::Frozen,
        bytes: 1000,
        new_bytes: 100,
        chunks,
        root: vec![0x5a; 48],
        sealed_key: heapless::Vec::from_slice(&[0x17; 80]).unwrap(),
    }
}

#[tokio::test]
async fn chunks_are_checked_stored_once_and_counted_per_node() {
    let s = Service::start(1 << 30).await;
    let (status, key) = s.call("node-a", "GET", "recovery-key", b"").await;
    assert_eq!(status, 200);
    assert_eq!(
        key,
        recovery::public(&s.dir.join(RECOVERY_KEY))
            .unwrap()
            .to_vec()
    );

    let (x, y) = (chunk(1, 70_000), chunk(2, 1000));
    let ask = [id(&x), id(&y)].concat();
    assert_eq!(
        s.call("node-a", "POST", "have", &ask).await,
        (200, vec![0, 0])
    );
    assert_eq!(s.put_chunk("node-a", &x).await, 201);
    assert_eq!(s.put_chunk("node-a", &x).await, 200, "already stored");
    assert_eq!(
        s.call("node-a", "POST", "have", &ask).await,
        (200, vec![1, 0])
    );
    assert_eq!(
        s.call("node-b", "POST", "have", &ask).await,
        (200, vec![0, 0]),
        "each node has its own namespace"
    );
    assert_eq!(std::fs::read(s.chunk_file("node-a", &x)).unwrap(), x);
    // A body that does not hash to its name.
    let (status, _) = s
        .call("node-a", "PUT", &format!("chunk/{}", hex(&id(&y))), &x)
        .await;
    assert_eq!(status, 409);
    assert!(!s.chunk_file("node-a", &y).exists());
    // Bounds: an oversized chunk, a have that is not whole ids.
    let (status, _) = s.call("node-a", "POST", "have", &[0u8; 33]).await;
    assert_eq!(status, 400);
    assert_eq!(s.counters("node-a"), (70_000, 1, 1, 1));
    assert_eq!(s.counters("node-b"), (0, 0, 0, 0));
    s.stop().await;
}

#[tokio::test]
async fn a_chunk_past_the_quota_is_507() {
    let s = Service::start(100_000).await;
    assert_eq!(s.put_chunk("node-a", &chunk(1, 60_000)).await, 201);
    assert_eq!(s.put_chunk("node-a", &chunk(2, 60_000)).await, 507);
    assert!(!s.chunk_file("node-a", &chunk(2, 60_000)).exists());
    // Another node's quota is its own.
    assert_eq!(s.put_chunk("node-b", &chunk(2, 60_000)).await, 201);
    // Already stored: no new bytes, still answered.
    assert_eq!(s.put_chunk("node-a", &chunk(1, 60_000)).await, 200);
    assert_eq!(s.counters("node-a"), (60_000, 1, 1, 1));
    s.stop().await;
}

#[tokio::test]
async fn a_snapshot_is_refused_listing_its_missing_chunks_then_stored_once() {
    let s = Service::start(1 << 30).await;
    let (x, y, z) = (chunk(1, 500), chunk(2, 600), chunk(3, 700));
    let ids = [id(&x), id(&y), id(&z)];
    assert_eq!(s.put_chunk("node-a", &x).await, 201);
    let h = header("node-a", "web", 0xabc, 10, 3);
    let (status, body) = s.put_snapshot("node-a", &h, &ids).await;
    assert_eq!(status, 409);
    assert_eq!(body, [id(&y), id(&z)].concat(), "the missing ids, in order");
    assert!(s.store().snapshots().unwrap().is_empty());
    assert_eq!(s.put_chunk("node-a", &y).await, 201);
    assert_eq!(s.put_chunk("node-a", &z).await, 201);
    assert_eq!(s.put_snapshot("node-a", &h, &ids).await.0, 201);
    assert_eq!(
        s.put_snapshot("node-a", &h, &ids).await.0,
        201,
        "idempotent"
    );
    let stored = s.store().snapshots().unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        (stored[0].node.as_str(), stored[0].id, stored[0].chunks),
        ("node-a", SnapshotId(0xabc), 3)
    );
    assert_eq!(
        s.store()
            .snapshot_header(&n("node-a"), &n("web"), SnapshotId(0xabc))
            .unwrap(),
        Some(h.clone())
    );
    // The id list is on disk, whole.
    let list = std::fs::read(s.dir.join("blobs").join(&stored[0].ids)).unwrap();
    assert_eq!(list, ids.concat());
    // A header naming another node, ids that are not whole, a header that does not
    // decode: refused, nothing stored.
    let other = header("node-b", "web", 0xdef, 10, 3);
    assert_eq!(s.put_snapshot("node-a", &other, &ids).await.0, 403);
    let mut ragged = u32::to_be_bytes(4).to_vec();
    ragged.extend_from_slice(&[1, 2, 3, 4, 5]);
    assert_eq!(s.call("node-a", "PUT", "snapshot", &ragged).await.0, 400);
    let mut junk = u32::to_be_bytes(4).to_vec();
    junk.extend_from_slice(&[0xff; 4]);
    assert_eq!(s.call("node-a", "PUT", "snapshot", &junk).await.0, 400);
    assert_eq!(s.store().snapshots().unwrap().len(), 1);
    s.stop().await;
}

#[tokio::test]
async fn a_node_reads_another_nodes_chunks_and_grant_only_through_an_open_restore() {
    let s = Service::start(1 << 30).await;
    let x = chunk(9, 4000);
    assert_eq!(s.put_chunk("node-a", &x).await, 201);
    let h = header("node-a", "web", 7, 10, 1);
    assert_eq!(s.put_snapshot("node-a", &h, &[id(&x)]).await.0, 201);
    let get = format!("chunk/node-a/{}", hex(&id(&x)));
    assert_eq!(s.call("node-a", "GET", &get, b"").await, (200, x.clone()));
    assert_eq!(s.call("node-b", "GET", &get, b"").await.0, 403);
    let grant = "restore/web/0000000000000007";
    assert_eq!(s.call("node-b", "GET", grant, b"").await.0, 403);
    assert_eq!(s.call("node-a", "GET", grant, b"").await.0, 403);
    let missing = format!("chunk/node-a/{}", hex(&[0u8; 32]));
    assert_eq!(s.call("node-a", "GET", &missing, b"").await.0, 404);

    // The operator opens a restore of that snapshot onto node-b.
    let key = [0x42; 32];
    s.store()
        .open_restore(
            &OpenRestore {
                target: n("node-b"),
                instance: n("web"),
                source: n("node-a"),
                snapshot: SnapshotId(7),
            },
            &key,
            1,
        )
        .unwrap();
    assert_eq!(s.call("node-b", "GET", &get, b"").await, (200, x.clone()));
    let (status, body) = s.call("node-b", "GET", grant, b"").await;
    assert_eq!(status, 200);
    let g: RestoreGrant = postcard::from_bytes(&body).unwrap();
    assert_eq!(g, RestoreGrant { header: h, key });
    // Nobody else: a third node, node-a for node-b's chunks, another snapshot.
    assert_eq!(s.call("node-c", "GET", &get, b"").await.0, 403);
    assert_eq!(s.call("node-c", "GET", grant, b"").await.0, 403);
    let back = format!("chunk/node-b/{}", hex(&id(&x)));
    assert_eq!(s.call("node-a", "GET", &back, b"").await.0, 403);
    assert_eq!(
        s.call("node-b", "GET", "restore/web/0000000000000008", b"")
            .await
            .0,
        403
    );
    // Closed: nothing more.
    s.store().close_restore(&n("node-b"), &n("web")).unwrap();
    assert_eq!(s.call("node-b", "GET", &get, b"").await.0, 403);
    assert_eq!(s.call("node-b", "GET", grant, b"").await.0, 403);
    let (_, _, _, refused) = s.counters("node-b");
    assert!(refused >= 4, "{refused}");
    s.stop().await;
}

/// A desired state for `node` carrying `web` with a backup policy keeping `retain`.
fn policy(store: &MasterStore, node: &str, retain: u16) {
    let key = MasterKey::generate();
    store
        .update_desired(
            &n(node),
            |mut v| {
                // `web`, started, as a request's JSON spells it.
                let web = serde_json::json!({
                    "name": "web", "software": { "Exec": "/bin/sleep" }, "args": ["1000"],
                    "parameters": {}, "config_files": [], "promises": [],
                    "limits": serde_json::to_value(Limits::default()).unwrap(),
                    "restart": serde_json::to_value(RestartPolicy::default()).unwrap(),
                    "state": "Started",
                });
                v.push(serde_json::from_value::<InstanceRequest>(web).unwrap());
                v
            },
            |d| {
                d.backups = vec![BackupPolicy {
                    instance: n("web"),
                    interval_s: 60,
                    retain,
                    paths: vec!["srv".into()],
                    command: Vec::new(),
                }];
                sign(&key, d, 0);
            },
        )
        .unwrap();
}

#[tokio::test]
async fn retention_keeps_the_newest_and_what_an_open_restore_names_and_sweeps_the_rest() {
    let s = Service::start(1 << 30).await;
    policy(&s.store(), "node-a", 2);
    let c: Vec<Vec<u8>> = (1..=4).map(|i| chunk(i, 1000 * usize::from(i))).collect();
    // As a node does: a snapshot's chunks, then the snapshot (a sweep after a snapshot
    // removes unreferenced chunks: this test runs with no grace).
    let put = |which: &'static [usize]| {
        let s = &s;
        let c = &c;
        async move {
            for i in which {
                let st = s.put_chunk("node-a", &c[*i]).await;
                assert!(st == 201 || st == 200, "{st}");
            }
        }
    };
    let ids = |which: &[usize]| -> Vec<[u8; 32]> { which.iter().map(|i| id(&c[*i])).collect() };
    let snap = |i: u64, which: &[usize]| {
        (
            header("node-a", "web", i, i * 10, which.len() as u64),
            ids(which),
        )
    };
    let (h1, i1) = snap(1, &[0, 1]);
    let (h2, i2) = snap(2, &[1, 2]);
    let (h3, i3) = snap(3, &[2, 3]);
    let (h4, i4) = snap(4, &[3]);
    put(&[0, 1]).await;
    assert_eq!(s.put_snapshot("node-a", &h1, &i1).await.0, 201);
    put(&[1, 2]).await;
    assert_eq!(s.put_snapshot("node-a", &h2, &i2).await.0, 201);
    // A restore of the oldest onto node-b is open.
    let restore = OpenRestore {
        target: n("node-b"),
        instance: n("web"),
        source: n("node-a"),
        snapshot: SnapshotId(1),
    };
    s.store().open_restore(&restore, &[1; 32], 1).unwrap();
    put(&[2, 3]).await;
    assert_eq!(s.put_snapshot("node-a", &h3, &i3).await.0, 201);
    let kept = |s: &Service| -> Vec<u64> {
        s.store()
            .snapshots()
            .unwrap()
            .iter()
            .map(|x| x.id.0)
            .collect()
    };
    assert_eq!(
        kept(&s),
        vec![1, 2, 3],
        "retain 2, and the one the restore names"
    );
    for b in &c {
        assert!(s.chunk_file("node-a", b).exists());
    }
    // node-b can still fetch what its restore needs.
    let get = format!("chunk/node-a/{}", hex(&id(&c[0])));
    assert_eq!(s.call("node-b", "GET", &get, b"").await.0, 200);

    // The restore is done: the next snapshot drops 1 and 2 and sweeps chunk 0 and 1.
    s.store().close_restore(&n("node-b"), &n("web")).unwrap();
    put(&[3]).await;
    assert_eq!(s.put_snapshot("node-a", &h4, &i4).await.0, 201);
    assert_eq!(kept(&s), vec![3, 4]);
    assert!(!s.chunk_file("node-a", &c[0]).exists());
    assert!(!s.chunk_file("node-a", &c[1]).exists());
    assert!(s.chunk_file("node-a", &c[2]).exists());
    assert!(s.chunk_file("node-a", &c[3]).exists());
    let lists = s.dir.join("blobs/node-a/snapshots/web");
    let mut left: Vec<String> = std::fs::read_dir(&lists)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, vec!["0000000000000003", "0000000000000004"]);
    assert_eq!(
        s.counters("node-a").0,
        3000 + 4000,
        "bytes left after the sweep"
    );
    let (_, puts, dups, _) = s.counters("node-a");
    assert_eq!((puts, dups), (4, 3), "chunks 1, 2 and 3 were put again");
    s.stop().await;
}
