//! The mesh link: the daemon's second link (`LinkId::Mesh`). One [`SyncMachine`] over
//! the node's outbox whose batches go to the best next hop, and the relay's duties.
//!
//! Contract: [`run`] talks to the daemon through the same channels as the MQTT driver
//! (`ToNode` / `ToLink`) and to peers through a [`PeerNet`] (the transport's
//! `NetHandle`) and its `PeerEvent`s. It is an I/O driver: every decision that can be
//! pure lives in a core (`SyncMachine`, [`Routes`], [`Desk`], [`Carrier`], [`Book`]).
//! - **Sending.** The machine's `Connect` is answered `LinkUp` only when the daemon said
//!   the direct uplink is down (`ToLink::Direct(false)`) and a peer with a path exists
//!   (the best next hop of [`Routes`]); otherwise `ConnectFailed` (the machine backs off
//!   and, when a path appears, is told `PathBack`). Each `Send` is signed with this
//!   node's key ([`Trust::sign_batch`]) and sent to that hop as `PeerMessage::Batch`.
//!   Losing the hop, a better hop appearing or the direct uplink coming back is a
//!   `LinkDown`. The hop's `Custody` for this node's life feeds `Input::Custody`; an ack
//!   for this node, verified ([`Trust::ack_ok`]), feeds `Input::Acked`, whatever path
//!   it came by; the machine's `Delete`s and lease go to the daemon as the MQTT
//!   driver's do. A mesh origin plans its batches to at most
//!   `max_frame - MAX_RELAY_DEPTH * RELAY_OVERHEAD` bytes, so every wrapping fits; the
//!   machine's hard frame limit stays `max_frame`, so a relay's batch carries a nested
//!   batch whole, and a single record larger than the plan (sent alone, as the MQTT link
//!   would) is never skipped here: a skipped record is vouched for by its range, and
//!   would be deleted unsent.
//! - **Relaying.** A peer's `Batch` is judged by [`Desk`] (signature against the peer's
//!   session certificate, [`Trust::batch_ok`]); an accepted one goes to the daemon as
//!   `ToNode::Custody`, and only the daemon's `CustodyStored` (after its durable append)
//!   is answered `Custody`; a refusal is answered `Refused`, counted and logged at a
//!   limited rate.
//! - **Acks and desired states** for other nodes (from peers, or from the carry topic as
//!   `ToLink::Carried`) are verified against the master's key and passed on to every
//!   other peer, only when newer than what was passed before; the newest ack per
//!   (node, epoch) is held and sent to every peer whose session comes up (an origin
//!   away when its ack passed gets it by whatever path it returns). Desired states are
//!   held ([`Carrier`]) and pushed to a peer whose `Hello` summary is older. This node's
//!   own state goes to the daemon as `ToNode::Desired(frame)`.
//! - **Fetch.** With a direct uplink, the nodes this node carries for (its peers, the
//!   origins it took custody from, and every node the master acknowledged on its carry
//!   topic, however deep their batches were nested) are asked of the master as
//!   `ToNode::Fetch`: when the set grows (at most once per [`FETCH_GAP`]) and every
//!   `fetch_every`.
//! - **Custody stall.** If a hop's custody holds this node's batches for
//!   `custody_stall` without the master's ack moving, the link goes down and up again,
//!   so everything unacknowledged is sent again (a relay that shed or lost them without
//!   its session dropping cannot stall the origin forever). Not while the hop is a ferry
//!   (`FERRY`), whose custody lasts until it reaches a path.
//! - **Hello.** Sent to a peer when its session comes up and whenever the hops this node
//!   announces to it change (poisoned reverse: [`Routes::hops_for`]); the beacon follows.
//! - **Parameters.** `ToLink::Params` is signed ([`Trust::sign_params`]) and sent to every
//!   peer; a peer's verified `Params` ([`Trust::params_ok`]) newer than held go to the
//!   daemon as `ToNode::PeerParams` and on to the other peers; all held go to a peer whose
//!   session comes up.
//!
//! Anything a peer sends that fails a check is dropped, counted in [`LinkStats`] and
//! logged at most once per [`LOG_EVERY`] per kind.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hedge_common::log_gate::LogGate;
use hedge_uplink::link::{ToLink, ToNode};
use hedge_uplink::sync::MIN_FRAME;
use hedge_uplink::{Config, Input, Output, SyncMachine};
use hedge_wire::mesh::{
    encode_peer, Hello, PeerMessage, SignedAck, SignedBatch, SignedParams, MAX_RELAY_DEPTH,
    RELAY_OVERHEAD,
};
use hedge_wire::{decode, DesiredState, Message, Name};
use tokio::sync::mpsc;

