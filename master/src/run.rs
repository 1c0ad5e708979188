//! `hedge master run`: the master's MQTT driver.
//!
//! Contract: [`run`] connects to the broker with the master's client certificate,
//! subscribes to `$share/hedge/hedge/v1/+/up` (several master processes split the
//! load; the SQLite store makes each (node, epoch, seq) stored once across all of them),
//! and for every Up batch: checks that the batch's node is the topic's node (the
//! broker's ACL binds the topic to the certificate), stores it in one transaction,
//! and only then publishes `Ack { upto, epoch }` on `hedge/v1/<node>/ack`, once this
//! process has published the node's newest stored desired state ([`ack_waits`]: an ack
//! renews a lease, and must not outrun a state that moved an instance away). Malformed frames
//! and node mismatches are counted and logged, never stored, never acked; so are frames
//! of a node revoked with `hedge master revoke` ([`crate::revocation`]).
//! Store work runs on the [`Worker`] thread, never on the event loop: a slow disk or
//! another master holding SQLite's write lock delays acknowledgements, never the MQTT
//! keepalive (nor anything else on the loop). A full worker queue refuses the frame
//! ([`Counters::store_busy`]; the node resends).
//! One node cannot crowd out the others: each node's frames pass [`Admission`] (a rate
//! per node) before they are decoded, and the store refuses a node's batches once it
//! holds [`IngestLimits::max_stored_bytes`] of its records; refusals are counted
//! ([`Counters::rate_limited`], [`Counters::over_quota`]), logged once per 10 s per node,
//! and not acked (the node resends later). The broker drops messages above
//! [`crate::mosquitto::MESSAGE_SIZE_LIMIT`], below this client's [`MAX_PACKET`].
//! It also publishes, retained, every desired state newer than what it published
//! (checked at each connect and every second), so requests made with
//! `hedge master request` reach nodes whenever they connect. With the signing key it
//! also re-signs states near their expiry (every [`RENEW_EVERY`]), so a node never
//! runs an expired state while a master runs. With the key it also re-signs the states
//! whose imported connection parameters changed ([`crate::imports`]): on the next
//! second's tick after a batch carrying `ConnectionParameters` was handed to the store
//! (so at most once a second however many arrive), at connect and every [`RENEW_EVERY`]
//! (which catches what another master process ingested). With [`Settings::act`] it
//! acts for the fleet ([`crate::act::driver::act`] on the worker): every
//! [`Acting::every`], and within a second of handing over a batch holding a Critical
//! incident or an instance reported running (which may complete a handover); one pass
//! at a time. Reconnects with backoff forever; returns when `shutdown` resolves.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hedge_common::clock::now_ms;
use hedge_uplink::topic::{
    ack_topic, carry_topic, desired_topic, node_of_up_topic, MASTER_UP_FILTER,
};
use hedge_wire::codec::{decode, encode};
use hedge_wire::limits::DEFAULT_MAX_FRAME;
use hedge_wire::mesh::MAX_CARRIED;
use hedge_wire::{Ack, InstanceStatus, Message, Name, RecordKind, Severity};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};

pub use crate::admission::IngestLimits;
use crate::admission::{Admission, Refusal};
use crate::store::{FleetStore, StoreError};
use crate::worker::{Done, Job, Worker};

/// Largest MQTT packet the master's client sends or accepts; a larger incoming packet
/// makes rumqttc drop the connection, hence the broker's smaller
/// [`crate::mosquitto::MESSAGE_SIZE_LIMIT`].
pub const MAX_PACKET: usize = 256 * 1024;

/// Errors that stop the master from starting.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The TLS files are unusable.
    #[error(transparent)]
    Tls(#[from] hedge_uplink::tls::TlsError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store worker thread could not start.
    #[error("cannot start the store worker: {0}")]
    Worker(std::io::Error),
}

