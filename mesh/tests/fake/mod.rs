//! The harness of the mesh link tests: an in-memory transport (links cut and restored by
//! the test), fake daemons with in-memory outboxes answering the link as the node daemon
//! does, and a fake master that unwraps `Relayed` records, stores each (node, epoch, seq)
//! and acknowledges. [`FakeTrust`] signs with keyed checksums, so a test can forge on
//! purpose; the loopback test runs the same daemons and master with real keys.
#![allow(dead_code, clippy::unwrap_used, missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hedge_uplink::link::{ToLink, ToNode};
use hedge_uplink::Config;
use hedge_wire::mesh::{PeerMessage, SignedAck, SignedBatch, SignedParams};
use hedge_wire::{encode, DesiredState, Message, Name, Record, RecordKind, DEFAULT_MAX_FRAME};
use tokio::sync::mpsc;

use hedge_mesh::link::{run, LinkStats, MeshLinkSettings, PeerNet, Trust};
use hedge_mesh::net::{PeerEvent, PeerEventKind};

pub const EPOCH: u64 = 77;

pub fn name(s: &str) -> Name {
    Name::new(s).expect("valid name")
}

/// FNV-1a over `key || data`: a stand-in signature a test can forge on purpose.
pub fn sig(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.iter().chain(data) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.to_le_bytes().to_vec()
}

pub const MASTER: &[u8] = b"master";

pub fn signed_ack(node: &Name, epoch: u64, upto: u64) -> SignedAck {
    let mut a = SignedAck {
        node: node.clone(),
        epoch,
        upto,
        signature: Vec::new(),
    };
    a.signature = sig(MASTER, &a.signed_bytes());
    a
}

pub fn signed_state(node: &Name, generation: u64) -> DesiredState {
    let mut s = DesiredState {
        node: node.clone(),
        generation,
        instances: Vec::new(),
        signature: heapless::Vec::new(),
        expires_ms: 0,
        terms: Vec::new(),
        imports: Vec::new(),
        backups: Vec::new(),
        restores: Vec::new(),
    };
    s.signature = heapless::Vec::from_slice(&sig64(&s)).expect("fits");
    s
}

/// A desired state's stand-in signature, 64 bytes like ed25519's.
pub fn sig64(s: &DesiredState) -> Vec<u8> {
    sig(MASTER, &s.signed_bytes()).repeat(8)
}

/// A node's keys: its "certificate" is its name.
pub struct FakeTrust {
    pub me: Name,
}

impl Trust for FakeTrust {
    fn sign_batch(&self, frame: Vec<u8>) -> Option<SignedBatch> {
        let mut b = SignedBatch {
            bytes: frame,
            signature: Vec::new(),
        };
        b.signature = sig(self.me.as_str().as_bytes(), &b.signed_bytes());
        Some(b)
    }
    fn batch_ok(&self, batch: &SignedBatch, peer_cert: &[u8]) -> bool {
        batch.signature == sig(peer_cert, &batch.signed_bytes())
    }
    fn ack_ok(&self, ack: &SignedAck) -> bool {
        ack.signature == sig(MASTER, &ack.signed_bytes())
    }
    fn desired_ok(&self, state: &DesiredState) -> bool {
        state.signature.as_slice() == sig64(state).as_slice()
    }
    fn sign_params(
        &self,
        instance: Name,
        generation: u64,
        parameters: BTreeMap<String, String>,
    ) -> Option<SignedParams> {
        let mut p = SignedParams {
            node: self.me.clone(),
            instance,
            generation,
            parameters,
            cert: self.me.as_str().as_bytes().to_vec(),
            signature: Vec::new(),
        };
        p.signature = sig(&p.cert, &p.signed_bytes());
        Some(p)
    }
    fn params_ok(&self, p: &SignedParams) -> bool {
        p.cert == p.node.as_str().as_bytes() && p.signature == sig(&p.cert, &p.signed_bytes())
    }
}

