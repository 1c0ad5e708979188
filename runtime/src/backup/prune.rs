//! Pruning (skeleton).
#![allow(missing_docs, clippy::missing_errors_doc, unused_variables)]
use super::{BackupError, PruneSummary};
use hedge_wire::backup::SnapshotId;
use hedge_wire::Name;
use std::path::Path;
fn stub<T>() -> Result<T, BackupError> {
    Err(BackupError::Corrupt("not implemented yet".into()))
}
pub(crate) fn run(
    dir: &Path,
    instance: &Name,
    retain: u16,
    keep: &[SnapshotId],
) -> Result<PruneSummary, BackupError> {
    stub()
}
