//! In-memory fakes of the vault and the blob service for the drivers' tests: the blob
//! fake counts puts and duplicate puts like the master does, and can cut its "link"
//! after a number of puts (the put that cuts it may be stored with its answer lost,
//! as a chunk in flight can be).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use hedge_wire::backup::{Consistency, RestoreGrant, SnapshotHeader};
use hedge_wire::{Name, SnapshotId};
use sha2::{Digest, Sha256};

use super::{BlobPort, ChunkId, PortError, VaultPort};

pub(crate) fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

/// A chunk of `data`: its id and bytes.
pub(crate) fn chunk(data: &[u8]) -> (ChunkId, Vec<u8>) {
    (Sha256::digest(data).into(), data.to_vec())
}

pub(crate) fn header(node: &str, instance: &Name, id: SnapshotId, chunks: u64) -> SnapshotHeader {
    SnapshotHeader {
        node: name(node),
        instance: instance.clone(),
        id,
        taken_ms: 1,
        consistency: Consistency::Live,
        bytes: 0,
        new_bytes: 0,
        chunks,
        root: Vec::new(),
        sealed_key: heapless::Vec::new(),
    }
}

/// A restore done: (instance, snapshot, partition, owner).
pub(crate) type Restored = (Name, SnapshotId, PathBuf, Option<(u32, u32)>);

#[derive(Default)]
pub(crate) struct VaultState {
    pub chunks: BTreeMap<ChunkId, Vec<u8>>,
    /// Snapshots: their chunk ids (a snapshot may list an id twice).
    pub snapshots: BTreeMap<(Name, SnapshotId), Vec<ChunkId>>,
    pub uploaded: BTreeSet<(Name, SnapshotId)>,
    pub recovery: Option<[u8; 32]>,
    /// Restores done: (instance, snapshot, partition, uid).
    pub restored: Vec<Restored>,
    pub imports: u64,
}

#[derive(Default)]
pub(crate) struct FakeVault {
    pub s: Mutex<VaultState>,
}

impl FakeVault {
    /// Adds a snapshot of these chunks to the vault.
    pub(crate) fn add_snapshot(
        &self,
        instance: &Name,
        id: SnapshotId,
        chunks: &[(ChunkId, Vec<u8>)],
    ) {
        let mut s = self.s.lock().unwrap();
        for (cid, data) in chunks {
            s.chunks.insert(*cid, data.clone());
        }
        s.snapshots
            .insert((instance.clone(), id), chunks.iter().map(|c| c.0).collect());
    }
}

impl VaultPort for FakeVault {
    type Ids = std::vec::IntoIter<Result<ChunkId, PortError>>;

    fn pending_uploads(&self) -> Result<Vec<(Name, SnapshotId)>, PortError> {
        let s = self.s.lock().unwrap();
        Ok(s.snapshots
            .keys()
            .filter(|k| !s.uploaded.contains(k))
            .cloned()
            .collect())
    }
    fn recovery_key(&self) -> Result<Option<[u8; 32]>, PortError> {
        Ok(self.s.lock().unwrap().recovery)
    }
    fn set_recovery_key(&self, public: [u8; 32]) -> Result<(), PortError> {
        self.s.lock().unwrap().recovery = Some(public);
        Ok(())
    }
    fn header(
        &self,
        instance: &Name,
        id: SnapshotId,
        _: &[u8; 32],
    ) -> Result<SnapshotHeader, PortError> {
        let s = self.s.lock().unwrap();
        let n = s.snapshots.get(&(instance.clone(), id)).map_or(0, Vec::len);
        Ok(header("here", instance, id, n as u64))
    }
    fn chunk_ids(&self, instance: &Name, id: SnapshotId) -> Result<Self::Ids, PortError> {
        let s = self.s.lock().unwrap();
        let ids = s
            .snapshots
            .get(&(instance.clone(), id))
            .ok_or_else(|| PortError::Vault("no such snapshot".into()))?;
        Ok(ids.iter().map(|c| Ok(*c)).collect::<Vec<_>>().into_iter())
    }
    fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>, PortError> {
        self.s
            .lock()
            .unwrap()
            .chunks
            .get(id)
            .cloned()
            .ok_or_else(|| PortError::Vault("no such chunk".into()))
    }
    fn mark_uploaded(&self, instance: &Name, id: SnapshotId) -> Result<(), PortError> {
        self.s
            .lock()
            .unwrap()
            .uploaded
            .insert((instance.clone(), id));
        Ok(())
    }
    fn import(&self, grant: &RestoreGrant) -> Result<(), PortError> {
        let mut s = self.s.lock().unwrap();
        s.imports += 1;
        // The fake's "manifest": the grant's root lists the ids, 32 bytes each.
        let ids = grant
            .header
            .root
            .chunks(32)
            .map(|c| <ChunkId>::try_from(c).unwrap())
            .collect();
        s.snapshots
            .insert((grant.header.instance.clone(), grant.header.id), ids);
        Ok(())
    }
    fn missing_chunks(&self, instance: &Name, id: SnapshotId) -> Result<Vec<ChunkId>, PortError> {
        let s = self.s.lock().unwrap();
        let ids = s
            .snapshots
            .get(&(instance.clone(), id))
            .ok_or_else(|| PortError::Vault("not imported".into()))?;
        let missing: BTreeSet<ChunkId> = ids
            .iter()
            .filter(|c| !s.chunks.contains_key(*c))
            .copied()
            .collect();
        Ok(missing.into_iter().collect())
    }
    fn put_chunk(&self, id: &ChunkId, ciphertext: &[u8]) -> Result<(), PortError> {
        let got: ChunkId = Sha256::digest(ciphertext).into();
        if &got != id {
            return Err(PortError::Damaged {
                snapshot: None,
                chunk: Some(*id),
            });
        }
        self.s
            .lock()
            .unwrap()
            .chunks
            .insert(*id, ciphertext.to_vec());
        Ok(())
    }
    fn restore(
        &self,
        instance: &Name,
        id: SnapshotId,
        partition: &Path,
        uid: Option<(u32, u32)>,
    ) -> Result<(), PortError> {
        let mut s = self.s.lock().unwrap();
        let ids = s
            .snapshots
            .get(&(instance.clone(), id))
            .cloned()
            .ok_or_else(|| PortError::Vault("not imported".into()))?;
        if let Some(c) = ids.iter().find(|c| !s.chunks.contains_key(*c)) {
            return Err(PortError::Damaged {
                snapshot: Some(id),
                chunk: Some(*c),
            });
        }
        s.restored
            .push((instance.clone(), id, partition.to_path_buf(), uid));
        Ok(())
    }
}

