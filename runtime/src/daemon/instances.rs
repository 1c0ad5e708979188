//! The instances part of the daemon: one slot per instance, their partitions, the
//! connection parameters they published, and the node's cgroup home.
//!
//! Contract: [`Instances`] owns this state and answers questions about it (what the
//! supervisor holds for reconcile, which lifecycle deadline comes next, which instances
//! consume whose parameters). It performs no lifecycle action itself: the loop drives
//! each slot's lifecycle (`daemon::instance`) and reads its connection files
//! (`daemon::published`), which returns the changes for the loop to store and report.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Instant;

use hedge_wire::{InstanceRequest, Name};

use super::RateLimit;
use crate::partition::cgroup::{Cgroup, Cgroups};
use crate::partition::Partitions;
use crate::reconcile::Held;
use crate::render;
use crate::supervisor::lifecycle::Lifecycle;

/// Connection parameters by instance, then by key.
pub(crate) type Published = BTreeMap<String, BTreeMap<String, String>>;

/// The daemon's hold on one instance.
pub(crate) struct Slot {
    /// The request it was set up from.
    pub request: InstanceRequest,
    pub lifecycle: Lifecycle,
    /// Hash of the rendered configuration the current process runs with.
    pub rendered_hash: Option<[u8; 32]>,
    /// Start time of the current process (for leftover detection after a crash).
    pub start_ticks: Option<u64>,
    /// The rlimits the current process was started with (they cannot change after
    /// `exec`: a request with others restarts it).
    pub started_rlimits: Option<Vec<(nix::sys::resource::Resource, u64)>>,
    /// Its cgroup, where the node has cgroup v2 (made at its first start).
    pub cgroup: Option<Cgroup>,
    /// Destroy once idle.
    pub destroying: bool,
}

/// Every instance the node holds.
pub(crate) struct Instances {
    pub(crate) partitions: Partitions,
    pub(crate) slots: BTreeMap<Name, Slot>,
    /// What each instance published (its `etc/connection.json`), as stored.
    pub(crate) published: Published,
    /// What instances on other nodes published, as the applied desired state imports
    /// it (`daemon::imports`).
    pub(crate) imports: Published,
    /// What instances on peer nodes published, verified by the mesh (signed by their
    /// node), by `node/instance` (`daemon::mesh`).
    pub(crate) peers: Published,
    /// The node's cgroup v2 home, when the host has a writable one.
    pub(crate) cgroups: Option<Cgroups>,
    /// Where the partitions are (`<state_dir>/partitions`).
    partitions_dir: PathBuf,
    pub(super) published_log: RateLimit,
}

impl Instances {
    pub(crate) fn new(
        partitions: Partitions,
        partitions_dir: PathBuf,
        published: Published,
        cgroups: Option<Cgroups>,
    ) -> Self {
        Instances {
            partitions,
            slots: BTreeMap::new(),
            published,
            imports: Published::new(),
            peers: Published::new(),
            cgroups,
            partitions_dir,
            published_log: RateLimit::default(),
        }
    }

    /// What the supervisor holds, as reconcile sees it.
    pub(crate) fn held(&self) -> BTreeMap<Name, Held> {
        self.slots
            .iter()
            .map(|(n, s)| {
                (
                    n.clone(),
                    Held {
                        request: s.request.clone(),
                        running: s.lifecycle.wants_running(),
                    },
                )
            })
            .collect()
    }