/// Counters of one master process.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    /// Up batches stored.
    pub batches: u64,
    /// Records newly stored.
    pub stored: u64,
    /// Records received again (already stored).
    pub duplicates: u64,
    /// Frames refused (malformed, or topic and payload disagree).
    pub refused: u64,
    /// Desired states published.
    pub published: u64,
    /// Frames refused because their node sent too many too fast.
    pub rate_limited: u64,
    /// Batches refused because their node has its quota of bytes stored.
    pub over_quota: u64,
    /// Frames refused because the store worker's queue was full.
    pub store_busy: u64,
    /// Connections to the broker lost.
    pub reconnects: u64,
    /// Acks held back because the store holds a newer desired state for the node than
    /// this process has published ([`ack_waits`]; the node resends and is acked once it
    /// is published).
    pub acks_held: u64,
    /// Up frames of revoked nodes refused.
    pub revoked: u64,
    /// Batches relays carried for other nodes, unwrapped, verified and stored.
    pub carried: u64,
    /// Records newly stored from carried batches.
    pub carried_stored: u64,
    /// Signed acks published on a relay's carry topic.
    pub carried_acks: u64,
    /// Relayed batches refused: forged or altered, unknown or revoked node, too deep,
    /// malformed (stored as the relay's summary record, never unwrapped).
    pub forged_relayed: u64,
    /// Relayed batches refused because their frame held more than
    /// [`crate::relay::MAX_LAYERS`] (their origins keep them and send them again).
    pub relayed_too_many: u64,
    /// `Fetch` requests answered, and desired states sent on carry topics for them.
    pub fetches: u64,
    /// `Fetch` requests refused: too soon after the relay's last one, too many nodes,
    /// or the store worker busy.
    pub fetches_refused: u64,
}

/// Whether the ack of a committed batch must wait: the store holds a desired state for
/// the node (`stored`) newer than the one this process published to it (`published`).
/// An ack renews a node's lease ([`hedge_wire::InstanceTerms::lease_ms`]); were it to
/// reach a node that reconnected with an older retained state, before the state that
/// moved one of its instances away, the node would start a copy the master already runs
/// elsewhere. The next second's lookup publishes the state, then the resent batch is
/// acked.
pub fn ack_waits(published: Option<u64>, stored: Option<u64>) -> bool {
    stored.is_some_and(|s| published.is_none_or(|p| p < s))
}

/// Connection settings of the master's MQTT client.
#[derive(Clone)]
pub struct Settings {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// TLS client configuration (CN = hedge-master).
    pub tls: Arc<rustls::ClientConfig>,
    /// What one node may make this master ingest.
    pub limits: IngestLimits,
    /// MQTT keepalive: the broker drops the master after 1.5 × this without a packet.
    pub keepalive: Duration,
    /// Revoked nodes: their records are refused, never stored nor acknowledged.
    pub revoked: Arc<crate::revocation::Revoked>,
    /// The signing key: desired states near their expiry are re-signed with it
    /// ([`crate::sign::renew_expiring`], checked every [`RENEW_EVERY`]). `None`: never.
    pub renew: Option<Arc<crate::sign::MasterKey>>,
    /// Draining, retiring and lost nodes are acted on every `every`
    /// ([`crate::act::evacuate`]) while subscribed. `None`: never.
    pub evacuate: Option<Arc<crate::act::evacuate::driver::Standing>>,
    /// The master acting for the fleet ([`crate::act`]); `None`: it does not.
    pub act: Option<Acting>,
    /// Relayed batches (the mesh): unwrapped, checked, stored and acknowledged with
    /// signed acks on the relay's carry topic. `None`: stored as summaries only, never
    /// unwrapped nor acknowledged to their origin.
    pub carry: Option<Carrying>,
}

/// How `run` takes batches relays carried ([`crate::relay`]).
#[derive(Clone)]
pub struct Carrying {
    /// The key carried acks are signed with (the desired-state key nodes know).
    pub key: Arc<crate::sign::MasterKey>,
    /// The enrolled keys and revoked nodes relayed batches are checked against.
    pub origins: Arc<crate::origin::Origins>,
}

/// A relay's `Fetch` is answered at most this often.
pub const FETCH_EVERY_MS: u64 = 1_000;

