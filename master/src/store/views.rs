//! What the master shows of its fleet, and the pure folds that make the record views.
//!
//! Contract: [`incidents`] and [`instances`] are pure: they fold records a backend has
//! read and decoded (every life of every node, in the order each takes) into the
//! views, so every backend shows the same thing. No SQL, no I/O, no clock.
//! - [`incidents`] takes incident records by node, life then seq; an incident is keyed
//!   by (node, life, id) (ids are per life), its latest record (highest seq) gives its
//!   state, severity, instance, promise and message, its first and last seen are the
//!   min and max over its records, and its timeline holds every record in seq order.
//! - [`instances`] joins, by (node, instance): the desired states (owner
//!   [`Owner::Master`]), the instances pruned from them (the master's, destroyed), the
//!   latest `LocalRequest` per instance (owner [`Owner::Node`], unless the master's) and
//!   the latest `InstanceState` per instance (its report; an instance only reported is
//!   [`Owner::Unknown`]). The result is by node then name.
//! - [`health_of`] reads a `NodeHealth` record as the fleet view's [`Health`].

use std::collections::BTreeMap;

use hedge_wire::{
    DesiredState, ExitStatus, IncidentState, InstanceStatus, Name, Record, RecordKind,
    RequestedState, Severity,
};
use serde::{Deserialize, Serialize};

use crate::node_state::NodeState;

/// The latest node health a node reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Its record's seq.
    pub seq: u64,
    /// When it was measured, ms since the epoch.
    pub time_ms: u64,
    /// 1-minute load average × 1000.
    pub load1_milli: u32,
    /// Total memory, bytes.
    pub mem_total: u64,
    /// Available memory, bytes.
    pub mem_available: u64,
    /// Free bytes of the state filesystem.
    pub disk_free: u64,
    /// Temperature, milli-°C.
    pub temp_milli_c: Option<i32>,
    /// Whether its uplink was connected.
    pub uplink_up: bool,
    /// Records waiting in the outbox.
    pub outbox_depth: u64,
}

/// One node of the fleet as the master knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSummary {
    /// The node's id.
    pub node: Name,
    /// First batch received, ms since the epoch.
    pub first_seen_ms: Option<u64>,
    /// Last batch received.
    pub last_seen_ms: Option<u64>,
    /// Records of it stored, every life.
    pub records: u64,
    /// Highest stored seq of its latest life.
    pub last_seq: u64,
    /// Acknowledged prefix of its latest life.
    pub acked_upto: u64,
    /// Lives (epochs) of the node the master holds records of.
    pub lives: u32,
    /// Records whose event was already stored under another seq or epoch.
    pub repeats: u64,
    /// Deliveries of a stored `(epoch, seq)` with other content.
    pub conflicts: u64,
    /// Records stored from a stale copy ([`crate::store::stale`]): kept, not folded
    /// into the live instance view.
    #[serde(default)]
    pub stale: u64,
    /// Board profile (e.g. `rpi4`).
    pub board: Option<String>,
    /// Architecture (e.g. `aarch64-unknown-linux-gnu`).
    pub arch: Option<String>,
    /// Labels the operator assigned (what allocation matches).
    pub labels: BTreeMap<String, String>,
    /// Region the operator assigned (what allocation matches).
    pub region: Option<String>,
    /// Labels the node reports about itself (shown only).
    #[serde(default)]
    pub reported_labels: BTreeMap<String, String>,
    /// Region the node reports about itself (shown only).
    #[serde(default)]
    pub reported_region: Option<String>,
    /// CPU count.
    pub cpus: Option<u32>,
    /// Memory, bytes (registered, or the latest health's total).
    pub mem_bytes: Option<u64>,
    /// Instances the master may allocate to it: the reported capacity, capped by the
    /// operator's `max_instances` if assigned.
    pub capacity_instances: u32,
    /// Instances in its desired state that are not destroyed.
    pub allocated_instances: u32,
    /// Latest reported health.
    pub health: Option<Health>,
    /// What the operator set ([`crate::node_state`]; lost is derived, not stored).
    #[serde(default)]
    pub state: NodeState,
    /// Since when it is in `state`, ms since the epoch (`None`: never changed).
    #[serde(default)]
    pub state_since_ms: Option<u64>,
    /// The path its last stored batch came by: `direct`, or `via c,b,a` (relays, the one
    /// that reached the broker first); `None` before its first batch.
    #[serde(default)]
    pub path: Option<String>,
    /// Relayed batches its own batches carried that the master refused (forged, altered,
    /// unknown or revoked origin, too deep): counted once each.
    #[serde(default)]
    pub forged_relayed: u64,
}

/// One transition of an incident.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncidentTransition {
    /// The record's seq.
    pub seq: u64,
    /// The record's time, ms since the epoch.
    pub time_ms: u64,
    /// State after the transition.
    pub state: IncidentState,
    /// Severity after the transition.
    pub severity: Severity,
    /// Message of the transition.
    pub message: String,
    /// Set on an entry the master added: its decision about the incident
    /// ([`crate::moves::with_decisions`]); `seq` is then the record it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<crate::moves::Decision>,
}

/// An incident: its latest state and its timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncidentView {
    /// The node that reported it.
    pub node: Name,
    /// The node's life the incident belongs to (incident ids are per life).
    pub life: u32,
    /// The node-local incident id.
    pub id: u64,
    /// The instance it is about.
    pub instance: Name,
    /// Which promise, if one.
    pub promise: Option<Name>,
    /// Severity, as of its latest record.
    pub severity: Severity,
    /// State, as of its latest record.
    pub state: IncidentState,
    /// First seen, ms since the epoch.
    pub first_seen_ms: u64,
    /// Last seen, ms since the epoch.
    pub last_seen_ms: u64,
    /// Message of its latest record.
    pub message: String,
    /// Every transition stored, in seq order.
    pub timeline: Vec<IncidentTransition>,
}

