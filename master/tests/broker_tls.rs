//! A real mosquitto 2.0 with the files `pki::init` writes, and real rumqttc + rustls (ring)
//! clients with enrolled bundles: mutual TLS works, the masters' shared subscription gets
//! node records, and the ACL keeps each node to its own topics.
//!
//! mosquitto 2.0.11 grants every SUBSCRIBE and acknowledges a forbidden QoS 1 publish with
//! a successful (MQTT 3.1.1) PUBACK, so "forbidden" is observed as "never delivered": a
//! later marker message, which would have been delivered after the forbidden one, arrives
//! while the forbidden one did not. No sleeps: every wait has a deadline.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;
#[path = "../../tests/common/ports.rs"]
mod ports;

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hedge_master::pki::{self, InitOptions};
use hedge_master::run::{IngestLimits, Settings};
use hedge_master::store::{FleetStore, MasterStore};
use hedge_uplink::topic::{self, MASTER_UP_FILTER};
use hedge_wire::codec::encode;
use hedge_wire::limits::DEFAULT_MAX_FRAME;
use hedge_wire::{InstanceStatus, Message, Name, Record, RecordKind, Up};
use rumqttc::{
    AsyncClient, ConnectionError, Event, MqttOptions, Packet, Publish, QoS, TlsConfiguration,
    Transport,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

fn mosquitto_bin() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join("mosquitto"))
        .find(|p| p.is_file())
        .expect("mosquitto not found: run scripts/setup (apt-get install mosquitto)")
}

/// mosquitto running `DIR/mosquitto.conf`; killed on drop.
struct Broker {
    child: Child,
    log: PathBuf,
}

