//! The catalog (skeleton).
#![allow(missing_docs, clippy::missing_errors_doc, unused_variables)]
use super::{crypto, BackupError, ChunkId, ChunkIds, LocalSnapshot, Vault};
use hedge_wire::backup::{RestoreGrant, SnapshotHeader, SnapshotId};
use hedge_wire::Name;
use std::path::Path;
fn stub<T>() -> Result<T, BackupError> {
    Err(BackupError::Corrupt("not implemented yet".into()))
}
pub(crate) fn open_dir(dir: &Path) -> Result<(crypto::Secret, Option<Name>), BackupError> {
    stub()
}
pub(crate) fn save_node(dir: &Path, node: &Name) -> Result<(), BackupError> {
    stub()
}
pub(crate) fn list(dir: &Path, instance: Option<&Name>) -> Result<Vec<LocalSnapshot>, BackupError> {
    stub()
}
pub(crate) fn save_recovery_key(dir: &Path, key: &[u8; 32]) -> Result<(), BackupError> {
    stub()
}
pub(crate) fn load_recovery_key(dir: &Path) -> Result<Option<[u8; 32]>, BackupError> {
    stub()
}
pub(crate) fn header(
    v: &Vault,
    instance: &Name,
    id: SnapshotId,
    recovery: &[u8; 32],
) -> Result<SnapshotHeader, BackupError> {
    stub()
}
pub(crate) fn chunk_ids(
    dir: &Path,
    instance: &Name,
    id: SnapshotId,
) -> Result<ChunkIds, BackupError> {
    stub()
}
pub(crate) fn mark_uploaded(
    dir: &Path,
    instance: &Name,
    id: SnapshotId,
) -> Result<(), BackupError> {
    stub()
}
pub(crate) fn import(dir: &Path, grant: &RestoreGrant) -> Result<(), BackupError> {
    stub()
}
pub(crate) fn missing(
    v: &Vault,
    instance: &Name,
    id: SnapshotId,
) -> Result<Vec<ChunkId>, BackupError> {
    stub()
}
