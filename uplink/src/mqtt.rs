//! The node's MQTT driver: moves bytes between the broker and the [`SyncMachine`] core.
//!
//! Contract: [`run`] owns a rumqttc client (mutual TLS) and the sync core, and talks to
//! the node daemon only through two channels: it asks for outbox records
//! ([`ToNode::Load`]), tells what the master acknowledged ([`ToNode::Delete`]), how far
//! range batches were sent ([`ToNode::Sent`], so the daemon never rewrites a record that
//! is on its way), the link state, the lease the master's acks prove ([`ToNode::Lease`]),
//! and hands over desired-state frames untouched (the
//! daemon verifies them). For the mesh, it hands over what the master publishes on the
//! node's `carry` topic untouched ([`ToNode::Carried`]: signed acks and desired states of
//! the nodes this one carries, verified further down the mesh) and publishes the mesh's
//! requests for those states ([`ToLink::Fetch`] → `Message::Fetch` on `up`, QoS 1,
//! while connected; a request while down is dropped: the mesh asks again). It never blocks the daemon: the daemon answers loads when it
//! can. Connecting, reconnecting with backoff and resending are the core's decisions.
//!
//! rumqttc's `EventLoop::poll` does the whole TCP + TLS + CONNECT inside one future, so
//! it is never raced against the daemon's channel: each connection's event loop runs in
//! a task of its own and hands its events over a channel, tagged with the connection
//! they belong to. A busy node (an append every few milliseconds) therefore cannot
//! restart a slow connect over and over.
//!
//! While the core [wants a probe](SyncMachine::wants_probe) (the link is waiting out a
//! backoff, or an attempt has stalled), the driver opens a plain TCP connection to the broker's port every
//! [`PROBE_EVERY`] (±25 %, closed at once, no TLS; the broker's name is looked up at
//! most once at a time, [`resolve`]) and reports a success as
//! [`Input::PathBack`]: a link that returns is used within a fraction of a second, not
//! at the end of a backoff of up to 15 s, nor at the next SYN retransmission of an
//! attempt made while it was cut. A second `Connect` while one connects replaces it
//! (its task is aborted).
//!
//! Nagle's algorithm is off on the connection (`TCP_NODELAY`, `connection`); rumqttc
//! writes whole packets, so nothing is sent in pieces.
//!
//! Topics ([`crate::topic`]): publishes `hedge/v1/<node>/up` (QoS 1); subscribes
//! `hedge/v1/<node>/ack`, `hedge/v1/<node>/desired` (retained by the master) and
//! `hedge/v1/<node>/carry`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hedge_wire::codec::decode;
use hedge_wire::{Message, Name};
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS, SubscribeFilter,
    TlsConfiguration, Transport,
};
use tokio::sync::mpsc;

use crate::link::{ToLink, ToNode};
use crate::sync::{Config, Input, Output, SyncMachine};
use crate::topic::{ack_topic, carry_topic, desired_topic, up_topic};

pub mod resolve;

/// Where and how to connect.
#[derive(Clone)]
pub struct LinkSettings {
    /// The node this link speaks for (also its MQTT client id).
    pub node: Name,
    /// Its store's epoch (the life its records belong to).
    pub epoch: u64,
    /// Broker host name or address (also the name its TLS certificate must carry).
    pub host: String,
    /// Port of the broker's mutual-TLS listener.
    pub port: u16,
    /// TLS client configuration (see `crate::tls`).
    pub tls: Arc<rustls::ClientConfig>,
    /// Tuning of the sync core: batches, window, timeouts, byte budget.
    pub sync: Config,
    /// MQTT keep-alive interval (at least one second is used).
    pub keepalive: Duration,
}

/// How often a waiting link probes the broker's port (±25 %), and how long one probe
/// may take.
pub const PROBE_EVERY: Duration = Duration::from_millis(200);

/// One probe after `delay`: whether a TCP connection to one of the broker's addresses
/// opens within [`PROBE_EVERY`]. A cut link, a refused port or no address yet (the name
/// not looked up, see [`resolve`]) all say "not back".
async fn probe(addrs: Vec<SocketAddr>, delay: Duration) -> bool {
    tokio::time::sleep(delay).await;
    if addrs.is_empty() {
        return false;
    }
    let connect = tokio::net::TcpStream::connect(&addrs[..]);
    matches!(tokio::time::timeout(PROBE_EVERY, connect).await, Ok(Ok(_)))
}