impl Broker {
    /// Starts it and waits until every port in `ports` accepts connections.
    #[allow(clippy::disallowed_methods)] // an end-to-end test: waits for real processes, with a deadline
    fn start(dir: &Path, ports: &[u16]) -> Broker {
        let log = dir.join("mosquitto.log");
        let mut child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(dir.join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).open(&log).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "mosquitto exited ({status}):\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if ports.iter().all(|&p| listens(p)) {
                return Broker { child, log };
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto never listened on {ports:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- mosquitto log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// A master directory, enrolled nodes `a`, `b` and `c`, and its broker: the generated config
/// as is, its masters' listener on `port` and its nodes' listener on `node_port`.
struct Fleet {
    dir: PathBuf,
    /// The masters' listener (client ids kept).
    port: u16,
    /// The nodes' listener (client id = certificate CN).
    node_port: u16,
    _broker: Broker,
    _tmp: tempfile::TempDir,
}

impl Fleet {
    fn new() -> Fleet {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("master");
        let (port, node_port) = (ports::free_port(), ports::free_port());
        let opts = InitOptions {
            broker_port: node_port,
            master_port: Some(port),
            ..InitOptions::default()
        };
        pki::init(&dir, &opts).unwrap();
        for node in ["a", "b", "c"] {
            let c = common::enroll(&dir, node);
            std::fs::write(dir.join(format!("{node}.crt")), c.cert).unwrap();
            std::fs::write(dir.join(format!("{node}.key")), c.key).unwrap();
        }
        let broker = Broker::start(&dir, &[port, node_port]);
        Fleet {
            dir,
            port,
            node_port,
            _broker: broker,
            _tmp: tmp,
        }
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap()
    }

    /// TLS for the master (`master.crt`).
    fn master_tls(&self) -> ClientConfig {
        tls(
            &self.read("ca.crt"),
            Some((&self.read("master.crt"), &self.read("master.key"))),
        )
    }

    /// TLS for an enrolled node, with the certificate it got for its own key.
    fn node_tls(&self, node: &str) -> ClientConfig {
        tls(
            &self.read("ca.crt"),
            Some((
                &self.read(&format!("{node}.crt")),
                &self.read(&format!("{node}.key")),
            )),
        )
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls(ca: &str, client: Option<(&str, &str)>) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let b = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    match client {
        Some((cert, key)) => {
            let certs = CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
            b.with_client_auth_cert(certs, key).unwrap()
        }
        None => b.with_no_client_auth(),
    }
}

/// One MQTT 3.1.1 connection; its event loop runs in a task and reports incoming packets
/// (or the first connection error, after which it stops).
struct Client {
    mqtt: AsyncClient,
    rx: mpsc::UnboundedReceiver<Result<Packet, ConnectionError>>,
    /// Publishes that arrived while waiting for an ack, in order.
    pending: VecDeque<Publish>,
}

impl Client {
    fn connect(id: &str, port: u16, tls: ClientConfig) -> Client {
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls),
        )));
        let (mqtt, mut el) = AsyncClient::new(opts, 16);
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(p)) => {
                        if tx.send(Ok(p)).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Outgoing(_)) => {}
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            }
        });
        Client {
            mqtt,
            rx,
            pending: VecDeque::new(),
        }
    }

    /// The next incoming packet (panics on a connection error or after [`WAIT`]).
    async fn next(&mut self, what: &str) -> Packet {
        match tokio::time::timeout(WAIT, self.rx.recv()).await {
            Ok(Some(Ok(p))) => p,
            Ok(Some(Err(e))) => panic!("connection error while waiting for {what}: {e:?}"),
            Ok(None) => panic!("event loop ended while waiting for {what}"),
            Err(_) => panic!("timed out waiting for {what}"),
        }
    }

    /// Waits for a packet `want` matches; publishes met on the way are kept for
    /// [`Client::publishes_until`]; other packets are passed over.
    async fn until(&mut self, what: &str, mut want: impl FnMut(&Packet) -> bool) -> Packet {
        loop {
            let p = self.next(what).await;
            if want(&p) {
                return p;
            }
            if let Packet::Publish(p) = p {
                self.pending.push_back(p);
            }
        }
    }

    async fn connected(mut self) -> Client {
        self.until("CONNACK", |p| matches!(p, Packet::ConnAck(_)))
            .await;
        self
    }

    async fn subscribe(&mut self, filter: &str) {
        self.mqtt.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        self.until("SUBACK", |p| matches!(p, Packet::SubAck(_)))
            .await;
    }

    async fn publish(&mut self, topic: &str, payload: &str, retain: bool) {
        self.mqtt
            .publish(topic, QoS::AtLeastOnce, retain, payload.as_bytes().to_vec())
            .await
            .unwrap();
        self.until("PUBACK", |p| matches!(p, Packet::PubAck(_)))
            .await;
    }

    async fn publish_bytes(&mut self, topic: &str, payload: Vec<u8>) {
        self.mqtt
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
        self.until("PUBACK", |p| matches!(p, Packet::PubAck(_)))
            .await;
    }

    /// Publishes received until (and including) the one whose payload is `last`.
    async fn publishes_until(&mut self, last: &str) -> Vec<Publish> {
        let mut got = Vec::new();
        loop {
            let next = match self.pending.pop_front() {
                Some(p) => Packet::Publish(p),
                None => self.next(&format!("publish {last:?}")).await,
            };
            if let Packet::Publish(p) = next {
                let done = p.payload.as_ref() == last.as_bytes();
                got.push(p);
                if done {
                    return got;
                }
            }
        }
    }
}

