//! Leases and fences on the node: which leased copies may run now, which fence reports
//! are due, and when an idle node must make a record to keep its lease.
//!
//! Contract (pure: no I/O, no clock; `now` and the lease start come in as `Instant`s of
//! the daemon's monotonic clock):
//! - The master gives each instance it places [`Terms`]: a fencing epoch and a lease
//!   length. The node *holds its lease* at `now` when the master acknowledged a batch
//!   first sent at `since` (the sync core's `lease_since`) and `since + lease_ms > now`
//!   ([`holds`]).
//! - [`gate`] turns the desired set into the set that may run now: an instance with
//!   `lease_ms > 0` requested `started` is stopped while the lease is not held
//!   (self-fencing: it stays in the store and on disk, it is not destroyed). Instances
//!   without terms or with `lease_ms = 0` are untouched: they run offline forever. It
//!   also says when its answer changes next by itself (the earliest lapse of a held
//!   lease); a newer lease start is an input, not a time.
//! - No monotonic clock survives a daemon restart or a reboot, so a daemon starts
//!   without a lease (`since = None`): a leased copy waits for a fresh lease.
//! - [`Fences`] remembers which fence this daemon reported for each instance and
//!   returns the [`FenceReport`]s due after a gate: `holding: true` when a copy is to
//!   start under a fence not reported yet (the report must precede the start, so the
//!   copy's records follow it in seq order), `holding: false` when a copy that held a
//!   fence gives it up (its lease lapsed, the master took the instance away, or it
//!   placed it here again under a newer fence). A stop the master requests is not a
//!   give-up: the instance stays placed here.
//! - [`heartbeat_at`]: while some instance has a lease, a node whose lease was not
//!   renewed for a third of the shortest lease makes a record (the daemon: a node
//!   health record), so an idle node keeps its lease; not more often than that.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use hedge_wire::{InstanceRequest, Name, RequestedState};

/// What the master's desired state says about one placed instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terms {
    /// The placement's fencing epoch (0: none given).
    pub fence: u64,
    /// The lease length, ms; 0: no lease, the copy runs offline indefinitely.
    pub lease_ms: u32,
}

/// The terms of every placed instance, by name.
pub type TermsMap = BTreeMap<Name, Terms>;

fn lease_len(lease_ms: u32) -> Duration {
    Duration::from_millis(u64::from(lease_ms))
}

/// Whether a copy with a lease of `lease_ms` may run at `now`, given the lease start
/// `since` (`None`: no ack proved contact in this daemon's life). `lease_ms = 0`: always.
pub fn holds(since: Option<Instant>, lease_ms: u32, now: Instant) -> bool {
    lease_ms == 0
        || since
            .and_then(|s| s.checked_add(lease_len(lease_ms)))
            .is_some_and(|end| end > now)
}

/// What [`gate`] decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gate {
    /// Instances requested `started` that may not run now (lease not held).
    pub fenced: BTreeSet<Name>,
    /// The earliest time a lease held now lapses (the gate must run again then).
    pub lapse_at: Option<Instant>,
}

/// Stops, in `desired`, every leased instance whose lease is not held at `now`.
pub fn gate(
    desired: &mut BTreeMap<Name, InstanceRequest>,
    terms: &TermsMap,
    since: Option<Instant>,
    now: Instant,
) -> Gate {
    let mut g = Gate::default();
    for (name, req) in desired.iter_mut() {
        let Some(t) = terms.get(name).filter(|t| t.lease_ms > 0) else {
            continue;
        };
        if req.state != RequestedState::Started {
            continue;
        }
        if holds(since, t.lease_ms, now) {
            let end = since.and_then(|s| s.checked_add(lease_len(t.lease_ms)));
            g.lapse_at = match (g.lapse_at, end) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        } else {
            req.state = RequestedState::Stopped;
            g.fenced.insert(name.clone());
        }
    }
    g
}

/// A fence record to append: this node's copy of `instance` runs under `fence`
/// (`holding`), or gave it up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceReport {
    /// The instance.
    pub instance: Name,
    /// The fence it concerns.
    pub fence: u64,
    /// Runs under it (`true`) or gave it up (`false`).
    pub holding: bool,
}

/// The fences this daemon reported, by instance: `(fence, holding)`.
#[derive(Debug, Clone, Default)]
pub struct Fences {
    reported: BTreeMap<Name, (u64, bool)>,
}

impl Fences {
    /// The last report made for `instance`: `(fence, holding)`.
    pub fn reported(&self, instance: &Name) -> Option<(u64, bool)> {
        self.reported.get(instance).copied()
    }

    /// The reports due now, given the gated desired set and what the gate fenced:
    /// give-ups first, then the fences copies are about to start under. Records them
    /// as reported.
    pub fn update(
        &mut self,
        gated: &BTreeMap<Name, InstanceRequest>,
        terms: &TermsMap,
        fenced: &BTreeSet<Name>,
    ) -> Vec<FenceReport> {
        let mut out = Vec::new();
        for (name, (fence, holding)) in self.reported.iter_mut() {
            if !*holding {
                continue;
            }
            let placed = gated
                .get(name)
                .is_some_and(|r| r.state != RequestedState::Destroyed);
            let same_fence = terms.get(name).is_some_and(|t| t.fence == *fence);
            if fenced.contains(name) || !placed || !same_fence {
                *holding = false;
                out.push(FenceReport {
                    instance: name.clone(),
                    fence: *fence,
                    holding: false,
                });
            }
        }
        for (name, req) in gated {
            if req.state != RequestedState::Started {
                continue;
            }
            let Some(t) = terms.get(name).filter(|t| t.fence > 0) else {
                continue;
            };
            if self.reported.get(name) != Some(&(t.fence, true)) {
                self.reported.insert(name.clone(), (t.fence, true));
                out.push(FenceReport {
                    instance: name.clone(),
                    fence: t.fence,
                    holding: true,
                });
            }
        }
        // Forget what is neither placed here nor holding.
        self.reported
            .retain(|name, (_, holding)| *holding || gated.contains_key(name));
        out
    }
}

/// When the node must next make a record to renew its lease: a third of the shortest
/// lease after the later of the lease start and the last heartbeat (`now` when there is
/// neither); `None` when no instance has a lease.
pub fn heartbeat_at(
    terms: &TermsMap,
    since: Option<Instant>,
    last_beat: Option<Instant>,
    now: Instant,
) -> Option<Instant> {
    let shortest = terms
        .values()
        .map(|t| t.lease_ms)
        .filter(|&ms| ms > 0)
        .min()?;
    let period = lease_len(shortest) / 3;
    match since.max(last_beat) {
        None => Some(now),
        Some(t) => Some(t.checked_add(period).unwrap_or(t)),
    }
}

#[cfg(test)]
mod tests;
