//! The uploader: snapshots taken on this node leave for the master's blob service, in
//! the background, whenever the uplink is up.
//!
//! Contract: one task ([`run`]), off the event loop, never in its way (every vault call
//! runs on the blocking pool; the loop only appends the records it reports). While the
//! uplink is up it takes the vault's pending snapshots, oldest first, and for each:
//! the fleet's recovery public key (fetched once, then kept by the vault), the header;
//! then the snapshot's chunk ids streamed from disk in batches of at most
//! [`HAVE_BATCH`], each asked with `have`, and only the chunks the master lacks are
//! read and put, one at a time, each charged to the `[backup] upload_bytes_per_s`
//! token bucket (`bucket`) before it goes; then the snapshot itself. Only when the
//! master stored the snapshot does it report [`Report::Uploaded`]; the loop appends
//! the `Backup { Uploaded }` record and answers, and only then is the snapshot marked
//! uploaded in the vault. A crash in between uploads it again (every chunk answered by
//! `have`, the snapshot put is idempotent): a duplicate record, never a lost one.
//!
//! Resumable: nothing is kept between attempts but what the master stored, so after a
//! cut link, a stopped listener or a SIGKILL, `have` makes sure no chunk already stored
//! is sent again; at most the one chunk in flight when the link went is sent twice.
//! Errors back off (1 s doubling to 5 min, ±20 %, reset by a success); a network error
//! is only logged, an error the master answered (quota, refusal) is also reported once
//! per snapshot as `Backup { Failed }`. New snapshots wake it at once
//! ([`Daemon::upload_wake`]); otherwise it looks every 10 s.

mod bucket;

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use hedge_wire::{BackupEvent, Name, RecordKind, SnapshotId};
use tokio::sync::{oneshot, Notify};

use super::blob_ports::{blocking, BlobPort, ChunkId, PortError, VaultPort};
use super::Daemon;
pub(crate) use bucket::Bucket;

/// Most ids in one `have` question (the blob service's bound).
pub(crate) const HAVE_BATCH: usize = 4096;
/// First retry delay after a failed attempt.
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest retry delay.
const RETRY_MAX: Duration = Duration::from_secs(300);
/// How often the uplink is looked at while it is down.
const UP_POLL: Duration = Duration::from_secs(1);
/// How often the vault is looked at when nothing woke the uploader.
const IDLE_POLL: Duration = Duration::from_secs(10);

/// What one snapshot's upload sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Sent {
    /// Chunks put.
    pub chunks: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Chunks the master already had.
    pub stored: u64,
}

/// What the uploader tells the loop.
#[derive(Debug)]
pub(crate) enum Report {
    /// The master stored the snapshot. Answer on `recorded` once the record is
    /// appended: only then is it marked uploaded.
    Uploaded {
        instance: Name,
        snapshot: SnapshotId,
        sent: Sent,
        recorded: oneshot::Sender<()>,
    },
    /// The master refused the snapshot (reported once per snapshot and daemon life).
    Failed {
        instance: Name,
        snapshot: SnapshotId,
        message: String,
    },
}

/// What the uploader works with.
pub(crate) struct Uploader<B, V> {
    /// The blob service.
    pub blob: B,
    /// The node's vault.
    pub vault: Arc<V>,
    /// `[backup] upload_bytes_per_s` (0: unlimited).
    pub rate: u64,
    /// Whether the uplink is up now.
    pub uplink_up: Box<dyn Fn() -> bool + Send + Sync>,
    /// Woken when a snapshot was taken (or the uplink came up).
    pub wake: Arc<Notify>,
    /// To the loop; `false` when the loop is gone.
    pub report: Box<dyn Fn(Report) -> bool + Send + Sync>,
}

