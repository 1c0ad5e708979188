//! Remote restores: an instance the master moved here with a restore directive gets its
//! paths rebuilt from the snapshot before it ever starts.
//!
//! Contract: a directive of the applied desired state is *pending* while its instance
//! is desired (not `destroyed`) and the store's marker (`store::restored`) does not
//! name the directive's `(source, snapshot)` ([`pending`], pure). Reconcile gates every
//! pending instance to `stopped` ([`Daemon::gate_by_remote_restore`]; it is created, so its
//! partition exists, but never started), and one task per pending instance
//! ([`run`]) does, off the loop: the grant (`RestoreGrant`: header and key, given only
//! to this node while the master's restore is open), the import into the vault, then
//! `missing_chunks` → `get_chunk` from the source's namespace → `put_chunk` (which
//! checks each chunk) until nothing is missing; then it asks the loop for the
//! partition ([`Report::Ready`]: answered only once the instance is idle) and runs
//! `Vault::restore` (staged, every chunk verified, then swapped in). Only after that
//! does the loop write the marker (durably), append `Backup { Restored { source } }`
//! and reconcile: the instance starts with the restored data.
//!
//! A failure leaves the instance stopped. A refused grant, a damaged chunk (named with
//! its snapshot) or a vault error is a `Backup { RestoreFailed { source } }` record (one
//! per distinct message, per task); a network error is only logged. Every failure is
//! retried with backoff (2 s doubling to 5 min, ±20 %), so a restore re-issued at the
//! master (a new grant) or a repaired blob store goes through without a restart. A
//! daemon restart finds the directive in the stored desired state and no marker, and
//! starts over (the chunks already fetched stay in the vault). A directive that leaves
//! the desired state, or changes, stops its task.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hedge_wire::{
    BackupEvent, InstanceRequest, Name, RecordKind, RequestedState, RestoreDirective, SnapshotId,
};
use tokio::sync::oneshot;

use super::blob_ports::{blocking, BlobPort, PortError, VaultPort};
use super::Daemon;

/// First retry delay after a failed attempt.
const RETRY_FIRST: Duration = Duration::from_secs(2);
/// Longest retry delay.
const RETRY_MAX: Duration = Duration::from_secs(300);
/// How soon the loop is asked again for a partition still in use.
const READY_POLL: Duration = Duration::from_millis(500);
/// Fetch rounds after which missing chunks that do not go away are an error.
const MAX_ROUNDS: usize = 16;

/// The partition a restore writes into: its directory and owner (uid, gid).
pub(crate) type Target = (PathBuf, Option<(u32, u32)>);

/// The directives to carry out now: those whose instance is desired (and not to be
/// destroyed) and not marked restored from that very snapshot (`done`).
pub(crate) fn pending<'a>(
    directives: &'a [RestoreDirective],
    desired: &BTreeMap<Name, InstanceRequest>,
    done: impl Fn(&Name) -> Option<(Name, SnapshotId)>,
) -> Vec<&'a RestoreDirective> {
    directives
        .iter()
        .filter(|d| {
            desired
                .get(&d.instance)
                .is_some_and(|r| r.state != RequestedState::Destroyed)
        })
        .filter(|d| done(&d.instance) != Some((d.source.clone(), d.snapshot)))
        .collect()
}

/// What a restore task tells the loop.
#[derive(Debug)]
pub(crate) enum Report {
    /// Every chunk is here: may the restore write into the partition now? The loop
    /// answers with it once the instance is idle, `None` until then.
    Ready {
        directive: RestoreDirective,
        reply: oneshot::Sender<Option<Target>>,
    },
    /// The paths are rebuilt.
    Restored {
        directive: RestoreDirective,
        /// Chunks fetched from the master by this attempt.
        fetched: u64,
    },
    /// An attempt failed; the task retries. `record`: the message is new (say it to
    /// the master), else only logged.
    Failed {
        directive: RestoreDirective,
        message: String,
        record: bool,
    },
}

/// What a restore task works with.
pub(crate) struct Restorer<B, V> {
    pub blob: Arc<B>,
    pub vault: Arc<V>,
    /// To the loop; `false` when the loop is gone.
    pub report: Arc<dyn Fn(Report) -> bool + Send + Sync>,
}

impl<B, V> Clone for Restorer<B, V> {
    fn clone(&self) -> Self {
        Restorer {
            blob: self.blob.clone(),
            vault: self.vault.clone(),
            report: self.report.clone(),
        }
    }
}

