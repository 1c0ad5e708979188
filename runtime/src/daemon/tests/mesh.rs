//! Daemon-level tests of the mesh side: custody of a peer's batch is one `Relayed`
//! record, durable before it is answered; refusals are typed; the per-origin bound sheds
//! by priority; messages route between the MQTT and mesh links; peers' parameters render
//! `{{node/instance.key}}` and survive a reboot.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use hedge_uplink::link::{ToLink, ToNode};
use hedge_wire::codec::encode;
use hedge_wire::mesh::{CustodyRefusal, SignedBatch, SignedParams};
use hedge_wire::{ConfigFile, Message, Name, Record, RecordKind, RequestedState, Up};
use tokio::sync::mpsc;

use super::{kill_all, sleep_request};
use crate::daemon::links::{LinkHandle, LinkId};
use crate::daemon::Daemon;
use crate::store::tests::{health, state};

fn n(s: &str) -> Name {
    Name::new(s).unwrap()
}

/// A batch of `origin` holding `kinds` at seqs `from..`, signed with a dummy signature
/// (the mesh link checks signatures; the daemon never sees a bad one).
fn batch(origin: &str, from: u64, kinds: Vec<RecordKind>) -> SignedBatch {
    let to = from + kinds.len() as u64 - 1;
    let up = Up {
        node: n(origin),
        records: kinds
            .into_iter()
            .enumerate()
            .map(|(i, kind)| Record {
                seq: from + i as u64,
                time_ms: 1,
                kind,
            })
            .collect(),
        covers: Some((from, to)),
        epoch: 42,
    };
    SignedBatch {
        bytes: encode(&Message::Up(up), hedge_wire::DEFAULT_MAX_FRAME).unwrap(),
        signature: vec![1; 64],
    }
}