/// Uploads one snapshot: `have` in batches, the missing chunks under the budget, then
/// the snapshot. Adds what it sent to `sent` as it goes (kept on failure too).
pub(crate) async fn upload_one<B: BlobPort, V: VaultPort>(
    blob: &B,
    vault: &Arc<V>,
    bucket: &mut Bucket,
    recovery: [u8; 32],
    instance: &Name,
    id: SnapshotId,
    sent: &mut Sent,
) -> Result<(), PortError> {
    let name = instance.clone();
    let header = blocking(vault, move |v| v.header(&name, id, &recovery)).await?;
    let name = instance.clone();
    let mut ids = Some(blocking(vault, move |v| v.chunk_ids(&name, id)).await?);
    let mut seen: HashSet<ChunkId> = HashSet::new();
    let mut all: Vec<ChunkId> = Vec::new();
    while let Some(mut it) = ids.take() {
        let (it, batch) = tokio::task::spawn_blocking(move || {
            let mut batch = Vec::with_capacity(HAVE_BATCH);
            while batch.len() < HAVE_BATCH {
                match it.next() {
                    Some(Ok(id)) => batch.push(id),
                    Some(Err(e)) => return (None, Err(e)),
                    None => return (None, Ok(batch)),
                }
            }
            (Some(it), Ok(batch))
        })
        .await
        .map_err(|e| PortError::Vault(format!("vault task: {e}")))?;
        ids = it;
        let batch: Vec<ChunkId> = batch?.into_iter().filter(|c| seen.insert(*c)).collect();
        if batch.is_empty() {
            continue;
        }
        let have = blob.have(&batch).await?;
        if have.len() != batch.len() {
            return Err(PortError::Refused(format!(
                "have: {} answers for {} ids",
                have.len(),
                batch.len()
            )));
        }
        for (chunk, stored) in batch.iter().zip(have) {
            if stored {
                sent.stored += 1;
                continue;
            }
            let c = *chunk;
            let data = blocking(vault, move |v| v.read_chunk(&c)).await?;
            let len = u64::try_from(data.len()).unwrap_or(u64::MAX);
            // tokio's clock: the one its sleeps follow (and tests pause).
            let wait = bucket.take(tokio::time::Instant::now().into_std(), len);
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            blob.put_chunk(chunk, &data).await?;
            sent.chunks += 1;
            sent.bytes += len;
        }
        all.extend(batch);
    }
    blob.put_snapshot(&header, &all).await
}

/// The recovery public key: the vault's, else fetched once and kept.
async fn recovery_key<B: BlobPort, V: VaultPort>(
    blob: &B,
    vault: &Arc<V>,
) -> Result<[u8; 32], PortError> {
    if let Some(k) = blocking(vault, |v| v.recovery_key()).await? {
        return Ok(k);
    }
    let k = blob.recovery_key().await?;
    blocking(vault, move |v| v.set_recovery_key(k)).await?;
    tracing::info!("backup: fleet recovery key fetched from the master");
    Ok(k)
}

fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.8 + 0.4 * fastrand::f64())
}

