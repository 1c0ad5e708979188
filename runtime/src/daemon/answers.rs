//! What the daemon answers on the local API (the socket server is `daemon::api`).
//!
//! Contract: [`Daemon::on_call`] answers one typed request (`crate::local_api`) from
//! the loop, after flushing records (records are durable before anyone is shown them):
//! `status`, the metrics text, an outbox page, an instance's log path, or a local
//! request. A local request is checked (bounds, a name the master owns, a full node),
//! stored durably, reported as a record, then reconciled; a refusal says why in a
//! typed [`Refusal`]. A local request for an instance held over from an earlier
//! master epoch (`crate::holdover`), or its `start`/`stop`/`destroy`, takes it over as
//! a local request.

use hedge_wire::{InstanceRequest, Name, RecordKind};

use super::Daemon;
use crate::local_api::{self, Answer, ApiRequest, Refusal};

impl Daemon {
    pub(super) fn status(&self) -> local_api::NodeStatus {
        let now = super::monotonic_now();
        let held = self.outbox.store.held_over().unwrap_or_default();
        let instances = self
            .instances
            .slots
            .iter()
            .map(|(n, s)| local_api::InstanceView {
                name: n.to_string(),
                state: s.lifecycle.status(),
                requested: s.request.state,
                software: s.request.software.to_string(),
                pid: s.lifecycle.pid(),
                restarts: s.lifecycle.restarts(),
                last_exit: s.lifecycle.last_exit().map(|e| e.to_string()),
                promises: self.promise_status(n),
                usage_cpu_ms: self.usage_totals().get(n.as_str()).copied().unwrap_or(0),
                fence: self.leases.terms.get(n).map(|t| t.fence),
                lease_held: self.leases.held(n, now),
                last_snapshot: self.backups.last_snapshot(n),
                held_over: held.iter().any(|r| &r.name == n),
            })
            .collect();
        local_api::NodeStatus {
            node: self.cfg.node_id().to_string(),
            board: self.cfg.profile().id.clone(),
            max_instances: self.cfg.max_instances(),
            instances,
            outbox: local_api::OutboxView {
                depth: self.outbox.store.outbox_depth(),
                next_seq: self.outbox.store.next_seq().unwrap_or(0),
                bytes: self.outbox.store.outbox_bytes(),
                quota_bytes: self.outbox.quota(),
            },
            incidents: self.incident_status(),
            uplink: self.link_status(),
            desired: self.desired_status(),
            software: self.software_status(),
            health: self.monitoring.last_health.map(local_api::HealthView::from),
            counters: self.counters.clone(),
            mesh: self.mesh_status(),
        }
    }

    pub(super) fn on_call(&mut self, req: ApiRequest) -> Result<Answer, Refusal> {
        // Records are durable before anyone is shown them.
        if let Err(e) = self.outbox.store.flush_records() {
            self.store_failed(&e);
        }
        match req {
            ApiRequest::Status => Ok(Answer::Status(Box::new(self.status()))),
            ApiRequest::Metrics => Ok(Answer::Metrics(local_api::MetricsText {
                text: self.metrics_text(),
            })),
            ApiRequest::Request { request, backup } => {
                self.local_request_with_backup(*request, backup)
            }
            ApiRequest::Start { name } => {
                self.set_local_state(&name, hedge_wire::RequestedState::Started)
            }
            ApiRequest::Stop { name } => {
                self.set_local_state(&name, hedge_wire::RequestedState::Stopped)
            }
            ApiRequest::Destroy { name } => {
                let answer = self.set_local_state(&name, hedge_wire::RequestedState::Destroyed)?;
                // Its snapshots stay in the vault; no new ones are taken.
                self.set_local_backup(&valid_name(&name)?, None)?;
                Ok(answer)
            }
            // Answered by the backup driver when done (`Daemon::take_backup_call`).
            ApiRequest::Backup { .. } | ApiRequest::Backups { .. } | ApiRequest::Restore { .. } => {
                Err(Refusal::Malformed {
                    reason: "a backup request reached the wrong handler".into(),
                })
            }
            ApiRequest::Outbox { from, limit } => {
                let records = self
                    .outbox
                    .store
                    .outbox_from(from, limit.min(1000))
                    .map_err(|e| Refusal::Store {
                        reason: e.to_string(),
                    })?;
                Ok(Answer::Outbox(local_api::OutboxPage { records }))
            }
            ApiRequest::LogPath { name } => {
                let n = valid_name(&name)?;
                if !self.instances.slots.contains_key(&n) {
                    return Err(Refusal::NotFound { name });
                }
                let path = crate::supervisor::spawn::log_path(
                    &self.instances.partitions.path(&n),
                    n.as_str(),
                );
                Ok(Answer::LogPath(local_api::LogPath { path }))
            }
        }
    }