/// Why an attempt stopped.
enum Stop {
    Failed(PortError),
    /// The loop is gone (shutdown).
    Gone,
}

impl From<PortError> for Stop {
    fn from(e: PortError) -> Self {
        Stop::Failed(e)
    }
}

/// One attempt: grant, import, fetch what is missing, restore. Returns the chunks
/// fetched.
async fn attempt<B: BlobPort, V: VaultPort>(
    r: &Restorer<B, V>,
    d: &RestoreDirective,
) -> Result<u64, Stop> {
    let grant = r.blob.grant(&d.instance, d.snapshot).await?;
    let h = &grant.header;
    if h.id != d.snapshot || h.node != d.source || h.instance != d.instance {
        return Err(PortError::Refused(format!(
            "the master granted snapshot {} of {} from {}, not the one asked",
            h.id, h.instance, h.node
        ))
        .into());
    }
    blocking(&r.vault, move |v| v.import(&grant)).await?;
    let mut fetched = 0u64;
    for round in 0.. {
        let (inst, id) = (d.instance.clone(), d.snapshot);
        let missing = blocking(&r.vault, move |v| v.missing_chunks(&inst, id)).await?;
        if missing.is_empty() {
            break;
        }
        if round == MAX_ROUNDS {
            return Err(PortError::Vault(format!(
                "{} chunks of snapshot {} still missing after {MAX_ROUNDS} rounds",
                missing.len(),
                d.snapshot
            ))
            .into());
        }
        for chunk in missing {
            let data = r.blob.get_chunk(&d.source, &chunk).await?;
            blocking(&r.vault, move |v| v.put_chunk(&chunk, &data))
                .await
                .map_err(|e| e.in_snapshot(d.snapshot))?;
            fetched += 1;
        }
    }
    let (path, owner) = loop {
        let (tx, rx) = oneshot::channel();
        let ask = Report::Ready {
            directive: d.clone(),
            reply: tx,
        };
        if !(r.report)(ask) {
            return Err(Stop::Gone);
        }
        match rx.await {
            Ok(Some(t)) => break t,
            Ok(None) => tokio::time::sleep(READY_POLL).await,
            Err(_) => return Err(Stop::Gone),
        }
    };
    let (inst, id) = (d.instance.clone(), d.snapshot);
    blocking(&r.vault, move |v| v.restore(&inst, id, &path, owner))
        .await
        .map_err(|e| e.in_snapshot(d.snapshot))?;
    Ok(fetched)
}

/// A restore task: attempts until one succeeds (or the loop goes away).
pub(crate) async fn run<B: BlobPort, V: VaultPort>(r: Restorer<B, V>, d: RestoreDirective) {
    let mut delay = RETRY_FIRST;
    let mut last = String::new();
    loop {
        match attempt(&r, &d).await {
            Ok(fetched) => {
                let _ = (r.report)(Report::Restored {
                    directive: d,
                    fetched,
                });
                return;
            }
            Err(Stop::Gone) => return,
            Err(Stop::Failed(e)) => {
                let message = format!(
                    "restore of {} from snapshot {} of {}: {e}",
                    d.instance, d.snapshot, d.source
                );
                let record = !e.transient() && message != last;
                if record {
                    last.clone_from(&message);
                }
                let report = Report::Failed {
                    directive: d.clone(),
                    message,
                    record,
                };
                if !(r.report)(report) {
                    return;
                }
            }
        }
        tokio::time::sleep(delay.mul_f64(0.8 + 0.4 * fastrand::f64())).await;
        delay = (delay * 2).min(RETRY_MAX);
    }
}

/// Starts a restore task for a directive.
pub(crate) type Spawner =
    Box<dyn Fn(RestoreDirective) -> tokio::task::JoinHandle<()> + Send + Sync>;

/// The daemon's remote restores.
#[derive(Default)]
pub(crate) struct Restores {
    /// Running tasks by instance, with the directive each carries out.
    tasks: BTreeMap<Name, (RestoreDirective, tokio::task::JoinHandle<()>)>,
    /// The directives the last gate kept from starting.
    pending: BTreeMap<Name, RestoreDirective>,
    /// Starts a task; `None` until the vault and the blob service are set up.
    pub(crate) spawner: Option<Spawner>,
}

impl Restores {
    /// Stops every task (at shutdown).
    pub(crate) fn stop_all(&mut self) {
        for (_, (_, t)) in std::mem::take(&mut self.tasks) {
            t.abort();
        }
    }
}