enum State {
    Idle,
    Connecting(Conn),
    Up(Conn),
}

/// One connection attempt: its client, and the task polling its event loop (aborted
/// when the connection is dropped).
struct Conn {
    id: u64,
    client: AsyncClient,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An event of connection `.0`.
type Polled = (u64, Result<Event, ConnectionError>);

/// Polls one connection's event loop until it fails (or the receiver goes away).
async fn drive(id: u64, mut el: EventLoop, tx: mpsc::Sender<Polled>) {
    loop {
        let ev = el.poll().await;
        let failed = ev.is_err();
        if tx.send((id, ev)).await.is_err() || failed {
            return;
        }
    }
}

/// A client and its event loop for one connection attempt, with `TCP_NODELAY` set.
///
/// With Nagle's algorithm on, a small write (a PUBACK, the tail of a batch) waits until
/// the broker acknowledges the previous segment, and the broker may delay that
/// acknowledgement by up to 40 ms. A drain after an outage stalled that long every few
/// batches, with both ends idle.
fn connection(s: &LinkSettings) -> (AsyncClient, EventLoop) {
    let (client, mut eventloop) = AsyncClient::new(options(s), 64);
    let mut net = eventloop.network_options();
    net.set_tcp_nodelay(true);
    eventloop.set_network_options(net);
    (client, eventloop)
}

fn options(s: &LinkSettings) -> MqttOptions {
    let mut o = MqttOptions::new(s.node.as_str(), &s.host, s.port);
    o.set_keep_alive(s.keepalive.max(Duration::from_secs(1)))
        .set_clean_session(true)
        .set_max_packet_size(256 * 1024, 256 * 1024)
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            s.tls.clone(),
        )));
    o
}

/// Publishes `Message::Fetch(nodes)` on `up` (at most `MAX_CARRIED` nodes, QoS 1): the
/// master answers on the node's `carry` topic.
fn fetch(client: &AsyncClient, up: &str, mut nodes: Vec<Name>, max_frame: usize) {
    nodes.truncate(hedge_wire::mesh::MAX_CARRIED);
    if nodes.is_empty() {
        return;
    }
    match hedge_wire::codec::encode(&Message::Fetch(nodes), max_frame) {
        Ok(frame) => {
            if let Err(e) = client.try_publish(up, QoS::AtLeastOnce, false, frame) {
                tracing::debug!(error = %e, "publish queue full; the mesh asks again");
            }
        }
        Err(e) => tracing::debug!(error = %e, "fetch request does not encode"),
    }
}

