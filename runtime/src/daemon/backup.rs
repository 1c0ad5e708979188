//! The node's side of taking snapshots: when (the schedule), how (consistency) and the
//! local API's `backup`, `backups` and `restore`.
//!
//! Contract:
//! - The policies in force are the applied desired state's `backups` (for the master's
//!   instances) and the local requests' policies (the `local_backup` store tree), for
//!   instances the node holds. [`crate::backup::schedule::Schedule`] says which is due
//!   next; it starts from the vault's catalog at boot, so a restart neither loses nor
//!   repeats a snapshot's time.
//! - One job at a time — a snapshot or a local restore — on its own thread (`job.rs`),
//!   never on the loop: the loop gathers what the job needs, the thread reports back as
//!   [`super::Event::Backup`]. A failed backup is retried after the schedule's bounded
//!   backoff, recorded (`RecordKind::Backup` with `Failed`, snapshot id 0 — there is no
//!   snapshot — and the reason) and logged at most every ten seconds. A snapshot is recorded as `Taken` with its sizes and
//!   consistency, then the instance's snapshots are pruned to the policy's `retain`,
//!   sparing not-uploaded ones as `job::keep` says.
//! - `hedge node backup NAME` queues a snapshot of any supervised instance (its policy's
//!   paths and command, else `srv`) and answers once it is in the catalog.
//!   `hedge node backups` lists the catalog (read off the loop).
//!   `hedge node restore NAME --snapshot ID` refuses a snapshot not in this node's
//!   catalog (as read at boot and after each job, plus every snapshot taken); else it holds the instance stopped (reconciliation sees it `stopped`),
//!   waits for its processes to end, restores off the loop, then lets it start again
//!   as requested. Other instances are supervised throughout.
//! - At boot (before the loop) the vault is opened, its catalog read and every instance
//!   cgroup of an earlier run thawed: a daemon killed mid-snapshot leaves none frozen.
//!   The daemon has one `Vault`; the uploader and remote restores use it too.
//! - Pruning keeps the newest `retain`, and, on a node that uploads (an uplink with the
//!   master's HTTPS endpoint), the not-uploaded ones among the newest `2 × retain`: an
//!   unsent snapshot is never pruned before the uploader had a chance, yet a node cut
//!   off for long holds at most twice its retain (`job::keep`).

mod command;
mod freeze;
mod job;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hedge_wire::{
    BackupEvent, BackupPolicy, InstanceRequest, InstanceStatus, Name, RecordKind, RequestedState,
    SnapshotId,
};
use tokio::sync::oneshot;

use super::api::ApiCall;
use super::{now_ms, Daemon, Event, RateLimit};
use crate::backup::schedule::Schedule;
use crate::backup::{LocalSnapshot, RestoreSummary, Vault};
use crate::config::NodeConfig;
use crate::local_api::{self, Answer, ApiRequest, Refusal};
use crate::store::Store;

/// Where an answer goes.
type Reply = oneshot::Sender<Result<Answer, Refusal>>;

/// How often the catalog is re-read for `status` (the uploader marks snapshots).
const REFRESH: Duration = Duration::from_secs(30);
/// Longest sleep of the loop on behalf of backups (the policies may change meanwhile).
const RECHECK: Duration = Duration::from_secs(60);

/// What the backup thread finished.
#[derive(Debug)]
pub(crate) enum Done {
    /// A snapshot (taken, or why not).
    Snapshot {
        instance: Name,
        result: Result<Box<job::Taken>, String>,
    },
    /// A local restore.
    Restore {
        instance: Name,
        snapshot: SnapshotId,
        result: Result<RestoreSummary, String>,
    },
    /// The catalog, read.
    Catalog(Result<Vec<LocalSnapshot>, String>),
}

/// What the backup thread does now.
enum Busy {
    Snapshot { instance: Name, replies: Vec<Reply> },
    Restore { instance: Name, reply: Reply },
}

/// A local restore waiting for its instance to stop.
struct Waiting {
    snapshot: SnapshotId,
    reply: Reply,
}

