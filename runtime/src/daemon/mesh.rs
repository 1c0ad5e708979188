//! The daemon's side of the mesh: custody of peers' batches, routing between the MQTT
//! link and the mesh link, and peers' connection parameters.
//!
//! Contract:
//! - **Custody** ([`ToNode::Custody`] from the mesh link, which verified the batch's
//!   signature against the peer's certificate): the batch is classified
//!   ([`crate::relay::classify`]: it decodes, it is nested at most `MAX_RELAY_DEPTH`
//!   deep, it is not this node's own), room is made under the origin's bound
//!   (`[mesh] custody_bytes_per_origin`; [`crate::relay::Held::room`] sheds the
//!   origin's oldest batches that carry neither an incident nor an instance state, one
//!   shedding entry of the outbox log), it is appended as ONE `RecordKind::Relayed`
//!   record, the outbox log is synced, and only then is [`ToLink::CustodyStored`]
//!   answered `Ok`. Every refusal is typed (`Full`, `Malformed`, `TooDeep`,
//!   `NotYours`), counted, and logged at most every ten seconds. A store failure is
//!   `Full`: nothing was promised. Shed batches are counted per origin (`status` PEERS,
//!   metrics `hedge_relay_shed_*`) and logged: no record reports them (the origin keeps
//!   its records until the master's ack, so what a relay sheds is not lost).
//! - **Routing:** the MQTT link's [`ToNode::Carried`] frames go to the mesh link
//!   ([`ToLink::Carried`]); the mesh link's [`ToNode::Fetch`] goes to the MQTT link
//!   ([`ToLink::Fetch`]); the mesh link hears [`ToLink::Direct`] whenever the MQTT
//!   link's state changes and when it starts; a link that is not running hears nothing.
//! - **Parameters:** every publication of an own instance goes to the mesh link
//!   ([`ToLink::Params`], and all of them when it starts). [`ToNode::PeerParams`] (the
//!   mesh link verified the chain to the fleet CA, CN == node and the signature) is
//!   stored in sled when its generation is newer than the stored one, and every
//!   consumer of `{{node/instance.key}}` is re-rendered and restarted if its result
//!   changed. Stored ones are read back at boot, so a node that reboots alone renders
//!   with the values it last received.

use hedge_uplink::link::{ToLink, ToNode};
use hedge_wire::mesh::{CustodyRefusal, SignedBatch, SignedParams};
use hedge_wire::RecordKind;

use super::links::LinkId;

/// Most bytes a `Relayed` record's encoding adds to its batch and signature (seq,
/// time, variant tag, two length prefixes, all varints).
pub(super) const RECORD_OVERHEAD: u64 = 32;

/// Frames the master accepts: peers' batches are decoded within it.
const MAX_FRAME: usize = hedge_wire::limits::DEFAULT_MAX_FRAME;
use super::{now_ms, Daemon};
use crate::monitor::shed::{RecordClass, ShedPlan};

/// Relay counters (this run), for `status` and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RelayCounters {
    /// Batches taken in custody.
    pub stored: u64,
    /// Records in them (every depth).
    pub records: u64,
    /// Bytes appended for them.
    pub bytes: u64,
    /// Batches refused, whatever the reason.
    pub refused: u64,
    /// Batches shed to keep an origin under its bound.
    pub shed: u64,
    /// Peer parameters stored (newer than what was held).
    pub peer_params: u64,
}

impl Daemon {
    /// Rebuilds the custody index from the outbox (at boot) and reads the stored peer
    /// parameters back.
    pub(super) fn restore_mesh(&mut self) {
        // An outbox with no relayed batch (known from its open) is not read through.
        if !self.outbox.store.may_hold_relayed() {
            return self.restore_peer_params();
        }
        let held = self.outbox.store.outbox_entries().and_then(|entries| {
            let mut held = Vec::new();
            for e in entries
                .into_iter()
                .filter(|e| e.class == RecordClass::Relayed)
            {
                for r in self.outbox.store.outbox_from(e.seq, 1)? {
                    if let (true, RecordKind::Relayed(b)) = (r.seq == e.seq, &r.kind) {
                        held.push((e.seq, e.bytes, crate::relay::classify(b, MAX_FRAME)));
                    }
                }
            }
            Ok(held)
        });
        match held {
            Ok(held) => {
                for (seq, bytes, class) in held {
                    match class {
                        Ok(c) => self.relay.stored(&c.origin, seq, bytes, c.keep, false),
                        // Checked before it was stored: only a store from a newer hedge.
                        Err(e) => tracing::warn!(
                            seq,
                            ?e,
                            "a relayed batch in the outbox does not decode; it is sent on as it is"
                        ),
                    }
                }
            }
            Err(e) => self.store_failed(&e),
        }
        self.restore_peer_params();
    }