#[derive(Default)]
pub(crate) struct BlobState {
    pub stored: BTreeMap<ChunkId, Vec<u8>>,
    pub puts: u64,
    pub duplicate_puts: u64,
    /// Largest `have` question seen.
    pub largest_have: usize,
    pub snapshots: Vec<(SnapshotHeader, Vec<ChunkId>)>,
    pub recovery_fetches: u64,
    /// Cut the link once this many puts succeeded (the cutting put is stored, its
    /// answer lost).
    pub cut_after_puts: Option<u64>,
    pub cut: bool,
    /// Grants the master gives, by (instance, snapshot).
    pub grants: BTreeMap<(Name, SnapshotId), RestoreGrant>,
    /// Chunks served for restores, by id (may differ from their name: tampered).
    pub served: BTreeMap<ChunkId, Vec<u8>>,
    pub gets: u64,
    /// Answer every call with `Refused`.
    pub refuse: Option<String>,
}

#[derive(Default)]
pub(crate) struct FakeBlob {
    pub s: Mutex<BlobState>,
}

impl FakeBlob {
    fn check(&self) -> Result<(), PortError> {
        let s = self.s.lock().unwrap();
        if s.cut {
            return Err(PortError::Net("connection reset".into()));
        }
        if let Some(r) = &s.refuse {
            return Err(PortError::Refused(r.clone()));
        }
        Ok(())
    }
}

impl BlobPort for FakeBlob {
    async fn recovery_key(&self) -> Result<[u8; 32], PortError> {
        self.check()?;
        self.s.lock().unwrap().recovery_fetches += 1;
        Ok([7; 32])
    }
    async fn have(&self, ids: &[ChunkId]) -> Result<Vec<bool>, PortError> {
        self.check()?;
        let mut s = self.s.lock().unwrap();
        assert!(ids.len() <= 4096, "have asked for {} ids", ids.len());
        s.largest_have = s.largest_have.max(ids.len());
        Ok(ids.iter().map(|i| s.stored.contains_key(i)).collect())
    }
    async fn put_chunk(&self, id: &ChunkId, ciphertext: &[u8]) -> Result<(), PortError> {
        self.check()?;
        let mut s = self.s.lock().unwrap();
        s.puts += 1;
        if s.stored.insert(*id, ciphertext.to_vec()).is_some() {
            s.duplicate_puts += 1;
        }
        if s.cut_after_puts.is_some_and(|n| s.puts >= n) {
            s.cut_after_puts = None;
            s.cut = true;
            return Err(PortError::Net("connection reset".into()));
        }
        Ok(())
    }
    async fn put_snapshot(
        &self,
        header: &SnapshotHeader,
        ids: &[ChunkId],
    ) -> Result<(), PortError> {
        self.check()?;
        let mut s = self.s.lock().unwrap();
        if let Some(m) = ids.iter().find(|i| !s.stored.contains_key(*i)) {
            return Err(PortError::Refused(format!(
                "missing {}",
                hedge_common::hex::encode(m)
            )));
        }
        s.snapshots.push((header.clone(), ids.to_vec()));
        Ok(())
    }
    async fn grant(&self, instance: &Name, id: SnapshotId) -> Result<RestoreGrant, PortError> {
        self.check()?;
        self.s
            .lock()
            .unwrap()
            .grants
            .get(&(instance.clone(), id))
            .cloned()
            .ok_or_else(|| PortError::Refused("403: no open restore".into()))
    }
    async fn get_chunk(&self, _source: &Name, id: &ChunkId) -> Result<Vec<u8>, PortError> {
        self.check()?;
        let mut s = self.s.lock().unwrap();
        s.gets += 1;
        s.served
            .get(id)
            .cloned()
            .ok_or_else(|| PortError::Refused("404".into()))
    }
}
