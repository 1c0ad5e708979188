//! The mesh transport: peer sessions over TCP + mutual TLS, beacons, and the routes of the
//! peers that are up. The API the mesh link codes against.
//!
//! Contract: [`start`] (inside a Tokio runtime) listens on `cfg.listen`, dials every static
//! peer (redialling with exponential backoff and jitter, at most `max_backoff_ms` apart),
//! sends and hears beacons on `cfg.beacon_interfaces`, and dials the nodes it hears.
//! Every session is authenticated by mutual TLS under the fleet CA; its peer *is* its
//! certificate's CN. At most one session per peer (crossed dials resolved alike at both
//! ends, see [`crate::routes::keep_new_session`]) and at most `max_peers` sessions.
//! Events reach `events` in order per peer: `Up`, then its messages, then `Down`; a
//! replaced session's `Down` comes before its successor's `Up`. A `Hello` whose node is
//! not the peer's CN closes the session (counted, logged at a limited rate) and is not
//! delivered; any other message is delivered as decoded (validating it is the consumer's
//! job). [`NetHandle::send`] queues without waiting: `false` when there is no session with
//! that peer, its bounded queue is full or the message does not encode. Dropping the
//! `events` receiver, or [`NetHandle::shutdown`], stops everything.
//!
//! The transport originates no `Hello`: the mesh link sends one on every `Up` and whenever
//! its hops change, with [`NetHandle::hello_hops`] (poisoned reverse toward its next
//! hop); until a peer's first `Hello` its hops are [`NO_PATH`]. [`NetHandle::set_beacon`]
//! only feeds beacons.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hedge_wire::mesh::{encode_peer, PeerMessage, FERRY, NO_PATH};
use hedge_wire::Name;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::task::AbortHandle;

use crate::config::{ConfigError, MeshConfig};
use crate::frame::MAX_PEER_FRAME;
use crate::routes::{backoff_ms, keep_new_session, Routes};
use crate::session::{self, Authenticated, FromSession, SessionError, Timing, OUT_QUEUE};
use crate::stats::{Gates, NetCounts, NetStats};
use crate::tls::NetTls;

/// Something that happened with a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerEvent {
    /// The peer (its certificate's CN).
    pub peer: Name,
    /// What happened.
    pub kind: PeerEventKind,
}

/// What happened with a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
// Each event is built once and moved once through a channel to its one reader; boxing
// the message would cost an allocation per frame for no saving.
#[allow(clippy::large_enum_variant)]
pub enum PeerEventKind {
    /// A session came up.
    Up {
        /// The peer's address.
        addr: SocketAddr,
        /// The peer's certificate (DER), verified against the fleet CA.
        cert_der: Vec<u8>,
    },
    /// The peer sent a message.
    Message(PeerMessage),
    /// The session ended.
    Down,
}

/// A peer with a session up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// Its name (certificate CN).
    pub node: Name,
    /// Its address.
    pub addr: SocketAddr,
    /// Its hops to the broker, from its latest `Hello` ([`NO_PATH`] before one).
    pub hops: u8,
    /// Its outbox depth, from its latest `Hello`.
    pub outbox: u64,
    /// Whether this node dialled it.
    pub dialed: bool,
}

/// The running transport. Cheap to clone.
#[derive(Clone)]
pub struct NetHandle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for NetHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetHandle")
            .field("me", &self.inner.me)
            .field("local", &self.inner.local)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    pub(crate) me: Name,
    pub(crate) cfg: MeshConfig,
    tls: Mutex<NetTls>,
    pub(crate) local: SocketAddr,
    pub(crate) stats: Arc<NetStats>,
    pub(crate) gates: Arc<Gates>,
    pub(crate) beacon_hops: AtomicU8,
    pub(crate) beacon_outbox: AtomicU64,
    state: Mutex<State>,
    /// The listening socket, here so that [`Inner::shutdown`] closes it at once (a
    /// restart binds the same port right after).
    listener: Mutex<Option<TcpListener>>,
    to_hub: mpsc::Sender<Established>,
    tasks: Mutex<Vec<AbortHandle>>,
    epoch: Instant,
}

#[derive(Default)]
pub(crate) struct State {
    sessions: BTreeMap<Name, Live>,
    by_id: BTreeMap<u64, Name>,
    pub(crate) routes: Routes,
    next_id: u64,
}

struct Live {
    id: u64,
    out: mpsc::Sender<Vec<u8>>,
    addr: SocketAddr,
    dialed: bool,
    abort: AbortHandle,
    /// Dropped with the session: whoever waits for its end wakes.
    done: watch::Sender<()>,
}