/// One pass: every pending snapshot while the uplink stays up. `Ok(true)` when
/// something was uploaded.
async fn pass<B: BlobPort, V: VaultPort>(
    u: &Uploader<B, V>,
    bucket: &mut Bucket,
    refused: &mut BTreeSet<(Name, SnapshotId)>,
) -> Result<bool, ()> {
    let pending = match blocking(&u.vault, |v| v.pending_uploads()).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "backup: cannot list the snapshots to upload");
            return Err(());
        }
    };
    if pending.is_empty() {
        return Ok(false);
    }
    let recovery = match recovery_key(&u.blob, &u.vault).await {
        Ok(k) => k,
        Err(e) => {
            tracing::info!(error = %e, "backup: no recovery key from the master yet; uploads wait");
            return Err(());
        }
    };
    let mut any = false;
    for (instance, id) in pending {
        if !(u.uplink_up)() {
            return Ok(any);
        }
        let mut sent = Sent::default();
        match upload_one(
            &u.blob, &u.vault, bucket, recovery, &instance, id, &mut sent,
        )
        .await
        {
            Ok(()) => {
                tracing::info!(instance = %instance, snapshot = %id, chunks = sent.chunks, bytes = sent.bytes, already_stored = sent.stored, "backup: snapshot uploaded");
                let (tx, rx) = oneshot::channel();
                let report = Report::Uploaded {
                    instance: instance.clone(),
                    snapshot: id,
                    sent,
                    recorded: tx,
                };
                if !(u.report)(report) || rx.await.is_err() {
                    return Err(());
                }
                let name = instance.clone();
                if let Err(e) = blocking(&u.vault, move |v| v.mark_uploaded(&name, id)).await {
                    tracing::warn!(instance = %instance, snapshot = %id, error = %e, "backup: cannot mark the snapshot uploaded");
                    return Err(());
                }
                any = true;
            }
            Err(e) => {
                tracing::info!(instance = %instance, snapshot = %id, error = %e, chunks = sent.chunks, bytes = sent.bytes, "backup: upload interrupted; will resume");
                if !e.transient() && refused.insert((instance.clone(), id)) {
                    let _ = (u.report)(Report::Failed {
                        instance,
                        snapshot: id,
                        message: format!("upload: {e}"),
                    });
                }
                return Err(());
            }
        }
    }
    Ok(any)
}

/// The uploader task: runs until aborted.
pub(crate) async fn run<B: BlobPort, V: VaultPort>(u: Uploader<B, V>) {
    let mut bucket = Bucket::new(u.rate);
    let mut delay = RETRY_FIRST;
    let mut refused = BTreeSet::new();
    loop {
        if !(u.uplink_up)() {
            tokio::select! {
                () = u.wake.notified() => {}
                () = tokio::time::sleep(UP_POLL) => {}
            }
            continue;
        }
        match pass(&u, &mut bucket, &mut refused).await {
            Ok(true) => delay = RETRY_FIRST,
            Ok(false) => {
                delay = RETRY_FIRST;
                tokio::select! {
                    () = u.wake.notified() => {}
                    () = tokio::time::sleep(IDLE_POLL) => {}
                }
            }
            Err(()) => {
                tokio::time::sleep(jitter(delay)).await;
                delay = (delay * 2).min(RETRY_MAX);
            }
        }
    }
}

/// The daemon's hold on the uploader.
#[derive(Default)]
pub(crate) struct Uploads {
    task: Option<tokio::task::JoinHandle<()>>,
    wake: Arc<Notify>,
}

impl Uploads {
    /// Runs `u` (replacing a running uploader).
    pub(crate) fn start<B: BlobPort, V: VaultPort>(&mut self, u: Uploader<B, V>) {
        self.stop();
        self.task = Some(tokio::spawn(run(u)));
    }

    /// The handle a new uploader wakes on.
    pub(crate) fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Stops the uploader (at shutdown, or to restart it with new credentials).
    pub(crate) fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl Daemon {
    /// A snapshot was taken, or the uplink came up: the uploader looks now.
    pub(crate) fn upload_wake(&self) {
        self.uploads.wake.notify_one();
    }

    /// The uploader reported.
    pub(super) fn on_upload(&mut self, r: Report) {
        match r {
            Report::Uploaded {
                instance,
                snapshot,
                sent,
                recorded,
            } => {
                // `status` shows it uploaded at once.
                self.backups.uploaded(&instance, snapshot);
                self.record(RecordKind::Backup {
                    instance,
                    snapshot,
                    event: BackupEvent::Uploaded,
                    message: crate::monitor::bounded_message(format!(
                        "{} chunks ({} bytes) sent, {} already stored",
                        sent.chunks, sent.bytes, sent.stored
                    )),
                });
                let _ = recorded.send(());
            }
            Report::Failed {
                instance,
                snapshot,
                message,
            } => self.record(RecordKind::Backup {
                instance,
                snapshot,
                event: BackupEvent::Failed,
                message: crate::monitor::bounded_message(message),
            }),
        }
    }
}

#[cfg(test)]
mod tests;
