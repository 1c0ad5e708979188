//! The node daemon: one event loop that owns the store and every instance slot.
//!
//! The state is held by parts that own it: `instances` (slots, partitions, published
//! connection parameters, cgroups), `monitoring` (promises, incidents, accounting,
//! health), `outbox` (the store, the quota, shedding) and `links` (zero or more links
//! to the master). A part changes only its own state and returns what must follow
//! (`effect::Effect`, or a shedding plan); this module keeps the event loop and
//! performs those effects (`Daemon::dispatch`). The loop's drivers sit beside it:
//! `instance` (reconcile steps, lifecycle), `start`, `destroy`, `leftovers`, `monitor`
//! (checks, `/proc`, disk walks), `published`, `imports` (connection parameters from
//! other nodes), `link`, `mesh` (custody for peers, routing between the links, peers'
//! connection parameters), `desired`, `software`, `backup` (snapshots on schedule and on
//! request, local restores, all off the loop), and `answers` (the local API's answers).
//!
//! Contract: [`Daemon::boot`] opens the store and kills leftovers of an earlier run
//! (process groups recorded in the store); [`Daemon::run`] reconciles at once — before
//! any network is tried, so a node that reboots offline starts every requested instance
//! from its local store — then serves the local API and child exits until `shutdown`
//! resolves, stops every instance (SIGTERM, SIGKILL after the grace period) and returns.
//! Requested state in the store is untouched by a shutdown, so the next boot starts the
//! same instances again.
//!
//! Single-threaded by design: run it on a current-thread tokio runtime. Children get
//! `PR_SET_PDEATHSIG`, which fires when the forking thread exits; here that is the main
//! thread, so children die with the daemon (see `supervisor::spawn`).
//!
//! Store failures (a full disk) never stop supervision: they are counted, logged at
//! most every ten seconds, and the record is retried by nobody — the state it reported
//! is visible in `status` and reported again on the next change.

mod answers;
pub mod api;
mod backup;
mod backup_upload;
mod blob_impls;
mod blob_ports;
mod desired;
mod destroy;
mod disk;
mod effect;
mod imports;
mod instance;
mod instances;
mod lease;
mod leftovers;
mod link;
mod links;
mod mesh;
mod mesh_start;
mod metrics;
mod monitor;
mod monitoring;
mod outbox;
mod published;
mod rate_limit;
mod restore;
mod software;
mod start;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub(crate) use hedge_common::clock::now_ms;
use hedge_wire::{ExitStatus, InstanceRequest, Name, RecordKind};
use tokio::net::UnixListener;
use tokio::sync::mpsc;

use crate::config::NodeConfig;

use crate::partition::Partitions;
use crate::reconcile;
use crate::store::{Store, StoreError};
use api::ApiCall;
use effect::Effect;
use instances::Instances;
use monitoring::Monitoring;
pub(crate) use rate_limit::RateLimit;

/// The monotonic clock. The loop and its drivers are I/O drivers: they read the clock
/// here and hand the time to the parts and cores, which read none.
#[allow(clippy::disallowed_methods)] // the daemon's I/O drivers: their one monotonic clock read
pub(crate) fn monotonic_now() -> Instant {
    Instant::now()
}

/// The target this binary was built for (`arch-vendor-os-env`).
pub const TARGET: &str = env!("HEDGE_TARGET");

/// Errors that stop the daemon from starting.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The state directory could not be prepared.
    #[error("state directory {path}: {source}")]
    StateDir {
        /// The state directory (`node.state_dir`).
        path: PathBuf,
        /// Why it could not be created.
        source: std::io::Error,
    },
}

/// Events reaching the loop from spawned tasks.
#[derive(Debug)]
pub(crate) enum Event {
    /// A child process ended.
    Exited {
        name: Name,
        pid: u32,
        status: ExitStatus,
    },
    /// A download task finished one attempt at an artifact.
    Artifact {
        sha256: [u8; 32],
        attempt: software::Attempt,
    },
    /// A disk walk of an instance's partition finished (on a blocking thread).
    DiskWalked { name: Name, usage: disk::DiskUsage },
    /// A promise check finished.
    Checked {
        name: Name,
        index: usize,
        generation: u64,
        result: crate::monitor::promise::CheckResult,
    },
    /// The credentials task wrote a new uplink certificate: restart the link with it.
    Credentials,
    /// The backup thread finished a job (or a catalog read).
    Backup(backup::Done),
    /// The backup uploader reported (`backup_upload`).
    Upload(backup_upload::Report),
    /// A remote restore task reported (`restore`).
    Restore(restore::Report),
}