use crate::custody::{BatchKey, Desk};
use crate::epidemic::Carrier;
use crate::net::PeerEvent;
use crate::newest::{Kept, Newest};
use crate::params::Book;
use crate::routes::Routes;

mod peers;

/// Shortest time between two fetches the growth of the carried set triggers.
pub const FETCH_GAP: Duration = Duration::from_secs(1);
/// At most one log line per kind of refusal in this period.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Where peer messages go: the transport's `NetHandle`, or a test's.
pub trait PeerNet: Send + 'static {
    /// Queues `m` for `peer`; `false` when it cannot be (no session, queue full).
    fn send(&self, peer: &Name, m: PeerMessage) -> bool;
    /// What this node's beacons say: its hops and outbox depth.
    fn set_beacon(&self, hops: u8, outbox: u64);
}

/// The keys the link signs and verifies with (this node's TLS key and certificate, the
/// fleet CA, the master's public key).
pub trait Trust: Send + 'static {
    /// Signs an encoded `Message::Up` of this node; `None` if the key cannot.
    fn sign_batch(&self, frame: Vec<u8>) -> Option<SignedBatch>;
    /// Whether `batch`'s signature verifies against the peer's certificate (DER).
    fn batch_ok(&self, batch: &SignedBatch, peer_cert: &[u8]) -> bool;
    /// Whether the master signed this ack.
    fn ack_ok(&self, ack: &SignedAck) -> bool;
    /// Whether the master signed this desired state.
    fn desired_ok(&self, state: &DesiredState) -> bool;
    /// This node's signed parameters of `instance`; `None` if the key cannot.
    fn sign_params(
        &self,
        instance: Name,
        generation: u64,
        parameters: BTreeMap<String, String>,
    ) -> Option<SignedParams>;
    /// Whether `p` is signed by `p.node`'s certificate, issued by the fleet CA.
    fn params_ok(&self, p: &SignedParams) -> bool;
}

/// How the mesh link runs.
#[derive(Debug, Clone)]
pub struct MeshLinkSettings {
    /// This node.
    pub node: Name,
    /// Its store's epoch.
    pub epoch: u64,
    /// Tuning of its sync machine (the MQTT link's; batches are planned
    /// `MAX_RELAY_DEPTH * RELAY_OVERHEAD` below `max_frame`, and no byte budget applies).
    pub sync: Config,
    /// Largest frame the master accepts (peers' batches are decoded within it).
    pub max_frame: usize,
    /// How often the carried nodes' states are fetched again with a direct uplink.
    pub fetch_every: Duration,
    /// Peers' batches waiting for the daemon's durable append at once.
    pub custody_pending: usize,
    /// Bytes of other nodes' desired states held for spreading.
    pub carried_bytes: usize,
    /// How long a next hop may hold this node's batches without the master's ack
    /// moving before the link is restarted (everything unacknowledged goes again). A
    /// relay remembers what it stored for half of it (go-back-N resends are not stored
    /// twice; a resend after a stall is).
    pub custody_stall: Duration,
    /// This node is a ferry (`MeshConfig::ferry`): without a path it announces
    /// `FERRY` and takes custody from pathless peers.
    pub ferry: bool,
}

impl MeshLinkSettings {
    /// Defaults for `node`'s life `epoch` over the MQTT link's `sync` tuning.
    pub fn new(node: Name, epoch: u64, sync: Config) -> Self {
        MeshLinkSettings {
            node,
            epoch,
            max_frame: sync.max_frame,
            sync,
            fetch_every: Duration::from_secs(60),
            custody_pending: 64,
            carried_bytes: 1 << 20,
            custody_stall: Duration::from_secs(300),
            ferry: false,
        }
    }
}