/// The backup driver's state.
pub(super) struct Backups {
    vault: Option<Arc<Vault>>,
    /// Why there is no vault.
    unavailable: String,
    schedule: Schedule,
    /// The applied desired state's policies.
    master: Vec<BackupPolicy>,
    /// Local requests' policies.
    local: BTreeMap<Name, BackupPolicy>,
    busy: Option<Busy>,
    /// Snapshots asked for on the API, in order, with who waits for each.
    asked: VecDeque<(Name, Vec<Reply>)>,
    /// Local restores waiting for their instance to stop.
    restores: BTreeMap<Name, Waiting>,
    /// The newest snapshot per instance (for `status`).
    newest: BTreeMap<Name, LocalSnapshot>,
    /// Every snapshot in the catalog, by instance (local restores accept only these).
    ids: BTreeMap<Name, BTreeSet<SnapshotId>>,
    /// `backups` answers waiting for the catalog read.
    lists: Vec<(Option<Name>, Reply)>,
    reading: bool,
    refresh_at: Option<Instant>,
    log: RateLimit,
}

impl Backups {
    /// Opens the vault (`[backup] dir`) and reads its catalog and the local policies.
    /// Nothing here is fatal: without a vault, backups are unavailable and say why.
    pub(super) fn open(cfg: &NodeConfig, store: &Store) -> Backups {
        let dir = cfg.backup_dir();
        let (vault, unavailable, catalog) = match Vault::open_as(&dir, cfg.node_id()) {
            Ok(v) => match v.snapshots(None) {
                Ok(list) => (Some(Arc::new(v)), String::new(), list),
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "backup catalog unreadable: snapshots are taken from scratch");
                    (Some(Arc::new(v)), String::new(), Vec::new())
                }
            },
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "backups unavailable: the vault cannot be opened");
                (None, e.to_string(), Vec::new())
            }
        };
        let local = store
            .local_backups()
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "local backup policies unreadable");
                Vec::new()
            })
            .into_iter()
            .map(|p| (p.instance.clone(), p))
            .collect();
        let mut b = Backups {
            vault,
            unavailable,
            schedule: Schedule::new(catalog.iter().map(|s| (s.instance.clone(), s.taken_ms))),
            master: Vec::new(),
            local,
            busy: None,
            asked: VecDeque::new(),
            restores: BTreeMap::new(),
            newest: BTreeMap::new(),
            ids: BTreeMap::new(),
            lists: Vec::new(),
            reading: false,
            refresh_at: None,
            log: RateLimit::default(),
        };
        b.set_catalog(catalog);
        b
    }

    /// The vault, for the uploader and remote restores (`None`: unavailable). One
    /// instance for the whole daemon: its lock keeps a prune from sweeping chunks that
    /// another job is writing.
    pub(super) fn vault(&self) -> Option<Arc<Vault>> {
        self.vault.clone()
    }

    /// The uploader sent `id` of `instance` to the master.
    pub(super) fn uploaded(&mut self, instance: &Name, id: SnapshotId) {
        if let Some(s) = self.newest.get_mut(instance).filter(|s| s.id == id) {
            s.uploaded = true;
        }
    }

    /// Why there is no vault.
    pub(super) fn unavailable(&self) -> &str {
        &self.unavailable
    }

    /// The applied desired state's policies.
    pub(super) fn set_master(&mut self, policies: Vec<BackupPolicy>) {
        self.master = policies;
    }

    fn set_catalog(&mut self, catalog: Vec<LocalSnapshot>) {
        self.newest.clear();
        self.ids.clear();
        for s in catalog {
            self.ids.entry(s.instance.clone()).or_default().insert(s.id);
            match self.newest.get(&s.instance) {
                Some(n) if n.taken_ms > s.taken_ms => {}
                _ => {
                    self.newest.insert(s.instance.clone(), s);
                }
            }
        }
    }

    /// The newest snapshot of `instance`, as `status` shows it.
    pub(super) fn last_snapshot(&self, instance: &Name) -> Option<local_api::LastSnapshot> {
        self.newest.get(instance).map(|s| local_api::LastSnapshot {
            id: s.id.to_string(),
            taken_ms: s.taken_ms,
            uploaded: s.uploaded,
        })
    }

    /// Whether a local restore holds `instance` stopped.
    fn holds(&self, instance: &Name) -> bool {
        self.restores.contains_key(instance)
            || matches!(&self.busy, Some(Busy::Restore { instance: i, .. }) if i == instance)
    }

    /// The policy of `instance`: the master's, else a local one.
    fn policy_of(&self, instance: &Name) -> Option<&BackupPolicy> {
        self.master
            .iter()
            .find(|p| &p.instance == instance)
            .or_else(|| self.local.get(instance))
    }
}