/// Counters shown by `status` (their home is the local API's views).
pub use crate::local_api::Counters;

/// The node daemon.
pub struct Daemon {
    cfg: NodeConfig,
    /// The store, the outbox quota and shedding.
    outbox: outbox::Outbox,
    /// Slots, partitions, published connection parameters, cgroups.
    instances: Instances,
    /// Promises, incidents, accounting, health.
    monitoring: Monitoring,
    /// The running links (the uplink, when enabled).
    links: links::Links,
    /// The master's terms, the lease its acks prove, fences reported, heartbeats.
    leases: lease::Leases,
    events_tx: mpsc::UnboundedSender<Event>,
    events_rx: mpsc::UnboundedReceiver<Event>,
    counters: Counters,
    shutting_down: bool,
    desired_log: RateLimit,
    /// The applied state's expiry, reported once per generation.
    expiry: crate::desired::ExpiryWatch,
    expiry_log: RateLimit,
    /// The persisted clock floor (ms since the epoch).
    clock_floor_ms: u64,
    /// The master's public key: only states it signed are applied.
    master_key: Option<ed25519_dalek::VerifyingKey>,
    /// The artifact cache and its downloads.
    software: software::Software,
    /// Counters shared with the local API's connection tasks.
    api_stats: std::sync::Arc<api::ApiStats>,
    /// An observed state was written and not flushed yet.
    observed_unflushed: bool,
    /// Records were appended in this turn of the loop: the links hear of it once, at
    /// its end (group commit: they load, and the store flushes, once per turn).
    appended_this_turn: bool,
    /// Children started in this turn whose exec is not confirmed yet.
    execs: BTreeMap<Name, start::PendingExec>,
    /// Custody held for other nodes (mesh), per origin.
    relay: crate::relay::Held,
    relay_counters: mesh::RelayCounters,
    relay_log: RateLimit,
    relay_shed_log: RateLimit,
    /// The mesh transport and link counters, while the mesh link runs.
    mesh: Option<mesh_start::MeshRun>,
    /// Snapshots: the vault, the schedule, the backup thread's job.
    backups: backup::Backups,
    /// The backup uploader (`backup_upload`).
    uploads: backup_upload::Uploads,
    /// Remote restores waiting or running (`restore`).
    restores: restore::Restores,
}

/// As root, instances run as their partition's uid and must traverse the state
/// directory to reach their partition; say so plainly if they cannot.
fn warn_if_untraversable(state: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let mut dir = std::fs::canonicalize(state).unwrap_or_else(|_| state.to_path_buf());
    loop {
        if let Ok(m) = std::fs::metadata(&dir) {
            if m.permissions().mode() & 0o001 == 0 {
                tracing::warn!(dir = %dir.display(), "partition users cannot traverse this directory; instances will fail to start (chmod o+x it)");
                return;
            }
        }
        if !dir.pop() {
            return;
        }
    }
}

