//! The enrolled keys of the fleet's nodes, and the check of an origin's signature.
//!
//! Contract: [`OriginKeys`] reads the public keys the PKI recorded in `DIR/issued`
//! ([`crate::revocation::Issued::spki`]: every certificate ever issued to a node, at
//! enrollment and at each renewal) and reads the file again whenever it changes (size or
//! modification time), so a node enrolled while the master runs is known at its next
//! batch. [`OriginKeys::verify`] accepts a [`SignedBatch`] when one of `node`'s keys
//! verifies its signature ([`hedge_uplink::origin::OriginCert::verify_batch`]: ECDSA
//! P-256, the fixed 64-byte `r || s`, over `ORIGIN_SIGNING_CONTEXT || bytes`); a node
//! with no recorded key (enrolled before keys were recorded, or unknown) is
//! [`OriginError::UnknownNode`]. A key that is not an EC P-256 SubjectPublicKeyInfo is
//! skipped (and logged). An unreadable or malformed `issued` file keeps the keys read
//! before and is logged (fail closed for nodes not yet known).
//! [`Origins::check`] adds the revoked list: a revoked node's batch is refused whoever
//! carries it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use hedge_uplink::origin::OriginCert;
use hedge_wire::mesh::SignedBatch;
use hedge_wire::Name;

/// Why an origin signature was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    /// No key is recorded for the node.
    #[error("no enrolled key for this node")]
    UnknownNode,
    /// None of the node's keys verifies the signature.
    #[error("signature does not verify against the node's enrolled keys")]
    BadSignature,
}

type Stamp = (SystemTime, u64);

/// Each node's enrolled keys.
type Points = Arc<BTreeMap<Name, Vec<OriginCert>>>;

/// The nodes' enrolled keys, as `DIR/issued` records them (see the module doc).
#[derive(Debug)]
pub struct OriginKeys {
    path: PathBuf,
    cache: Mutex<(Option<Stamp>, Points)>,
}

impl OriginKeys {
    /// The keys of master directory `dir`.
    pub fn new(dir: &Path) -> OriginKeys {
        OriginKeys {
            path: dir.join(crate::revocation::ISSUED),
            cache: Mutex::new((None, Arc::new(BTreeMap::new()))),
        }
    }

    /// Every node's P-256 points, read again if the file changed.
    fn keys(&self) -> Points {
        let stamp = std::fs::metadata(&self.path)
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if stamp.is_some() && cache.0 != stamp {
            let dir = self.path.parent().unwrap_or(Path::new("."));
            match crate::revocation::issued(dir) {
                Ok(lines) => {
                    let mut keys: BTreeMap<Name, Vec<OriginCert>> = BTreeMap::new();
                    for line in lines {
                        let Some(spki) = line.spki else { continue };
                        match OriginCert::from_spki_der(&spki) {
                            Ok(k) => keys.entry(line.node).or_default().push(k),
                            Err(_) => tracing::warn!(node = %line.node,
                                "an issued certificate's key is not EC P-256: ignored for relayed batches"),
                        }
                    }
                    *cache = (stamp, Arc::new(keys));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the issued certificates; keeping the keys read before");
                }
            }
        }
        cache.1.clone()
    }

    /// Checks that `node` signed `batch` (see the module doc).
    pub fn verify(&self, node: &Name, batch: &SignedBatch) -> Result<(), OriginError> {
        let keys = self.keys();
        let certs = keys.get(node).ok_or(OriginError::UnknownNode)?;
        if certs.iter().any(|c| c.verify_batch(batch).is_ok()) {
            Ok(())
        } else {
            Err(OriginError::BadSignature)
        }
    }
}

/// Whom the master trusts for relayed batches: the enrolled keys, less revoked nodes.
#[derive(Debug)]
pub struct Origins {
    /// The enrolled keys.
    pub keys: OriginKeys,
    /// The revoked nodes.
    pub revoked: Arc<crate::revocation::Revoked>,
}

impl Origins {
    /// Those of master directory `dir`, with its revoked list `revoked`.
    pub fn new(dir: &Path, revoked: Arc<crate::revocation::Revoked>) -> Origins {
        Origins {
            keys: OriginKeys::new(dir),
            revoked,
        }
    }