/// An authenticated stream for the hub to register.
struct Established {
    auth: Authenticated,
    dialed: bool,
    reply: oneshot::Sender<Result<watch::Receiver<()>, Refusal>>,
}

/// Why the hub did not take a session.
enum Refusal {
    /// `max_peers` sessions are up.
    Full,
    /// A session with that peer is kept instead; the receiver wakes when it ends.
    Duplicate(watch::Receiver<()>),
}

/// Starts the transport. Must be called inside a Tokio runtime.
pub fn start(
    cfg: MeshConfig,
    tls: NetTls,
    me: Name,
    events: mpsc::Sender<PeerEvent>,
) -> Result<NetHandle, NetError> {
    cfg.validate()?;
    if tls.me() != &me {
        return Err(NetError::NotMyCertificate(tls.me().clone()));
    }
    tokio::runtime::Handle::try_current().map_err(|_| NetError::NoRuntime)?;
    let std_listener = std::net::TcpListener::bind(cfg.listen).map_err(NetError::Listen)?;
    std_listener
        .set_nonblocking(true)
        .map_err(NetError::Listen)?;
    let listener = TcpListener::from_std(std_listener).map_err(NetError::Listen)?;
    let local = listener.local_addr().map_err(NetError::Listen)?;
    let beacon = if cfg.beacon_interfaces.is_empty() {
        None
    } else {
        Some(crate::beacon::Sockets::bind(&cfg).map_err(NetError::Beacon)?)
    };
    let (to_hub, from_dialers) = mpsc::channel(64);
    let (session_tx, session_rx) = mpsc::channel(64);
    #[allow(clippy::disallowed_methods)] // I/O driver: the monotonic origin of routes' time
    let epoch = Instant::now();
    let inner = Arc::new(Inner {
        me,
        tls: Mutex::new(tls),
        local,
        stats: Arc::default(),
        gates: Arc::default(),
        beacon_hops: AtomicU8::new(if cfg.ferry { FERRY } else { NO_PATH }),
        beacon_outbox: AtomicU64::new(0),
        state: Mutex::new(State {
            routes: Routes::new(cfg.ferry),
            ..State::default()
        }),
        listener: Mutex::new(Some(listener)),
        to_hub,
        tasks: Mutex::default(),
        epoch,
        cfg,
    });
    let mut tasks = vec![
        tokio::spawn(hub(
            inner.clone(),
            from_dialers,
            session_rx,
            session_tx,
            events,
        ))
        .abort_handle(),
        tokio::spawn(listen(inner.clone())).abort_handle(),
    ];
    for peer in inner.cfg.peers.clone() {
        tasks.push(tokio::spawn(dial_static(inner.clone(), peer)).abort_handle());
    }
    if let Some(sockets) = beacon {
        tasks.push(tokio::spawn(crate::beacon::run(inner.clone(), sockets)).abort_handle());
    }
    inner.lock_tasks().extend(tasks);
    Ok(NetHandle { inner })
}

impl NetHandle {
    /// Queues `m` for `peer`; `false` when it cannot be (no session, queue full,
    /// unencodable).
    pub fn send(&self, peer: &Name, m: PeerMessage) -> bool {
        let stats = &self.inner.stats;
        let body = match encode_peer(&m, MAX_PEER_FRAME) {
            Ok(b) => b,
            Err(e) => {
                NetStats::bump(&stats.send_failed);
                self.inner.gates.warn("unencodable peer message", &e);
                return false;
            }
        };
        let len = body.len();
        let queued = self
            .inner
            .lock_state()
            .sessions
            .get(peer)
            .is_some_and(|l| l.out.try_send(body).is_ok());
        if queued {
            NetStats::bump(&stats.frames_out);
            NetStats::add(&stats.bytes_out, len);
        } else {
            NetStats::bump(&stats.send_failed);
        }
        queued
    }

    /// What the next beacons say: this node's hops and outbox depth.
    pub fn set_beacon(&self, hops: u8, outbox: u64) {
        self.inner.beacon_hops.store(hops, Ordering::Relaxed);
        self.inner.beacon_outbox.store(outbox, Ordering::Relaxed);
    }

    /// The peers with a session up, by name.
    pub fn peers(&self) -> Vec<PeerInfo> {
        let st = self.inner.lock_state();
        st.sessions
            .iter()
            .map(|(n, l)| {
                let r = st.routes.peer(n);
                PeerInfo {
                    node: n.clone(),
                    addr: l.addr,
                    hops: r.map_or(NO_PATH, |r| r.hops),
                    outbox: r.map_or(0, |r| r.outbox),
                    dialed: l.dialed,
                }
            })
            .collect()
    }