fn view(s: &LocalSnapshot) -> local_api::SnapshotView {
    local_api::SnapshotView {
        instance: s.instance.to_string(),
        id: s.id.to_string(),
        taken_ms: s.taken_ms,
        bytes: s.bytes,
        new_bytes: s.new_bytes,
        chunks: s.chunks,
        consistency: s.consistency,
        uploaded: s.uploaded,
        source: s.source.as_ref().map(ToString::to_string),
    }
}

impl Daemon {
    /// Takes the calls the backup driver answers later (`backup`, `backups`,
    /// `restore`); returns the others.
    pub(super) fn take_backup_call(&mut self, call: ApiCall) -> Option<ApiCall> {
        let reply = call.reply;
        match call.request {
            ApiRequest::Backup { name } => self.ask_backup(&name, reply),
            ApiRequest::Backups { name } => self.ask_list(name.as_deref(), reply),
            ApiRequest::Restore { name, snapshot } => self.ask_restore(&name, &snapshot, reply),
            request => return Some(ApiCall { request, reply }),
        }
        self.backup_poll();
        None
    }

    fn answer(&mut self, reply: Reply, answer: Result<Answer, Refusal>) {
        // Records are durable before anyone is shown them.
        if let Err(e) = self.outbox.store.flush_records() {
            self.store_failed(&e);
        }
        let _ = reply.send(answer);
    }

    /// The instance `name` names, if it is valid and this node has it.
    fn known_instance(&self, name: &str) -> Result<Name, Refusal> {
        let n = super::answers::valid_name(name)?;
        if !self.instances.slots.contains_key(&n) {
            return Err(Refusal::NotFound { name: name.into() });
        }
        Ok(n)
    }

    fn ask_backup(&mut self, name: &str, reply: Reply) {
        let n = match self.known_instance(name) {
            Ok(n) => n,
            Err(r) => return self.answer(reply, Err(r)),
        };
        if self.backups.vault.is_none() {
            let reason = format!("backups unavailable: {}", self.backups.unavailable());
            return self.answer(
                reply,
                Err(Refusal::Backup {
                    name: name.into(),
                    reason,
                }),
            );
        }
        if self.backups.holds(&n) {
            return self.answer(reply, Err(Refusal::BackupBusy { name: name.into() }));
        }
        match self.backups.asked.iter_mut().find(|(a, _)| a == &n) {
            Some((_, replies)) => replies.push(reply),
            None => self.backups.asked.push_back((n, vec![reply])),
        }
    }

    fn ask_list(&mut self, name: Option<&str>, reply: Reply) {
        let n = match name.map(super::answers::valid_name).transpose() {
            Ok(n) => n,
            Err(r) => return self.answer(reply, Err(r)),
        };
        self.backups.lists.push((n, reply));
        self.read_catalog();
    }

    fn ask_restore(&mut self, name: &str, snapshot: &str, reply: Reply) {
        let n = match self.known_instance(name) {
            Ok(n) => n,
            Err(r) => return self.answer(reply, Err(r)),
        };
        let no_snapshot = || Refusal::NoSnapshot {
            name: name.into(),
            snapshot: snapshot.into(),
        };
        let Ok(id) = snapshot.parse::<SnapshotId>() else {
            return self.answer(reply, Err(no_snapshot()));
        };
        if self.backups.holds(&n)
            || matches!(&self.backups.busy, Some(Busy::Snapshot { instance, .. }) if instance == &n)
        {
            return self.answer(reply, Err(Refusal::BackupBusy { name: name.into() }));
        }
        // Only a snapshot in this node's catalog (as last read, and every snapshot taken
        // since): one pruned meanwhile fails in the vault, and says so.
        if self.backups.vault.is_none() {
            let reason = format!("backups unavailable: {}", self.backups.unavailable());
            return self.answer(
                reply,
                Err(Refusal::Restore {
                    name: name.into(),
                    reason,
                }),
            );
        }
        if !self
            .backups
            .ids
            .get(&n)
            .is_some_and(|ids| ids.contains(&id))
        {
            return self.answer(reply, Err(no_snapshot()));
        }
        tracing::info!(instance = %n, snapshot = %id, "local restore: stopping the instance");
        self.backups.restores.insert(
            n,
            Waiting {
                snapshot: id,
                reply,
            },
        );
        self.reconcile();
    }