/// How `run` acts for the fleet.
#[derive(Clone)]
pub struct Acting {
    /// The key states written are signed with.
    pub key: Arc<crate::sign::MasterKey>,
    /// The decision core's policy.
    pub policy: crate::act::Policy,
    /// A pass at least this often; also within a second of ingesting a Critical
    /// incident or an instance reported running.
    pub every: Duration,
}

/// How often `run` looks for desired states to re-sign.
pub const RENEW_EVERY: Duration = Duration::from_secs(60);

/// A client and its event loop for one connection to the broker, with `TCP_NODELAY`
/// set: with Nagle's algorithm on, an ack published after a commit can wait up to 40 ms
/// for the broker's delayed acknowledgement of the previous segment, and the node's
/// window with it.
fn connection(s: &Settings) -> (AsyncClient, rumqttc::EventLoop) {
    let (client, mut eventloop) = AsyncClient::new(options(s), 256);
    let mut net = eventloop.network_options();
    net.set_tcp_nodelay(true);
    eventloop.set_network_options(net);
    (client, eventloop)
}

fn options(s: &Settings) -> MqttOptions {
    // Several master processes share the certificate; client ids must differ.
    let id = format!("hedge-master-{}-{}", std::process::id(), fastrand::u32(..));
    let mut o = MqttOptions::new(id, &s.host, s.port);
    o.set_keep_alive(s.keepalive.max(Duration::from_secs(1)))
        .set_clean_session(true)
        .set_max_packet_size(MAX_PACKET, MAX_PACKET)
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            s.tls.clone(),
        )));
    o
}

/// Publishes the desired-state frames the worker found newer than `published`.
fn publish_desired(
    client: &AsyncClient,
    frames: Vec<(Name, u64, Vec<u8>)>,
    published: &mut BTreeMap<Name, u64>,
    counters: &mut Counters,
) {
    for (node, generation, frame) in frames {
        if published.get(&node).is_some_and(|g| *g >= generation) {
            continue;
        }
        match client.try_publish(desired_topic(node.as_str()), QoS::AtLeastOnce, true, frame) {
            Ok(()) => {
                tracing::info!(node = %node, generation, "desired state published");
                counters.published += 1;
                published.insert(node, generation);
            }
            Err(e) => tracing::debug!(error = %e, "publish queue full; retrying"),
        }
    }
}