/// Counters of the mesh link, shared with whoever shows them.
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Batches of this node sent to a next hop (resends included).
    pub batches_sent: AtomicU64,
    /// Custody answers for this node's batches.
    pub custody_received: AtomicU64,
    /// Custody refusals for this node's batches.
    pub refused_received: AtomicU64,
    /// Peers' batches stored (answered `Custody`, repeats included).
    pub custody_given: AtomicU64,
    /// Peers' batches refused (here or by the daemon).
    pub custody_refused: AtomicU64,
    /// Acks, desired states or parameters whose signature did not verify.
    pub forged: AtomicU64,
    /// Acks passed on to peers.
    pub acks_passed: AtomicU64,
    /// Desired states passed on to peers.
    pub desired_passed: AtomicU64,
    /// Desired states held for spreading now (a gauge).
    pub desired_held: AtomicU64,
    /// Peers' parameters handed to the daemon.
    pub params_received: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Kinds of rate-limited log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Noise {
    RefusedIn,
    RefusedOut,
    Forged,
    Garbled,
}

/// Runs the mesh link until the daemon or the transport drops its channel.
// The I/O driver: it reads the clocks the pure cores are fed with.
#[allow(clippy::disallowed_methods)]
pub async fn run<N: PeerNet, T: Trust>(
    settings: MeshLinkSettings,
    net: N,
    trust: T,
    stats: Arc<LinkStats>,
    mut events: mpsc::Receiver<PeerEvent>,
    to_node: mpsc::UnboundedSender<ToNode>,
    mut from_node: mpsc::UnboundedReceiver<ToLink>,
) {
    let mut link = Link::new(settings, net, trust, stats, to_node);
    link.feed(Instant::now(), Input::Start);
    loop {
        if !link.flush(Instant::now()) {
            return;
        }
        let deadline = link
            .deadline()
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            ev = events.recv() => match ev {
                Some(ev) => link.on_peer(Instant::now(), ev),
                None => return,
            },
            msg = from_node.recv() => match msg {
                Some(msg) => link.on_node(Instant::now(), msg),
                None => return,
            },
            _ = tokio::time::sleep_until(deadline) => link.on_tick(Instant::now()),
        }
    }
}

/// The link's state between events.
struct Link<N, T> {
    me: Name,
    epoch: u64,
    max_frame: usize,
    fetch_every: Duration,
    net: N,
    trust: T,
    stats: Arc<LinkStats>,
    to_node: mpsc::UnboundedSender<ToNode>,
    daemon_gone: bool,
    sync: SyncMachine,
    pending: Vec<Output>,
    /// What the daemon last said of the direct uplink; `None` before it said anything.
    direct: Option<bool>,
    /// The peer this node's batches go to while the machine is up.
    hop: Option<Name>,
    routes: Routes,
    certs: BTreeMap<Name, Vec<u8>>,
    announced: BTreeMap<Name, u8>,
    beacon: Option<(u8, u64)>,
    desk: Desk,
    carrier: Carrier,
    /// Per peer: the newest generation of each node's state sent to it.
    pushed: BTreeMap<Name, BTreeMap<Name, u64>>,
    book: Book,
    /// Newest ack passed on per (node, epoch), for peers that come up later.
    acks: Newest<(Name, u64), SignedAck>,
    sent_upto: u64,
    last_seq: u64,
    lease: Option<Instant>,
    next_fetch: Option<Instant>,
    last_fetch: Option<Instant>,
    custody_stall: Duration,
    /// The master's ack last seen, and since when it has not moved while a next hop
    /// held batches.
    ack_mark: (u64, Option<Instant>),
    gates: BTreeMap<Noise, LogGate<Instant>>,
}

