//! Mutual TLS of peer sessions: both ends present their node certificate (fleet CA, CN =
//! node id, extended key usage `clientAuth`) and both verify the other's.
//!
//! Contract: [`NetTls::new`] builds, from the fleet CA, the node's certificate chain and key
//! (PEM), a rustls server configuration that *requires* a client certificate chaining to
//! the fleet CA, and a client configuration that verifies the server's certificate the
//! same way (chain to the fleet CA, `clientAuth` usage, validity dates; no host name: peers
//! are dialled by address, their identity is the certificate's CN). Both sides offer only
//! the ALPN protocol [`ALPN`].
//!
//! Time: a swarm off the Internet has no NTP, and a board without a real-time clock may
//! boot in the past. Certificates are judged at the latest time this node can prove: its
//! clock, its own certificate's `notBefore` and the peer certificate's `notBefore` (a
//! certificate the fleet CA issued is not refused for a clock that lags its issue). An
//! expired certificate (`notAfter` before that time) is refused. [`peer_name`] reads the CN of a verified certificate as a
//! [`Name`]; a certificate whose CN is missing or not a valid name is refused.
//! Nothing here does I/O.

use std::sync::Arc;

use hedge_uplink::tls::{parse_pems, Pems};
use hedge_wire::Name;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};

/// The one application protocol peer sessions speak.
pub const ALPN: &[u8] = b"hedge-mesh/1";

/// The TLS configurations of peer sessions, both directions.
#[derive(Clone)]
pub struct NetTls {
    pub(crate) server: Arc<ServerConfig>,
    pub(crate) client: Arc<ClientConfig>,
    /// The CN of this node's own certificate.
    pub(crate) me: Name,
}

impl std::fmt::Debug for NetTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetTls")
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

impl NetTls {
    /// Both configurations from the fleet CA, this node's certificate chain and its key.
    pub fn new(ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> Result<NetTls, TlsError> {
        let Pems { roots, certs, key } =
            parse_pems(ca_pem, cert_pem, key_pem).map_err(|e| TlsError::Pem(e.to_string()))?;
        let me = peer_name(&certs[0])?;
        let floor = not_before(&certs[0])?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let webpki = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let verifier: Arc<dyn ClientCertVerifier> = Arc::new(Judged {
            inner: webpki,
            floor,
        });
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier.clone())
            .with_single_cert(certs.clone(), key.clone_key())?;
        server.alpn_protocols = vec![ALPN.to_vec()];
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PeerVerifier(verifier)))
            .with_client_auth_cert(certs, key)?;
        client.alpn_protocols = vec![ALPN.to_vec()];
        client.enable_sni = false;
        Ok(NetTls {
            server: Arc::new(server),
            client: Arc::new(client),
            me,
        })
    }

    /// The CN of this node's own certificate.
    pub fn me(&self) -> &Name {
        &self.me
    }

    /// The client configuration sessions are dialled with.
    pub fn client(&self) -> Arc<ClientConfig> {
        self.client.clone()
    }
}

/// The name a client presents to the server (ignored by the peer verifier; SNI is off).
pub fn server_name() -> ServerName<'static> {
    ServerName::try_from("hedge-peer").unwrap_or(ServerName::IpAddress(
        std::net::Ipv4Addr::UNSPECIFIED.into(),
    ))
}

/// The CN of a certificate, as a node name.
pub fn peer_name(der: &CertificateDer<'_>) -> Result<Name, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    let mut cns = cert.subject().iter_common_name();
    let cn = cns.next().ok_or(TlsError::NoCommonName)?;
    if cns.next().is_some() {
        return Err(TlsError::Certificate("more than one CN".into()));
    }
    let cn = cn
        .as_str()
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    Name::new(cn).map_err(|e| TlsError::BadCommonName(e.to_string()))
}

/// The `notBefore` of a certificate.
fn not_before(der: &CertificateDer<'_>) -> Result<UnixTime, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    let t = u64::try_from(cert.validity().not_before.timestamp()).unwrap_or(0);
    Ok(UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        t,
    )))
}

/// The handshake-signature methods both verifier traits share, delegated to the fleet CA's
/// verifier in field `$f`.
macro_rules! handshake_signatures {
    ($f:tt) => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.$f.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.$f.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.$f.supported_verify_schemes()
        }
    };
}

/// The fleet CA's webpki verifier, judging validity at the latest provable time (module
/// doc).
#[derive(Debug)]
struct Judged {
    inner: Arc<dyn ClientCertVerifier>,
    floor: UnixTime,
}

impl ClientCertVerifier for Judged {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        // An unparsable certificate keeps the clock: webpki refuses it anyway.
        let peer = not_before(end_entity).unwrap_or(now);
        let judged = now.max(self.floor).max(peer);
        self.inner
            .verify_client_cert(end_entity, intermediates, judged)
    }

    handshake_signatures!(inner);
}

/// Verifies a server's certificate as a client certificate: the chain to the fleet CA,
/// `clientAuth` usage and validity, through rustls' own webpki client verifier; no name.
#[derive(Debug)]
struct PeerVerifier(Arc<dyn ClientCertVerifier>);

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0.verify_client_cert(end_entity, intermediates, now)?;
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!(0);
}

/// Why the TLS configurations could not be built, or a certificate names no node.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA, certificate or key PEM is unusable.
    #[error("{0}")]
    Pem(String),
    /// A certificate could not be parsed.
    #[error("certificate: {0}")]
    Certificate(String),
    /// A certificate has no CN.
    #[error("certificate has no CN")]
    NoCommonName,
    /// A certificate's CN is not a valid node name.
    #[error("certificate CN is not a node name: {0}")]
    BadCommonName(String),
    /// rustls refused the combination.
    #[error("TLS configuration: {0}")]
    Config(String),
}

impl From<rustls::Error> for TlsError {
    fn from(e: rustls::Error) -> Self {
        TlsError::Config(e.to_string())
    }
}