/// Runs until `shutdown` resolves.
pub async fn run<S: FleetStore + 'static>(
    store: S,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> Result<Counters, RunError> {
    tokio::pin!(shutdown);
    let mut counters = Counters::default();
    let mut admission = Admission::new(settings.limits);
    let mut backoff = Duration::from_millis(200);
    let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel();
    let worker = Worker::start(store, done_tx).map_err(RunError::Worker)?;
    // One desired-state lookup at a time, one evacuation pass at a time.
    let mut looking_up = false;
    // Connection parameters arrived since the imports were last refreshed.
    let mut imports_due = true;
    // One act pass at a time; `act_due` once records it may answer were ingested.
    let (mut acting, mut act_due) = (false, false);
    let act_every = settings
        .act
        .as_ref()
        .map_or(Duration::from_secs(3600), |a| a.every);
    let mut evacuating = false;
    // When each relay's last `Fetch` was answered.
    let mut fetched: BTreeMap<Name, u64> = BTreeMap::new();
    let relay_log = crate::log_limit::LogLimit::default();
    // The last refusal line per instance: logged again only when it changes.
    let mut refusals: BTreeMap<Name, String> = BTreeMap::new();
    let every = settings
        .evacuate
        .as_ref()
        .map_or(Duration::from_secs(3600), |e| {
            e.every.max(Duration::from_millis(10))
        });
    loop {
        let (client, mut eventloop) = connection(&settings);
        let mut published: BTreeMap<Name, u64> = BTreeMap::new();
        let mut subscribed = false;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut renew_tick = tokio::time::interval(RENEW_EVERY);
        let mut act_tick = tokio::time::interval(act_every);
        let mut evacuate_tick = tokio::time::interval(every);
        // Silence before this connection listened does not make a node lost.
        let mut listening_since = now_ms();
        let lost = loop {
            tokio::select! {
                () = &mut shutdown => {
                    let _ = client.try_disconnect();
                    tracing::info!(?counters, "master stopped");
                    return Ok(counters);
                }
                _ = tick.tick(), if subscribed && (!looking_up || act_due) => {
                    // Queued before the lookup: what they write goes out with it.
                    if act_due && !acting {
                        acting = submit_act(&worker, settings.act.as_ref());
                        act_due = !acting;
                    }
                    if !looking_up {
                        if imports_due {
                            if let Some(key) = &settings.renew {
                                imports_due = worker
                                    .submit(Job::Imports { key: key.clone(), now_ms: now_ms() })
                                    .is_err();
                            }
                        }
                        looking_up = worker.submit(Job::Desired { published: published.clone() }).is_ok();
                    }
                }
                _ = act_tick.tick(), if settings.act.is_some() && !acting => {
                    acting = submit_act(&worker, settings.act.as_ref());
                }
                Some(d) = done.recv() => match d {
                    Done::Desired(frames) => {
                        looking_up = false;
                        publish_desired(&client, frames, &mut published, &mut counters);
                    }
                    Done::Renewed(Ok(renewed)) => {
                        for (node, generation) in renewed {
                            tracing::info!(node = %node, generation, "desired state re-signed before its expiry");
                        }
                    }
                    Done::Renewed(Err(e)) => {
                        tracing::warn!(error = %e, "cannot look for desired states to renew");
                    }
                    Done::Imports(Ok(written)) => {
                        for (node, generation) in written {
                            tracing::info!(node = %node, generation, "desired state re-signed: imported connection parameters changed");
                        }
                    }
                    Done::Imports(Err(e)) => {
                        imports_due = true;
                        tracing::warn!(error = %e, "cannot refresh imported connection parameters");
                    }
                    Done::Acted(result) => {
                        acting = false;
                        acted(result);
                    }
                    Done::Fetched { relay, frames } => {
                        publish_fetched(&client, &relay, frames, &mut counters);
                    }
                    Done::Ingested { node, claimed, result, desired, carried, refused } => {
                        if !carried.is_empty() {
                            imports_due = true;
                            act_due |= settings.act.is_some();
                        }
                        relayed(&client, settings.carry.as_ref(), &node, carried, &refused, &published, &relay_log, &mut counters);
                        if result.is_ok() && ack_waits(published.get(&node).copied(), desired) {
                            counters.acks_held += 1;
                            tracing::debug!(node = %node, ?desired, "ack held until the node's newer desired state is published");
                        } else {
                            ingested(&client, &mut admission, &node, &claimed, result, &mut counters);
                        }
                    }
                    Done::Evacuated(result) => {
                        evacuating = false;
                        evacuated(result, &mut refusals);
                    }
                },
                _ = evacuate_tick.tick(), if subscribed && !evacuating && settings.evacuate.is_some() => {
                    if let Some(with) = &settings.evacuate {
                        evacuating = worker.submit(Job::Evacuate {
                            with: with.clone(),
                            listening_since_ms: listening_since,
                            now_ms: now_ms(),
                        }).is_ok();
                    }
                }
                _ = renew_tick.tick(), if settings.renew.is_some() => {
                    if let Some(key) = &settings.renew {
                        // A full queue skips this round; the next one comes in RENEW_EVERY.
                        let _ = worker.submit(Job::Renew { key: key.clone(), now_ms: now_ms() });
                    }
                    imports_due = true;
                }
                ev = eventloop.poll() => match ev {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Err(e) = client.try_subscribe(MASTER_UP_FILTER, QoS::AtLeastOnce) {
                            tracing::warn!(error = %e, "cannot subscribe");
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        tracing::info!(host = %settings.host, port = settings.port, "master connected");
                        subscribed = true;
                        listening_since = now_ms();
                        backoff = Duration::from_millis(200);
                        // The broker may have lost retained messages (kill -9): republish.
                        if !looking_up {
                            looking_up = worker.submit(Job::Desired { published: published.clone() }).is_ok();
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if revoked_sender(&settings.revoked, &p.topic) {
                            counters.revoked += 1;
                        } else {
                            let handed = handle_up(&worker, &mut admission, &settings, &mut fetched, &p.topic, &p.payload, &mut counters);
                            imports_due |= handed.params;
                            act_due |= handed.answerable && settings.act.is_some();
                        }
                    }
                    Ok(_) => {}
                    Err(e) => break e,
                },
            }
        };
        counters.reconnects += 1;
        tracing::warn!(error = %lost, "broker connection lost; reconnecting");
        let jitter = 0.8 + 0.4 * fastrand::f64();
        tokio::select! {
            () = &mut shutdown => return Ok(counters),
            () = tokio::time::sleep(backoff.mul_f64(jitter)) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// Logs what an evacuation pass did: each move and revocation once, a refusal when its
/// line changed.
fn evacuated(
    result: Result<Vec<crate::act::evacuate::driver::Done>, StoreError>,
    refusals: &mut BTreeMap<Name, String>,
) {
    use crate::act::evacuate::driver::Done as E;
    match result {
        Ok(done) => {
            for d in done {
                match &d {
                    E::Moved(decision) => {
                        refusals.remove(&decision.instance);
                        tracing::info!(instance = %decision.instance, "{d}");
                    }
                    E::Revoked { node, .. } => tracing::warn!(node = %node, "{d}"),
                    E::Refused { instance, line, .. } => {
                        if refusals.get(instance) != Some(line) {
                            tracing::warn!(instance = %instance, "{line}");
                            refusals.insert(instance.clone(), line.clone());
                        }
                    }
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "evacuation pass failed"),
    }
}

/// Whether `topic` is a revoked node's (counted and logged by `revoked`).
fn revoked_sender(revoked: &crate::revocation::Revoked, topic: &str) -> bool {
    let node = node_of_up_topic(topic);
    let hit = node.as_ref().is_some_and(|n| revoked.contains(n.as_str()));
    if let (true, Some(n)) = (hit, node) {
        revoked.refused("records", n.as_str());
    }
    hit
}

fn refuse(admission: &mut Admission, node: &Name, now: u64, why: Refusal) {
    if let Some(suppressed) = admission.should_log(node, now) {
        tracing::warn!(node = %node, error = %why, suppressed, "up frame refused; not acknowledged");
    }
}

/// Submits an act pass; whether it was queued.
fn submit_act(worker: &Worker, act: Option<&Acting>) -> bool {
    act.is_some_and(|a| {
        worker
            .submit(Job::Act {
                key: a.key.clone(),
                policy: a.policy,
                now_ms: now_ms(),
            })
            .is_ok()
    })
}

/// Logs a failed act pass (decisions are logged by the driver).
fn acted(result: Result<crate::act::driver::Report, StoreError>) {
    if let Err(e) = result {
        tracing::warn!(error = %e, "cannot act for the fleet this time; trying again");
    }
}

/// What an Up batch handed to the worker holds that the loop acts on.
#[derive(Debug, Default, Clone, Copy)]
struct Handed {
    /// Connection parameters: refresh the imports.
    params: bool,
    /// Records an act pass may answer: a Critical incident; an instance running,
    /// which may complete a handover.
    answerable: bool,
}

/// Checks an Up frame and hands it to the worker; acknowledged later, by [`ingested`].
/// Returns what the batch handed over holds that the loop acts on.
fn handle_up(
    worker: &Worker,
    admission: &mut Admission,
    settings: &Settings,
    fetched: &mut BTreeMap<Name, u64>,
    topic: &str,
    payload: &[u8],
    c: &mut Counters,
) -> Handed {
    let Some(node) = node_of_up_topic(topic) else {
        c.refused += 1;
        tracing::warn!(topic, "up frame on a malformed topic");
        return Handed::default();
    };
    let now = now_ms();
    if let Err(why) = admission.admit(&node, now) {
        c.rate_limited += 1;
        refuse(admission, &node, now, why);
        return Handed::default();
    }
    let up = match decode(payload, DEFAULT_MAX_FRAME) {
        Ok(Message::Up(up)) => up,
        Ok(Message::Fetch(nodes)) => {
            fetch(worker, admission, fetched, &node, nodes, now, c);
            return Handed::default();
        }
        Ok(_) => {
            c.refused += 1;
            tracing::warn!(node = %node, "not an Up frame");
            return Handed::default();
        }
        Err(e) => {
            c.refused += 1;
            tracing::warn!(node = %node, error = %e, "malformed Up frame");
            return Handed::default();
        }
    };
    let answerable = up.records.iter().any(|r| {
        matches!(
            r.kind,
            RecordKind::Incident {
                severity: Severity::Critical,
                ..
            } | RecordKind::InstanceState {
                status: InstanceStatus::Running,
                ..
            }
        )
    });
    let max_bytes = admission.limits().max_stored_bytes;
    let params = up
        .records
        .iter()
        .any(|r| matches!(r.kind, RecordKind::ConnectionParameters { .. }));
    let job = Job::Ingest {
        node: node.clone(),
        up,
        now_ms: now,
        max_bytes,
        origins: settings.carry.as_ref().map(|k| k.origins.clone()),
    };
    if let Err(why) = worker.submit(job) {
        c.store_busy += 1;
        if let Some(suppressed) = admission.should_log(&node, now) {
            tracing::warn!(node = %node, error = %why, suppressed, "up frame refused; not acknowledged");
        }
        return Handed::default();
    }
    Handed { params, answerable }
}

/// Queues `relay`'s `Fetch` of `nodes`' desired states, at most one per
/// [`FETCH_EVERY_MS`] per relay and [`MAX_CARRIED`] nodes; refusals are counted and
/// logged at most once per 10 s per relay.
fn fetch(
    worker: &Worker,
    admission: &mut Admission,
    fetched: &mut BTreeMap<Name, u64>,
    relay: &Name,
    mut nodes: Vec<Name>,
    now: u64,
    c: &mut Counters,
) {
    nodes.sort();
    nodes.dedup();
    let too_soon = fetched
        .get(relay)
        .is_some_and(|t| now.saturating_sub(*t) < FETCH_EVERY_MS);
    let why = if too_soon {
        "too soon after the last one"
    } else if nodes.len() > MAX_CARRIED {
        "too many nodes"
    } else if worker
        .submit(Job::Fetch {
            relay: relay.clone(),
            nodes,
        })
        .is_err()
    {
        "store worker busy"
    } else {
        fetched.insert(relay.clone(), now);
        // Forget relays not heard from for a while: the map stays bounded by activity.
        fetched.retain(|_, t| now.saturating_sub(*t) < 60 * FETCH_EVERY_MS);
        return;
    };
    c.fetches_refused += 1;
    if let Some(suppressed) = admission.should_log(relay, now) {
        tracing::warn!(node = %relay, why, suppressed, "fetch refused");
    }
}

/// Publishes the desired states a relay fetched on its carry topic (not retained).
fn publish_fetched(
    client: &AsyncClient,
    relay: &Name,
    frames: Vec<(Name, u64, Vec<u8>)>,
    c: &mut Counters,
) {
    c.fetches += 1;
    for (node, generation, frame) in frames {
        match client.try_publish(carry_topic(relay.as_str()), QoS::AtLeastOnce, false, frame) {
            Ok(()) => {
                tracing::debug!(relay = %relay, node = %node, generation, "desired state sent to a relay")
            }
            Err(e) => tracing::debug!(error = %e, "publish queue full; the relay fetches again"),
        }
    }
}

/// Publishes a signed ack on `relay`'s carry topic for every batch it carried that was
/// stored (held, like a direct ack, while the node's newest desired state is not
/// published: [`ack_waits`]), and counts and logs (at most once per 10 s) the relayed
/// batches refused.
#[allow(clippy::too_many_arguments)]
fn relayed(
    client: &AsyncClient,
    carry: Option<&Carrying>,
    relay: &Name,
    carried: Vec<crate::worker::Carried>,
    refused: &[crate::relay::Refused],
    published: &BTreeMap<Name, u64>,
    log: &crate::log_limit::LogLimit,
    c: &mut Counters,
) {
    let forged = refused.iter().filter(|r| r.reason.forged()).count() as u64;
    c.forged_relayed += forged;
    c.relayed_too_many += refused.len() as u64 - forged;
    if let (Some(r), true) = (refused.first(), log.allow("relayed refused")) {
        let origin = r.origin.as_ref().map_or("?", Name::as_str);
        tracing::warn!(relay = %relay, by = %r.by, origin, reason = %r.reason,
            refused = refused.len(), forged_relayed_total = c.forged_relayed,
            "relayed batch refused: not stored, not acknowledged");
    }
    let Some(carry) = carry else { return };
    for one in carried {
        let ing = match one.result {
            Ok(ing) => ing,
            Err(e) => {
                if log.allow("carried not stored") {
                    tracing::warn!(relay = %relay, node = %one.node, error = %e,
                        "carried batch not stored; its origin keeps it and resends");
                }
                continue;
            }
        };
        c.carried += 1;
        c.carried_stored += ing.stored as u64;
        if ack_waits(published.get(&one.node).copied(), one.desired) {
            c.acks_held += 1;
            continue;
        }
        let ack = crate::sign::sign_ack(&carry.key, &one.node, ing.epoch, ing.ack_upto);
        let Ok(frame) = encode(&Message::Carried(ack), DEFAULT_MAX_FRAME) else {
            continue;
        };
        match client.try_publish(carry_topic(relay.as_str()), QoS::AtLeastOnce, false, frame) {
            Ok(()) => c.carried_acks += 1,
            Err(e) => tracing::debug!(error = %e, "carried ack not queued; the origin resends"),
        }
    }
}

/// Acknowledges a committed batch; counts and logs a refused one.
fn ingested(
    client: &AsyncClient,
    admission: &mut Admission,
    node: &Name,
    claimed: &Name,
    result: Result<crate::store::Ingested, StoreError>,
    c: &mut Counters,
) {
    let now = now_ms();
    match result {
        Ok(ing) => {
            c.batches += 1;
            c.stored += ing.stored as u64;
            c.duplicates += ing.duplicates as u64;
            let ack = Message::Ack(Ack {
                upto: ing.ack_upto,
                epoch: ing.epoch,
            });
            if let Ok(frame) = encode(&ack, DEFAULT_MAX_FRAME) {
                if let Err(e) =
                    client.try_publish(ack_topic(node.as_str()), QoS::AtLeastOnce, false, frame)
                {
                    tracing::debug!(error = %e, "ack not queued; the node will resend");
                }
            }
        }
        Err(StoreError::QuotaExceeded { stored, limit, .. }) => {
            c.over_quota += 1;
            refuse(admission, node, now, Refusal::Quota { stored, limit });
        }
        Err(StoreError::NodeMismatch { .. }) => {
            c.refused += 1;
            tracing::warn!(node = %node, claimed = %claimed, "records claim another node than their topic: refused");
        }
        Err(e) => {
            c.refused += 1;
            tracing::warn!(node = %node, error = %e, "cannot store records; not acknowledged");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ack_waits;

    #[test]
    fn an_ack_waits_only_for_a_newer_stored_state_than_the_one_published() {
        // Nothing stored for the node: nothing to wait for.
        assert!(!ack_waits(None, None));
        assert!(!ack_waits(Some(3), None));
        // Stored but never published by this process (it just connected, or another
        // master wrote it): wait for the lookup.
        assert!(ack_waits(None, Some(1)));
        // Published behind what is stored (a move was just written): wait.
        assert!(ack_waits(Some(3), Some(4)));
        // Published what is stored, or newer (another process's later write seen
        // first): acknowledge.
        assert!(!ack_waits(Some(4), Some(4)));
        assert!(!ack_waits(Some(5), Some(4)));
    }
}