/// A fake link `id` added to `d`: what the daemon sends it, and a sender to it.
fn fake_link(
    d: &mut Daemon,
    id: LinkId,
) -> (
    mpsc::UnboundedReceiver<ToLink>,
    mpsc::UnboundedSender<ToNode>,
) {
    let (to_node_tx, to_node_rx) = mpsc::unbounded_channel();
    let (to_link_tx, to_link_rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(std::future::pending::<()>());
    d.links
        .add(LinkHandle::new(id, to_link_tx, to_node_rx, task));
    (to_link_rx, to_node_tx)
}

/// The answer to custody request `id`.
fn answer(rx: &mut mpsc::UnboundedReceiver<ToLink>, id: u64) -> Result<(), CustodyRefusal> {
    loop {
        match rx.try_recv().expect("an answer") {
            ToLink::CustodyStored { id: got, result } if got == id => return result,
            _ => {}
        }
    }
}

fn relayed(d: &Daemon) -> Vec<SignedBatch> {
    d.outbox
        .store
        .outbox_from(0, 10_000)
        .unwrap()
        .into_iter()
        .filter_map(|r| match r.kind {
            RecordKind::Relayed(b) => Some(b),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn custody_is_one_durable_relayed_record_and_refusals_are_typed() {
    let dir = tempfile::tempdir().unwrap();
    let b = batch("peer-a", 1, vec![health(1), health(2)]);
    {
        let mut d = super::daemon(dir.path());
        let (mut mesh, _) = fake_link(&mut d, LinkId::Mesh);
        d.on_link(
            LinkId::Mesh,
            ToNode::Custody {
                id: 7,
                batch: b.clone(),
            },
        );
        assert_eq!(answer(&mut mesh, 7), Ok(()));
        assert_eq!(
            d.outbox.store.flush_deadline(),
            None,
            "the outbox log was synced before custody was answered"
        );
        assert_eq!(relayed(&d), vec![b.clone()]);
        assert_eq!(d.relay_counters.stored, 1);
        assert_eq!(d.relay_counters.records, 2);

        // Not a batch: malformed. Our own records: not yours.
        let garbage = SignedBatch {
            bytes: vec![0xff; 40],
            signature: vec![],
        };
        d.on_link(
            LinkId::Mesh,
            ToNode::Custody {
                id: 8,
                batch: garbage,
            },
        );
        assert_eq!(answer(&mut mesh, 8), Err(CustodyRefusal::Malformed));
        let own = batch("unit", 1, vec![health(1)]);
        d.on_link(LinkId::Mesh, ToNode::Custody { id: 9, batch: own });
        assert_eq!(answer(&mut mesh, 9), Err(CustodyRefusal::NotYours));

        // Nested deeper than MAX_RELAY_DEPTH: too deep.
        let mut deep = batch("n0", 1, vec![health(1)]);
        for i in 1..=hedge_wire::mesh::MAX_RELAY_DEPTH {
            deep = batch(&format!("n{i}"), 1, vec![RecordKind::Relayed(deep)]);
        }
        d.on_link(
            LinkId::Mesh,
            ToNode::Custody {
                id: 10,
                batch: deep,
            },
        );
        assert_eq!(answer(&mut mesh, 10), Err(CustodyRefusal::TooDeep));
        assert_eq!(d.relay_counters.refused, 3);
        assert_eq!(relayed(&d).len(), 1, "refused batches are not stored");
        kill_all(&mut d);
        // Dropped without any further flush: what was answered is on disk.
    }
    let d = super::daemon(dir.path());
    assert_eq!(relayed(&d), vec![b]);
    let held = d.relay.view();
    assert_eq!((held[0].origin.as_str(), held[0].batches), ("peer-a", 1));
}

#[tokio::test]
async fn the_bound_per_origin_sheds_oldest_low_priority_batches_and_keeps_incidents() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = super::daemon(dir.path());
    let (mut mesh, _) = fake_link(&mut d, LinkId::Mesh);
    // A batch of 40 health records is about 1.3 KB: a bound of 6 KB holds four.
    let low = |from: u64| batch("peer-a", from, (0..40).map(health).collect());
    let size = postcard::to_stdvec(&RecordKind::Relayed(low(1)))
        .unwrap()
        .len() as u64;
    d.cfg.mesh.custody_bytes_per_origin = size * 4 + size / 2;
    let keep = batch("peer-a", 1000, vec![state("db")]);
    d.on_link(
        LinkId::Mesh,
        ToNode::Custody {
            id: 1,
            batch: keep.clone(),
        },
    );
    assert_eq!(answer(&mut mesh, 1), Ok(()));
    for i in 0..4u64 {
        d.on_link(
            LinkId::Mesh,
            ToNode::Custody {
                id: 2 + i,
                batch: low(1 + 40 * i),
            },
        );
        assert_eq!(answer(&mut mesh, 2 + i), Ok(()));
    }
    // Full: the next one sheds the oldest low-priority batch, never the kept one.
    d.on_link(
        LinkId::Mesh,
        ToNode::Custody {
            id: 6,
            batch: low(161),
        },
    );
    assert_eq!(answer(&mut mesh, 6), Ok(()));
    let held = relayed(&d);
    assert_eq!(held.len(), 5);
    assert!(held.contains(&keep), "the instance state stays");
    assert!(!held.contains(&low(1)), "the oldest health batch went");
    assert!(held.contains(&low(161)));
    assert_eq!(d.relay_counters.shed, 1);
    assert!(d.relay.bytes_of(&n("peer-a")) <= d.cfg.mesh.custody_bytes_per_origin);
    // Another origin has its own bound.
    d.on_link(
        LinkId::Mesh,
        ToNode::Custody {
            id: 7,
            batch: batch("peer-b", 1, vec![health(1)]),
        },
    );
    assert_eq!(answer(&mut mesh, 7), Ok(()));

    // Records handed to a link are never shed: with everything handed over, a new
    // batch finds no room and is refused.
    let last = d.outbox.store.next_seq().unwrap() - 1;
    d.outbox.store.hand_over(last).unwrap();
    d.on_link(
        LinkId::Mesh,
        ToNode::Custody {
            id: 8,
            batch: low(201),
        },
    );
    assert_eq!(answer(&mut mesh, 8), Err(CustodyRefusal::Full));
    assert_eq!(relayed(&d).len(), 6);

    // The master's ack frees the origin's room.
    d.on_link(LinkId::Mesh, ToNode::Delete { upto: last });
    assert_eq!(d.relay.bytes_of(&n("peer-a")), 0);
    d.on_link(
        LinkId::Mesh,
        ToNode::Custody {
            id: 9,
            batch: low(201),
        },
    );
    assert_eq!(answer(&mut mesh, 9), Ok(()));
    let v = d.relay.view();
    assert_eq!((v[0].shed, v[0].refused), (1, 1));
    kill_all(&mut d);
}

#[tokio::test]
async fn carried_frames_fetches_and_the_direct_state_route_between_the_links() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = super::daemon(dir.path());
    let (mut up, _) = fake_link(&mut d, LinkId::Uplink);
    let (mut mesh, _) = fake_link(&mut d, LinkId::Mesh);
    d.on_link(LinkId::Uplink, ToNode::Carried(vec![1, 2, 3]));
    assert!(matches!(mesh.try_recv(), Ok(ToLink::Carried(f)) if f == [1, 2, 3]));
    d.on_link(LinkId::Mesh, ToNode::Fetch(vec![n("far")]));
    assert!(matches!(up.try_recv(), Ok(ToLink::Fetch(v)) if v == [n("far")]));
    d.on_link(LinkId::Uplink, ToNode::Link(true));
    assert!(matches!(mesh.try_recv(), Ok(ToLink::Direct(true))));
    d.on_link(LinkId::Uplink, ToNode::Link(false));
    assert!(matches!(mesh.try_recv(), Ok(ToLink::Direct(false))));
    // The mesh link's own state says nothing about the direct uplink.
    d.on_link(LinkId::Mesh, ToNode::Link(true));
    assert!(mesh.try_recv().is_err());
    assert!(up.try_recv().is_err());
    kill_all(&mut d);
}

fn params(node: &str, generation: u64, port: &str) -> SignedParams {
    SignedParams {
        node: n(node),
        instance: n("db"),
        generation,
        parameters: BTreeMap::from([("port".to_owned(), port.to_owned())]),
        cert: vec![],
        signature: vec![],
    }
}

#[tokio::test]
async fn peer_parameters_render_consumers_newest_first_and_survive_a_reboot() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = sleep_request("app", RequestedState::Started, Default::default());
    app.config_files.push(ConfigFile {
        path: "etc/app.conf".into(),
        template: "db={{node-2/db.port}}\n".into(),
    });
    let conf = dir.path().join("partitions/app/etc/app.conf");
    let read = || std::fs::read_to_string(&conf).unwrap();
    let pid = |d: &Daemon| d.instances.slots[&n("app")].lifecycle.pid();
    {
        let mut d = super::daemon(dir.path());
        d.outbox.store.put_local(&app).unwrap();
        d.reconcile();
        d.flush_observed();
        assert_eq!(pid(&d), None, "waits for the peer's value");

        d.on_link(
            LinkId::Mesh,
            ToNode::PeerParams(params("node-2", 5, "7000")),
        );
        d.flush_observed();
        let first = pid(&d).expect("started once the peer published");
        assert_eq!(read(), "db=7000\n");

        // Older, or another node's db: nothing changes.
        d.on_link(LinkId::Mesh, ToNode::PeerParams(params("node-2", 4, "1")));
        d.on_link(LinkId::Mesh, ToNode::PeerParams(params("node-3", 9, "2")));
        d.flush_observed();
        assert_eq!(pid(&d), Some(first));
        assert_eq!(read(), "db=7000\n");

        // Newer with another value: re-rendered and restarted.
        d.on_link(
            LinkId::Mesh,
            ToNode::PeerParams(params("node-2", 6, "7001")),
        );
        d.flush_observed();
        super::pump_until(&mut d, "the restart", |d| {
            pid(d).is_some_and(|p| p != first)
        })
        .await;
        assert_eq!(read(), "db=7001\n");
        kill_all(&mut d);
    }
    // A reboot with no peer: the stored value renders.
    std::fs::remove_file(&conf).unwrap();
    let mut d = super::daemon(dir.path());
    d.reconcile();
    d.flush_observed();
    assert!(pid(&d).is_some());
    assert_eq!(read(), "db=7001\n");
    kill_all(&mut d);
}

#[tokio::test]
async fn own_publications_reach_the_mesh_link() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = super::daemon(dir.path());
    let (mut mesh, _) = fake_link(&mut d, LinkId::Mesh);
    let db = sleep_request("db", RequestedState::Started, Default::default());
    d.outbox.store.put_local(&db).unwrap();
    d.reconcile();
    d.flush_observed();
    let etc = dir.path().join("partitions/db/etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("connection.json"), r#"{"port":5432}"#).unwrap();
    d.poll_connections();
    let got = std::iter::from_fn(|| mesh.try_recv().ok()).find_map(|m| match m {
        ToLink::Params {
            instance,
            parameters,
        } => Some((instance, parameters)),
        _ => None,
    });
    assert_eq!(
        got,
        Some((
            n("db"),
            BTreeMap::from([("port".to_owned(), "5432".to_owned())])
        ))
    );
    kill_all(&mut d);
}

#[tokio::test]
async fn status_and_metrics_show_custody_per_origin() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = super::daemon(dir.path());
    let (mut mesh, _) = fake_link(&mut d, LinkId::Mesh);
    d.on_link(
        LinkId::Mesh,
        ToNode::Custody {
            id: 1,
            batch: batch("peer-a", 1, vec![health(1), health(2)]),
        },
    );
    assert_eq!(answer(&mut mesh, 1), Ok(()));
    let m = d.status().mesh;
    assert_eq!(m.relay.batches, 1);
    assert_eq!(m.relay.records, 2);
    assert_eq!(m.hops, None, "no uplink, no peer: no path");
    assert_eq!(m.peers.len(), 1);
    let p = &m.peers[0];
    assert_eq!(
        (p.node.as_str(), p.link.as_str(), p.custody_batches),
        ("peer-a", "down", 1)
    );
    assert!(p.custody_bytes > 0);
    let text = d.metrics_text();
    assert!(text.contains("hedge_relay_batches_total 1\n"), "{text}");
    assert!(text.contains("hedge_relay_records_total 2\n"), "{text}");
    assert!(
        text.contains(&format!(
            "hedge_custody_held_bytes{{origin=\"peer-a\"}} {}\n",
            p.custody_bytes
        )),
        "{text}"
    );
    assert_eq!(p.taken_bytes, p.custody_bytes, "nothing shed yet");
    assert!(
        text.contains(&format!(
            "hedge_custody_taken_bytes_total{{origin=\"peer-a\"}} {}\n",
            p.taken_bytes
        )),
        "{text}"
    );
    assert!(
        text.contains("hedge_custody_shed_bytes_total{origin=\"peer-a\"} 0\n"),
        "{text}"
    );
    kill_all(&mut d);
}

