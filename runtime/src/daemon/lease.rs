//! The lease part of the daemon: the master's terms for each placed instance, the
//! lease its acks prove, the fences reported, and the heartbeat schedule; and the
//! daemon's thin driving of the pure `crate::lease` core.
//!
//! Contract: [`Leases`] holds that state. The terms come from the applied desired
//! state (read at boot, replaced when a newer one is applied); the lease start from the
//! uplink ([`hedge_uplink::link::ToNode::Lease`], an `Instant` of this process's
//! monotonic clock, so none survives a restart: a daemon starts without a lease and its
//! leased copies wait for a fresh one). Reconcile gates the desired set through
//! `crate::lease::gate` and appends the due fence records before it applies any step
//! (so a copy's records follow its `Fence { holding: true }`). The loop wakes at
//! [`Daemon::lease_deadline`]: when a held lease lapses (reconcile again: the copy
//! stops, `Fence { holding: false }`), and, while the uplink is up and some instance has
//! a lease, when a heartbeat (a node health record) is due.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use hedge_wire::{DesiredState, InstanceRequest, Name, RecordKind};

use super::links::LinkId;
use super::Daemon;
use crate::lease::{self, Fences, Terms, TermsMap};

/// The daemon's lease state.
#[derive(Debug, Default)]
pub(crate) struct Leases {
    /// The applied desired state's terms, by instance.
    pub terms: TermsMap,
    /// The lease start the uplink reported last (`None`: no contact in this life).
    pub since: Option<Instant>,
    /// Fences reported by this daemon.
    pub fences: Fences,
    /// Leased instances the last gate kept from running.
    pub fenced: BTreeSet<Name>,
    /// When a lease held at the last gate lapses.
    pub lapse_at: Option<Instant>,
    /// When the last heartbeat was made.
    pub last_beat: Option<Instant>,
}

/// The terms a desired state gives its instances.
pub(crate) fn terms_of(d: &DesiredState) -> TermsMap {
    d.terms
        .iter()
        .map(|t| {
            (
                t.instance.clone(),
                Terms {
                    fence: t.fence,
                    lease_ms: t.lease_ms,
                },
            )
        })
        .collect()
}

impl Leases {
    /// A newer lease start; returns whether a copy waits for one (reconcile now).
    pub(crate) fn renewed(&mut self, since: Instant) -> bool {
        if self.since.is_some_and(|s| s >= since) {
            return false;
        }
        self.since = Some(since);
        // The earliest a lease held now can lapse; the gate refines it.
        let shortest = self
            .terms
            .values()
            .map(|t| t.lease_ms)
            .filter(|&m| m > 0)
            .min();
        self.lapse_at = shortest
            .and_then(|m| since.checked_add(std::time::Duration::from_millis(u64::from(m))));
        !self.fenced.is_empty()
    }

    /// Whether `instance` holds its lease now: `None` when it has none to hold.
    pub(crate) fn held(&self, instance: &Name, now: Instant) -> Option<bool> {
        let t = self.terms.get(instance).filter(|t| t.lease_ms > 0)?;
        Some(lease::holds(self.since, t.lease_ms, now))
    }
}

impl Daemon {
    /// Gates `desired` by the leases at `now` and appends the fence records due.
    pub(super) fn gate_by_lease(&mut self, desired: &mut BTreeMap<Name, InstanceRequest>) {
        let l = &mut self.leases;
        let g = lease::gate(desired, &l.terms, l.since, super::monotonic_now());
        let reports = l.fences.update(desired, &l.terms, &g.fenced);
        for name in g.fenced.difference(&l.fenced) {
            tracing::warn!(instance = %name, "no lease from the master: the copy does not run (self-fenced)");
        }
        for name in l.fenced.difference(&g.fenced) {
            tracing::info!(instance = %name, "lease held: the copy may run");
        }
        l.fenced = g.fenced;
        l.lapse_at = g.lapse_at;
        for r in reports {
            self.record(RecordKind::Fence {
                instance: r.instance,
                fence: r.fence,
                holding: r.holding,
            });
        }
    }

    /// Replaces the terms with those of the applied desired state.
    pub(super) fn load_terms(&mut self, d: Option<&DesiredState>) {
        self.leases.terms = d.map(terms_of).unwrap_or_default();
    }

    /// When the loop must wake for the leases: a lapse, or a heartbeat.
    pub(super) fn lease_deadline(&self) -> Option<Instant> {
        let l = &self.leases;
        let beat = if self.uplink_up() {
            lease::heartbeat_at(&l.terms, l.since, l.last_beat, super::monotonic_now())
        } else {
            None
        };
        l.lapse_at.into_iter().chain(beat).min()
    }

    /// Runs what is due: a reconcile when a lease lapsed, a heartbeat.
    pub(super) fn lease_tick(&mut self) {
        let now = super::monotonic_now();
        if self.leases.lapse_at.is_some_and(|t| now >= t) {
            self.leases.lapse_at = None;
            self.reconcile();
        }
        let l = &self.leases;
        let beat = lease::heartbeat_at(&l.terms, l.since, l.last_beat, now);
        if self.uplink_up() && beat.is_some_and(|t| now >= t) {
            self.leases.last_beat = Some(now);
            tracing::debug!("lease heartbeat");
            self.record_health();
        }
    }

    /// A link to the master is up: the direct uplink, or the mesh link through a peer
    /// (whose signed acks renew the lease just as well).
    fn uplink_up(&self) -> bool {
        [LinkId::Uplink, LinkId::Mesh]
            .into_iter()
            .any(|id| self.links.get(id).is_some_and(|l| l.up))
    }
}