impl Daemon {
    /// Opens the store and cleans up after an earlier run. Binds nothing.
    pub fn boot(cfg: NodeConfig) -> Result<Daemon, DaemonError> {
        let state = cfg.state_dir();
        std::fs::create_dir_all(&state).map_err(|source| DaemonError::StateDir {
            path: state.clone(),
            source,
        })?;
        warn_if_untraversable(&state);
        let partitions = Partitions::new(&state, (cfg.partitions.uid_min, cfg.partitions.uid_max))
            .with_quarantine(Duration::from_secs(cfg.partitions.uid_quarantine_s));
        // Whether the existing partitions' uids are host ids is asked now (of `getent`,
        // in child processes) and answered while the store opens.
        partitions.prefetch_host_ids();
        let store =
            Store::open_tuned(&cfg.store_dir(), cfg.cache_bytes(), cfg.flush_interval_ms())?;
        let cgroups = if cfg.partitions.cgroups {
            let home = std::fs::canonicalize(&state).unwrap_or_else(|_| state.clone());
            crate::partition::cgroup::Cgroups::detect(&crate::partition::cgroup::node_tag(
                cfg.node_id().as_str(),
                &home,
            ))
        } else {
            tracing::info!("cgroups disabled by [partitions] cgroups = false: instances are tracked and killed by uid");
            None
        };
        let published = store.published()?;
        let incidents = crate::monitor::incident::Incidents::restore(
            store.next_incident_id()?,
            cfg.monitor.escalate_after,
            store.incidents()?,
        )
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "stored incidents inconsistent; starting from the counter");
            crate::monitor::incident::Incidents::new(
                store.next_incident_id().unwrap_or(1),
                cfg.monitor.escalate_after,
            )
        });
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let backups = backup::Backups::open(&cfg, &store);
        let quota = cfg.outbox_quota();
        let now = monotonic_now();
        let mut d = Daemon {
            outbox: outbox::Outbox::new(store, quota),
            instances: Instances::new(partitions, state.join("partitions"), published, cgroups),
            monitoring: Monitoring::new(
                incidents,
                now,
                crate::monitor::process_usage::system_units(),
                crate::monitor::health::thermal_zone(),
            ),
            links: links::Links::new(now),
            leases: lease::Leases::default(),
            cfg,
            events_tx,
            events_rx,
            counters: Counters::default(),
            shutting_down: false,
            desired_log: RateLimit::default(),
            expiry: Default::default(),
            expiry_log: RateLimit::default(),
            clock_floor_ms: 0,
            master_key: None,
            software: software::Software::new(crate::artifact::Cache::new(&state)),
            api_stats: Default::default(),
            observed_unflushed: false,
            appended_this_turn: false,
            execs: BTreeMap::new(),
            relay: crate::relay::Held::new(),
            relay_counters: mesh::RelayCounters::default(),
            relay_log: RateLimit::default(),
            relay_shed_log: RateLimit::default(),
            mesh: None,
            backups,
            uploads: backup_upload::Uploads::default(),
            restores: restore::Restores::default(),
        };
        d.master_key = d.cfg.master_key();
        match d.outbox.store.desired() {
            Ok(applied) => d.load_terms(applied.as_ref()),
            Err(e) => d.store_failed(&e),
        }
        d.kill_leftovers()?;
        d.thaw_leftovers();
        d.restore_expiry();
        d.restore_imports();
        d.restore_mesh();
        Ok(d)
    }

    /// Reports what this node is (board, arch, capacity, labels) at every boot.
    fn record_node_info(&mut self) {
        let profile = self.cfg.profile();
        let mem_total = crate::monitor::health::read(&self.cfg.state_dir(), None).mem_total;
        let cores = std::thread::available_parallelism()
            .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX));
        let kind = RecordKind::NodeInfo {
            board: profile.id.clone(),
            arch: TARGET.to_string(),
            cores,
            mem_total,
            max_instances: self.cfg.max_instances(),
            labels: self.cfg.node.labels.clone(),
            region: self.cfg.node.region.clone(),
        };
        self.record(kind);
    }

    /// Appends a record; a failure is counted and logged (rate-limited), never fatal.
    pub(crate) fn record(&mut self, kind: RecordKind) {
        let appended = self.outbox.append(now_ms(), kind);
        self.after_append(appended);
    }

    /// After an append: on success shed if a pass is due; the links hear of it at the
    /// end of the turn ([`Daemon::end_turn`]).
    pub(crate) fn after_append(&mut self, appended: Result<(), StoreError>) {
        match appended {
            Ok(()) => {
                self.shed();
                self.appended_this_turn = true;
            }
            Err(e) => self.store_failed(&e),
        }
    }

    /// The end of one turn of the loop: wake the links once for every record the turn
    /// appended. Records are flushed when a link loads them, not here.
    fn end_turn(&mut self) {
        if std::mem::take(&mut self.appended_this_turn) {
            self.links.outbox_changed();
        }
        // Records nobody revealed yet still reach the disk within the flush interval.
        if let Err(e) = self.outbox.store.flush_if_due(monotonic_now()) {
            self.store_failed(&e);
        }
    }

    /// Runs the shedding pass the outbox plans, if one is due, and reports it.
    fn shed(&mut self) {
        let plan = match self.outbox.shed_plan(self.relay.total()) {
            Ok(Some(plan)) => plan,
            Ok(None) => return,
            Err(e) => return self.store_failed(&e),
        };
        let (st, report) = match self.outbox.apply_shed(&plan) {
            Ok(done) => done,
            Err(e) => return self.store_failed(&e),
        };
        self.counters.shed_dropped_promise += st.dropped_promise;
        self.counters.shed_dropped_health += st.dropped_health;
        self.counters.shed_merged_usage += st.merged_usage;
        if let Some(report) = report {
            if let Err(e) = self.outbox.append_report(now_ms(), report) {
                self.store_failed(&e);
            }
        }
    }

    /// Confirms the execs of the children this turn started (they started side by
    /// side), then makes the observed states written since the last flush durable: one
    /// flush for a burst (a restart's two states, a boot's starts). Called when an event
    /// is handled, before an answer leaves and before the loop waits again.
    pub(crate) fn flush_observed(&mut self) {
        self.confirm_execs();
        if !std::mem::take(&mut self.observed_unflushed) {
            return;
        }
        if let Err(e) = self.outbox.store.flush_records() {
            self.store_failed(&e);
        }
    }

    pub(crate) fn store_failed(&mut self, e: &StoreError) {
        self.counters.store_errors += 1;
        self.outbox.failed(e);
    }

    /// Performs what a part asked, in order.
    pub(crate) fn dispatch(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Record(kind) => self.record(kind),
                Effect::SaveIncident(incident) => {
                    if let Err(e) = self.outbox.store.put_incident(&incident) {
                        self.store_failed(&e);
                    }
                }
                Effect::ForgetIncident(id) => {
                    if let Err(e) = self.outbox.store.remove_incident(id) {
                        self.store_failed(&e);
                    }
                }
                Effect::Repair(instance) => {
                    let running = self.instances.slots.get(&instance).is_some_and(|s| {
                        s.lifecycle.status() == hedge_wire::InstanceStatus::Running
                    });
                    if running {
                        tracing::info!(instance = %instance, "self-repair: restarting");
                        self.counters.repairs += 1;
                        self.drive(&instance, crate::supervisor::lifecycle::Input::Restart);
                    }
                }
                Effect::Usage {
                    instance,
                    record,
                    state,
                } => {
                    let appended = self
                        .outbox
                        .append_usage(now_ms(), record, &instance, &state);
                    self.after_append(appended);
                }
                Effect::SaveUsage { instance, state } => {
                    if let Err(e) = self.outbox.store.put_usage(&instance, &state) {
                        self.store_failed(&e);
                    }
                }
            }
        }
    }

    /// The desired instances: the master's desired state, the instances held over from
    /// an earlier master epoch (`crate::holdover`), and local requests, or `None`
    /// when the store cannot say. An unreadable desired set is never an empty one:
    /// reconciling against it would destroy every instance and its partition.
    fn desired(&mut self) -> Option<BTreeMap<Name, InstanceRequest>> {
        let read = self.outbox.store.desired().and_then(|master| {
            let held = self.outbox.store.held_over()?;
            Ok((master, held, self.outbox.store.locals()?))
        });
        match read {
            Ok((master, held, locals)) => {
                self.backups.set_master(
                    master
                        .as_ref()
                        .map(|m| m.backups.clone())
                        .unwrap_or_default(),
                );
                Some(reconcile::desired_set(master, held, locals))
            }
            Err(e) => {
                self.store_failed(&e);
                None
            }
        }
    }

    /// Diffs desired against held and applies the steps.
    fn reconcile(&mut self) {
        if self.shutting_down {
            return;
        }
        let Some(mut desired) = self.desired() else {
            self.counters.reconcile_skipped += 1;
            tracing::warn!("desired state unreadable; reconciliation skipped, nothing destroyed");
            return;
        };
        // Leased copies run only while the lease is held (fence records go first).
        self.gate_by_lease(&mut desired);
        // Instances a local restore holds stay stopped until it is done.
        self.gate_by_restore(&mut desired);
        // Instances waiting for a remote restore are created, never started.
        self.gate_by_remote_restore(&mut desired);
        let steps = reconcile::diff(&desired, &self.instances.held(), &self.instances.on_disk());
        for step in steps {
            tracing::debug!(?step, "reconcile");
            self.apply(step);
        }
        self.drive_restores();
    }

    /// Runs until `shutdown` resolves, serving the local API on `listener`.
    pub async fn run(
        mut self,
        listener: UnixListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), DaemonError> {
        let (calls_tx, mut calls_rx) = mpsc::channel::<ApiCall>(16);
        let metrics_server = match self.cfg.metrics.listen {
            Some(addr) => match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => {
                    tracing::info!(%addr, "metrics endpoint listening");
                    Some(tokio::spawn(metrics::serve(l, calls_tx.clone())))
                }
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "cannot bind the metrics endpoint; running without it");
                    None
                }
            },
            None => None,
        };
        let server = tokio::spawn(api::serve(
            listener,
            calls_tx,
            api::Admission::from_config(&self.cfg),
            self.api_stats.clone(),
        ));
        self.start_uplink();
        self.start_mesh();
        self.start_backup_sync();
        let credentials = self.start_credentials();
        self.record_node_info();
        let wanted = self.desired().map_or(0, |d| d.len());
        tracing::info!(node = %self.cfg.node_id(), instances = wanted, "node up; reconciling offline");
        self.reconcile();
        self.flush_observed();
        // The boot's first starts are done: later ones ask about host ids afresh. The
        // range check only warns; it enumerates the host's users off the loop.
        self.instances.partitions.forget_prefetched();
        let range_check = self.instances.partitions.range_check();
        let _ = std::thread::Builder::new()
            .name("hedge-uid-range".into())
            .spawn(range_check);
        tokio::pin!(shutdown);
        let mut published_poll = tokio::time::interval(published::POLL);
        published_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stop_deadline: Option<Instant> = None;
        loop {
            self.backup_poll();
            self.end_turn();
            if self.shutting_down && self.instances.all_idle() {
                break;
            }
            let backup_wake = if self.shutting_down {
                None
            } else {
                self.backup_deadline()
            };
            let wake = self
                .instances
                .deadline()
                .into_iter()
                .chain(stop_deadline)
                .chain(self.outbox.store.flush_deadline())
                .chain(backup_wake)
                .chain(if self.shutting_down {
                    None
                } else {
                    self.monitor_deadline()
                        .into_iter()
                        .chain(self.lease_deadline())
                        .min()
                })
                .min()
                .unwrap_or_else(|| monotonic_now() + Duration::from_secs(3600));
            tokio::select! {
                Some(ev) = self.events_rx.recv() => {
                    if matches!(ev, Event::Credentials) {
                        self.links.stop(links::LinkId::Uplink);
                        self.start_uplink();
                        // The mesh's sessions present the same certificate.
                        self.start_mesh();
                        self.software.source = None;
                        // Uploads and restores present the same certificate.
                        self.start_backup_sync();
                    } else {
                        self.on_event(ev);
                    }
                }
                (link, msg) = self.links.recv() => self.on_link(link, msg),
                Some(call) = calls_rx.recv(), if !self.shutting_down => {
                    self.counters.api_refused = self.api_stats.refused();
                    // Snapshots, the catalog and restores are answered when done.
                    if let Some(call) = self.take_backup_call(call) {
                        let answer = self.on_call(call.request);
                        self.flush_observed();
                        let _ = call.reply.send(answer);
                    }
                }
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {
                    if stop_deadline.is_some_and(|t| monotonic_now() >= t) {
                        tracing::warn!("instances did not stop in time; leaving");
                        break;
                    }
                    self.tick();
                    if !self.shutting_down {
                        self.monitor_tick();
                        self.lease_tick();
                        self.backup_tick();
                    }
                }
                _ = published_poll.tick(), if !self.shutting_down => self.poll_connections(),
                () = &mut shutdown, if !self.shutting_down => {
                    tracing::info!("shutting down: stopping instances");
                    // Account for what ran up to now before the processes go.
                    self.sample_usage(true);
                    self.shutting_down = true;
                    stop_deadline = Some(monotonic_now() + self.cfg.policy().grace * 2 + Duration::from_secs(1));
                    for n in self.instances.names() {
                        self.drive(&n, crate::supervisor::lifecycle::Input::Stop);
                    }
                }
            }
            self.flush_observed();
        }
        self.flush_observed();
        server.abort();
        if let Some(c) = credentials {
            c.abort();
        }
        self.stop_mesh();
        self.links.stop_all();
        self.stop_downloads();
        self.uploads.stop();
        self.restores.stop_all();
        if let Some(m) = metrics_server {
            m.abort();
        }
        let _ = std::fs::remove_file(self.cfg.socket_path());
        if let Some(cgs) = &self.instances.cgroups {
            cgs.remove_empty();
        }
        tracing::info!("node stopped");
        Ok(())
    }

    /// After a full disk: once space is back, reopen the store so records resume.
    pub(crate) fn recover_store(&mut self) {
        let state = self.cfg.state_dir();
        let disk_free = || crate::monitor::health::read(&state, None).disk_free;
        if let Err(e) = self.outbox.recover(disk_free) {
            self.store_failed(&e);
        }
    }

    fn tick(&mut self) {
        for n in self.instances.due(monotonic_now()) {
            self.drive(&n, crate::supervisor::lifecycle::Input::Tick);
        }
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Exited { name, pid, status } => {
                tracing::info!(instance = %name, pid, %status, "instance exited");
                self.drive(
                    &name,
                    crate::supervisor::lifecycle::Input::Exited { pid, status },
                );
            }
            Event::Checked {
                name,
                index,
                generation,
                result,
            } => self.on_check(name, index, generation, result),
            Event::Artifact { sha256, attempt } => self.on_artifact(sha256, attempt),
            Event::DiskWalked { name, usage } => self.on_disk_walked(name, usage),
            Event::Backup(done) => self.on_backup_done(done),
            Event::Upload(r) => self.on_upload(r),
            Event::Restore(r) => self.on_restore(r),
            Event::Credentials => {}
        }
    }
}
