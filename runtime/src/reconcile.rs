//! Reconcile: the pure diff between what is requested and what the supervisor holds.
//!
//! Contract: [`diff`] takes the desired instances (the master's desired state merged
//! with local requests), the supervisor's view (which request each slot holds and
//! whether it is meant to run), and the partitions on disk, and returns the steps
//! that make the view match. Applying the steps and diffing again yields nothing
//! (idempotent). An instance present on the node but absent from the desired set is
//! destroyed, like one requested `destroyed`. The desired set ([`desired_set`]) holds
//! the instances a new master epoch left out (`crate::holdover`), so a master recovered
//! from an older backup never destroys by omission. A partition on disk that no request
//! names is left alone: data is never removed without a request saying so.
//!
//! The daemon calls it at boot, before any network is tried, and after every change.

use std::collections::{BTreeMap, BTreeSet};

use hedge_wire::{DesiredState, InstanceRequest, Name, RequestedState};

/// What the supervisor holds for one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The request the slot was set up from.
    pub request: InstanceRequest,
    /// Whether the slot is meant to run.
    pub running: bool,
}

/// One step towards the desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Create the slot and its partition from this request (not started yet).
    Create(InstanceRequest),
    /// Replace the slot's request (re-render; restart if running and the result changed).
    Update(InstanceRequest),
    /// Start the slot.
    Start(Name),
    /// Stop the slot.
    Stop(Name),
    /// Stop the slot if needed, drop it, remove its partition.
    Destroy(Name),
}

/// The desired set: the master's desired state, local requests, then the instances
/// held over from an earlier master epoch (`crate::holdover`). A name the master owns
/// is the master's; local requests for it are refused at the API, so this only skips a
/// stale conflict. A local request takes a held-over name over (the API also removes
/// it from the held-over set). The caller passes what it could read: an unreadable store
/// is never an empty desired set.
pub fn desired_set(
    master: Option<DesiredState>,
    held_over: Vec<InstanceRequest>,
    locals: Vec<InstanceRequest>,
) -> BTreeMap<Name, InstanceRequest> {
    let mut out: BTreeMap<Name, InstanceRequest> = master
        .into_iter()
        .flat_map(|d| d.instances)
        .map(|r| (r.name.clone(), r))
        .collect();
    for r in locals.into_iter().chain(held_over) {
        out.entry(r.name.clone()).or_insert(r);
    }
    out
}

/// The steps that bring `held` (and `partitions`) to `desired`.
pub fn diff(
    desired: &BTreeMap<Name, InstanceRequest>,
    held: &BTreeMap<Name, Held>,
    partitions: &BTreeSet<Name>,
) -> Vec<Step> {
    let mut out = Vec::new();
    for (name, want) in desired {
        let destroy = want.state == RequestedState::Destroyed;
        match held.get(name) {
            None if destroy => {
                if partitions.contains(name) {
                    out.push(Step::Destroy(name.clone()));
                }
            }
            None => {
                out.push(Step::Create(want.clone()));
                if want.state == RequestedState::Started {
                    out.push(Step::Start(name.clone()));
                }
            }
            Some(_) if destroy => out.push(Step::Destroy(name.clone())),
            Some(h) => {
                if !same_except_state(&h.request, want) {
                    out.push(Step::Update(want.clone()));
                }
                let run = want.state == RequestedState::Started;
                if run && !h.running {
                    out.push(Step::Start(name.clone()));
                } else if !run && h.running {
                    out.push(Step::Stop(name.clone()));
                }
            }
        }
    }
    for name in held.keys() {
        if !desired.contains_key(name) {
            out.push(Step::Destroy(name.clone()));
        }
    }
    out
}

/// True when two requests differ at most in their requested state.
fn same_except_state(a: &InstanceRequest, b: &InstanceRequest) -> bool {
    let mut b = b.clone();
    b.state = a.state;
    *a == b
}