/// Who requested an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Owner {
    /// In the node's desired state.
    Master,
    /// Requested on the node itself (a `LocalRequest` record).
    Node,
    /// Reported by the node but requested by nobody the master knows of.
    Unknown,
}

/// One instance: what was requested and what the node last reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceView {
    /// The node it is requested on or reported by.
    pub node: Name,
    /// The instance's name.
    pub name: Name,
    /// Who requested it.
    pub owner: Owner,
    /// Requested state, if requested.
    pub requested: Option<RequestedState>,
    /// Last reported lifecycle state.
    pub status: Option<InstanceStatus>,
    /// Last reported pid.
    pub pid: Option<u32>,
    /// Last reported restart count.
    pub restarts: u32,
    /// How its last run ended.
    pub last_exit: Option<ExitStatus>,
    /// Time of the last state record, ms since the epoch.
    pub last_seen_ms: Option<u64>,
}

/// What [`instances`] folds: read by a backend, decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceSources {
    /// Every stored desired state.
    pub desired: Vec<DesiredState>,
    /// `(node, instance)` pruned from a desired state after it was reported destroyed.
    pub pruned: Vec<(Name, Name)>,
    /// The latest `LocalRequest` record per (node, instance): highest (life, seq).
    pub local_requests: Vec<(Name, Record)>,
    /// The latest `InstanceState` record per (node, instance): highest (life, seq).
    pub states: Vec<(Name, Record)>,
}

/// Every incident of `records` (`(node, life, record)` by node, life then seq; records
/// of other kinds are skipped), by node, life then id. See the module doc.
pub fn incidents(records: Vec<(Name, u32, Record)>) -> Vec<IncidentView> {
    let mut out: BTreeMap<(Name, u32, u64), IncidentView> = BTreeMap::new();
    for (node, life, record) in records {
        let RecordKind::Incident {
            id,
            instance,
            promise,
            severity,
            state,
            first_seen_ms,
            last_seen_ms,
            message,
        } = record.kind
        else {
            continue;
        };
        let step = IncidentTransition {
            seq: record.seq,
            time_ms: record.time_ms,
            state,
            severity,
            message: message.clone(),
            decision: None,
        };
        // Records come in seq order, so each one is the latest so far.
        let view = out
            .entry((node.clone(), life, id))
            .or_insert_with(|| IncidentView {
                node,
                life,
                id,
                instance: instance.clone(),
                promise: promise.clone(),
                severity,
                state,
                first_seen_ms,
                last_seen_ms,
                message: String::new(),
                timeline: Vec::new(),
            });
        view.instance = instance;
        view.promise = promise;
        view.severity = severity;
        view.state = state;
        view.first_seen_ms = view.first_seen_ms.min(first_seen_ms);
        view.last_seen_ms = view.last_seen_ms.max(last_seen_ms);
        view.message = message;
        view.timeline.push(step);
    }
    out.into_values().collect()
}

/// Every instance of `sources`, by node then name. See the module doc.
pub fn instances(sources: InstanceSources) -> Vec<InstanceView> {
    let InstanceSources {
        desired,
        pruned,
        local_requests,
        states,
    } = sources;
    let mut out: BTreeMap<(Name, Name), InstanceView> = BTreeMap::new();
    let blank = |node: &Name, name: &Name, owner| InstanceView {
        node: node.clone(),
        name: name.clone(),
        owner,
        requested: None,
        status: None,
        pid: None,
        restarts: 0,
        last_exit: None,
        last_seen_ms: None,
    };
    for d in desired {
        for i in d.instances {
            let mut v = blank(&d.node, &i.name, Owner::Master);
            v.requested = Some(i.state);
            out.insert((d.node.clone(), i.name), v);
        }
    }
    // Destroyed, reported destroyed, and pruned from the state: still the master's.
    for (node, name) in pruned {
        out.entry((node.clone(), name.clone())).or_insert_with(|| {
            let mut v = blank(&node, &name, Owner::Master);
            v.requested = Some(RequestedState::Destroyed);
            v
        });
    }
    for (node, record) in local_requests {
        if let RecordKind::LocalRequest { request } = record.kind {
            out.entry((node.clone(), request.name.clone()))
                .or_insert_with(|| {
                    let mut v = blank(&node, &request.name, Owner::Node);
                    v.requested = Some(request.state);
                    v
                });
        }
    }
    for (node, record) in states {
        if let RecordKind::InstanceState {
            instance,
            status,
            pid,
            restarts,
            last_exit,
        } = record.kind
        {
            let v = out
                .entry((node.clone(), instance.clone()))
                .or_insert_with(|| blank(&node, &instance, Owner::Unknown));
            v.status = Some(status);
            v.pid = pid;
            v.restarts = restarts;
            v.last_exit = last_exit;
            v.last_seen_ms = Some(record.time_ms);
        }
    }
    out.into_values().collect()
}

/// The fleet view's health of a `NodeHealth` record; `None` for another kind.
pub fn health_of(record: Record) -> Option<Health> {
    match record.kind {
        RecordKind::NodeHealth {
            load1_milli,
            mem_total,
            mem_available,
            disk_free,
            temp_milli_c,
            uplink_up,
            outbox_depth,
        } => Some(Health {
            seq: record.seq,
            time_ms: record.time_ms,
            load1_milli,
            mem_total,
            mem_available,
            disk_free,
            temp_milli_c,
            uplink_up,
            outbox_depth,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