    /// Keeps instances a local restore holds stopped (called by reconciliation).
    pub(super) fn gate_by_restore(&self, desired: &mut BTreeMap<Name, InstanceRequest>) {
        for (name, req) in desired.iter_mut() {
            if req.state == RequestedState::Started && self.backups.holds(name) {
                req.state = RequestedState::Stopped;
            }
        }
    }

    /// Stores (or drops) a local request's backup policy, after the request itself.
    pub(super) fn local_request_with_backup(
        &mut self,
        request: InstanceRequest,
        backup: Option<BackupPolicy>,
    ) -> Result<Answer, Refusal> {
        use hedge_wire::Validate;
        let name = request.name.clone();
        let destroyed = request.state == RequestedState::Destroyed;
        if let Some(p) = &backup {
            if p.instance != name {
                return Err(Refusal::OutOfBounds {
                    reason: format!(
                        "backup policy of {:?} in the request of {:?}",
                        p.instance.as_str(),
                        name.as_str()
                    ),
                });
            }
            p.validate().map_err(|e| Refusal::OutOfBounds {
                reason: format!("backup: {e}"),
            })?;
        }
        let answer = self.local_request(request)?;
        self.set_local_backup(&name, if destroyed { None } else { backup })?;
        Ok(answer)
    }

    /// Sets or removes the local policy of `name`.
    pub(super) fn set_local_backup(
        &mut self,
        name: &Name,
        policy: Option<BackupPolicy>,
    ) -> Result<(), Refusal> {
        if self.backups.local.get(name) == policy.as_ref() {
            return Ok(());
        }
        let store = &self.outbox.store;
        let stored = match &policy {
            Some(p) => store.put_local_backup(p),
            None => store.remove_local_backup(name),
        };
        stored.map_err(|e| Refusal::Store {
            reason: e.to_string(),
        })?;
        match policy {
            Some(p) => {
                tracing::info!(instance = %name, interval_s = p.interval_s, retain = p.retain, "local backup policy stored");
                self.backups.local.insert(name.clone(), p);
            }
            None => {
                self.backups.local.remove(name);
                self.backups.schedule.forget(name);
            }
        }
        Ok(())
    }

    /// The policies in force: those of instances the node holds and wants.
    fn policies(&self) -> impl Iterator<Item = &BackupPolicy> {
        self.instances
            .slots
            .iter()
            .filter(|(_, s)| !s.destroying && s.request.state != RequestedState::Destroyed)
            .filter_map(|(n, _)| self.backups.policy_of(n))
    }

    /// The instance due next and when, as of wall time `now` (the schedule clamps its
    /// times as it looks).
    fn due_now(&mut self, now: u64) -> Option<(Name, u64)> {
        let mut schedule = std::mem::take(&mut self.backups.schedule);
        let due = schedule.next(self.policies(), now);
        self.backups.schedule = schedule;
        due.map(|d| (d.instance, d.at_ms))
    }

    /// When the loop must wake for backups.
    pub(super) fn backup_deadline(&mut self) -> Option<Instant> {
        let now = super::monotonic_now();
        let refresh = self.backups.refresh_at;
        self.backups.vault.as_ref()?;
        let wall = now_ms();
        let due = self
            .due_now(wall)
            .map(|(_, at_ms)| now + Duration::from_millis(at_ms.saturating_sub(wall)).min(RECHECK));
        due.into_iter().chain(refresh).min()
    }

    /// Runs what is due: the catalog's refresh, then [`Daemon::backup_poll`].
    pub(super) fn backup_tick(&mut self) {
        if self
            .backups
            .refresh_at
            .is_some_and(|t| super::monotonic_now() >= t)
        {
            self.read_catalog();
        }
        self.backup_poll();
    }

