//! Restoring a snapshot (skeleton).
#![allow(missing_docs, clippy::missing_errors_doc, unused_variables)]
use super::{BackupError, RestoreSummary, Vault};
use hedge_wire::backup::SnapshotId;
use hedge_wire::Name;
use std::path::Path;
fn stub<T>() -> Result<T, BackupError> {
    Err(BackupError::Corrupt("not implemented yet".into()))
}
pub(crate) fn run(
    v: &Vault,
    instance: &Name,
    id: SnapshotId,
    partition: &Path,
    uid: Option<(u32, u32)>,
) -> Result<RestoreSummary, BackupError> {
    stub()
}
