//! Incidents and self-repair decisions: a pure state machine over anomalies.
//!
//! Contract: the daemon owns one [`Incidents`] for the node and feeds it the promise
//! core's events: `Anomaly` → [`Incidents::on_anomaly`], `Recovered` →
//! [`Incidents::on_recovered`]; plus [`Incidents::on_instance_destroyed`] and
//! [`Incidents::on_promise_removed`] when the desired state drops them. Each call returns
//! [`IncidentAction`]s: append every `Record` to the outbox, restart the instance for
//! every `Repair` (several promises of one instance may each ask; a restart already under
//! way satisfies them all).
//!
//! At most one incident is open per (instance, promise). The first anomaly opens it
//! (severity Minor) and repairs. Each further anomaly while it is open repairs again;
//! when `escalate_after` repairs at the current severity did not help, the next anomaly
//! raises the severity (Minor → Major → Critical) with an `Escalated` record before
//! repairing. A Critical incident is the node's request to the master to re-allocate the
//! instance. Repair never stops. Every transition (open, escalate, resolve) is one
//! `Incident` record carrying `first_seen_ms`/`last_seen_ms`; repeated anomalies at
//! Critical make no further records.
//!
//! Persistence: incident ids come from a counter the caller seeds, so they stay unique
//! across daemon restarts. After any call that returned actions the daemon stores
//! [`Incidents::next_id`] and the affected incident ([`Incidents::get`], postcard via
//! serde), and deletes the stored incidents that [`Incidents::open_incidents`] no
//! longer lists; at boot it rebuilds with [`Incidents::restore`].

use std::collections::BTreeMap;

use hedge_wire::{IncidentState, Name, RecordKind, Severity};
use serde::{Deserialize, Serialize};

use super::bounded_message;

/// Repairs at one severity before the next anomaly escalates.
pub const DEFAULT_ESCALATE_AFTER: u32 = 3;

/// One open incident, as stored by the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incident {
    /// Node-local id, unique for the node's lifetime.
    pub id: u64,
    /// The instance whose promise fails.
    pub instance: Name,
    /// The failing promise.
    pub promise: Name,
    /// How bad.
    pub severity: Severity,
    /// `Open` or `Escalated` (a resolved incident is not kept).
    pub state: IncidentState,
    /// The first anomaly, ms since the epoch.
    pub first_seen_ms: u64,
    /// The latest anomaly (or the resolution), ms since the epoch.
    pub last_seen_ms: u64,
    /// Repairs asked since it opened.
    pub repairs: u32,
    /// Repairs asked at the current severity.
    pub repairs_at_severity: u32,
    /// The latest anomaly's message.
    pub message: String,
}

impl Incident {
    /// The record reporting this incident's current state.
    pub fn record(&self) -> RecordKind {
        self.record_with(self.message.clone())
    }

    fn record_with(&self, message: String) -> RecordKind {
        RecordKind::Incident {
            id: self.id,
            instance: self.instance.clone(),
            promise: Some(self.promise.clone()),
            severity: self.severity,
            state: self.state,
            first_seen_ms: self.first_seen_ms,
            last_seen_ms: self.last_seen_ms,
            message: bounded_message(message),
        }
    }
}

/// What the daemon must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IncidentAction {
    /// Append this record (always an `Incident`) to the outbox.
    Record(RecordKind),
    /// Restart this instance.
    Repair(Name),
}

/// Why a stored incident was not restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IncidentError {
    /// Another incident for the same (instance, promise) is already open.
    #[error("incident {id}: incident {existing} is already open for its instance and promise")]
    Duplicate {
        /// The refused incident.
        id: u64,
        /// The incident kept.
        existing: u64,
    },
    /// Only open or escalated incidents are kept.
    #[error("incident {id} is resolved; only open incidents are restored")]
    Resolved {
        /// The refused incident.
        id: u64,
    },
}

/// The node's open incidents.
#[derive(Debug, Clone)]
pub struct Incidents {
    next_id: u64,
    escalate_after: u32,
    open: BTreeMap<(Name, Name), Incident>,
}

impl Default for Incidents {
    /// No incident; ids from 1; [`DEFAULT_ESCALATE_AFTER`].
    fn default() -> Self {
        Incidents::new(1, DEFAULT_ESCALATE_AFTER)
    }
}

impl Incidents {
    /// No open incident; the next one gets `next_id`. An `escalate_after` of 0 is read
    /// as 1.
    pub fn new(next_id: u64, escalate_after: u32) -> Self {
        Incidents {
            next_id,
            escalate_after: escalate_after.max(1),
            open: BTreeMap::new(),
        }
    }

    /// Rebuilds from stored state: the stored `next_id` and the stored open incidents.
    pub fn restore(
        next_id: u64,
        escalate_after: u32,
        open: impl IntoIterator<Item = Incident>,
    ) -> Result<Self, IncidentError> {
        let mut me = Incidents::new(next_id, escalate_after);
        open.into_iter().try_for_each(|i| me.insert_restored(i))?;
        Ok(me)
    }

