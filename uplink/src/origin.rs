//! Mesh origin crypto: who wrote a batch, an ack or a set of connection parameters.
//!
//! Contract:
//! - A node signs what it sends to a peer with its own node TLS key (the ECDSA P-256
//!   key its fleet-CA certificate certifies, a PKCS#8 PEM): [`OriginKey::sign_batch`]
//!   signs a [`SignedBatch`] (ring `ECDSA_P256_SHA256_FIXED`, 64-byte `r || s`, over
//!   [`SignedBatch::signed_bytes`], i.e. `ORIGIN_SIGNING_CONTEXT || bytes`);
//!   [`OriginKey::sign_params`] a [`SignedParams`] with the node's certificate attached.
//! - [`OriginCert`] is a node certificate (DER) read once: its CN and its P-256 public
//!   key (a caller that checks many batches, like the master, keeps it). It can also be
//!   built from a bare SubjectPublicKeyInfo (DER) when only the key is kept.
//!   [`OriginCert::verify_batch`] accepts a batch only if the signature is exactly the
//!   64-byte form and verifies; it does not read the batch (the inner node, depth and
//!   bounds are the caller's checks).
//! - The master signs acks with its ed25519 desired-state key ([`sign_ack`], over
//!   [`SignedAck::signed_bytes`]); a node accepts one only with a valid strict
//!   signature by that key ([`verify_ack`]).
//! - [`FleetCa::verify_params`] accepts parameters only if the attached certificate
//!   chains to the fleet CA (rustls-webpki, client-auth usage, valid at the `now` the
//!   caller gives: the caller's clock), its CN is the parameters' `node`, and the
//!   signature verifies with its key.
//!
//! Every refusal is an [`OriginError`]; nothing panics on hostile input. Signing keys
//! are never logged or exposed.

use std::time::Duration;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use hedge_wire::mesh::{SignedAck, SignedBatch, SignedParams, MAX_CERT};
use hedge_wire::Name;
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer, UnixTime};
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::x509::SubjectPublicKeyInfo;

/// Length of an origin signature (`ECDSA_P256_SHA256_FIXED`: `r || s`).
pub const ORIGIN_SIGNATURE_LEN: usize = 64;

/// Why something could not be signed or was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    /// The private key is not a P-256 PKCS#8 key (PEM).
    #[error("node key: {0}")]
    Key(String),
    /// The certificate (or public key) is malformed, too large or has no usable CN.
    #[error("certificate: {0}")]
    Cert(String),
    /// The key is not an ECDSA P-256 key.
    #[error("certificate key is not ECDSA P-256")]
    NotP256,
    /// The signature is malformed or does not verify.
    #[error("bad signature")]
    BadSignature,
    /// The certificate does not chain to the fleet CA (or is expired, not yet valid,
    /// or not a client certificate).
    #[error("certificate not issued by the fleet CA: {0}")]
    NotFleet(String),
    /// The certificate's CN is not the node the data claims.
    #[error("certificate is for {cert:?}, not {claimed}")]
    WrongNode {
        /// The certificate's CN.
        cert: String,
        /// The node named in the data.
        claimed: Name,
    },
    /// Signing failed (ring gave no detail).
    #[error("signing failed")]
    Sign,
}

/// A node's signing key: its TLS key (ECDSA P-256).
pub struct OriginKey {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
}

impl std::fmt::Debug for OriginKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OriginKey(..)")
    }
}