    /// Starts the next job if the thread is free: a restore whose instance stopped,
    /// then a snapshot asked for, then one due.
    pub(super) fn backup_poll(&mut self) {
        if self.backups.busy.is_some() || self.shutting_down {
            return;
        }
        let Some(vault) = self.backups.vault.clone() else {
            return;
        };
        let stopped = self.backups.restores.keys().find(|n| self.idle(n)).cloned();
        if let Some(name) = stopped {
            if let Some(w) = self.backups.restores.remove(&name) {
                return self.start_restore(vault, name, w);
            }
        }
        if let Some((name, replies)) = self.backups.asked.pop_front() {
            return self.start_snapshot(vault, name, replies);
        }
        let now = now_ms();
        let Some((name, at_ms)) = self.due_now(now) else {
            return;
        };
        if at_ms > now || self.backups.holds(&name) {
            return;
        }
        if !self.instances.partitions.exists(&name) {
            // Not set up yet (its software is still coming): try again later, quietly.
            tracing::debug!(instance = %name, "backup due before the partition exists; later");
            self.backups.schedule.started(&name);
            self.backups.schedule.failed(&name, now);
            return;
        }
        self.start_snapshot(vault, name, Vec::new());
    }

    /// Whether `name`'s processes are all gone (a restore may begin).
    fn idle(&self, name: &Name) -> bool {
        self.instances.slots.get(name).is_none_or(|s| {
            s.lifecycle.pid().is_none()
                && s.lifecycle.status() != InstanceStatus::Stopping
                && !self.execs.contains_key(name)
        })
    }

    fn start_snapshot(&mut self, vault: Arc<Vault>, name: Name, replies: Vec<Reply>) {
        let Some(slot) = self.instances.slots.get(&name) else {
            for r in replies {
                let _ = r.send(Err(Refusal::NotFound {
                    name: name.to_string(),
                }));
            }
            return;
        };
        let policy = self.backups.policy_of(&name).cloned();
        let partition = self.instances.partitions.path(&name);
        let owner = self
            .instances
            .partitions
            .uid_of(&name)
            .map(|uid| (uid, uid));
        let command = policy.as_ref().filter(|p| !p.command.is_empty()).map(|p| {
            let mut env: Vec<(String, String)> = slot
                .request
                .parameters
                .iter()
                .map(|(k, v)| (crate::render::env_name(k), v.clone()))
                .filter(|(k, _)| !k.is_empty())
                .collect();
            env.push(("HEDGE_INSTANCE".into(), name.to_string()));
            command::CommandSpec {
                argv: p.command.clone(),
                dir: partition.clone(),
                owner,
                env,
                timeout: Duration::from_secs(self.cfg.backup.command_timeout_s),
            }
        });
        let uploads = self.cfg.uplink.enabled && self.cfg.uplink.artifacts.is_some();
        let job = job::SnapshotJob {
            instance: name.clone(),
            partition,
            paths: policy
                .as_ref()
                .map_or_else(|| vec!["srv".to_owned()], |p| p.paths.clone()),
            command,
            cgroup: slot.cgroup.clone(),
            freeze_max: Duration::from_millis(self.cfg.backup.freeze_max_ms),
            prune: policy.as_ref().map(|p| (p.retain, uploads)),
        };
        self.backups.schedule.started(&name);
        self.backups.busy = Some(Busy::Snapshot {
            instance: name.clone(),
            replies,
        });
        tracing::debug!(instance = %name, "backup: taking a snapshot");
        let tx = self.events_tx.clone();
        self.spawn_job(move || {
            let result = std::panic::catch_unwind(|| job::snapshot(&vault, &job))
                .unwrap_or_else(|_| Err("the backup thread panicked".into()))
                .map(Box::new);
            let _ = tx.send(Event::Backup(Done::Snapshot {
                instance: name,
                result,
            }));
        });
    }