/// The in-memory transport: which pairs are linked, each node's event channel.
#[derive(Default)]
pub struct Hub {
    pub events: BTreeMap<Name, mpsc::Sender<PeerEvent>>,
    pub links: BTreeSet<(Name, Name)>,
    pub beacons: BTreeMap<Name, (u8, u64)>,
}

#[derive(Clone, Default)]
pub struct Net(pub Arc<Mutex<Hub>>);

pub fn pair(a: &Name, b: &Name) -> (Name, Name) {
    if a < b {
        (a.clone(), b.clone())
    } else {
        (b.clone(), a.clone())
    }
}

impl Net {
    pub fn hub(&self) -> std::sync::MutexGuard<'_, Hub> {
        self.0.lock().expect("hub lock")
    }

    pub fn event(&self, to: &Name, peer: &Name, kind: PeerEventKind) {
        let tx = self.hub().events.get(to).cloned();
        if let Some(tx) = tx {
            let _ = tx.try_send(PeerEvent {
                peer: peer.clone(),
                kind,
            });
        }
    }

    pub fn up(&self, a: &Name, b: &Name) {
        if !self.hub().links.insert(pair(a, b)) {
            return;
        }
        for (x, y) in [(a, b), (b, a)] {
            let kind = PeerEventKind::Up {
                addr: "127.0.0.1:7441".parse().expect("addr"),
                cert_der: y.as_str().as_bytes().to_vec(),
            };
            self.event(x, y, kind);
        }
    }

    pub fn down(&self, a: &Name, b: &Name) {
        if !self.hub().links.remove(&pair(a, b)) {
            return;
        }
        self.event(a, b, PeerEventKind::Down);
        self.event(b, a, PeerEventKind::Down);
    }

    /// Delivers `m` from `from` to `to` as if `from`'s session sent it.
    pub fn inject(&self, from: &Name, to: &Name, m: PeerMessage) {
        self.event(to, from, PeerEventKind::Message(m));
    }
}

/// One node's view of the transport.
pub struct NodeNet {
    pub me: Name,
    pub net: Net,
}

impl PeerNet for NodeNet {
    fn send(&self, peer: &Name, m: PeerMessage) -> bool {
        if !self.net.hub().links.contains(&pair(&self.me, peer)) {
            return false;
        }
        self.net.inject(&self.me, peer, m);
        true
    }
    fn set_beacon(&self, hops: u8, outbox: u64) {
        self.net
            .hub()
            .beacons
            .insert(self.me.clone(), (hops, outbox));
    }
}

/// What a fake daemon holds and saw.
#[derive(Default)]
pub struct Daemon {
    pub outbox: BTreeMap<u64, Record>,
    pub next_seq: u64,
    pub desired: Vec<Vec<u8>>,
    pub params: Vec<SignedParams>,
    pub fetched: Vec<Vec<Name>>,
    pub custody_refusal: Option<hedge_wire::mesh::CustodyRefusal>,
}

pub struct Node {
    pub name: Name,
    pub daemon: Arc<Mutex<Daemon>>,
    pub to_link: mpsc::UnboundedSender<ToLink>,
    pub stats: Arc<LinkStats>,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Node {
    pub fn d(&self) -> std::sync::MutexGuard<'_, Daemon> {
        self.daemon.lock().expect("daemon lock")
    }

    /// Peers' batches this node holds in custody (`Relayed` records of its outbox).
    pub fn relayed(&self) -> usize {
        self.d()
            .outbox
            .values()
            .filter(|r| matches!(r.kind, RecordKind::Relayed(_)))
            .count()
    }

    pub fn append(&self, n: u64) {
        {
            let mut d = self.d();
            for _ in 0..n {
                d.next_seq += 1;
                let seq = d.next_seq;
                d.outbox.insert(seq, usage(&self.name, seq));
            }
        }
        let _ = self.to_link.send(ToLink::OutboxChanged);
    }