impl OriginKey {
    /// Reads a P-256 PKCS#8 private key in PEM (`-----BEGIN PRIVATE KEY-----`), as the
    /// node's enrollment writes it.
    pub fn from_pem(key_pem: &[u8]) -> Result<Self, OriginError> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(key_pem)
            .map_err(|e| OriginError::Key(e.to_string()))?;
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            der.secret_pkcs8_der(),
            &rng,
        )
        .map_err(|e| OriginError::Key(e.to_string()))?;
        Ok(OriginKey { pair, rng })
    }

    /// The signature (64 bytes) of `msg`, already prefixed by its signing context.
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, OriginError> {
        let sig = self
            .pair
            .sign(&self.rng, msg)
            .map_err(|_| OriginError::Sign)?;
        Ok(sig.as_ref().to_vec())
    }

    /// Signs one encoded `Message::Up` frame of this node.
    pub fn sign_batch(&self, bytes: Vec<u8>) -> Result<SignedBatch, OriginError> {
        let mut b = SignedBatch {
            bytes,
            signature: Vec::new(),
        };
        b.signature = self.sign(&b.signed_bytes())?;
        Ok(b)
    }

    /// Signs `instance`'s connection parameters published by this node (`node`, whose
    /// certificate `cert_der` is attached) at `generation` (the node's ms clock).
    pub fn sign_params(
        &self,
        node: Name,
        instance: Name,
        generation: u64,
        parameters: std::collections::BTreeMap<String, String>,
        cert_der: Vec<u8>,
    ) -> Result<SignedParams, OriginError> {
        let mut p = SignedParams {
            node,
            instance,
            generation,
            parameters,
            cert: cert_der,
            signature: Vec::new(),
        };
        p.signature = self.sign(&p.signed_bytes())?;
        Ok(p)
    }

    /// The key's public point (uncompressed SEC1), to match it against a certificate.
    pub fn public_point(&self) -> &[u8] {
        ring::signature::KeyPair::public_key(&self.pair).as_ref()
    }
}

/// A node certificate's CN and P-256 public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginCert {
    cn: Option<String>,
    /// Uncompressed SEC1 point.
    point: Vec<u8>,
}

/// The uncompressed P-256 point of `spki`, refused if it is another kind of key.
fn p256_point(spki: &SubjectPublicKeyInfo<'_>) -> Result<Vec<u8>, OriginError> {
    if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY {
        return Err(OriginError::NotP256);
    }
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    if curve.as_ref() != Some(&OID_EC_P256) {
        return Err(OriginError::NotP256);
    }
    let point = spki.subject_public_key.data.to_vec();
    if point.len() != 65 || point.first() != Some(&4) {
        return Err(OriginError::NotP256);
    }
    Ok(point)
}

impl OriginCert {
    /// Reads a certificate (DER, at most `MAX_CERT` bytes): its CN and P-256 key.
    pub fn from_der(der: &[u8]) -> Result<Self, OriginError> {
        if der.len() > MAX_CERT {
            return Err(OriginError::Cert(format!(
                "{} bytes, over {MAX_CERT}",
                der.len()
            )));
        }
        let (rest, cert) =
            X509Certificate::from_der(der).map_err(|e| OriginError::Cert(e.to_string()))?;
        if !rest.is_empty() {
            return Err(OriginError::Cert("trailing bytes".into()));
        }
        let point = p256_point(cert.public_key())?;
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())
            .map(str::to_owned);
        Ok(OriginCert { cn, point })
    }

    /// Reads a bare SubjectPublicKeyInfo (DER); such a key has no CN.
    pub fn from_spki_der(spki: &[u8]) -> Result<Self, OriginError> {
        let (rest, spki) =
            SubjectPublicKeyInfo::from_der(spki).map_err(|e| OriginError::Cert(e.to_string()))?;
        if !rest.is_empty() {
            return Err(OriginError::Cert("trailing bytes".into()));
        }
        Ok(OriginCert {
            cn: None,
            point: p256_point(&spki)?,
        })
    }

    /// The certificate's common name (the node id), if it has one.
    pub fn cn(&self) -> Option<&str> {
        self.cn.as_deref()
    }

    /// Whether `key` is this certificate's key (a renewed certificate read with an old
    /// key file, say, would make every batch refused).
    pub fn matches(&self, key: &OriginKey) -> bool {
        key.public_point() == self.point.as_slice()
    }

    /// Refuses unless the CN is exactly `node`.
    pub fn check_node(&self, node: &Name) -> Result<(), OriginError> {
        match self.cn() {
            Some(cn) if cn == node.as_str() => Ok(()),
            other => Err(OriginError::WrongNode {
                cert: other.unwrap_or_default().to_owned(),
                claimed: node.clone(),
            }),
        }
    }

    /// Checks `signature` over `msg` (context included) with this key.
    fn verify(&self, msg: &[u8], signature: &[u8]) -> Result<(), OriginError> {
        if signature.len() != ORIGIN_SIGNATURE_LEN {
            return Err(OriginError::BadSignature);
        }
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &self.point)
            .verify(msg, signature)
            .map_err(|_| OriginError::BadSignature)
    }

    /// Accepts `b` only if this key signed exactly these bytes.
    pub fn verify_batch(&self, b: &SignedBatch) -> Result<(), OriginError> {
        self.verify(&b.signed_bytes(), &b.signature)
    }

    /// Accepts `p` only if this key signed it (no chain or CN check: see
    /// [`FleetCa::verify_params`]).
    pub fn verify_params_signature(&self, p: &SignedParams) -> Result<(), OriginError> {
        self.verify(&p.signed_bytes(), &p.signature)
    }
}