impl<N: PeerNet, T: Trust> Link<N, T> {
    fn new(
        s: MeshLinkSettings,
        net: N,
        trust: T,
        stats: Arc<LinkStats>,
        to_node: mpsc::UnboundedSender<ToNode>,
    ) -> Self {
        // Batches are planned to leave room for every wrapping; the hard frame limit
        // stays the master's, so a relay's own batch can carry a nested batch whole and
        // no record the MQTT link could send is skipped (and vouched for, so lost) here.
        let mut sync_cfg = s.sync;
        let planned = sync_cfg
            .max_frame
            .saturating_sub(MAX_RELAY_DEPTH * RELAY_OVERHEAD)
            .max(MIN_FRAME);
        sync_cfg.max_batch_bytes = sync_cfg.max_batch_bytes.min(planned);
        // A peer link is not the metered uplink: no byte budget, so no express batches
        // (which a relay could not deduplicate and would store twice).
        sync_cfg.budget_bytes_per_sec = None;
        Link {
            sync: SyncMachine::new(s.node.clone(), s.epoch, sync_cfg, fastrand::u64(..)),
            carrier: Carrier::new(s.node.clone(), s.carried_bytes),
            pushed: BTreeMap::new(),
            book: Book::new(s.node.clone(), 32, 1024, 1 << 20),
            // Shorter than the stall: an origin's resend after a stall is stored again.
            desk: Desk::new(s.max_frame, s.custody_pending, 1024, s.custody_stall / 2),
            acks: Newest::new(4 * hedge_wire::mesh::MAX_CARRIED, usize::MAX),
            me: s.node,
            epoch: s.epoch,
            max_frame: s.max_frame,
            fetch_every: s.fetch_every,
            net,
            trust,
            stats,
            to_node,
            daemon_gone: false,
            pending: Vec::new(),
            direct: None,
            hop: None,
            routes: Routes::new(s.ferry),
            certs: BTreeMap::new(),
            announced: BTreeMap::new(),
            beacon: None,
            sent_upto: 0,
            last_seq: 0,
            lease: None,
            next_fetch: None,
            last_fetch: None,
            custody_stall: s.custody_stall,
            ack_mark: (0, None),
            gates: BTreeMap::new(),
        }
    }

    // ----- the daemon -----

    fn tell(&mut self, m: ToNode) {
        if self.to_node.send(m).is_err() {
            self.daemon_gone = true;
        }
    }

    fn feed(&mut self, now: Instant, input: Input) {
        let out = self.sync.handle(now, input);
        self.pending.extend(out);
    }

    /// Performs what the machine asked; `false` once the daemon is gone.
    fn flush(&mut self, now: Instant) -> bool {
        while !self.pending.is_empty() {
            for out in std::mem::take(&mut self.pending) {
                self.perform(now, out);
            }
        }
        if self.sync.lease_since() > self.lease {
            self.lease = self.sync.lease_since();
            if let Some(since) = self.lease {
                self.tell(ToNode::Lease { since });
            }
        }
        self.mark_custody(now);
        self.announce();
        !self.daemon_gone
    }

    /// Follows the master's ack while a next hop holds batches (see `custody_stall`).
    fn mark_custody(&mut self, now: Instant) {
        let st = self.sync.stats();
        // With the direct uplink up the MQTT link sends everything; nothing to watch. A
        // ferry is slow by nature: its custody is not a stall.
        let ferry_hop = self
            .hop
            .as_ref()
            .and_then(|h| self.routes.peer(h))
            .is_some_and(|r| r.hops == hedge_wire::mesh::FERRY);
        if st.custody_upto == 0 || self.direct != Some(false) || ferry_hop {
            self.ack_mark = (st.acked_upto, None);
        } else if self.ack_mark.1.is_none() || self.ack_mark.0 != st.acked_upto {
            self.ack_mark = (st.acked_upto, Some(now));
        }
    }

    /// When a hop's custody has held this node's batches too long without an ack.
    fn stall_at(&self) -> Option<Instant> {
        self.ack_mark
            .1
            .and_then(|t| t.checked_add(self.custody_stall))
    }

