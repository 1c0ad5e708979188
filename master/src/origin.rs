//! The enrolled keys of the fleet's nodes, and the check of an origin's signature.
//!
//! Contract: [`OriginKeys`] reads the public keys the PKI recorded in `DIR/issued`
//! ([`crate::revocation::Issued::spki`]: every certificate ever issued to a node, at
//! enrollment and at each renewal) and reads the file again whenever it changes (size or
//! modification time), so a node enrolled while the master runs is known at its next
//! batch. [`OriginKeys::verify`] accepts `signature` (ECDSA P-256 over SHA-256, the
//! fixed 64-byte `r || s` of `ring`'s `ECDSA_P256_SHA256_FIXED`) over `message` when one
//! of `node`'s keys verifies it; a node with no recorded key (enrolled before keys were
//! recorded, or unknown) is [`OriginError::UnknownNode`]. A key that is not an EC P-256
//! SubjectPublicKeyInfo is skipped (and logged once per reading). An unreadable or
//! malformed `issued` file keeps the keys read before and is logged (fail closed for
//! nodes not yet known). [`verify_spki`] is the pure check against one key.
//! [`Origins::check`] adds the revoked list: a revoked node's batch is refused whoever
//! carries it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

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
    /// The key is not an EC P-256 SubjectPublicKeyInfo.
    #[error("not an EC P-256 public key")]
    BadKey,
}

/// The uncompressed P-256 point of an EC P-256 SubjectPublicKeyInfo (DER).
pub fn p256_point(spki_der: &[u8]) -> Result<Vec<u8>, OriginError> {
    use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
    use x509_parser::prelude::FromDer;
    use x509_parser::x509::SubjectPublicKeyInfo;
    let (rest, spki) = SubjectPublicKeyInfo::from_der(spki_der).map_err(|_| OriginError::BadKey)?;
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    if !rest.is_empty()
        || spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY
        || curve != Some(OID_EC_P256)
    {
        return Err(OriginError::BadKey);
    }
    let point = spki.subject_public_key.data.to_vec();
    (point.len() == 65 && point[0] == 0x04)
        .then_some(point)
        .ok_or(OriginError::BadKey)
}

/// Whether `signature` over `message` verifies against the uncompressed P-256 `point`.
fn verify_point(point: &[u8], message: &[u8], signature: &[u8]) -> bool {
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, point)
        .verify(message, signature)
        .is_ok()
}

/// Checks `signature` over `message` against the EC P-256 SubjectPublicKeyInfo
/// `spki_der`. Pure.
pub fn verify_spki(spki_der: &[u8], message: &[u8], signature: &[u8]) -> Result<(), OriginError> {
    let point = p256_point(spki_der)?;
    if verify_point(&point, message, signature) {
        Ok(())
    } else {
        Err(OriginError::BadSignature)
    }
}

type Stamp = (SystemTime, u64);

/// Each node's P-256 points.
type Points = Arc<BTreeMap<Name, Vec<Vec<u8>>>>;

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
                    let mut keys: BTreeMap<Name, Vec<Vec<u8>>> = BTreeMap::new();
                    for line in lines {
                        let Some(spki) = line.spki else { continue };
                        match p256_point(&spki) {
                            Ok(p) => keys.entry(line.node).or_default().push(p),
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

    /// Checks that `node` signed `message` (see the module doc).
    pub fn verify(&self, node: &Name, message: &[u8], signature: &[u8]) -> Result<(), OriginError> {
        let keys = self.keys();
        let points = keys.get(node).ok_or(OriginError::UnknownNode)?;
        if points.iter().any(|p| verify_point(p, message, signature)) {
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

    /// Checks that `node` signed `message` and is not revoked (a revoked node's batch
    /// is counted by [`crate::revocation::Revoked::refused`]).
    pub fn check(
        &self,
        node: &Name,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), crate::relay::RelayRefusal> {
        use crate::relay::RelayRefusal;
        if self.revoked.contains(node.as_str()) {
            self.revoked.refused("relayed records", node.as_str());
            return Err(RelayRefusal::Revoked);
        }
        self.keys
            .verify(node, message, signature)
            .map_err(|e| match e {
                OriginError::UnknownNode => RelayRefusal::UnknownNode,
                OriginError::BadSignature | OriginError::BadKey => RelayRefusal::BadSignature,
            })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use rcgen::{Issuer, KeyPair, PublicKeyData};
    use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    use time::{Duration, OffsetDateTime};

    /// Signs `msg` with the PKCS#8 key of `kp`, as a node does with its TLS key.
    pub(crate) fn sign(kp: &KeyPair, msg: &[u8]) -> Vec<u8> {
        let rng = ring::rand::SystemRandom::new();
        let k =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &kp.serialize_der(), &rng)
                .unwrap();
        k.sign(&rng, msg).unwrap().as_ref().to_vec()
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
        let sig = sign(&ka, b"hello");
        assert_eq!(keys.verify(&a, b"hello", &sig), Ok(()));
        assert_eq!(
            keys.verify(&a, b"hellp", &sig),
            Err(OriginError::BadSignature)
        );
        assert_eq!(
            keys.verify(&b, b"hello", &sig),
            Err(OriginError::UnknownNode)
        );
        // b enrolled while the master runs: read again; a's key never signs for b.
        let kb = enroll(dir, &b);
        assert_eq!(
            keys.verify(&b, b"hello", &sig),
            Err(OriginError::BadSignature)
        );
        assert_eq!(keys.verify(&b, b"hello", &sign(&kb, b"hello")), Ok(()));
        // A renewal (new key) keeps the old key valid for what it signed before.
        let ka2 = enroll(dir, &a);
        assert_eq!(keys.verify(&a, b"x", &sign(&ka2, b"x")), Ok(()));
        assert_eq!(keys.verify(&a, b"hello", &sig), Ok(()));
        // Garbage signatures.
        for bad in [&[][..], &[0u8; 64][..], &[0xff; 72][..]] {
            assert_eq!(
                keys.verify(&a, b"hello", bad),
                Err(OriginError::BadSignature)
            );
        }
        // The pure check.
        let spki = ka.subject_public_key_info();
        assert_eq!(verify_spki(&spki, b"hello", &sig), Ok(()));
        assert_eq!(
            verify_spki(&spki[1..], b"hello", &sig),
            Err(OriginError::BadKey)
        );
        let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        assert_eq!(
            verify_spki(&ed.subject_public_key_info(), b"hello", &sig),
            Err(OriginError::BadKey)
        );
    }
}