/// Runs the link until the daemon drops its end of the channels.
// The I/O driver: it reads the clock the pure core is fed with.
#[allow(clippy::disallowed_methods)]
pub async fn run(
    settings: LinkSettings,
    to_node: mpsc::UnboundedSender<ToNode>,
    mut from_node: mpsc::UnboundedReceiver<ToLink>,
) {
    let node = settings.node.to_string();
    let (up, ack, desired) = (up_topic(&node), ack_topic(&node), desired_topic(&node));
    let carry = carry_topic(&node);
    let mut sync = SyncMachine::new(
        settings.node.clone(),
        settings.epoch,
        settings.sync.clone(),
        fastrand::u64(..),
    );
    let mut state = State::Idle;
    let (events_tx, mut events) = mpsc::channel::<Polled>(64);
    let mut conn_id = 0u64;
    let mut pending = sync.handle(Instant::now(), Input::Start);
    let mut sent_upto = 0u64;
    let mut resolver = resolve::Resolver::new(&settings.host, settings.port);
    let mut probing: Option<std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>> =
        None;
    let mut lease = None;
    loop {
        // Tell the daemon when the master's acks proved a newer contact.
        if sync.lease_since() > lease {
            lease = sync.lease_since();
            if let Some(since) = lease {
                let _ = to_node.send(ToNode::Lease { since });
            }
        }
        // Perform what the core asked.
        for out in std::mem::take(&mut pending) {
            match out {
                Output::Connect => {
                    let (client, eventloop) = connection(&settings);
                    conn_id += 1;
                    let task = tokio::spawn(drive(conn_id, eventloop, events_tx.clone()));
                    state = State::Connecting(Conn {
                        id: conn_id,
                        client,
                        task,
                    });
                }
                Output::Load { from, limit } => {
                    if to_node.send(ToNode::Load { from, limit }).is_err() {
                        return;
                    }
                }
                Output::Delete { upto } => {
                    if to_node.send(ToNode::Delete { upto }).is_err() {
                        return;
                    }
                }
                Output::Send { frame, range, .. } => {
                    if let State::Up(conn) = &state {
                        if let Err(e) = conn.client.try_publish(&up, QoS::AtLeastOnce, false, frame)
                        {
                            tracing::debug!(error = %e, "publish queue full; the ack timeout resends");
                        } else if let Some((_, to)) = range {
                            if to > sent_upto {
                                sent_upto = to;
                                let _ = to_node.send(ToNode::Sent { upto: to });
                            }
                        }
                    }
                }
            }
        }
        let deadline = sync
            .deadline()
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        if !sync.wants_probe() {
            probing = None;
        } else if probing.is_none() {
            let delay = PROBE_EVERY.mul_f64(0.75 + 0.5 * fastrand::f64());
            let addrs = resolver.addrs(Instant::now()).await;
            probing = Some(Box::pin(probe(addrs, delay)));
        }
        let current = match &state {
            State::Connecting(c) | State::Up(c) => Some(c.id),
            State::Idle => None,
        };
        tokio::select! {
            Some((id, ev)) = events.recv() => {
                if Some(id) != current {
                    // A late event of a connection already given up.
                    continue;
                }
                let now = Instant::now();
                match ev {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let State::Connecting(conn) = &state {
                            let filters = vec![
                                SubscribeFilter::new(ack.clone(), QoS::AtLeastOnce),
                                SubscribeFilter::new(desired.clone(), QoS::AtLeastOnce),
                                SubscribeFilter::new(carry.clone(), QoS::AtLeastOnce),
                            ];
                            if let Err(e) = conn.client.try_subscribe_many(filters) {
                                tracing::warn!(error = %e, "cannot subscribe");
                            }
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let State::Connecting(conn) = std::mem::replace(&mut state, State::Idle) {
                            state = State::Up(conn);
                            tracing::info!(host = %settings.host, port = settings.port, "uplink connected");
                            let _ = to_node.send(ToNode::Link(true));
                            pending = sync.handle(now, Input::LinkUp);
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if p.topic == ack {
                            match decode(&p.payload, settings.sync.max_frame) {
                                Ok(Message::Ack(a)) => {
                                    pending = sync.handle(now, Input::Acked { upto: a.upto, epoch: a.epoch });
                                }
                                _ => tracing::warn!("ignoring a malformed ack"),
                            }
                        } else if p.topic == desired && !p.payload.is_empty() {
                            let _ = to_node.send(ToNode::Desired(p.payload.to_vec()));
                        } else if p.topic == carry && !p.payload.is_empty() {
                            let _ = to_node.send(ToNode::Carried(p.payload.to_vec()));
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let was_up = matches!(state, State::Up(..));
                        state = State::Idle;
                        if was_up {
                            tracing::warn!(error = %e, "uplink lost");
                            let _ = to_node.send(ToNode::Link(false));
                            pending = sync.handle(now, Input::LinkDown);
                        } else {
                            tracing::debug!(error = %e, "uplink connect failed");
                            pending = sync.handle(now, Input::ConnectFailed);
                        }
                    }
                }
            }
            msg = from_node.recv() => {
                let now = Instant::now();
                match msg {
                    None => return,
                    Some(ToLink::Loaded { from, records, end }) => {
                        pending = sync.handle(now, Input::Loaded { from, records, end });
                    }
                    Some(ToLink::OutboxChanged) => pending = sync.handle(now, Input::OutboxChanged),
                    Some(ToLink::Fetch(nodes)) => {
                        if let State::Up(conn) = &state {
                            fetch(&conn.client, &up, nodes, settings.sync.max_frame);
                        }
                    }
                    // The mesh link's messages: nothing for the MQTT link.
                    Some(
                        ToLink::CustodyStored { .. }
                        | ToLink::Carried(_)
                        | ToLink::Direct(_)
                        | ToLink::Params { .. },
                    ) => {}
                }
            }
            back = async {
                match probing.as_mut() {
                    Some(p) => p.await,
                    None => std::future::pending().await,
                }
            } => {
                probing = None;
                if back {
                    tracing::debug!(host = %settings.host, port = settings.port, "uplink probe reached the broker");
                    pending = sync.handle(Instant::now(), Input::PathBack);
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                pending = sync.handle(Instant::now(), Input::Tick);
            }
        }
    }
}