    fn perform(&mut self, now: Instant, out: Output) {
        match out {
            Output::Connect => {
                let best = self.routes.best().map(|(n, _)| n.clone());
                match best {
                    Some(hop) if self.direct == Some(false) => {
                        tracing::info!(node = %self.me, hop = %hop, "mesh link up");
                        self.hop = Some(hop);
                        self.tell(ToNode::Link(true));
                        self.feed(now, Input::LinkUp);
                    }
                    _ => self.feed(now, Input::ConnectFailed),
                }
            }
            Output::Load { from, limit } => self.tell(ToNode::Load { from, limit }),
            Output::Delete { upto } => self.tell(ToNode::Delete { upto }),
            Output::Send { frame, range, .. } => {
                let Some(hop) = self.hop.clone() else {
                    return;
                };
                let Some(batch) = self.trust.sign_batch(frame) else {
                    tracing::warn!(node = %self.me, "cannot sign a batch; the ack timeout resends");
                    return;
                };
                if self.net.send(&hop, PeerMessage::Batch(batch)) {
                    bump(&self.stats.batches_sent);
                    if let Some((_, to)) = range {
                        if to > self.sent_upto {
                            self.sent_upto = to;
                            self.tell(ToNode::Sent { upto: to });
                        }
                    }
                } else {
                    tracing::debug!(hop = %hop, "peer queue full or gone; the ack timeout resends");
                }
            }
        }
    }

    fn deadline(&self) -> Option<Instant> {
        [self.sync.deadline(), self.next_fetch, self.stall_at()]
            .into_iter()
            .flatten()
            .min()
    }

    fn on_tick(&mut self, now: Instant) {
        if self.next_fetch.is_some_and(|t| t <= now) {
            self.fetch(now);
        }
        if self.stall_at().is_some_and(|t| t <= now) {
            // The hop took custody and nothing reached the master since: it may have
            // lost or shed the batches. Start over (duplicates at the master are
            // harmless; a loss is not).
            tracing::warn!(node = %self.me, hop = ?self.hop, "custody held without an ack for too long: sending again");
            self.ack_mark = (self.ack_mark.0, None);
            self.drop_hop(now);
            self.reroute(now);
        }
        self.feed(now, Input::Tick);
    }

    fn on_node(&mut self, now: Instant, msg: ToLink) {
        match msg {
            ToLink::Loaded { from, records, end } => {
                if let Some(r) = records.last() {
                    self.last_seq = self.last_seq.max(r.seq);
                }
                self.feed(now, Input::Loaded { from, records, end });
            }
            ToLink::OutboxChanged => self.feed(now, Input::OutboxChanged),
            ToLink::CustodyStored { id, result } => {
                let Some(ans) = self.desk.stored(now, id, result) else {
                    return;
                };
                let BatchKey {
                    origin,
                    epoch,
                    covers,
                } = ans.key;
                let m = match ans.result {
                    Ok(()) => {
                        bump(&self.stats.custody_given);
                        PeerMessage::Custody {
                            origin,
                            epoch,
                            covers,
                        }
                    }
                    Err(reason) => {
                        bump(&self.stats.custody_refused);
                        self.noise(now, Noise::RefusedIn, &ans.peer, &format!("{reason:?}"));
                        PeerMessage::Refused {
                            origin,
                            epoch,
                            covers,
                            reason,
                        }
                    }
                };
                self.net.send(&ans.peer, m);
            }
            ToLink::Carried(frame) => match decode(&frame, self.max_frame) {
                Ok(Message::Carried(ack)) => self.on_ack(now, ack, None),
                Ok(Message::Desired(state)) => self.on_desired(now, state, None),
                _ => self.noise(now, Noise::Garbled, &self.me.clone(), "carry frame"),
            },
            ToLink::Direct(up) => {
                self.direct = Some(up);
                if up {
                    self.drop_hop(now);
                    self.schedule_fetch(now);
                } else {
                    self.next_fetch = None;
                }
                self.reroute(now);
            }
            ToLink::Params {
                instance,
                parameters,
            } => self.publish(instance, parameters),
            // Meant for the MQTT link.
            ToLink::Fetch(_) => {}
        }
    }

    /// Signs this node's `instance` parameters with a generation past every one it
    /// published or saw of its own, keeps them and sends them to every peer.
    fn publish(&mut self, instance: Name, parameters: BTreeMap<String, String>) {
        let generation = self.book.next_generation(hedge_common::clock::now_ms());
        let Some(p) = self.trust.sign_params(instance, generation, parameters) else {
            tracing::warn!(node = %self.me, "cannot sign connection parameters");
            return;
        };
        let size = encode_peer(&PeerMessage::Params(p.clone()), usize::MAX)
            .map_or(usize::MAX, |b| b.len());
        if self.book.offer(p.clone(), size) == Kept::Newer {
            self.to_all_but(None, &PeerMessage::Params(p));
        }
    }