    fn start_restore(&mut self, vault: Arc<Vault>, name: Name, w: Waiting) {
        let partition = self.instances.partitions.path(&name);
        let owner = self
            .instances
            .partitions
            .uid_of(&name)
            .map(|uid| (uid, uid));
        let snapshot = w.snapshot;
        self.backups.busy = Some(Busy::Restore {
            instance: name.clone(),
            reply: w.reply,
        });
        tracing::info!(instance = %name, %snapshot, "local restore: the instance stopped; restoring");
        let tx = self.events_tx.clone();
        self.spawn_job(move || {
            let result = std::panic::catch_unwind(|| {
                job::restore(&vault, &name, snapshot, &partition, owner)
            })
            .unwrap_or_else(|_| Err("the restore thread panicked".into()));
            let _ = tx.send(Event::Backup(Done::Restore {
                instance: name,
                snapshot,
                result,
            }));
        });
    }

    /// Runs `f` on the backup thread. A thread that cannot start fails the job at once
    /// (its event is sent from here).
    fn spawn_job(&mut self, f: impl FnOnce() + Send + 'static) {
        let f = std::sync::Arc::new(std::sync::Mutex::new(Some(f)));
        let g = f.clone();
        let started = std::thread::Builder::new()
            .name("hedge-backup".into())
            .spawn(move || {
                if let Some(f) = g.lock().ok().and_then(|mut f| f.take()) {
                    f();
                }
            });
        if let Err(e) = started {
            tracing::warn!(error = %e, "cannot start the backup thread; running the job here");
            if let Some(f) = f.lock().ok().and_then(|mut f| f.take()) {
                f();
            }
        }
    }

    /// Reads the catalog off the loop (for `backups` and `status`).
    fn read_catalog(&mut self) {
        self.backups.refresh_at = Some(super::monotonic_now() + REFRESH);
        if self.backups.reading {
            return;
        }
        let Some(vault) = self.backups.vault.clone() else {
            let reason = format!("backups unavailable: {}", self.backups.unavailable());
            for (n, reply) in std::mem::take(&mut self.backups.lists) {
                let name = n.map(|n| n.to_string()).unwrap_or_default();
                let _ = reply.send(Err(Refusal::Backup {
                    name,
                    reason: reason.clone(),
                }));
            }
            return;
        };
        self.backups.reading = true;
        let tx = self.events_tx.clone();
        std::thread::Builder::new()
            .name("hedge-catalog".into())
            .spawn(move || {
                let result = vault.snapshots(None).map_err(|e| e.to_string());
                let _ = tx.send(Event::Backup(Done::Catalog(result)));
            })
            .map(drop)
            .unwrap_or_else(|e| {
                self.backups.reading = false;
                tracing::warn!(error = %e, "cannot start the catalog reader");
            });
    }

    /// A job or a catalog read finished.
    pub(super) fn on_backup_done(&mut self, done: Done) {
        match done {
            Done::Catalog(result) => {
                self.backups.reading = false;
                let lists = std::mem::take(&mut self.backups.lists);
                match result {
                    Ok(all) => {
                        for (n, reply) in lists {
                            let snapshots = all
                                .iter()
                                .filter(|s| n.as_ref().is_none_or(|n| &s.instance == n))
                                .map(view)
                                .collect();
                            let _ = reply
                                .send(Ok(Answer::Backups(local_api::BackupList { snapshots })));
                        }
                        self.backups.set_catalog(all);
                    }
                    Err(reason) => {
                        for (n, reply) in lists {
                            let name = n.map(|n| n.to_string()).unwrap_or_default();
                            let _ = reply.send(Err(Refusal::Backup {
                                name,
                                reason: reason.clone(),
                            }));
                        }
                    }
                }
            }
            Done::Snapshot { instance, result } => {
                let replies = match self.backups.busy.take() {
                    Some(Busy::Snapshot { replies, .. }) => replies,
                    other => {
                        self.backups.busy = other;
                        Vec::new()
                    }
                };
                let answer = self.snapshot_done(&instance, result);
                for r in replies {
                    self.answer(r, answer.clone());
                }
                self.read_catalog();
            }
            Done::Restore {
                instance,
                snapshot,
                result,
            } => {
                let reply = match self.backups.busy.take() {
                    Some(Busy::Restore { reply, .. }) => Some(reply),
                    other => {
                        self.backups.busy = other;
                        None
                    }
                };
                let answer = self.restore_done(&instance, snapshot, result);
                if let Some(r) = reply {
                    self.answer(r, answer);
                }
                // No longer held: it starts again if it is wanted.
                self.reconcile();
            }
        }
        self.backup_poll();
    }