fn summary(ps: &[Publish]) -> Vec<(String, String)> {
    ps.iter()
        .map(|p| {
            (
                p.topic.clone(),
                String::from_utf8_lossy(&p.payload).into_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn shared_subscription_gets_each_nodes_own_records_only() {
    let fleet = Fleet::new();
    let mut master = Client::connect("master-1", fleet.port, fleet.master_tls())
        .connected()
        .await;
    master.subscribe(MASTER_UP_FILTER).await;

    let mut a = Client::connect("node-a", fleet.node_port, fleet.node_tls("a"))
        .connected()
        .await;
    a.publish(&topic::up_topic("a"), "a-1", false).await;
    let got = master.publishes_until("a-1").await;
    assert_eq!(
        summary(&got),
        [("hedge/v1/a/up".to_string(), "a-1".to_string())]
    );

    // B impersonating A: mosquitto acks it (3.1.1 PUBACK, success) and drops it. B's own
    // record, published after it on the same connection, is delivered; the forgery is not.
    let mut b = Client::connect("node-b", fleet.node_port, fleet.node_tls("b"))
        .connected()
        .await;
    b.publish(&topic::up_topic("a"), "forged-by-b", false).await;
    b.publish(&topic::up_topic("b"), "b-1", false).await;
    let got = master.publishes_until("b-1").await;
    assert_eq!(
        summary(&got),
        [("hedge/v1/b/up".to_string(), "b-1".to_string())]
    );
    // B is still connected: forbidden publishes do not disconnect.
    b.publish(&topic::up_topic("b"), "b-2", false).await;
    master.publishes_until("b-2").await;
}

#[tokio::test]
async fn a_node_reads_only_its_own_desired_state_and_acks() {
    let fleet = Fleet::new();
    let mut master = Client::connect("master-1", fleet.port, fleet.master_tls())
        .connected()
        .await;
    master
        .publish(&topic::desired_topic("b"), "desired-b", true)
        .await;
    master
        .publish(&topic::desired_topic("a"), "desired-a", true)
        .await;
    // B may not write anyone's desired state, its own included.
    let mut b = Client::connect("node-b", fleet.node_port, fleet.node_tls("b"))
        .connected()
        .await;
    b.publish(&topic::desired_topic("a"), "forged-by-b", true)
        .await;
    b.publish(&topic::desired_topic("b"), "forged-by-b", true)
        .await;

    // Retained: B's desired state would come with the first SUBACK, before A's.
    let mut a = Client::connect("node-a", fleet.node_port, fleet.node_tls("a"))
        .connected()
        .await;
    a.subscribe(&topic::desired_topic("b")).await;
    a.subscribe("hedge/v1/#").await;
    a.subscribe(&topic::ack_topic("a")).await;
    let got = a.publishes_until("desired-a").await;
    assert_eq!(
        summary(&got),
        [("hedge/v1/a/desired".to_string(), "desired-a".to_string())]
    );

    // Live: published for B first, then for A; A gets only its own.
    master.publish(&topic::ack_topic("b"), "ack-b", false).await;
    master
        .publish(&topic::desired_topic("b"), "desired-b-2", true)
        .await;
    master.publish(&topic::ack_topic("a"), "ack-a", false).await;
    let got = a.publishes_until("ack-a").await;
    assert!(
        got.iter().all(|p| p.topic.starts_with("hedge/v1/a/")),
        "{:?}",
        summary(&got)
    );
}

#[tokio::test]
async fn clients_without_a_fleet_certificate_are_refused() {
    let fleet = Fleet::new();
    let ca = fleet.read("ca.crt");

    // No client certificate at all.
    let mut anon = Client::connect("anon", fleet.node_port, tls(&ca, None));
    let first = tokio::time::timeout(WAIT, anon.rx.recv())
        .await
        .expect("no answer to a client without a certificate");
    assert!(matches!(first, Some(Err(_))), "{first:?}");

    // A certificate with CN = hedge-master, but from another CA.
    let rogue_ca = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let rogue_issuer = rcgen::Issuer::new(p, &rogue_ca);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, pki::MASTER_USER);
    let cert = p.signed_by(&key, &rogue_issuer).unwrap();
    let mut rogue = Client::connect(
        "rogue",
        fleet.node_port,
        tls(&ca, Some((&cert.pem(), &key.serialize_pem()))),
    );
    let first = tokio::time::timeout(WAIT, rogue.rx.recv())
        .await
        .expect("no answer to a client with a foreign certificate");
    assert!(matches!(first, Some(Err(_))), "{first:?}");

    // The broker is still fine for enrolled clients.
    Client::connect("node-a", fleet.node_port, fleet.node_tls("a"))
        .connected()
        .await;
}

/// Node B, with its own enrolled certificate, connects to the nodes' listener with node
/// A's client id: without `use_username_as_clientid` mosquitto would end A's session
/// (a client id takeover keeping A offline). A's connection stays up and still gets what
/// is published to it afterwards; B is connected too, as itself.
#[tokio::test]
async fn a_node_cannot_take_over_another_nodes_client_id() {
    let fleet = Fleet::new();
    let mut master = Client::connect("master-1", fleet.port, fleet.master_tls())
        .connected()
        .await;
    let mut a = Client::connect("a", fleet.node_port, fleet.node_tls("a"))
        .connected()
        .await;
    a.subscribe(&topic::desired_topic("a")).await;

    let mut b = Client::connect("a", fleet.node_port, fleet.node_tls("b"))
        .connected()
        .await;
    // B's session is B's own: its records still reach a master as B's.
    master.subscribe(MASTER_UP_FILTER).await;
    b.publish(&topic::up_topic("b"), "b-1", false).await;
    let got = master.publishes_until("b-1").await;
    assert_eq!(
        summary(&got),
        [("hedge/v1/b/up".to_string(), "b-1".to_string())]
    );

    // A was not kicked: a message for it, published after B connected, reaches it on its
    // first connection (`next` panics on a connection error: the event loop would have
    // reported the broker closing it), and nothing else happened to it meanwhile.
    master
        .publish(&topic::desired_topic("a"), "after-b", false)
        .await;
    let got = a.publishes_until("after-b").await;
    assert_eq!(
        summary(&got),
        [("hedge/v1/a/desired".to_string(), "after-b".to_string())]
    );
    assert!(
        matches!(a.rx.try_recv(), Err(mpsc::error::TryRecvError::Empty)),
        "A's connection saw more than the message"
    );
}

/// An encoded Up frame of `node` with records `from..=to` covering themselves.
fn up_frame(node: &str, from: u64, to: u64) -> Vec<u8> {
    let records = (from..=to)
        .map(|seq| Record {
            seq,
            time_ms: 1000 + seq,
            kind: RecordKind::InstanceState {
                instance: Name::new("web").unwrap(),
                status: InstanceStatus::Running,
                pid: Some(7),
                restarts: 0,
                last_exit: None,
            },
        })
        .collect();
    let up = Up {
        node: Name::new(node).unwrap(),
        records,
        covers: Some((from, to)),
        epoch: 1,
    };
    encode(&Message::Up(up), DEFAULT_MAX_FRAME).unwrap()
}

/// Waits (polling, with a deadline) until `f` holds.
#[allow(clippy::disallowed_methods)] // an end-to-end test: waits for real processes, with a deadline
async fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A master process's driver on `db`, in a task: stop it with the sender, then await
/// its counters.
fn spawn_master(
    fleet: &Fleet,
    db: &Path,
    limits: IngestLimits,
    keepalive: Duration,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<hedge_master::run::Counters, hedge_master::run::RunError>>,
) {
    spawn_master_carrying(fleet, db, limits, keepalive, None)
}

/// [`spawn_master`], taking relayed batches with `carry`.
fn spawn_master_carrying(
    fleet: &Fleet,
    db: &Path,
    limits: IngestLimits,
    keepalive: Duration,
    carry: Option<hedge_master::run::Carrying>,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<hedge_master::run::Counters, hedge_master::run::RunError>>,
) {
    let settings = Settings {
        host: "127.0.0.1".into(),
        port: fleet.port,
        tls: Arc::new(fleet.master_tls()),
        limits,
        keepalive,
        revoked: Arc::new(hedge_master::revocation::Revoked::new(&fleet.dir)),
        renew: None,
        act: None,
        evacuate: None,
        carry,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let master = tokio::spawn(hedge_master::run::run(
        MasterStore::open(db).unwrap(),
        settings,
        async move {
            let _ = stopped.await;
        },
    ));
    (stop, master)
}

/// Node B floods its own topic with 300 KiB frames (above what the master's client
/// accepts: before the broker's `message_size_limit`, each one knocked the master off the
/// broker) and with many small valid batches (rate and byte quota); node A's batches,
/// each published once, are all stored meanwhile.
#[tokio::test]
#[allow(clippy::disallowed_methods)] // an end-to-end test: waits for real processes, with a deadline
async fn a_flooding_node_does_not_keep_another_nodes_records_out() {
    let fleet = Fleet::new();
    let db = fleet.dir.join("master.db");
    let view = MasterStore::open(&db).unwrap();
    let limits = IngestLimits {
        frames_per_sec: 20,
        // A's 51 batches fit in one burst; B's flood exhausts its own at once.
        burst: 60,
        max_stored_bytes: 4096,
    };
    let (stop, master) = spawn_master(&fleet, &db, limits, Duration::from_secs(20));
    let a_name = Name::new("a").unwrap();
    let b_name = Name::new("b").unwrap();

    // A's first batch, resent (as a node does until acked) until the master holds it.
    let mut a = Client::connect("node-a", fleet.node_port, fleet.node_tls("a"))
        .connected()
        .await;
    let deadline = Instant::now() + WAIT;
    while view.count(&a_name).unwrap() == 0 {
        assert!(
            Instant::now() < deadline,
            "the master never stored A's first batch"
        );
        a.mqtt
            .publish(
                topic::up_topic("a"),
                QoS::AtLeastOnce,
                false,
                up_frame("a", 1, 1),
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // B floods: 300 KiB frames and many small valid batches, as fast as it can.
    let mut opts = MqttOptions::new("node-b", "127.0.0.1", fleet.node_port);
    opts.set_max_packet_size(1 << 20, 1 << 20)
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(fleet.node_tls("b")),
        )));
    let (b, mut b_loop) = AsyncClient::new(opts, 64);
    let b_events = tokio::spawn(async move {
        let mut lost = 0u32;
        loop {
            if b_loop.poll().await.is_err() {
                lost += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if lost > 1000 {
                return;
            }
        }
    });
    let flood = tokio::spawn(async move {
        let big = vec![0xa5u8; 300 * 1024];
        let mut seq = 1u64;
        loop {
            b.publish(topic::up_topic("b"), QoS::AtMostOnce, false, big.clone())
                .await
                .unwrap();
            for _ in 0..10 {
                b.publish(
                    topic::up_topic("b"),
                    QoS::AtLeastOnce,
                    false,
                    up_frame("b", seq, seq + 9),
                )
                .await
                .unwrap();
                seq += 10;
            }
        }
    });
    // Let the flood get going: B's small batches reach the master.
    eventually("B's first batches stored", WAIT, || {
        view.count(&b_name).unwrap() > 0
    })
    .await;

    // A publishes 50 batches, once each, while B floods.
    for seq in 2..=51 {
        a.publish_bytes(&topic::up_topic("a"), up_frame("a", seq, seq))
            .await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while view.count(&a_name).unwrap() < 51 {
        assert!(
            Instant::now() < deadline,
            "A's batches stored: {} of 51",
            view.count(&a_name).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    flood.abort();
    b_events.abort();
    let _ = stop.send(());
    let counters = master.await.unwrap().unwrap();
    eprintln!("{counters:?}");
    // B was bounded: its stored bytes stop near the quota (one batch over at most), and
    // its frames were refused for rate and quota.
    let b_bytes = view.stored_bytes(&b_name).unwrap();
    assert!(b_bytes < 4096 + 4096, "B stored {b_bytes} bytes");
    assert!(counters.rate_limited > 0, "{counters:?}");
    assert!(counters.over_quota > 0, "{counters:?}");
}

/// Another process holds SQLite's write lock for 5 s while a node's batch arrives: the
/// master's event loop keeps its 1 s MQTT keepalive (the broker drops a client silent
/// for 1.5 keepalives), and the batch is stored and acknowledged once the lock goes.
#[tokio::test]
#[allow(clippy::disallowed_methods)] // an end-to-end test: waits for real processes, with a deadline
async fn a_locked_store_never_stalls_the_masters_event_loop() {
    let fleet = Fleet::new();
    let db = fleet.dir.join("master.db");
    let view = MasterStore::open(&db).unwrap();
    let (stop, master) = spawn_master(&fleet, &db, IngestLimits::default(), Duration::from_secs(1));
    let a_name = Name::new("a").unwrap();
    let mut a = Client::connect("node-a", fleet.node_port, fleet.node_tls("a"))
        .connected()
        .await;
    a.subscribe(&topic::ack_topic("a")).await;
    // The master is up once a first batch is stored.
    let deadline = Instant::now() + WAIT;
    while view.count(&a_name).unwrap() == 0 {
        assert!(Instant::now() < deadline, "the master never stored a batch");
        a.publish_bytes(&topic::up_topic("a"), up_frame("a", 1, 1))
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let lock = rusqlite::Connection::open(&db).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    a.publish_bytes(&topic::up_topic("a"), up_frame("a", 2, 2))
        .await;
    // Holding the lock is the scenario (not a wait for something): 5 s, well past the
    // 1.5 s after which the broker drops a master whose loop is stuck.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(view.count(&a_name).unwrap(), 1, "stored through the lock?");
    lock.execute_batch("ROLLBACK").unwrap();
    a.until("the ack of batch 2", |p| {
        matches!(p, Packet::Publish(p) if matches!(
            hedge_wire::codec::decode(&p.payload, DEFAULT_MAX_FRAME),
            Ok(Message::Ack(hedge_wire::Ack { upto: 2, epoch: 1 }))
        ))
    })
    .await;
    assert_eq!(view.count(&a_name).unwrap(), 2);
    let _ = stop.send(());
    let counters = master.await.unwrap().unwrap();
    assert_eq!(
        counters.reconnects, 0,
        "the broker dropped the master: {counters:?}"
    );
    assert_eq!(counters.stored, 2, "{counters:?}");
}

/// `n` usage records of two instances from `from`, as a node's accounting makes them.
fn usage_records(from: u64, n: u64) -> Vec<Record> {
    (from..from + n)
        .map(|seq| Record {
            seq,
            time_ms: 1_764_600_000_000 + seq,
            kind: RecordKind::Usage {
                instance: Name::new(if seq % 2 == 0 { "web" } else { "db" }).unwrap(),
                from_ms: 1_764_599_990_000,
                to_ms: 1_764_600_000_000,
                cpu_ms: seq,
                mem_avg_bytes: 1 << 20,
                mem_peak_bytes: 1 << 21,
                disk_bytes: 4096,
                net_rx_bytes: None,
                net_tx_bytes: Some(seq),
                uptime_ms: 10_000,
            },
        })
        .collect()
}

/// A node not yet upgraded sends version-2 batches, an upgraded one compact batches
/// (version 3): the master stores and acknowledges both, and stores the same records.
#[tokio::test]
#[allow(clippy::disallowed_methods)] // an end-to-end test: waits for real processes, with a deadline
async fn the_master_stores_old_and_compact_batches_alike() {
    let fleet = Fleet::new();
    let db = fleet.dir.join("master.db");
    let view = MasterStore::open(&db).unwrap();
    let (stop, master) = spawn_master(
        &fleet,
        &db,
        IngestLimits::default(),
        Duration::from_secs(20),
    );
    let a_name = Name::new("a").unwrap();
    let mut a = Client::connect("node-a", fleet.node_port, fleet.node_tls("a"))
        .connected()
        .await;
    a.subscribe(&topic::ack_topic("a")).await;
    let batch = |from: u64| Up {
        node: a_name.clone(),
        records: usage_records(from, 10),
        covers: Some((from, from + 9)),
        epoch: 1,
    };
    // Version 2 encodes an `Up` as version 4 does, under its own version byte.
    let mut old = encode(&Message::Up(batch(1)), DEFAULT_MAX_FRAME).unwrap();
    old[0] = hedge_wire::LEGACY_VERSION;
    let new = hedge_wire::encode_up(&batch(11), DEFAULT_MAX_FRAME).unwrap();
    assert_eq!(new[0], hedge_wire::COMPACT_UP_VERSION);
    assert!(new.len() < old.len(), "{} vs {}", new.len(), old.len());
    // Resent (as a node does until acked) until the master is up and acks each.
    for (frame, upto) in [(old, 10u64), (new, 20)] {
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(Instant::now() < deadline, "no ack up to {upto}");
            a.publish_bytes(&topic::up_topic("a"), frame.clone()).await;
            let acked = tokio::time::timeout(
                Duration::from_millis(500),
                a.until("an ack", |p| {
                    matches!(p, Packet::Publish(p) if matches!(
                        hedge_wire::codec::decode(&p.payload, DEFAULT_MAX_FRAME),
                        Ok(Message::Ack(hedge_wire::Ack { upto: u, epoch: 1 })) if u == upto
                    ))
                }),
            )
            .await;
            if acked.is_ok() {
                break;
            }
        }
    }
    let stored = view.records(&a_name, 1, 100).unwrap();
    assert_eq!(stored, usage_records(1, 20));
    let _ = stop.send(());
    let counters = master.await.unwrap().unwrap();
    assert_eq!(counters.refused, 0, "{counters:?}");
}

/// `up` as one signed batch of `signer`, with the key its certificate certifies (what a
/// node of the mesh sends its peer).
fn signed_by(fleet: &Fleet, signer: &str, up: &Up) -> hedge_wire::mesh::SignedBatch {
    let pem = fleet.read(&format!("{signer}.key"));
    hedge_uplink::origin::OriginKey::from_pem(pem.as_bytes())
        .unwrap()
        .sign_batch(encode(&Message::Up(up.clone()), DEFAULT_MAX_FRAME).unwrap())
        .unwrap()
}

fn decode_up(frame: &[u8]) -> Up {
    match hedge_wire::codec::decode(frame, DEFAULT_MAX_FRAME).unwrap() {
        Message::Up(u) => u,
        other => panic!("{other:?}"),
    }
}

/// Decoded frames of `client` received on its carry and ack topics, until `done` says
/// they are enough (panics after [`WAIT`]).
async fn carried_until(
    client: &mut Client,
    got: &mut Vec<(String, Message)>,
    done: impl Fn(&[(String, Message)]) -> bool,
) {
    while !done(got) {
        if let Packet::Publish(p) = client.next("carry/ack frames").await {
            let m = hedge_wire::codec::decode(&p.payload, DEFAULT_MAX_FRAME).unwrap();
            got.push((p.topic.clone(), m));
        }
    }
}

/// Relay C (the one with the uplink) publishes one batch on its own topic holding B's
/// signed batch, which holds A's: the master stores each node's records under its own
/// name in the commit of C's batch, acks C on its ack topic, and publishes a
/// master-signed ack for B and for A on C's carry topic. A batch in A's name that C
/// signed (a relay storing in another's name) and an altered batch of A are refused
/// and counted once, however often C resends; `Fetch` gets A's desired state on C's
/// carry topic; `hedge master nodes` sees A's path as `via c,b`.
#[tokio::test]
#[allow(clippy::disallowed_methods)] // an end-to-end test: waits for real processes, with a deadline
async fn a_relay_gets_signed_acks_for_the_nested_batches_it_carries() {
    use hedge_master::sign::{sign, sign_ack, MasterKey};
    use hedge_uplink::origin::verify_ack;
    let fleet = Fleet::new();
    let db = fleet.dir.join("master.db");
    let view = MasterStore::open(&db).unwrap();
    let key = Arc::new(MasterKey::generate());
    let revoked = Arc::new(hedge_master::revocation::Revoked::new(&fleet.dir));
    let carry = hedge_master::run::Carrying {
        key: key.clone(),
        origins: Arc::new(hedge_master::origin::Origins::new(&fleet.dir, revoked)),
    };
    let (a, b, c) = (
        Name::new("a").unwrap(),
        Name::new("b").unwrap(),
        Name::new("c").unwrap(),
    );
    // A's desired state, for the fetch.
    let mut state = hedge_wire::DesiredState {
        node: a.clone(),
        generation: view.next_generation(&a).unwrap(),
        instances: Vec::new(),
        signature: heapless::Vec::new(),
        expires_ms: 0,
        terms: vec![],
        imports: vec![],
        backups: Vec::new(),
        restores: Vec::new(),
    };
    sign(&key, &mut state, hedge_common::clock::now_ms());
    view.put_desired(&state).unwrap();

    // Stored before the master starts: its first lookup publishes it, so no carried
    // ack waits for it.
    let (stop, master) = spawn_master_carrying(
        &fleet,
        &db,
        IngestLimits::default(),
        Duration::from_secs(20),
        Some(carry),
    );
    let ua = decode_up(&up_frame("a", 1, 3));
    let mut ub = decode_up(&up_frame("b", 1, 2));
    ub.records.push(Record {
        seq: 3,
        time_ms: 9_003,
        kind: RecordKind::Relayed(signed_by(&fleet, "a", &ua)),
    });
    ub.covers = Some((1, 3));
    // C signs a batch in A's name; and alters one A signed.
    let in_as_name = signed_by(&fleet, "c", &decode_up(&up_frame("a", 4, 5)));
    let mut altered = signed_by(&fleet, "a", &decode_up(&up_frame("a", 4, 5)));
    let last = altered.bytes.len() - 1;
    altered.bytes[last] ^= 0x01;
    let uc = Up {
        node: c.clone(),
        records: vec![
            Record {
                seq: 1,
                time_ms: 9_101,
                kind: RecordKind::Relayed(signed_by(&fleet, "b", &ub)),
            },
            Record {
                seq: 2,
                time_ms: 9_102,
                kind: RecordKind::Relayed(in_as_name),
            },
            Record {
                seq: 3,
                time_ms: 9_103,
                kind: RecordKind::Relayed(altered),
            },
        ],
        covers: Some((1, 3)),
        epoch: 1,
    };
    let frame = encode(&Message::Up(uc), DEFAULT_MAX_FRAME).unwrap();

    let mut relay = Client::connect("c", fleet.node_port, fleet.node_tls("c"))
        .connected()
        .await;
    relay.subscribe(&topic::carry_topic("c")).await;
    relay.subscribe(&topic::ack_topic("c")).await;
    // Published until acked (the master may not have subscribed yet), then once more.
    let mut got = Vec::new();
    let deadline = Instant::now() + WAIT;
    while !got.iter().any(|(t, _)| t == "hedge/v1/c/ack") {
        assert!(Instant::now() < deadline, "C's batch never acknowledged");
        relay
            .publish_bytes(&topic::up_topic("c"), frame.clone())
            .await;
        let _ = tokio::time::timeout(
            Duration::from_millis(500),
            carried_until(&mut relay, &mut got, |g| {
                g.iter().any(|(t, _)| t == "hedge/v1/c/ack")
            }),
        )
        .await;
    }
    relay
        .publish_bytes(&topic::up_topic("c"), frame.clone())
        .await;
    let acks_of = |g: &[(String, Message)], who: &Name| {
        g.iter()
            .filter(|(t, m)| {
                t == "hedge/v1/c/carry" && matches!(m, Message::Carried(k) if &k.node == who)
            })
            .count()
    };
    carried_until(&mut relay, &mut got, |g| {
        acks_of(g, &a) >= 2
            && acks_of(g, &b) >= 2
            && g.iter().filter(|(t, _)| t == "hedge/v1/c/ack").count() >= 2
    })
    .await;
    for (t, m) in &got {
        match (t.as_str(), m) {
            ("hedge/v1/c/ack", Message::Ack(k)) => assert_eq!((k.upto, k.epoch), (3, 1)),
            ("hedge/v1/c/carry", Message::Carried(k)) => {
                let public = ed25519_dalek::VerifyingKey::from_bytes(&key.public()).unwrap();
                verify_ack(&public, k).unwrap();
                assert_eq!((k.epoch, k.upto), (1, 3), "{k:?}");
                assert!(k.node == a || k.node == b, "{k:?}");
                // Exactly what the master signs for this (node, epoch, upto).
                assert_eq!(
                    k.signed_bytes(),
                    sign_ack(&key, &k.node, 1, 3).signed_bytes()
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    // Each node's records under its own name, once; nothing stored from the forgeries.
    let records = |n: &Name| view.records(n, 0, 100).unwrap();
    assert_eq!(
        records(&a),
        ua.records,
        "A's records exactly as A signed them"
    );
    assert_eq!(records(&b).len(), 3);
    assert_eq!(records(&c).len(), 3);
    let nodes = view.nodes().unwrap();
    let row = |n: &Name| nodes.iter().find(|x| &x.node == n).unwrap().clone();
    assert_eq!(row(&a).path.as_deref(), Some("via c,b"));
    assert_eq!(row(&b).path.as_deref(), Some("via c"));
    assert_eq!(row(&c).path.as_deref(), Some("direct"));
    assert_eq!(
        row(&c).forged_relayed,
        2,
        "two forgeries, counted once though resent"
    );
    assert_eq!(row(&b).forged_relayed, 0);

    // Fetch: A's state (and nothing for an unknown node) on C's carry topic.
    let fetch = Message::Fetch(vec![a.clone(), Name::new("nobody").unwrap()]);
    relay
        .publish_bytes(
            &topic::up_topic("c"),
            encode(&fetch, DEFAULT_MAX_FRAME).unwrap(),
        )
        .await;
    let mut fetched = Vec::new();
    carried_until(&mut relay, &mut fetched, |g| {
        g.iter().any(|(_, m)| matches!(m, Message::Desired(_)))
    })
    .await;
    let desired: Vec<&Message> = fetched
        .iter()
        .filter(|(t, m)| t == "hedge/v1/c/carry" && matches!(m, Message::Desired(_)))
        .map(|(_, m)| m)
        .collect();
    assert_eq!(desired, [&Message::Desired(state)]);

    let _ = stop.send(());
    let counters = master.await.unwrap().unwrap();
    assert!(
        counters.forged_relayed >= 4 && counters.forged_relayed % 2 == 0,
        "two per delivery: {counters:?}"
    );
    assert!(counters.carried_acks >= 4, "{counters:?}");
    assert_eq!(counters.fetches, 1, "{counters:?}");
}

/// Whether something accepts connections on loopback `port` (asked with a short timeout:
/// a SYN dropped by some firewall rule must not stall the caller for minutes).
fn listens(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}