    /// The best next hop toward the broker and its hops ([`Routes::best`]).
    pub fn best_hop(&self) -> Option<(Name, u8)> {
        self.inner
            .lock_state()
            .routes
            .best()
            .map(|(n, h)| (n.clone(), h))
    }

    /// This node's hops ([`Routes::own_hops`]).
    pub fn own_hops(&self, direct: bool) -> u8 {
        self.inner.lock_state().routes.own_hops(direct)
    }

    /// The hops to put in a `Hello` to `peer` ([`Routes::hops_for`]: poisoned reverse).
    pub fn hello_hops(&self, peer: &Name, direct: bool) -> u8 {
        self.inner.lock_state().routes.hops_for(peer, direct)
    }

    /// The address sessions are accepted on (the bound port when `listen` said 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local
    }

    /// The transport's counters.
    pub fn stats(&self) -> NetCounts {
        self.inner.stats.snapshot()
    }

    /// Uses `tls` (a renewed certificate of this node) for the sessions opened from now
    /// on; the sessions up keep theirs. Refused when it is another node's certificate.
    pub fn reload_tls(&self, tls: NetTls) -> Result<(), NetError> {
        if tls.me() != &self.inner.me {
            return Err(NetError::NotMyCertificate(tls.me().clone()));
        }
        *self.inner.tls.lock().unwrap_or_else(|p| p.into_inner()) = tls;
        Ok(())
    }

    /// Stops every task and closes every session (no `Down` events follow).
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }
}

impl State {
    /// How many sessions are up.
    pub(crate) fn sessions(&self) -> usize {
        self.sessions.len()
    }
}

