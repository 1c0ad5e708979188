//! The keys of the mesh link: [`NodeTrust`], the [`Trust`] a node runs with.
//!
//! Contract: built once from the node's TLS key (P-256 PKCS#8 PEM) and certificate
//! (PEM), the fleet CA (PEM) and the master's ed25519 public key; every check is
//! `hedge_uplink::origin`'s (or, for desired states, the same strict ed25519 check the
//! daemon makes):
//! - a peer's batch verifies against the certificate of the peer's mutual-TLS session
//!   (parsed once per certificate, at most [`CERT_CACHE`] kept);
//! - an ack and a desired state verify against the master's key (strict ed25519, a
//!   64-byte signature);
//! - parameters carry a certificate that chains to the fleet CA at the wall clock, whose
//!   CN is their node, and whose key signed them.
//!
//! Nothing here logs a key or panics on hostile input; a failed check is `false`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Duration;

use ed25519_dalek::{Signature, VerifyingKey};
use hedge_uplink::origin::{verify_ack, FleetCa, OriginCert, OriginError, OriginKey};
use hedge_wire::mesh::{SignedAck, SignedBatch, SignedParams};
use hedge_wire::{DesiredState, Name};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::link::Trust;

/// Peer certificates kept parsed.
pub const CERT_CACHE: usize = 64;

/// Why the node's keys could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The node's key, its certificate or the fleet CA.
    #[error("mesh keys: {0}")]
    Origin(#[from] OriginError),
    /// The node's certificate is not PEM.
    #[error("node certificate: {0}")]
    CertPem(String),
    /// The key does not match the certificate, or the certificate is not this node's.
    #[error("node certificate does not match the node's key or name")]
    Mismatch,
}

/// See the [module docs](self).
pub struct NodeTrust {
    me: Name,
    key: OriginKey,
    cert_der: Vec<u8>,
    ca: FleetCa,
    master: VerifyingKey,
    certs: RefCell<BTreeMap<Vec<u8>, OriginCert>>,
}

impl std::fmt::Debug for NodeTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTrust")
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

impl NodeTrust {
    /// The keys of node `me`.
    ///
    /// # Errors
    ///
    /// A key or certificate that does not parse, or a certificate that is not `me`'s
    /// or does not certify `key_pem`.
    pub fn new(
        me: Name,
        key_pem: &[u8],
        cert_pem: &[u8],
        ca_pem: &[u8],
        master: VerifyingKey,
    ) -> Result<Self, TrustError> {
        let key = OriginKey::from_pem(key_pem)?;
        let cert_der = CertificateDer::from_pem_slice(cert_pem)
            .map_err(|e| TrustError::CertPem(e.to_string()))?
            .as_ref()
            .to_vec();
        let cert = OriginCert::from_der(&cert_der)?;
        cert.check_node(&me).map_err(|_| TrustError::Mismatch)?;
        // The certificate must certify this key: sign something and check it.
        let probe = key.sign_batch(b"probe".to_vec())?;
        cert.verify_batch(&probe)
            .map_err(|_| TrustError::Mismatch)?;
        Ok(NodeTrust {
            me,
            key,
            cert_der,
            ca: FleetCa::from_pem(ca_pem)?,
            master,
            certs: RefCell::new(BTreeMap::new()),
        })
    }
}

impl Trust for NodeTrust {
    fn sign_batch(&self, frame: Vec<u8>) -> Option<SignedBatch> {
        self.key.sign_batch(frame).ok()
    }

    fn batch_ok(&self, batch: &SignedBatch, peer_cert: &[u8]) -> bool {
        let mut certs = self.certs.borrow_mut();
        if !certs.contains_key(peer_cert) {
            let Ok(cert) = OriginCert::from_der(peer_cert) else {
                return false;
            };
            if certs.len() >= CERT_CACHE {
                certs.clear();
            }
            certs.insert(peer_cert.to_vec(), cert);
        }
        certs
            .get(peer_cert)
            .is_some_and(|c| c.verify_batch(batch).is_ok())
    }

    fn ack_ok(&self, ack: &SignedAck) -> bool {
        verify_ack(&self.master, ack).is_ok()
    }

    fn desired_ok(&self, state: &DesiredState) -> bool {
        let Ok(sig) = <[u8; 64]>::try_from(state.signature.as_slice()) else {
            return false;
        };
        self.master
            .verify_strict(&state.signed_bytes(), &Signature::from_bytes(&sig))
            .is_ok()
    }

    fn sign_params(
        &self,
        instance: Name,
        generation: u64,
        parameters: BTreeMap<String, String>,
    ) -> Option<SignedParams> {
        self.key
            .sign_params(
                self.me.clone(),
                instance,
                generation,
                parameters,
                self.cert_der.clone(),
            )
            .ok()
    }

    fn params_ok(&self, p: &SignedParams) -> bool {
        let now = Duration::from_millis(hedge_common::clock::now_ms());
        self.ca.verify_params(p, now).is_ok()
    }
}
