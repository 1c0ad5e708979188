//! Taking a snapshot (skeleton).
#![allow(missing_docs, clippy::missing_errors_doc, unused_variables)]
use super::{BackupError, LocalSnapshot, SnapshotRequest, Vault};
fn stub<T>() -> Result<T, BackupError> {
    Err(BackupError::Corrupt("not implemented yet".into()))
}
pub(crate) fn take(v: &Vault, req: &SnapshotRequest<'_>) -> Result<LocalSnapshot, BackupError> {
    stub()
}