    /// Checks that `node` signed `batch` and is not revoked (a revoked node's batch
    /// is counted by [`crate::revocation::Revoked::refused`]).
    pub fn check(
        &self,
        node: &Name,
        batch: &SignedBatch,
    ) -> Result<(), crate::relay::RelayRefusal> {
        use crate::relay::RelayRefusal;
        if self.revoked.contains(node.as_str()) {
            self.revoked.refused("relayed records", node.as_str());
            return Err(RelayRefusal::Revoked);
        }
        self.keys.verify(node, batch).map_err(|e| match e {
            OriginError::UnknownNode => RelayRefusal::UnknownNode,
            OriginError::BadSignature => RelayRefusal::BadSignature,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use hedge_uplink::origin::OriginKey;
    use rcgen::{Issuer, KeyPair, PublicKeyData};
    use time::{Duration, OffsetDateTime};

    /// `bytes` signed with the key of `kp`, as a node signs with its TLS key.
    pub(crate) fn sign(kp: &KeyPair, bytes: &[u8]) -> SignedBatch {
        OriginKey::from_pem(kp.serialize_pem().as_bytes())
            .unwrap()
            .sign_batch(bytes.to_vec())
            .unwrap()
    }

    pub(crate) fn enroll(dir: &Path, node: &Name) -> KeyPair {
        let (ca, ca_key) = crate::pki::load_ca(dir).unwrap();
        let issuer = Issuer::from_ca_cert_pem(&ca, &*ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        crate::pki::issue_node_cert(
            dir,
            &issuer,
            node,
            &key,
            OffsetDateTime::now_utc(),
            Duration::days(1),
        )
        .unwrap();
        key
    }

    #[test]
    fn a_node_signature_verifies_against_its_enrolled_keys_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        crate::pki::init(dir, &crate::pki::InitOptions::default()).unwrap();
        let a = Name::new("a").unwrap();
        let b = Name::new("b").unwrap();
        let keys = OriginKeys::new(dir);
        let ka = enroll(dir, &a);
        let hello = sign(&ka, b"hello");
        assert_eq!(keys.verify(&a, &hello), Ok(()));
        let mut altered = hello.clone();
        altered.bytes[0] ^= 1;
        assert_eq!(keys.verify(&a, &altered), Err(OriginError::BadSignature));
        assert_eq!(keys.verify(&b, &hello), Err(OriginError::UnknownNode));
        // b enrolled while the master runs: read again; a's key never signs for b.
        let kb = enroll(dir, &b);
        assert_eq!(keys.verify(&b, &hello), Err(OriginError::BadSignature));
        assert_eq!(keys.verify(&b, &sign(&kb, b"hello")), Ok(()));
        // A renewal (new key) keeps the old key valid for what it signed before.
        let ka2 = enroll(dir, &a);
        assert_eq!(keys.verify(&a, &sign(&ka2, b"x")), Ok(()));
        assert_eq!(keys.verify(&a, &hello), Ok(()));
        // Garbage signatures.
        for bad in [&[][..], &[0u8; 64][..], &[0xff; 72][..]] {
            let forged = SignedBatch {
                signature: bad.to_vec(),
                ..hello.clone()
            };
            assert_eq!(keys.verify(&a, &forged), Err(OriginError::BadSignature));
        }
        // The key recorded is the one the certificate certifies.
        let line = crate::revocation::issued(dir).unwrap().remove(0);
        assert_eq!(line.spki, Some(ka.subject_public_key_info()));
    }

    #[test]
    fn a_revoked_nodes_batch_is_refused_whoever_carries_it() {
        use crate::relay::RelayRefusal;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        crate::pki::init(dir, &crate::pki::InitOptions::default()).unwrap();
        let a = Name::new("a").unwrap();
        let ka = enroll(dir, &a);
        let revoked = Arc::new(crate::revocation::Revoked::new(dir));
        let origins = Origins::new(dir, revoked.clone());
        let b = sign(&ka, b"records");
        assert_eq!(origins.check(&a, &b), Ok(()));
        assert_eq!(
            origins.check(&Name::new("z").unwrap(), &b),
            Err(RelayRefusal::UnknownNode)
        );
        crate::revocation::revoke(dir, &a).unwrap();
        assert_eq!(origins.check(&a, &b), Err(RelayRefusal::Revoked));
        assert_eq!(revoked.refused_total(), 1);
    }
}
