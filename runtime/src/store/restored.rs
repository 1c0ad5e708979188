//! Which snapshot each instance was last restored from on this node (remote restores:
//! `daemon::restore`), so a restore directive still in the desired state is carried out
//! once, across daemon restarts and reboots.
//!
//! Contract: [`Store::restored`] gives the `(source node, snapshot)` of the last
//! restore marked for an instance; [`Store::mark_restored`] replaces it and flushes
//! before it returns (the instance starts only after). Kept in the `meta` tree under
//! `restored/<instance>`.

use hedge_wire::{Name, SnapshotId};

use super::{dec, enc, Store, StoreError};

fn key(instance: &Name) -> Vec<u8> {
    format!("restored/{instance}").into_bytes()
}

impl Store {
    /// The source node and snapshot `instance` was last restored from here.
    pub fn restored(&self, instance: &Name) -> Result<Option<(Name, SnapshotId)>, StoreError> {
        let k = key(instance);
        match self.t()?.meta.get(&k)? {
            Some(v) => Ok(Some(dec("meta", &k, &v)?)),
            None => Ok(None),
        }
    }

    /// Marks `instance` restored from `snapshot` of `source`, durably.
    pub fn mark_restored(
        &self,
        instance: &Name,
        source: &Name,
        snapshot: SnapshotId,
    ) -> Result<(), StoreError> {
        self.t()?
            .meta
            .insert(key(instance), enc(&(source, snapshot))?)?;
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_marker_survives_reopening_and_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let db = Name::new("db").unwrap();
        let (a, b) = (Name::new("node-a").unwrap(), Name::new("node-b").unwrap());
        {
            let s = Store::open(dir.path(), 1 << 20).unwrap();
            assert_eq!(s.restored(&db).unwrap(), None);
            s.mark_restored(&db, &a, SnapshotId(1)).unwrap();
        }
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.restored(&db).unwrap(), Some((a, SnapshotId(1))));
        s.mark_restored(&db, &b, SnapshotId(2)).unwrap();
        assert_eq!(s.restored(&db).unwrap(), Some((b, SnapshotId(2))));
        assert_eq!(s.restored(&Name::new("other").unwrap()).unwrap(), None);
    }
}