    pub fn tell(&self, m: ToLink) {
        self.to_link.send(m).expect("link alive");
    }
}

/// An instance-state record (one a budgeted link would send express).
pub fn state_record(node: &Name, seq: u64) -> Record {
    Record {
        seq,
        time_ms: seq,
        kind: RecordKind::InstanceState {
            instance: node.clone(),
            status: hedge_wire::InstanceStatus::Running,
            pid: Some(7),
            restarts: 0,
            last_exit: None,
        },
    }
}

pub fn usage(node: &Name, seq: u64) -> Record {
    Record {
        seq,
        time_ms: 1_000 * seq,
        kind: RecordKind::Usage {
            instance: node.clone(),
            from_ms: seq,
            to_ms: seq + 1,
            cpu_ms: seq * 3,
            mem_avg_bytes: 1,
            mem_peak_bytes: 2,
            disk_bytes: 3,
            net_rx_bytes: None,
            net_tx_bytes: None,
            uptime_ms: seq,
        },
    }
}

pub fn settings(node: &Name) -> MeshLinkSettings {
    let sync = Config {
        // A metered uplink's budget: the mesh link must not apply it (no express batches).
        budget_bytes_per_sec: Some(200),
        max_batch_bytes: 2048,
        max_batch_records: 16,
        backoff_base: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
        path_back_spread: Duration::from_millis(10),
        ack_timeout: Duration::from_millis(500),
        ..Config::default()
    };
    let mut s = MeshLinkSettings::new(node.clone(), EPOCH, sync);
    s.fetch_every = Duration::from_secs(3600);
    s.custody_stall = Duration::from_millis(800);
    // A node named `ferry…` is a ferry (`[mesh] ferry = true`).
    s.ferry = node.as_str().starts_with("ferry");
    s
}

/// Starts `node`'s mesh link and a fake daemon answering it.
pub fn spawn(net: &Net, node: &str) -> Node {
    let daemon = Arc::new(Mutex::new(Daemon::default()));
    start(net, name(node), daemon)
}

/// Nodes a, b and c linked a–b–c; only a has a direct uplink.
pub fn chain3(net: &Net) -> (Node, Node, Node) {
    let (a, b, c) = (spawn(net, "a"), spawn(net, "b"), spawn(net, "c"));
    a.tell(ToLink::Direct(true));
    b.tell(ToLink::Direct(false));
    c.tell(ToLink::Direct(false));
    net.up(&a.name, &b.name);
    net.up(&b.name, &c.name);
    (a, b, c)
}

/// Kills `node`'s link and daemon tasks (its sessions drop) and starts them again over
/// the same outbox, as a node restarting from its store does.
pub fn restart(net: &Net, node: Node, direct: bool) -> Node {
    let peers: Vec<Name> = net
        .hub()
        .links
        .iter()
        .filter_map(|(x, y)| {
            if x == &node.name {
                Some(y.clone())
            } else if y == &node.name {
                Some(x.clone())
            } else {
                None
            }
        })
        .collect();
    for p in &peers {
        net.down(&node.name, p);
    }
    for t in &node.tasks {
        t.abort();
    }
    let n = start(net, node.name.clone(), node.daemon.clone());
    n.tell(ToLink::Direct(direct));
    for p in &peers {
        net.up(&n.name, p);
    }
    n
}

pub fn start(net: &Net, me: Name, daemon: Arc<Mutex<Daemon>>) -> Node {
    let (ev_tx, ev_rx) = mpsc::channel(4096);
    net.hub().events.insert(me.clone(), ev_tx);
    let peers = NodeNet {
        me: me.clone(),
        net: net.clone(),
    };
    let trust = FakeTrust { me: me.clone() };
    start_with(me, daemon, peers, trust, ev_rx)
}