    /// Reads the stored peer parameters back.
    fn restore_peer_params(&mut self) {
        match self.outbox.store.peer_params() {
            Ok(all) => {
                self.instances.peers = all.into_iter().map(|(k, (_, p))| (k, p)).collect();
            }
            Err(e) => self.store_failed(&e),
        }
    }

    /// The mesh link's custody request `id`: store `batch`, then answer.
    pub(super) fn on_custody(&mut self, link: LinkId, id: u64, batch: SignedBatch) {
        let result = self.take_custody(batch);
        if let Err(reason) = &result {
            self.relay_counters.refused += 1;
            if let Some(suppressed) = self.relay_log.allow(super::monotonic_now()) {
                tracing::warn!(?reason, suppressed, "custody refused");
            }
        }
        self.links.send(link, ToLink::CustodyStored { id, result });
    }

    fn take_custody(&mut self, batch: SignedBatch) -> Result<(), CustodyRefusal> {
        let class = crate::relay::classify(&batch, MAX_FRAME)?;
        if &class.origin == self.cfg.node_id() {
            // Our own records come back only by a forgery or a loop.
            return Err(CustodyRefusal::NotYours);
        }
        // What the record will take: the batch, its signature, and at most a record's
        // header and two length prefixes (no second encoding of the batch).
        let size = (batch.bytes.len() + batch.signature.len()) as u64 + RECORD_OVERHEAD;
        let kind = RecordKind::Relayed(batch);
        let bound = self.cfg.mesh.custody_bytes_per_origin;
        let handed = self.outbox.store.handed_upto();
        let drop = match self.relay.room(&class.origin, size, handed, bound) {
            Ok(d) => d,
            Err(crate::relay::Full) => {
                self.relay.refused(&class.origin);
                return Err(CustodyRefusal::Full);
            }
        };
        if !drop.is_empty() {
            let plan = ShedPlan {
                drop: drop.clone(),
                ..ShedPlan::default()
            };
            if let Err(e) = self.outbox.store.apply_shed(&plan) {
                self.store_failed(&e);
                return Err(CustodyRefusal::Full);
            }
            self.relay.shed(&drop);
            self.relay_counters.shed += drop.len() as u64;
            if let Some(suppressed) = self.relay_shed_log.allow(super::monotonic_now()) {
                tracing::warn!(
                    origin = %class.origin,
                    batches = drop.len(),
                    bound,
                    suppressed,
                    "custody bound reached: shed the origin's oldest batches without incidents or instance states"
                );
            }
        }
        let seq = match self.outbox.store.next_seq() {
            Ok(s) => s,
            Err(e) => {
                self.store_failed(&e);
                return Err(CustodyRefusal::Full);
            }
        };
        let before = self.outbox.store.outbox_bytes();
        let appended = self
            .outbox
            .append(now_ms(), kind)
            // Durable before custody is answered: the peer may stop resending it.
            .and_then(|()| self.outbox.store.flush_records());
        if let Err(e) = appended {
            self.store_failed(&e);
            return Err(CustodyRefusal::Full);
        }
        let bytes = self.outbox.store.outbox_bytes().saturating_sub(before);
        self.relay
            .stored(&class.origin, seq, bytes.max(size), class.keep, true);
        self.relay_counters.stored += 1;
        self.relay_counters.records += class.records;
        self.relay_counters.bytes += bytes;
        tracing::debug!(origin = %class.origin, epoch = class.epoch, covers = ?class.covers, seq, "custody taken");
        self.after_append(Ok(()));
        Ok(())
    }