    // ----- routes -----

    /// Follows the routes: drops a hop that is gone or no longer the best, lets the
    /// machine reconnect early when a path exists.
    fn reroute(&mut self, now: Instant) {
        let best = self.routes.best().map(|(n, _)| n.clone());
        if self.sync.is_connected() && (self.direct != Some(false) || best != self.hop) {
            self.drop_hop(now);
        }
        if !self.sync.is_connected()
            && self.direct == Some(false)
            && best.is_some()
            && self.sync.wants_probe()
        {
            self.feed(now, Input::PathBack);
        }
    }

    fn drop_hop(&mut self, now: Instant) {
        if self.sync.is_connected() {
            tracing::info!(node = %self.me, hop = ?self.hop, "mesh link down");
            self.tell(ToNode::Link(false));
            self.feed(now, Input::LinkDown);
        }
        self.hop = None;
    }

    /// Sends a `Hello` to every peer whose announced hops changed; updates the beacon.
    fn announce(&mut self) {
        let direct = self.direct == Some(true);
        let outbox = self.last_seq.saturating_sub(self.sync.stats().acked_upto);
        let mut hellos = Vec::new();
        for (peer, _) in self.routes.peers() {
            let hops = self.routes.hops_for(peer, direct);
            if self.announced.get(peer) != Some(&hops) {
                hellos.push((peer.clone(), hops));
            }
        }
        for (peer, hops) in hellos {
            let hello = Hello {
                node: self.me.clone(),
                hops,
                outbox,
                desired: self.carrier.summary(),
            };
            if self.net.send(&peer, PeerMessage::Hello(hello)) {
                self.announced.insert(peer, hops);
            }
        }
        let own = (self.routes.own_hops(direct), outbox);
        if self.beacon != Some(own) {
            self.beacon = Some(own);
            self.net.set_beacon(own.0, own.1);
        }
    }

    // ----- fetch -----

    fn schedule_fetch(&mut self, now: Instant) {
        if self.direct != Some(true) {
            return;
        }
        let at = self
            .last_fetch
            .and_then(|t| t.checked_add(FETCH_GAP))
            .map_or(now, |t| t.max(now));
        self.next_fetch = Some(self.next_fetch.map_or(at, |t| t.min(at)));
    }

    fn fetch(&mut self, now: Instant) {
        self.last_fetch = Some(now);
        self.next_fetch = now.checked_add(self.fetch_every);
        let wanted = self.carrier.wanted();
        if self.direct == Some(true) && !wanted.is_empty() {
            self.tell(ToNode::Fetch(wanted));
        }
    }

    // ----- logs -----

    fn forged(&mut self, now: Instant, from: Option<&Name>, what: &str) {
        bump(&self.stats.forged);
        let who = from.cloned().unwrap_or_else(|| self.me.clone());
        self.noise(now, Noise::Forged, &who, what);
    }

    fn noise(&mut self, now: Instant, kind: Noise, peer: &Name, what: &str) {
        let gate = self.gates.entry(kind).or_default();
        if let Some(suppressed) = gate.allow(now, |t| now.duration_since(t) < LOG_EVERY) {
            match kind {
                Noise::RefusedIn => {
                    tracing::warn!(peer = %peer, reason = what, suppressed, "refused a peer's batch")
                }
                Noise::RefusedOut => {
                    tracing::warn!(peer = %peer, reason = what, suppressed, "a peer refused custody of a batch")
                }
                Noise::Forged => {
                    tracing::warn!(peer = %peer, what, suppressed, "dropped a message whose signature does not verify")
                }
                Noise::Garbled => {
                    tracing::warn!(peer = %peer, what, suppressed, "dropped a malformed message")
                }
            }
        }
    }
}

impl PeerNet for crate::net::NetHandle {
    fn send(&self, peer: &Name, m: PeerMessage) -> bool {
        crate::net::NetHandle::send(self, peer, m)
    }

    fn set_beacon(&self, hops: u8, outbox: u64) {
        crate::net::NetHandle::set_beacon(self, hops, outbox);
    }
}