/// Starts `me`'s mesh link over any transport and keys, and a fake daemon answering it.
pub fn start_with<N: PeerNet, T: Trust>(
    me: Name,
    daemon: Arc<Mutex<Daemon>>,
    peers: N,
    trust: T,
    ev_rx: mpsc::Receiver<PeerEvent>,
) -> Node {
    let (to_node_tx, mut to_node_rx) = mpsc::unbounded_channel();
    let (to_link_tx, to_link_rx) = mpsc::unbounded_channel();
    let stats = Arc::new(LinkStats::default());
    let link = tokio::spawn(run(
        settings(&me),
        peers,
        trust,
        stats.clone(),
        ev_rx,
        to_node_tx,
        to_link_rx,
    ));
    let (d, reply) = (daemon.clone(), to_link_tx.clone());
    let who = me.clone();
    let answer = tokio::spawn(async move {
        while let Some(m) = to_node_rx.recv().await {
            let mut d = d.lock().expect("daemon lock");
            match m {
                ToNode::Load { from, limit } => {
                    let records: Vec<Record> = d
                        .outbox
                        .range(from..)
                        .take(limit)
                        .map(|(_, r)| r.clone())
                        .collect();
                    let end = records
                        .last()
                        .is_none_or(|r| d.outbox.range(r.seq + 1..).next().is_none());
                    let _ = reply.send(ToLink::Loaded { from, records, end });
                }
                ToNode::Delete { upto } => d.outbox.retain(|s, _| *s > upto),
                ToNode::Custody { id, batch } => {
                    let result = match d.custody_refusal {
                        Some(r) => Err(r),
                        None => {
                            d.next_seq += 1;
                            let seq = d.next_seq;
                            d.outbox.insert(
                                seq,
                                Record {
                                    seq,
                                    time_ms: 5,
                                    kind: RecordKind::Relayed(batch),
                                },
                            );
                            Ok(())
                        }
                    };
                    let _ = reply.send(ToLink::CustodyStored { id, result });
                    let _ = reply.send(ToLink::OutboxChanged);
                }
                ToNode::Desired(frame) => d.desired.push(frame),
                ToNode::PeerParams(p) => d.params.push(p),
                ToNode::Fetch(nodes) => d.fetched.push(nodes),
                ToNode::Sent { .. } | ToNode::Link(_) | ToNode::Lease { .. } => {}
                other => panic!("{who}: unexpected {other:?}"),
            }
        }
    });
    Node {
        name: me,
        daemon,
        to_link: to_link_tx,
        stats,
        tasks: vec![link, answer],
    }
}

/// The master: records by (node, epoch, seq), the ranges each node's batches covered.
/// Whether a node signed a batch, as the master checks it.
pub type SignedBy = Box<dyn Fn(&Name, &SignedBatch) -> bool + Send>;

pub struct Master {
    pub records: BTreeMap<(Name, u64, u64), Record>,
    pub stored_twice: u64,
    pub covered: BTreeMap<(Name, u64), Vec<(u64, u64)>>,
    pub forged: u64,
    /// Express batches (`covers: None`) stored.
    pub express: u64,
    /// Whether `node` signed a batch (the fake keys unless replaced).
    pub signed_by: SignedBy,
    /// The master's ack of `(node, epoch, upto)` (the fake key unless replaced).
    pub ack: AckSigner,
}

/// How the master signs an ack.
pub type AckSigner = Box<dyn Fn(&Name, u64, u64) -> SignedAck + Send>;

impl Default for Master {
    fn default() -> Self {
        Master {
            records: BTreeMap::new(),
            stored_twice: 0,
            covered: BTreeMap::new(),
            forged: 0,
            express: 0,
            signed_by: Box::new(|node, batch| {
                batch.signature == sig(node.as_str().as_bytes(), &batch.signed_bytes())
            }),
            ack: Box::new(signed_ack),
        }
    }
}