impl Daemon {
    /// Keeps every instance with a pending restore directive from starting; stops the
    /// tasks of directives no longer pending.
    pub(super) fn gate_by_remote_restore(&mut self, desired: &mut BTreeMap<Name, InstanceRequest>) {
        let directives = match self.outbox.store.desired() {
            Ok(d) => d.map(|d| d.restores).unwrap_or_default(),
            Err(e) => {
                self.store_failed(&e);
                // Unknown: keep what was gated gated.
                for name in self.restores.pending.keys() {
                    if let Some(r) = desired.get_mut(name) {
                        r.state = RequestedState::Stopped;
                    }
                }
                return;
            }
        };
        let store = &self.outbox.store;
        let now: BTreeMap<Name, RestoreDirective> =
            pending(&directives, desired, |n| store.restored(n).ok().flatten())
                .into_iter()
                .map(|d| (d.instance.clone(), d.clone()))
                .collect();
        for name in now.keys() {
            if let Some(r) = desired.get_mut(name) {
                if r.state == RequestedState::Started && !self.restores.pending.contains_key(name) {
                    tracing::info!(instance = %name, "restore pending: the instance starts once it is restored");
                }
                r.state = RequestedState::Stopped;
            }
        }
        self.restores.tasks.retain(|name, (d, task)| {
            let keep = now.get(name) == Some(d) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        self.restores.pending = now;
    }

    /// Starts a task for every pending directive without one (after the steps that
    /// created their instances).
    pub(super) fn drive_restores(&mut self) {
        let Some(spawn) = &self.restores.spawner else {
            return;
        };
        for (name, d) in &self.restores.pending {
            if self.restores.tasks.contains_key(name) || !self.instances.slots.contains_key(name) {
                continue;
            }
            tracing::info!(instance = %name, source = %d.source, snapshot = %d.snapshot, "restore: fetching the snapshot from the master");
            let task = spawn(d.clone());
            self.restores.tasks.insert(name.clone(), (d.clone(), task));
        }
    }

    /// A restore task reported.
    pub(super) fn on_restore(&mut self, r: Report) {
        match r {
            Report::Ready { directive, reply } => {
                let _ = reply.send(self.restore_target(&directive));
            }
            Report::Restored { directive, fetched } => {
                let d = directive;
                if self.restores.pending.get(&d.instance) != Some(&d) {
                    return;
                }
                if let Err(e) = self
                    .outbox
                    .store
                    .mark_restored(&d.instance, &d.source, d.snapshot)
                {
                    // Not marked: the instance stays stopped; the directive is carried
                    // out again at the next reconcile.
                    self.store_failed(&e);
                    self.restores.tasks.remove(&d.instance);
                    return;
                }
                tracing::info!(instance = %d.instance, source = %d.source, snapshot = %d.snapshot, fetched, "restored; starting the instance");
                self.restores.tasks.remove(&d.instance);
                self.record(RecordKind::Backup {
                    instance: d.instance.clone(),
                    snapshot: d.snapshot,
                    event: BackupEvent::Restored {
                        source: d.source.clone(),
                    },
                    message: format!("{fetched} chunks fetched"),
                });
                self.reconcile();
            }
            Report::Failed {
                directive,
                message,
                record,
            } => {
                tracing::warn!(instance = %directive.instance, %message, "restore failed; the instance stays stopped; retrying");
                if record {
                    self.record(RecordKind::Backup {
                        instance: directive.instance,
                        snapshot: directive.snapshot,
                        event: BackupEvent::RestoreFailed {
                            source: directive.source,
                        },
                        message: crate::monitor::bounded_message(message),
                    });
                }
            }
        }
    }

    /// The partition `d` may restore into now: its instance still waits for this very
    /// restore and is idle (no process).
    fn restore_target(&mut self, d: &RestoreDirective) -> Option<Target> {
        if self.restores.pending.get(&d.instance) != Some(d) {
            return None;
        }
        let slot = self.instances.slots.get(&d.instance)?;
        if !slot.lifecycle.is_idle() || slot.destroying {
            return None;
        }
        match self.instances.partitions.ensure(&d.instance) {
            Ok(p) => Some((p.dir, p.owner)),
            Err(e) => {
                tracing::warn!(instance = %d.instance, error = %e, "restore: cannot prepare the partition");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests;