impl Inner {
    pub(crate) fn lock_state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The TLS configurations new sessions use.
    fn tls(&self) -> NetTls {
        self.tls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn lock_tasks(&self) -> MutexGuard<'_, Vec<AbortHandle>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Milliseconds since the transport started (the routes core's clock).
    pub(crate) fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn shutdown(&self) {
        // Closed now, not when the aborted accept task is next polled: a restart on a
        // current-thread runtime binds the port again before that.
        drop(
            self.listener
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        for t in self.lock_tasks().drain(..) {
            t.abort();
        }
        let mut st = self.lock_state();
        for (_, l) in std::mem::take(&mut st.sessions) {
            l.abort.abort();
        }
        st.by_id.clear();
    }

    /// Opens a session to `addr` and hands it to the hub; the receiver wakes when the
    /// session (or the one kept instead of it) ends. Returns the peer's name too.
    pub(crate) async fn dial(
        &self,
        addr: SocketAddr,
    ) -> Result<(Name, watch::Receiver<()>), DialError> {
        let auth = match session::handshake_out(&self.tls(), addr).await {
            Ok(a) => a,
            Err(e) => {
                self.count_handshake(&e, addr);
                return Err(DialError::Handshake(e));
            }
        };
        let peer = auth.peer.clone();
        match self.establish(auth, true).await {
            Some(Ok(done)) => Ok((peer, done)),
            Some(Err(Refusal::Duplicate(done))) => Err(DialError::Duplicate(peer, done)),
            Some(Err(Refusal::Full)) => Err(DialError::Full),
            None => Err(DialError::Stopped),
        }
    }

    async fn establish(
        &self,
        auth: Authenticated,
        dialed: bool,
    ) -> Option<Result<watch::Receiver<()>, Refusal>> {
        let (reply, answer) = oneshot::channel();
        self.to_hub
            .send(Established {
                auth,
                dialed,
                reply,
            })
            .await
            .ok()?;
        answer.await.ok()
    }

    /// A receiver that wakes when the session with `peer` ends, if one is up.
    fn done_of(&self, peer: &Name) -> Option<watch::Receiver<()>> {
        self.lock_state()
            .sessions
            .get(peer)
            .map(|l| l.done.subscribe())
    }

    fn count_handshake(&self, e: &SessionError, addr: SocketAddr) {
        let c = match e {
            SessionError::Identity(_) | SessionError::Myself => &self.stats.refused_identity,
            _ => &self.stats.handshake_failed,
        };
        NetStats::bump(c);
        self.gates
            .warn("peer session refused", &format_args!("{addr}: {e}"));
    }
}

/// Why a dial gave no session.
#[derive(Debug)]
pub(crate) enum DialError {
    Handshake(SessionError),
    /// A session with this peer is kept instead.
    Duplicate(Name, watch::Receiver<()>),
    Full,
    Stopped,
}

/// Most handshakes in progress from one IP address: a host that opens connections and
/// never finishes them holds these, not every slot.
pub const HANDSHAKES_PER_IP: usize = 2;

/// Accepts sessions; at most `max_peers` handshakes at once, [`HANDSHAKES_PER_IP`] from
/// one address.
async fn listen(inner: Arc<Inner>) {
    let handshakes = Arc::new(Semaphore::new(inner.cfg.max_peers));
    let per_ip: Arc<Mutex<BTreeMap<IpAddr, usize>>> = Arc::default();
    loop {
        let accepted = std::future::poll_fn(|cx| {
            match inner
                .listener
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
            {
                Some(l) => l.poll_accept(cx).map(Some),
                None => std::task::Poll::Ready(None),
            }
        })
        .await;
        let (tcp, addr) = match accepted {
            None => return,
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                inner.gates.warn("accept failed", &e);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ip = addr.ip();
        let from_ip = {
            let mut m = per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let n = m.entry(ip).or_insert(0);
            *n += 1;
            *n
        };
        let release = {
            let per_ip = per_ip.clone();
            move || {
                let mut m = per_ip.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(n) = m.get_mut(&ip) {
                    *n -= 1;
                    if *n == 0 {
                        m.remove(&ip);
                    }
                }
            }
        };
        let permit = match handshakes.clone().try_acquire_owned() {
            Ok(p) if from_ip <= HANDSHAKES_PER_IP => p,
            _ => {
                release();
                NetStats::bump(&inner.stats.refused_full);
                continue;
            }
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            let auth = session::handshake_in(&inner.tls(), tcp, addr).await;
            drop(permit);
            release();
            match auth {
                Ok(auth) => {
                    let _ = inner.establish(auth, false).await;
                }
                Err(e) => inner.count_handshake(&e, addr),
            }
        });
    }
}

/// Extra wait of a static peer's redial when the peer has the lower name.
const CROSS_GRACE_MS: u64 = 1000;

/// Keeps a session with one static peer: dial, wait for its end, redial with backoff.
async fn dial_static(inner: Arc<Inner>, peer: String) {
    let max = inner.cfg.max_backoff_ms;
    let mut fails = 0u32;
    let mut known: Option<Name> = None;
    loop {
        // Already up (it dialled in, or a beacon led here): wait for that session's end.
        let live = known.as_ref().and_then(|k| inner.done_of(k));
        if let Some(mut done) = live {
            let _ = done.changed().await;
            fails = 0;
            continue;
        }
        let mut outcome = Err(());
        match tokio::net::lookup_host(peer.as_str()).await {
            Ok(addrs) => {
                for addr in addrs {
                    match inner.dial(addr).await {
                        Ok((who, mut done)) | Err(DialError::Duplicate(who, mut done)) => {
                            known = Some(who);
                            let _ = done.changed().await;
                            outcome = Ok(());
                            break;
                        }
                        Err(DialError::Stopped) => return,
                        Err(DialError::Handshake(SessionError::Myself)) => {
                            fails = fails.saturating_add(20);
                            break;
                        }
                        Err(_) => {}
                    }
                }
            }
            Err(e) => inner
                .gates
                .warn("peer address", &format_args!("{peer}: {e}")),
        }
        fails = match outcome {
            Ok(()) => 1,
            Err(()) => fails.saturating_add(1),
        };
        let mut wait = backoff_ms(fails, max);
        // Jitter of up to a quarter, so peers that lost each other do not redial in step.
        wait -= fastrand::u64(0..=wait / 4);
        // A known peer with a lower name redials first (if it has this node as a static
        // peer too): give it the time of a dial, so the two seldom cross.
        if known.as_ref().is_some_and(|k| *k < inner.me) {
            wait = wait.saturating_add(CROSS_GRACE_MS);
        }
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
}

/// Dials a node heard in a beacon once, and tells the routes core how it went.
pub(crate) async fn dial_heard(inner: Arc<Inner>, node: Name, addr: SocketAddr) {
    let ok = match inner.dial(addr).await {
        Ok((peer, _)) | Err(DialError::Duplicate(peer, _)) => {
            if peer != node {
                inner.gates.warn(
                    "beacon names another node",
                    &format_args!("{node} at {addr} is {peer}"),
                );
            }
            peer == node
        }
        Err(_) => false,
    };
    let now = inner.now_ms();
    let max = inner.cfg.max_backoff_ms;
    inner.lock_state().routes.dial_done(&node, ok, now, max);
}

/// Registers sessions, routes their messages to `events` in order, and unregisters them.
async fn hub(
    inner: Arc<Inner>,
    mut established: mpsc::Receiver<Established>,
    mut from_sessions: mpsc::Receiver<FromSession>,
    session_tx: mpsc::Sender<FromSession>,
    events: mpsc::Sender<PeerEvent>,
) {
    loop {
        let out = tokio::select! {
            Some(e) = established.recv() => register(&inner, e, &session_tx),
            Some(m) = from_sessions.recv() => route(&inner, m),
            else => break,
        };
        for ev in out {
            if events.send(ev).await.is_err() {
                inner.shutdown();
                return;
            }
        }
    }
}

fn register(
    inner: &Inner,
    e: Established,
    session_tx: &mpsc::Sender<FromSession>,
) -> Vec<PeerEvent> {
    let Established {
        auth,
        dialed,
        reply,
    } = e;
    let Authenticated {
        stream,
        peer,
        cert_der,
        addr,
    } = auth;
    let mut evs = Vec::new();
    let mut st = inner.lock_state();
    if let Some(old) = st.sessions.get(&peer) {
        NetStats::bump(&inner.stats.replaced);
        if !keep_new_session(&inner.me, &peer, old.dialed, dialed) {
            let _ = reply.send(Err(Refusal::Duplicate(old.done.subscribe())));
            return evs;
        }
        remove(&mut st, &peer);
        evs.push(PeerEvent {
            peer: peer.clone(),
            kind: PeerEventKind::Down,
        });
    } else if st.sessions.len() >= inner.cfg.max_peers {
        NetStats::bump(&inner.stats.refused_full);
        let _ = reply.send(Err(Refusal::Full));
        return evs;
    }
    let id = st.next_id;
    st.next_id += 1;
    let (out, out_rx) = mpsc::channel(OUT_QUEUE);
    let (done, done_rx) = watch::channel(());
    let timing = Timing {
        keepalive: Duration::from_millis(inner.cfg.keepalive_ms),
        dead_after: Duration::from_millis(inner.cfg.dead_after_ms),
    };
    let task = tokio::spawn(session::run(
        id,
        stream,
        out_rx,
        session_tx.clone(),
        timing,
        inner.stats.clone(),
        inner.gates.clone(),
    ));
    st.sessions.insert(
        peer.clone(),
        Live {
            id,
            out,
            addr,
            dialed,
            abort: task.abort_handle(),
            done,
        },
    );
    st.by_id.insert(id, peer.clone());
    st.routes.up(&peer);
    NetStats::bump(&inner.stats.sessions_up);
    tracing::info!(%peer, %addr, dialed, "mesh: peer session up");
    let _ = reply.send(Ok(done_rx));
    evs.push(PeerEvent {
        peer,
        kind: PeerEventKind::Up { addr, cert_der },
    });
    evs
}

fn route(inner: &Inner, m: FromSession) -> Vec<PeerEvent> {
    let mut st = inner.lock_state();
    let id = match &m {
        FromSession::Message { id, .. } | FromSession::Ended { id } => *id,
    };
    // A replaced or closed session's leftovers are dropped.
    let Some(peer) = st.by_id.get(&id).cloned() else {
        return Vec::new();
    };
    let down = vec![PeerEvent {
        peer: peer.clone(),
        kind: PeerEventKind::Down,
    }];
    match m {
        FromSession::Ended { .. } => {
            remove(&mut st, &peer);
            tracing::info!(%peer, "mesh: peer session down");
            down
        }
        FromSession::Message { msg, .. } => {
            if let PeerMessage::Hello(h) = &*msg {
                if h.node != peer {
                    NetStats::bump(&inner.stats.refused_hello);
                    inner.gates.warn(
                        "hello names another node than the certificate",
                        &format_args!("{peer} said it is {}", h.node),
                    );
                    remove(&mut st, &peer);
                    return down;
                }
                st.routes.hello(&peer, h.hops, h.outbox);
            }
            vec![PeerEvent {
                peer,
                kind: PeerEventKind::Message(*msg),
            }]
        }
    }
}

/// Forgets the session with `peer` and stops its task.
fn remove(st: &mut State, peer: &Name) {
    if let Some(l) = st.sessions.remove(peer) {
        l.abort.abort();
        st.by_id.remove(&l.id);
    }
    st.routes.down(peer);
}

/// Why the transport did not start.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The node id is not the CN of the given certificate.
    #[error("the TLS certificate is {0}'s, not this node's")]
    NotMyCertificate(Name),
    /// Not called inside a Tokio runtime.
    #[error("no Tokio runtime")]
    NoRuntime,
    /// The listen address could not be bound.
    #[error("mesh listen address: {0}")]
    Listen(std::io::Error),
    /// The beacon socket could not be set up.
    #[error("mesh beacons: {0}")]
    Beacon(std::io::Error),
}