impl Master {
    /// Stores a batch signed by `node` (checked against `node`'s key), unwrapping.
    pub fn ingest(&mut self, node: &Name, batch: &SignedBatch, depth: usize) -> bool {
        if !(self.signed_by)(node, batch) || depth > 8 {
            self.forged += 1;
            return false;
        }
        let Ok(up) = batch.up(DEFAULT_MAX_FRAME) else {
            self.forged += 1;
            return false;
        };
        if &up.node != node {
            self.forged += 1;
            return false;
        }
        self.store(&up, depth)
    }

    pub fn store(&mut self, up: &hedge_wire::Up, depth: usize) -> bool {
        for r in &up.records {
            if let RecordKind::Relayed(inner) = &r.kind {
                let Ok(inner_up) = inner.up(DEFAULT_MAX_FRAME) else {
                    self.forged += 1;
                    continue;
                };
                self.ingest(&inner_up.node, inner, depth + 1);
            }
            let key = (up.node.clone(), up.epoch, r.seq);
            if self.records.insert(key, r.clone()).is_some() {
                self.stored_twice += 1;
            }
        }
        if up.covers.is_none() && depth > 0 {
            self.express += 1;
        }
        if let Some(c) = up.covers {
            self.covered
                .entry((up.node.clone(), up.epoch))
                .or_default()
                .push(c);
        }
        true
    }

    /// The highest seq of `(node, epoch)` below which every range is covered.
    pub fn acked(&self, node: &Name, epoch: u64) -> u64 {
        let mut ranges = self
            .covered
            .get(&(node.clone(), epoch))
            .cloned()
            .unwrap_or_default();
        ranges.sort_unstable();
        let mut upto = 0;
        for (from, to) in ranges {
            if from <= upto + 1 {
                upto = upto.max(to);
            }
        }
        upto
    }
}

/// The direct node's MQTT link and the master in one step: every record of `relay`'s
/// outbox goes to the master (stored and deleted), then the master's acks of every
/// node it unwrapped arrive on `relay`'s carry topic.
pub fn drain(master: &Mutex<Master>, relay: &Node) {
    let records: Vec<Record> = {
        let mut d = relay.d();
        std::mem::take(&mut d.outbox).into_values().collect()
    };
    if records.is_empty() {
        return;
    }
    let mut m = master.lock().expect("master lock");
    let up = hedge_wire::Up {
        node: relay.name.clone(),
        records,
        covers: None,
        epoch: EPOCH,
    };
    m.store(&up, 0);
    let nodes: Vec<(Name, u64)> = m
        .covered
        .keys()
        .filter(|(n, _)| n != &relay.name)
        .cloned()
        .collect();
    for (node, epoch) in nodes {
        let upto = m.acked(&node, epoch);
        let frame = encode(
            &Message::Carried((m.ack)(&node, epoch, upto)),
            DEFAULT_MAX_FRAME,
        )
        .expect("encodes");
        relay.tell(ToLink::Carried(frame));
    }
}

/// Waits (yielding to the tasks) until `cond` holds; fails after `secs`.
pub async fn until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Like [`until`], running `step` (e.g. the master's drain) between checks.
pub async fn until_with(
    secs: u64,
    what: &str,
    mut step: impl FnMut(),
    mut cond: impl FnMut() -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        step();
        if cond() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub fn exactly_once(master: &Mutex<Master>, node: &Name, n: u64) {
    let m = master.lock().expect("master lock");
    for seq in 1..=n {
        let got = m.records.get(&(node.clone(), EPOCH, seq));
        assert_eq!(got, Some(&usage(node, seq)), "{node} seq {seq}");
    }
    let held = m
        .records
        .keys()
        .filter(|(n2, e, _)| n2 == node && *e == EPOCH)
        .count();
    assert_eq!(
        held,
        usize::try_from(n).expect("small"),
        "{node}: no extra record"
    );
}

pub fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}