    /// Whether the master owns `name`; an unreadable desired state is an error, so a
    /// local request can never take over a name the master may own.
    fn master_owns(&mut self, name: &Name) -> Result<bool, Refusal> {
        match self.outbox.store.desired() {
            Ok(d) => Ok(d.is_some_and(|d| d.instances.iter().any(|r| &r.name == name))),
            Err(e) => {
                self.store_failed(&e);
                Err(Refusal::DesiredUnreadable {
                    reason: e.to_string(),
                })
            }
        }
    }

    /// Stores a local request durably, reports it, then applies it.
    pub(super) fn local_request(&mut self, request: InstanceRequest) -> Result<Answer, Refusal> {
        crate::request_file::check_bounds(&request).map_err(|e| Refusal::OutOfBounds {
            reason: e.to_string(),
        })?;
        if self.master_owns(&request.name)? {
            return Err(Refusal::OwnedByMaster {
                name: request.name.to_string(),
            });
        }
        let max = self.cfg.max_instances();
        let slots = &self.instances.slots;
        if !slots.contains_key(&request.name) && slots.len() >= max as usize {
            return Err(Refusal::NodeFull {
                max,
                board: self.cfg.profile().id.clone(),
            });
        }
        self.outbox
            .store
            .put_local(&request)
            .map_err(|e| Refusal::Store {
                reason: e.to_string(),
            })?;
        // A held-over name is the node's own from now on.
        self.take_over_held(&request.name)?;
        self.record(RecordKind::LocalRequest {
            request: Box::new(request.clone()),
        });
        tracing::info!(instance = %request.name, state = ?request.state, "local request stored");
        self.reconcile();
        Ok(Answer::Requested(local_api::Requested {
            name: request.name.to_string(),
        }))
    }

    fn set_local_state(
        &mut self,
        name: &str,
        state: hedge_wire::RequestedState,
    ) -> Result<Answer, Refusal> {
        let n = valid_name(name)?;
        if self.master_owns(&n)? {
            return Err(Refusal::OwnedByMaster { name: name.into() });
        }
        let store_refusal = |e: crate::store::StoreError| Refusal::Store {
            reason: e.to_string(),
        };
        let mut request = match self.outbox.store.local(&n).map_err(store_refusal)? {
            Some(r) => r,
            None => self
                .take_over_held(&n)?
                .ok_or_else(|| Refusal::NoLocalInstance { name: name.into() })?,
        };
        request.state = state;
        self.local_request(request)
    }

    /// A held-over instance (`crate::holdover`) taken over by a local request: its
    /// request, removed from the held-over set (the caller stores it as local).
    fn take_over_held(&mut self, name: &Name) -> Result<Option<InstanceRequest>, Refusal> {
        let store_refusal = |e: crate::store::StoreError| Refusal::Store {
            reason: e.to_string(),
        };
        let mut held = self.outbox.store.held_over().map_err(store_refusal)?;
        let Some(at) = held.iter().position(|r| &r.name == name) else {
            return Ok(None);
        };
        let request = held.remove(at);
        self.outbox
            .store
            .put_held_over(&held)
            .map_err(store_refusal)?;
        tracing::info!(instance = %name, "held-over instance taken over by a local request");
        Ok(Some(request))
    }
}

/// `name` as an instance name, or the refusal that says why not.
pub(super) fn valid_name(name: &str) -> Result<Name, Refusal> {
    Name::new(name).map_err(|e| Refusal::BadName {
        name: name.into(),
        reason: e.to_string(),
    })
}