/// The first certificate of a PEM chain (the node's own, as `[uplink] cert` holds it),
/// as DER: what [`OriginKey::sign_params`] attaches.
pub fn cert_der_from_pem(cert_pem: &[u8]) -> Result<Vec<u8>, OriginError> {
    let der = CertificateDer::pem_slice_iter(cert_pem)
        .next()
        .ok_or_else(|| OriginError::Cert("no certificate found".into()))?
        .map_err(|e| OriginError::Cert(e.to_string()))?;
    if der.len() > MAX_CERT {
        return Err(OriginError::Cert(format!(
            "{} bytes, over {MAX_CERT}",
            der.len()
        )));
    }
    Ok(der.to_vec())
}

/// Signs the master's cumulative ack for `node`'s life `epoch` up to `upto`.
pub fn sign_ack(key: &SigningKey, node: Name, epoch: u64, upto: u64) -> SignedAck {
    let mut a = SignedAck {
        node,
        epoch,
        upto,
        signature: Vec::new(),
    };
    a.signature = key.sign(&a.signed_bytes()).to_bytes().to_vec();
    a
}

/// Accepts `ack` only with a valid (strict) signature by the master's key.
pub fn verify_ack(key: &VerifyingKey, ack: &SignedAck) -> Result<(), OriginError> {
    let sig: [u8; 64] = ack
        .signature
        .as_slice()
        .try_into()
        .map_err(|_| OriginError::BadSignature)?;
    key.verify_strict(&ack.signed_bytes(), &Signature::from_bytes(&sig))
        .map_err(|_| OriginError::BadSignature)
}

/// The fleet CA, as trust anchors for peers' certificates.
#[derive(Debug)]
pub struct FleetCa {
    anchors: Vec<rustls_pki_types::TrustAnchor<'static>>,
}

impl FleetCa {
    /// Reads the fleet CA certificate(s) (PEM).
    pub fn from_pem(ca_pem: &[u8]) -> Result<Self, OriginError> {
        let mut anchors = Vec::new();
        for c in CertificateDer::pem_slice_iter(ca_pem) {
            let c = c.map_err(|e| OriginError::Cert(format!("CA: {e}")))?;
            let a = webpki::anchor_from_trusted_cert(&c)
                .map_err(|e| OriginError::Cert(format!("CA: {e}")))?
                .to_owned();
            anchors.push(a);
        }
        if anchors.is_empty() {
            return Err(OriginError::Cert("CA: no certificate found".into()));
        }
        Ok(FleetCa { anchors })
    }

    /// Checks that `cert_der` is a client certificate issued by the fleet CA, valid at
    /// `now` (since the Unix epoch, the caller's clock), for `node`; returns it read.
    pub fn verify_node_cert(
        &self,
        cert_der: &[u8],
        node: &Name,
        now: Duration,
    ) -> Result<OriginCert, OriginError> {
        let cert = OriginCert::from_der(cert_der)?;
        let der = CertificateDer::from(cert_der);
        let ee =
            webpki::EndEntityCert::try_from(&der).map_err(|e| OriginError::Cert(e.to_string()))?;
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &self.anchors,
            &[],
            UnixTime::since_unix_epoch(now),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| OriginError::NotFleet(e.to_string()))?;
        cert.check_node(node)?;
        Ok(cert)
    }

    /// Accepts `p` only if its certificate chains to the fleet CA at `now`, names
    /// `p.node`, and its key signed `p`.
    pub fn verify_params(&self, p: &SignedParams, now: Duration) -> Result<(), OriginError> {
        self.verify_node_cert(&p.cert, &p.node, now)?
            .verify_params_signature(p)
    }
}

#[cfg(test)]
mod tests;