#[test]
fn peer_rows_merge_sessions_and_origins() {
    use crate::daemon::mesh::{peer_rows, PeerSeen};
    let held = {
        let mut h = crate::relay::Held::new();
        h.stored(&n("b"), 1, 100, false, true);
        h.stored(&n("c"), 2, 50, true, true);
        h.stored(&n("b"), 3, 70, false, true);
        h.shed(&[1]);
        h.view()
    };
    let seen = [
        PeerSeen {
            node: n("b"),
            addr: "10.0.0.2:7441".parse().unwrap(),
            hops: 1,
        },
        PeerSeen {
            node: n("a"),
            addr: "10.0.0.1:7441".parse().unwrap(),
            hops: hedge_wire::mesh::NO_PATH,
        },
    ];
    let rows = peer_rows(&seen, &held);
    let brief: Vec<_> = rows
        .iter()
        .map(|r| (r.node.as_str(), r.link.as_str(), r.hops, r.custody_bytes))
        .collect();
    assert_eq!(
        brief,
        vec![
            ("a", "up", None, 0),
            ("b", "up", Some(1), 70),
            ("c", "down", None, 50)
        ]
    );
    assert_eq!(rows[1].address.as_deref(), Some("10.0.0.2:7441"));
    // What was taken and shed this run, beside what is held now.
    let b = &rows[1];
    assert_eq!((b.taken_bytes, b.shed, b.shed_bytes), (170, 1, 100));
    assert_eq!(b.taken_bytes - b.shed_bytes, b.custody_bytes);
}