    fn snapshot_done(
        &mut self,
        instance: &Name,
        result: Result<Box<job::Taken>, String>,
    ) -> Result<Answer, Refusal> {
        match result {
            Ok(t) => {
                let s = &t.snapshot;
                self.backups.schedule.succeeded(instance, s.taken_ms);
                tracing::info!(
                    instance = %instance,
                    snapshot = %s.id,
                    bytes = s.bytes,
                    new_bytes = s.new_bytes,
                    consistency = local_api::consistency_word(s.consistency),
                    frozen_ms = t.frozen_ms,
                    note = %t.note,
                    "snapshot taken"
                );
                match &t.pruned {
                    Some(Ok(p)) if !p.deleted.is_empty() => {
                        tracing::info!(instance = %instance, deleted = p.deleted.len(), kept = p.kept, bytes_removed = p.bytes_removed, "old snapshots pruned");
                    }
                    Some(Err(e)) => self.backup_warn(instance, &format!("pruning failed: {e}")),
                    _ => {}
                }
                self.record(RecordKind::Backup {
                    instance: instance.clone(),
                    snapshot: s.id,
                    event: BackupEvent::Taken {
                        taken_ms: s.taken_ms,
                        bytes: s.bytes,
                        new_bytes: s.new_bytes,
                        consistency: s.consistency,
                    },
                    message: t.note.clone(),
                });
                // The uploader takes it now rather than at its next look.
                self.upload_wake();
                let answer = Answer::Snapshotted(local_api::Snapshotted { snapshot: view(s) });
                self.backups
                    .ids
                    .entry(instance.clone())
                    .or_default()
                    .insert(s.id);
                self.backups
                    .newest
                    .insert(instance.clone(), t.snapshot.clone());
                Ok(answer)
            }
            Err(reason) => {
                self.backups.schedule.failed(instance, now_ms());
                self.backup_warn(instance, &reason);
                self.record(RecordKind::Backup {
                    instance: instance.clone(),
                    snapshot: SnapshotId(0),
                    event: BackupEvent::Failed,
                    message: reason.clone(),
                });
                Err(Refusal::Backup {
                    name: instance.to_string(),
                    reason,
                })
            }
        }
    }

    fn restore_done(
        &mut self,
        instance: &Name,
        snapshot: SnapshotId,
        result: Result<RestoreSummary, String>,
    ) -> Result<Answer, Refusal> {
        let source = self.cfg.node_id().clone();
        match result {
            Ok(sum) => {
                tracing::info!(instance = %instance, %snapshot, files = sum.files, bytes = sum.bytes, "local restore done");
                self.record(RecordKind::Backup {
                    instance: instance.clone(),
                    snapshot,
                    event: BackupEvent::Restored { source },
                    message: "local restore".into(),
                });
                Ok(Answer::Restored(local_api::Restored {
                    name: instance.to_string(),
                    snapshot: snapshot.to_string(),
                    files: sum.files,
                    bytes: sum.bytes,
                }))
            }
            Err(reason) => {
                self.backup_warn(instance, &format!("restore failed: {reason}"));
                self.record(RecordKind::Backup {
                    instance: instance.clone(),
                    snapshot,
                    event: BackupEvent::RestoreFailed { source },
                    message: reason.clone(),
                });
                Err(Refusal::Restore {
                    name: instance.to_string(),
                    reason,
                })
            }
        }
    }

    fn backup_warn(&mut self, instance: &Name, reason: &str) {
        if let Some(suppressed) = self.backups.log.allow(super::monotonic_now()) {
            tracing::warn!(instance = %instance, reason, suppressed, "backup failed");
        }
    }

    /// Thaws every instance cgroup an earlier run may have left frozen.
    pub(super) fn thaw_leftovers(&self) {
        if let Some(cgs) = &self.instances.cgroups {
            for (name, g) in cgs.existing() {
                if g.is_frozen().unwrap_or(false) {
                    tracing::warn!(
                        instance = name,
                        "thawing a cgroup an earlier run left frozen"
                    );
                }
                if g.path().join("cgroup.freeze").exists() {
                    let _ = g.thaw();
                }
            }
        }
    }
}
