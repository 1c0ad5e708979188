//! TLS client configuration for MQTT links: mutual TLS with the fleet CA.
//!
//! Contract: [`client_config`] builds a rustls client configuration (ring provider,
//! TLS 1.2/1.3) that trusts only the given CA and presents the given client certificate
//! (PEM); [`server_only_config`] the same without a client certificate (enrollment).
//! [`read_key`] reads a private key file, refusing one readable by group or others, into
//! a buffer wiped when dropped. Bad PEM is a [`TlsError`] naming which part; nothing
//! panics.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use zeroize::Zeroizing;

/// Reads the private key at `path`: refused when its mode allows group or other access;
/// the bytes are wiped when the buffer is dropped.
pub fn read_key(path: &std::path::Path) -> Result<Zeroizing<Vec<u8>>, TlsError> {
    hedge_common::keyfile::read_private(path).map_err(|e| TlsError::KeyFile(e.to_string()))
}

/// A client configuration trusting only `ca_pem`, without a client certificate.
pub fn server_only_config(ca_pem: &[u8]) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = parse_roots(ca_pem)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// The trusted roots in `ca_pem`: refused when a certificate is malformed or none is there.
pub fn parse_roots(ca_pem: &[u8]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        let c = c.map_err(|e| TlsError::Ca(e.to_string()))?;
        roots.add(c).map_err(|e| TlsError::Ca(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(TlsError::Ca("no certificate found".into()));
    }
    Ok(roots)
}

/// Errors building a TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA certificate is not usable PEM.
    #[error("CA certificate: {0}")]
    Ca(String),
    /// The client certificate is not usable PEM.
    #[error("client certificate: {0}")]
    Cert(String),
    /// The client key is not usable PEM.
    #[error("client key: {0}")]
    Key(String),
    /// The key file is unreadable or readable by group/others.
    #[error("{0}")]
    KeyFile(String),
    /// rustls refused the combination.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The fleet CA, a certificate chain and its key, parsed from PEM (each refused with
/// the part named when missing or malformed). Shared by client and server configs.
pub struct Pems {
    /// The trusted roots (the fleet CA).
    pub roots: RootCertStore,
    /// The certificate chain to present.
    pub certs: Vec<CertificateDer<'static>>,
    /// The private key of the chain's first (leaf) certificate.
    pub key: PrivateKeyDer<'static>,
}

/// Parses the CA, certificate and key PEMs.
pub fn parse_pems(ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> Result<Pems, TlsError> {
    let roots = parse_roots(ca_pem)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Cert(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Cert("no certificate found".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Key(e.to_string()))?;
    Ok(Pems { roots, certs, key })
}

/// A client configuration trusting `ca_pem` and authenticating with `cert_pem`/`key_pem`.
pub fn client_config(
    ca_pem: &[u8],
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<ClientConfig>, TlsError> {
    let Pems { roots, certs, key } = parse_pems(ca_pem, cert_pem, key_pem)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)?;
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn exposed_key_files_are_refused() {
        let tmp = std::env::temp_dir().join(format!("hedge-tls-{}", std::process::id()));
        std::fs::write(&tmp, b"secret").unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = read_key(&tmp).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_key(&tmp).unwrap().as_slice(), b"secret");
        std::fs::remove_file(&tmp).unwrap();
    }

    #[test]
    fn roots_need_one_well_formed_certificate() {
        let err = parse_roots(b"").unwrap_err().to_string();
        assert_eq!(err, "CA certificate: no certificate found");
        let garbage = b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(matches!(parse_roots(garbage), Err(TlsError::Ca(_))));
    }
}