#[tokio::test]
async fn custody_for_peers_never_sheds_the_relays_own_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.toml");
    let text = crate::config::default_file("unit")
        .replace("# quota_bytes = 8388608", "quota_bytes = 65536");
    std::fs::write(&path, text).unwrap();
    let mut d = Daemon::boot(crate::config::NodeConfig::load(&path).unwrap()).unwrap();
    let (mut mesh, _) = fake_link(&mut d, LinkId::Mesh);
    // Far more held for peers than the relay's own quota.
    for i in 0..40u64 {
        let b = batch(
            &format!("p{}", i % 4),
            1 + 200 * i,
            (0..200).map(health).collect(),
        );
        d.on_link(LinkId::Mesh, ToNode::Custody { id: i, batch: b });
        assert_eq!(answer(&mut mesh, i), Ok(()));
    }
    assert!(d.outbox.store.outbox_bytes() > 65_536);
    // The relay's own health records stay: its quota is its own. (Enough of them that
    // a shedding pass comes due: about a ninth of what the last pass listed.)
    let before = d.outbox.store.outbox_bytes();
    let appended = 1500;
    for i in 0..appended {
        d.record(health(i));
    }
    assert!(
        d.outbox.store.outbox_bytes() - before < 60_000,
        "under its own quota"
    );
    let own = d
        .outbox
        .store
        .outbox_from(0, 10_000)
        .unwrap()
        .into_iter()
        .filter(|r| matches!(r.kind, RecordKind::NodeHealth { .. }))
        .count();
    assert_eq!(own, appended as usize);
    assert_eq!(d.counters.shed_dropped_health, 0);
    assert_eq!(relayed(&d).len(), 40);
    kill_all(&mut d);
}

#[test]
fn the_size_planned_for_a_relayed_record_is_never_below_its_encoding() {
    for n in [1u32, 100, 1000] {
        let b = batch("peer-a", 1, (0..n).map(health).collect());
        let record = Record {
            seq: u64::MAX,
            time_ms: u64::MAX,
            kind: RecordKind::Relayed(b.clone()),
        };
        let encoded = postcard::to_stdvec(&record).unwrap().len() as u64;
        let planned =
            (b.bytes.len() + b.signature.len()) as u64 + super::super::mesh::RECORD_OVERHEAD;
        assert!(planned >= encoded, "{planned} < {encoded}");
    }
}