    /// The partitions on disk, by name (a partition may outlive its slot).
    pub(crate) fn on_disk(&self) -> BTreeSet<Name> {
        std::fs::read_dir(&self.partitions_dir)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter_map(|e| Name::new(e.file_name().to_str()?).ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The earliest lifecycle deadline.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.slots
            .values()
            .filter_map(|s| s.lifecycle.deadline())
            .min()
    }

    /// The instances whose lifecycle deadline has passed at `now`.
    pub(crate) fn due(&self, now: Instant) -> Vec<Name> {
        self.slots
            .iter()
            .filter(|(_, s)| s.lifecycle.deadline().is_some_and(|d| d <= now))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Whether every instance is idle (nothing runs, nothing is pending).
    pub(crate) fn all_idle(&self) -> bool {
        self.slots.values().all(|s| s.lifecycle.is_idle())
    }

    pub(crate) fn names(&self) -> Vec<Name> {
        self.slots.keys().cloned().collect()
    }

    /// Whether `name` is meant to run.
    pub(crate) fn wants_running(&self, name: &Name) -> bool {
        self.slots
            .get(name)
            .is_some_and(|s| s.lifecycle.wants_running())
    }

    /// The parameter `key` that `instance` published: on this node if it published
    /// here, else as imported from another node.
    pub(crate) fn published_param(&self, instance: &str, key: &str) -> Option<String> {
        if instance.contains('/') {
            // `node/instance`: only what the mesh verified.
            return self.peers.get(instance)?.get(key).cloned();
        }
        match self.published.get(instance) {
            Some(p) => p.get(key).cloned(),
            None => self.imports.get(instance)?.get(key).cloned(),
        }
    }

    /// The instances whose requests reference the parameters of `instance` on the peer
    /// `node` (`{{node/instance.key}}`).
    pub(crate) fn consumers_of_peer(&self, node: &Name, instance: &Name) -> Vec<Name> {
        let wanted = (node.clone(), instance.clone());
        self.slots
            .iter()
            .filter(|(_, s)| render::peer_references(&s.request).contains(&wanted))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The instances whose requests reference `name`'s connection parameters.
    pub(crate) fn consumers_of(&self, name: &Name) -> Vec<Name> {
        self.slots
            .iter()
            .filter(|(_, s)| render::references(&s.request).contains(name.as_str()))
            .map(|(n, _)| n.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use hedge_wire::{RequestedState, SoftwareRelease};

    use super::*;
    use crate::supervisor::lifecycle::{Input, Policy};

    fn request(name: &str, args: &[&str]) -> InstanceRequest {
        InstanceRequest {
            name: Name::new(name).unwrap(),
            software: SoftwareRelease::Exec("/bin/true".into()),
            args: args.iter().map(|a| (*a).to_string()).collect(),
            parameters: Default::default(),
            config_files: vec![],
            promises: vec![],
            limits: Default::default(),
            restart: Default::default(),
            state: RequestedState::Started,
        }
    }

    fn slot(request: InstanceRequest) -> Slot {
        Slot {
            request,
            lifecycle: Lifecycle::new(Policy::default(), 1, 0, None),
            rendered_hash: None,
            start_ticks: None,
            started_rlimits: None,
            cgroup: None,
            destroying: false,
        }
    }

    fn instances(dir: &std::path::Path) -> Instances {
        Instances::new(
            Partitions::new(dir, (60_000, 60_100)),
            dir.join("partitions"),
            Published::new(),
            None,
        )
    }

    #[test]
    fn held_deadlines_and_consumers_follow_the_slots() {
        let dir = tempfile::tempdir().unwrap();
        let mut i = instances(dir.path());
        assert!(i.all_idle() && i.deadline().is_none() && i.on_disk().is_empty());
        let db = Name::new("db").unwrap();
        let app = Name::new("app").unwrap();
        i.slots.insert(db.clone(), slot(request("db", &[])));
        i.slots
            .insert(app.clone(), slot(request("app", &["{{db.port}}"])));
        i.published.insert(
            "db".into(),
            BTreeMap::from([("port".to_string(), "5432".to_string())]),
        );
        assert_eq!(i.published_param("db", "port").as_deref(), Some("5432"));
        assert_eq!(i.published_param("db", "host"), None);
        assert_eq!(i.consumers_of(&db), vec![app.clone()]);
        assert!(i.consumers_of(&app).is_empty());
        assert_eq!(i.names(), vec![app.clone(), db.clone()]);

        let t0 = crate::daemon::monotonic_now();
        let slot = i.slots.get_mut(&db).unwrap();
        slot.lifecycle.handle(t0, Input::Start);
        slot.lifecycle
            .handle(t0, Input::SpawnFailed { waiting: true });
        let at = i.deadline().unwrap();
        assert!(i.due(at - Duration::from_millis(1)).is_empty());
        assert_eq!(i.due(at), vec![db.clone()]);
        assert!(i.wants_running(&db) && !i.wants_running(&app));
        assert!(!i.all_idle());
        let held = i.held();
        assert!(held[&db].running && !held[&app].running);

        std::fs::create_dir_all(dir.path().join("partitions/db")).unwrap();
        assert_eq!(i.on_disk(), BTreeSet::from([db]));
    }

    #[test]
    fn a_local_publication_wins_over_an_import() {
        let dir = tempfile::tempdir().unwrap();
        let mut i = instances(dir.path());
        let params = |port: &str| BTreeMap::from([("port".to_string(), port.to_string())]);
        i.imports.insert("db".into(), params("6000"));
        assert_eq!(i.published_param("db", "port").as_deref(), Some("6000"));
        assert_eq!(i.published_param("db", "host"), None);
        i.published.insert("db".into(), params("5432"));
        assert_eq!(i.published_param("db", "port").as_deref(), Some("5432"));
        assert_eq!(i.published_param("other", "port"), None);
    }
}
