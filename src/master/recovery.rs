//! `hedge master restore`, `hedge master backup --out` and `hedge master recover --from`:
//! thin drivers of [`hedge_master::restore`] and of the store's backup and recovery
//! ([`MasterStore::backup_to`], [`MasterStore::recover`], [`hedge_master::epoch`]).

use std::path::{Path, PathBuf};

use hedge_common::clock::now_ms;
use hedge_common::seal::RecoveryKey;
use hedge_master::config::MasterConfig;
use hedge_master::restore::{self, RestoreError};
use hedge_master::sign::MasterKey;
use hedge_master::store::{FleetStore, MasterStore, StoreError};
use hedge_wire::backup::SnapshotId;
use hedge_wire::Name;

use crate::Failure;

/// `hedge master restore INSTANCE --to NODE [--snapshot ID] [--recovery-key FILE]`.
pub fn restore(
    cfg: &MasterConfig,
    store: &MasterStore,
    instance: &Name,
    to: &Name,
    snapshot: Option<SnapshotId>,
    recovery_key: Option<&Path>,
) -> Result<(), Failure> {
    let stored = store.snapshots()?;
    let picked = restore::pick(&stored, instance, snapshot).map_err(Failure::data)?;
    let header = store
        .snapshot_header(&picked.node, instance, picked.id)?
        .ok_or_else(|| {
            Failure::data(anyhow::anyhow!(
                "snapshot {} of {instance} has no stored header",
                picked.id
            ))
        })?;
    let default_key = cfg.base.join(hedge_master::blobs::RECOVERY_KEY);
    let key_path = recovery_key.unwrap_or(&default_key);
    let recovery = RecoveryKey::load(key_path)
        .map_err(|e| Failure::usage(anyhow::anyhow!("{}: {e}", key_path.display())))?;
    let signing = MasterKey::load(&cfg.base.join(&cfg.signing.key)).map_err(Failure::usage)?;
    let done = restore::restore(
        store,
        &signing,
        &recovery,
        &header,
        to,
        cfg.allocation.stale_after_ms,
        now_ms,
    )
    .map_err(|e| match e {
        RestoreError::Store(e) => refused_or_failed(e),
        e => Failure::data(e),
    })?;
    if let Some(old) = &done.replaced {
        eprintln!(
            "the open restore of {} onto {} from snapshot {} is replaced",
            old.instance, old.target, old.snapshot
        );
    }
    if let Some((from, generation)) = &done.moved_from {
        println!("{instance} destroyed on {from} (generation {generation}): moved");
    }
    println!(
        "{instance} restoring on {to} from snapshot {} taken on {} (generation {}); `hedge master run` publishes it",
        header.id, header.node, done.state.generation
    );
    Ok(())
}

/// A refusal of the operator's request exits 65, a failure of the store 1.
fn refused_or_failed(e: StoreError) -> Failure {
    match hedge_master::placement::PlaceError::from(e) {
        hedge_master::placement::PlaceError::Refused(e) => Failure::data(e),
        hedge_master::placement::PlaceError::Store(e) => Failure::from(e),
    }
}

/// `hedge master backup --out FILE`: a consistent copy while masters run.
pub fn backup(store: &MasterStore, out: &Path) -> Result<(), Failure> {
    store.backup_to(out)?;
    println!(
        "master store backed up to {} (epoch {}); it holds the open restores' keys: keep it private",
        out.display(),
        store.epoch()?
    );
    Ok(())
}

/// `hedge master recover --from FILE`: installs the backup as the store and raises the
/// epoch; refused while a master has the store open.
pub fn recover(cfg: &MasterConfig, from: &Path) -> Result<(), Failure> {
    if !from.is_file() {
        return Err(Failure::usage(anyhow::anyhow!(
            "{}: no such backup file",
            from.display()
        )));
    }
    let path: PathBuf = cfg.base.join(&cfg.master.store);
    let now_s = u32::try_from(now_ms() / 1000).unwrap_or(u32::MAX);
    let r = MasterStore::recover(&path, from, now_s).map_err(|e| match e {
        e @ StoreError::InUse(_) => Failure::unavailable(e),
        e @ StoreError::SchemaTooNew(_) => Failure::data(e),
        e => Failure::from(e),
    })?;
    println!(
        "master store {} recovered from {}: epoch {} (was {}); every node's next generation is at least {}",
        path.display(),
        from.display(),
        r.epoch,
        r.previous_epoch,
        r.first_generation
    );
    eprintln!(
        "instances requested after the backup was taken are not in it: the next state the \
         master writes for their node leaves them out, and the node holds them over (keeps \
         them as last requested, stopped if they ran under a lease; `hedge node status` \
         marks them) until a request names them: request them again to adopt them, or \
         `--state destroyed --node NODE` to remove them (`hedge master instances` lists \
         what nodes report)"
    );
    Ok(())
}