/// Applies `steps` to a view, as the daemon would; used to prove idempotence and by
/// the daemon's tests.
pub fn apply(steps: &[Step], held: &mut BTreeMap<Name, Held>, partitions: &mut BTreeSet<Name>) {
    for a in steps {
        match a {
            Step::Create(r) => {
                partitions.insert(r.name.clone());
                held.insert(
                    r.name.clone(),
                    Held {
                        request: r.clone(),
                        running: false,
                    },
                );
            }
            Step::Update(r) => {
                if let Some(h) = held.get_mut(&r.name) {
                    h.request = r.clone();
                }
            }
            Step::Start(n) | Step::Stop(n) => {
                if let Some(h) = held.get_mut(n) {
                    h.running = matches!(a, Step::Start(_));
                    h.request.state = if h.running {
                        RequestedState::Started
                    } else {
                        RequestedState::Stopped
                    };
                }
            }
            Step::Destroy(n) => {
                held.remove(n);
                partitions.remove(n);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]

    use hedge_wire::SoftwareRelease;

    use super::*;

    /// A request for `/bin/sleep 100` named `name`, requested `state`.
    pub(crate) fn req(name: &str, state: RequestedState) -> InstanceRequest {
        InstanceRequest {
            name: Name::new(name).unwrap(),
            software: SoftwareRelease::Exec("/bin/sleep".into()),
            args: vec!["100".into()],
            parameters: BTreeMap::new(),
            config_files: vec![],
            promises: vec![],
            limits: Default::default(),
            restart: Default::default(),
            state,
        }
    }

    fn desired(reqs: &[InstanceRequest]) -> BTreeMap<Name, InstanceRequest> {
        reqs.iter().map(|r| (r.name.clone(), r.clone())).collect()
    }

    fn n(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    #[test]
    fn boot_from_empty_creates_and_starts() {
        let d = desired(&[
            req("a", RequestedState::Started),
            req("b", RequestedState::Stopped),
            req("c", RequestedState::Destroyed),
        ]);
        let acts = diff(&d, &BTreeMap::new(), &BTreeSet::new());
        assert_eq!(
            acts,
            vec![
                Step::Create(req("a", RequestedState::Started)),
                Step::Start(n("a")),
                Step::Create(req("b", RequestedState::Stopped)),
            ]
        );
    }

    #[test]
    fn diff_is_idempotent_across_transitions() {
        let steps = [
            vec![
                req("a", RequestedState::Started),
                req("b", RequestedState::Started),
            ],
            vec![
                req("a", RequestedState::Stopped),
                req("b", RequestedState::Started),
            ],
            vec![
                {
                    let mut r = req("a", RequestedState::Started);
                    r.args = vec!["200".into()];
                    r
                },
                req("b", RequestedState::Destroyed),
            ],
            vec![],
        ];
        let mut held = BTreeMap::new();
        let mut parts = BTreeSet::new();
        for step in steps {
            let d = desired(&step);
            let acts = diff(&d, &held, &parts);
            apply(&acts, &mut held, &mut parts);
            assert_eq!(
                diff(&d, &held, &parts),
                vec![],
                "not idempotent after {acts:?}"
            );
        }
        assert!(held.is_empty() && parts.is_empty());
    }

    #[test]
    fn changed_request_updates_before_state_change() {
        let mut held = BTreeMap::new();
        held.insert(
            n("a"),
            Held {
                request: req("a", RequestedState::Stopped),
                running: false,
            },
        );
        let mut r = req("a", RequestedState::Started);
        r.parameters.insert("port".into(), "1".into());
        let acts = diff(&desired(&[r.clone()]), &held, &BTreeSet::new());
        assert_eq!(acts, vec![Step::Update(r), Step::Start(n("a"))]);
    }

    #[test]
    fn destroyed_with_leftover_partition_removes_it_and_unknown_partitions_stay() {
        let parts: BTreeSet<Name> = [n("gone"), n("stray")].into_iter().collect();
        let acts = diff(
            &desired(&[req("gone", RequestedState::Destroyed)]),
            &BTreeMap::new(),
            &parts,
        );
        assert_eq!(acts, vec![Step::Destroy(n("gone"))]);
    }

    #[test]
    fn the_master_wins_then_local_requests_then_held_over_instances() {
        let master = DesiredState {
            node: n("n1"),
            generation: 1,
            instances: vec![req("m", RequestedState::Started)],
            signature: heapless::Vec::new(),
            expires_ms: 0,
            terms: vec![],
            imports: vec![],
            backups: Vec::new(),
            restores: Vec::new(),
        };
        let held = vec![
            req("m", RequestedState::Stopped),
            req("l", RequestedState::Stopped),
            req("h", RequestedState::Started),
        ];
        let locals = vec![
            req("m", RequestedState::Destroyed),
            req("l", RequestedState::Started),
        ];
        let set = desired_set(Some(master), held, locals);
        let states: Vec<_> = set.values().map(|r| (r.name.as_str(), r.state)).collect();
        assert_eq!(
            states,
            [
                ("h", RequestedState::Started),
                ("l", RequestedState::Started),
                ("m", RequestedState::Started),
            ]
        );
    }

    #[test]
    fn held_but_no_longer_desired_is_destroyed() {
        let mut held = BTreeMap::new();
        held.insert(
            n("old"),
            Held {
                request: req("old", RequestedState::Started),
                running: true,
            },
        );
        assert_eq!(
            diff(&BTreeMap::new(), &held, &BTreeSet::new()),
            vec![Step::Destroy(n("old"))]
        );
    }
}