    /// A peer's verified connection parameters: keep the newest, re-render consumers.
    pub(super) fn on_peer_params(&mut self, p: SignedParams) {
        if &p.node == self.cfg.node_id() {
            return;
        }
        match self
            .outbox
            .store
            .put_peer_params(&p.node, &p.instance, p.generation, &p.parameters)
        {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => return self.store_failed(&e),
        }
        self.relay_counters.peer_params += 1;
        tracing::info!(node = %p.node, instance = %p.instance, generation = p.generation, "peer connection parameters");
        let key = format!("{}/{}", p.node, p.instance);
        if self.instances.peers.get(&key) == Some(&p.parameters) {
            return;
        }
        self.instances.peers.insert(key, p.parameters);
        for c in self.instances.consumers_of_peer(&p.node, &p.instance) {
            self.restart_if_changed(&c);
        }
    }

    /// Routes a message of the mesh link or the MQTT link that is meant for the other.
    pub(super) fn route(&mut self, msg: ToNode) {
        match msg {
            ToNode::Carried(frame) => self.links.send(LinkId::Mesh, ToLink::Carried(frame)),
            ToNode::Fetch(nodes) => self.links.send(LinkId::Uplink, ToLink::Fetch(nodes)),
            _ => {}
        }
    }

    /// Tells the mesh link whether the direct uplink is up.
    pub(super) fn tell_direct(&self) {
        let up = self.links.get(LinkId::Uplink).is_some_and(|l| l.up);
        self.links.send(LinkId::Mesh, ToLink::Direct(up));
    }

    /// Tells the mesh link what `instance` published (a new publication).
    pub(super) fn tell_params(&self, instance: &hedge_wire::Name) {
        if let Some(parameters) = self.instances.published.get(instance.as_str()) {
            self.links.send(
                LinkId::Mesh,
                ToLink::Params {
                    instance: instance.clone(),
                    parameters: parameters.clone(),
                },
            );
        }
    }
}

/// The exposition's `metric(name, help, kind, rows)`.
pub(super) type Metric<'a> = dyn FnMut(&str, &str, &str, Vec<(String, String)>) + 'a;

/// A peer with a session up, as the transport reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PeerSeen {
    pub node: hedge_wire::Name,
    pub addr: std::net::SocketAddr,
    /// From its latest `Hello` (`NO_PATH` before one).
    pub hops: u8,
}

/// The PEERS rows: every peer with a session up, then every origin custody is held for
/// (or was shed or refused this run) without one, by name.
pub(crate) fn peer_rows(
    seen: &[PeerSeen],
    held: &[crate::relay::OriginView],
) -> Vec<crate::local_api::PeerView> {
    use std::collections::BTreeMap;
    let mut rows: BTreeMap<String, crate::local_api::PeerView> = BTreeMap::new();
    for p in seen {
        rows.insert(
            p.node.to_string(),
            crate::local_api::PeerView {
                node: p.node.to_string(),
                address: Some(p.addr.to_string()),
                link: "up".into(),
                hops: (p.hops != hedge_wire::mesh::NO_PATH).then_some(p.hops),
                ..Default::default()
            },
        );
    }
    for o in held {
        let row = rows
            .entry(o.origin.to_string())
            .or_insert_with(|| crate::local_api::PeerView {
                node: o.origin.to_string(),
                link: "down".into(),
                ..Default::default()
            });
        row.custody_batches = o.batches;
        row.custody_bytes = o.bytes;
        row.taken_bytes = o.stored_bytes;
        row.shed = o.shed;
        row.shed_bytes = o.shed_bytes;
        row.refused = o.refused;
    }
    rows.into_values().collect()
}

impl Daemon {
    /// The mesh part of `status`.
    pub(super) fn mesh_status(&self) -> crate::local_api::MeshView {
        let link = self.links.get(LinkId::Mesh);
        let direct = self.links.get(LinkId::Uplink).is_some_and(|l| l.up);
        let seen = self.mesh_peers();
        let hops = if direct {
            Some(0)
        } else {
            seen.iter()
                .map(|p| p.hops)
                .filter(|h| *h < hedge_wire::mesh::NO_PATH - 1)
                .min()
                .map(|h| h + 1)
        };
        let c = &self.relay_counters;
        crate::local_api::MeshView {
            enabled: self.cfg.mesh.enabled,
            connected: link.is_some_and(|l| l.up),
            hops,
            peers: peer_rows(&seen, &self.relay.view()),
            relay: crate::local_api::RelayView {
                batches: c.stored,
                records: c.records,
                bytes: c.bytes,
                refused: c.refused,
                shed: c.shed,
                peer_params: c.peer_params,
            },
        }
    }