    /// Adds one stored open incident; `next_id` moves past its id if needed, so ids are
    /// never reused even if the stored counter lags.
    pub fn insert_restored(&mut self, incident: Incident) -> Result<(), IncidentError> {
        if incident.state == IncidentState::Resolved {
            return Err(IncidentError::Resolved { id: incident.id });
        }
        let key = (incident.instance.clone(), incident.promise.clone());
        if let Some(existing) = self.open.get(&key) {
            return Err(IncidentError::Duplicate {
                id: incident.id,
                existing: existing.id,
            });
        }
        self.next_id = self.next_id.max(incident.id.saturating_add(1));
        self.open.insert(key, incident);
        Ok(())
    }

    /// The id the next incident will get; store it.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// The open (or escalated) incidents, by instance then promise.
    pub fn open_incidents(&self) -> impl Iterator<Item = &Incident> {
        self.open.values()
    }

    /// The open incident of (instance, promise), if any.
    pub fn get(&self, instance: &Name, promise: &Name) -> Option<&Incident> {
        self.open.get(&(instance.clone(), promise.clone()))
    }

    /// A promise of `instance` reported an anomaly at `wall_ms`.
    pub fn on_anomaly(
        &mut self,
        wall_ms: u64,
        instance: &Name,
        promise: &Name,
        message: String,
    ) -> Vec<IncidentAction> {
        let message = bounded_message(message);
        let key = (instance.clone(), promise.clone());
        let mut actions = Vec::with_capacity(2);
        match self.open.get_mut(&key) {
            None => {
                let incident = Incident {
                    id: self.next_id,
                    instance: instance.clone(),
                    promise: promise.clone(),
                    severity: Severity::Minor,
                    state: IncidentState::Open,
                    first_seen_ms: wall_ms,
                    last_seen_ms: wall_ms,
                    repairs: 1,
                    repairs_at_severity: 1,
                    message,
                };
                self.next_id = self.next_id.saturating_add(1);
                actions.push(IncidentAction::Record(incident.record()));
                self.open.insert(key, incident);
            }
            Some(incident) => {
                incident.last_seen_ms = wall_ms.max(incident.first_seen_ms);
                incident.message = message;
                if incident.repairs_at_severity >= self.escalate_after {
                    if let Some(higher) = escalate(incident.severity) {
                        incident.severity = higher;
                        incident.state = IncidentState::Escalated;
                        incident.repairs_at_severity = 0;
                        let text = format!(
                            "{} repairs did not help: {}",
                            incident.repairs, incident.message
                        );
                        actions.push(IncidentAction::Record(incident.record_with(text)));
                    }
                }
                incident.repairs = incident.repairs.saturating_add(1);
                incident.repairs_at_severity = incident.repairs_at_severity.saturating_add(1);
            }
        }
        actions.push(IncidentAction::Repair(instance.clone()));
        actions
    }

    /// The promise passes again: resolves its incident, if one is open.
    pub fn on_recovered(
        &mut self,
        wall_ms: u64,
        instance: &Name,
        promise: &Name,
    ) -> Vec<IncidentAction> {
        self.resolve(wall_ms, instance, promise, "promise passes again")
    }

    /// The promise is no longer requested: resolves its incident, if one is open.
    pub fn on_promise_removed(
        &mut self,
        wall_ms: u64,
        instance: &Name,
        promise: &Name,
    ) -> Vec<IncidentAction> {
        self.resolve(wall_ms, instance, promise, "promise removed")
    }

    /// The instance was destroyed: resolves all its incidents.
    pub fn on_instance_destroyed(&mut self, wall_ms: u64, instance: &Name) -> Vec<IncidentAction> {
        let promises: Vec<Name> = self
            .open
            .keys()
            .filter(|(i, _)| i == instance)
            .map(|(_, p)| p.clone())
            .collect();
        promises
            .iter()
            .flat_map(|p| self.resolve(wall_ms, instance, p, "instance destroyed"))
            .collect()
    }

    fn resolve(
        &mut self,
        wall_ms: u64,
        instance: &Name,
        promise: &Name,
        why: &str,
    ) -> Vec<IncidentAction> {
        let Some(mut incident) = self.open.remove(&(instance.clone(), promise.clone())) else {
            return Vec::new();
        };
        incident.state = IncidentState::Resolved;
        incident.last_seen_ms = wall_ms.max(incident.first_seen_ms);
        let text = format!("{why} after {} repairs", incident.repairs);
        vec![IncidentAction::Record(incident.record_with(text))]
    }
}

/// The next severity, `None` at the top.
fn escalate(s: Severity) -> Option<Severity> {
    match s {
        Severity::Minor => Some(Severity::Major),
        Severity::Major => Some(Severity::Critical),
        Severity::Critical => None,
    }
}

#[cfg(test)]
mod tests;