    /// The mesh metrics, through the exposition's `metric(name, help, kind, rows)`.
    pub(super) fn mesh_metrics(&self, metric: &mut Metric<'_>) {
        let c = &self.relay_counters;
        let one = |v: u64| vec![(String::new(), v.to_string())];
        metric(
            "hedge_relay_batches_total",
            "Peers' batches taken in custody (stored durably for them).",
            "counter",
            one(c.stored),
        );
        metric(
            "hedge_relay_records_total",
            "Records in the batches taken in custody, at every depth.",
            "counter",
            one(c.records),
        );
        metric(
            "hedge_relay_bytes_total",
            "Bytes appended to the outbox for peers' batches.",
            "counter",
            one(c.bytes),
        );
        metric(
            "hedge_relay_refused_total",
            "Peers' batches refused (full, malformed, too deep, not the peer's).",
            "counter",
            one(c.refused),
        );
        metric(
            "hedge_relay_shed_total",
            "Peers' batches shed to keep an origin under custody_bytes_per_origin.",
            "counter",
            one(c.shed),
        );
        if let Some(m) = &self.mesh {
            use std::sync::atomic::Ordering::Relaxed;
            let s = &m.stats;
            for (name, help, v) in [
                (
                    "hedge_mesh_batches_sent_total",
                    "This node's batches sent to a next hop (resends included).",
                    &s.batches_sent,
                ),
                (
                    "hedge_mesh_custody_received_total",
                    "Custody answers for this node's batches.",
                    &s.custody_received,
                ),
                (
                    "hedge_mesh_refused_received_total",
                    "Custody refusals for this node's batches.",
                    &s.refused_received,
                ),
                (
                    "hedge_mesh_forged_total",
                    "Acks, desired states or parameters from peers whose signature did not verify.",
                    &s.forged,
                ),
                (
                    "hedge_mesh_acks_passed_total",
                    "The master's acks passed on to peers.",
                    &s.acks_passed,
                ),
                (
                    "hedge_mesh_desired_passed_total",
                    "Desired states passed on to peers.",
                    &s.desired_passed,
                ),
            ] {
                metric(name, help, "counter", one(v.load(Relaxed)));
            }
            metric(
                "hedge_mesh_peers",
                "Peers with a session up.",
                "gauge",
                one(m.net.peers().len() as u64),
            );
        }
        let held = self.relay.view();
        let per = |f: &dyn Fn(&crate::relay::OriginView) -> u64| -> Vec<(String, String)> {
            held.iter()
                .map(|o| {
                    (
                        format!(
                            "{{origin=\"{}\"}}",
                            super::metrics::label(o.origin.as_str())
                        ),
                        f(o).to_string(),
                    )
                })
                .collect()
        };
        type Field = fn(&crate::relay::OriginView) -> u64;
        let rows: [(&str, &str, &str, Field); 4] = [
            (
                "hedge_custody_held_bytes",
                "Bytes of an origin's batches held in custody now.",
                "gauge",
                |o| o.bytes,
            ),
            (
                "hedge_custody_held_batches",
                "Batches of an origin held in custody now.",
                "gauge",
                |o| o.batches,
            ),
            (
                "hedge_custody_taken_bytes_total",
                "Bytes of an origin's batches taken in custody (this run).",
                "counter",
                |o| o.stored_bytes,
            ),
            (
                "hedge_custody_shed_bytes_total",
                "Bytes of an origin's batches shed under custody_bytes_per_origin (this run).",
                "counter",
                |o| o.shed_bytes,
            ),
        ];
        for (name, help, kind, field) in rows {
            metric(name, help, kind, per(&field));
        }
    }

    /// The peers with a session up (none while the mesh link does not run).
    fn mesh_peers(&self) -> Vec<PeerSeen> {
        self.mesh.as_ref().map_or_else(Vec::new, |m| {
            m.net
                .peers()
                .into_iter()
                .map(|p| PeerSeen {
                    node: p.node,
                    addr: p.addr,
                    hops: p.hops,
                })
                .collect()
        })
    }
}
