//! The enrollment bundle: everything a node needs to join a fleet, in one TOML file.
//!
//! Contract: written by the master (`hedge master enroll NODE --out FILE`, mode 0600),
//! read by the node (`hedge node init --dir DIR --enroll FILE`). It holds no private key:
//! the node makes its own and sends a CSR with the bundle's one-time `token` to the
//! master's HTTPS endpoint `url` (`POST /enroll`), which answers its certificate.
//! [`Bundle::load`] refuses unknown keys, another format version (version 1 bundles
//! carried a key made by the master: enroll again), a bad host, token, URL or PEM block,
//! with a [`BundleError`] naming the field. The token is zeroized when dropped.

use std::path::Path;

use hedge_wire::Name;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Errors of reading a bundle: it cannot be read, does not parse, or a field is unusable.
pub type BundleError = hedge_common::ConfigFileError<toml::de::Error>;

/// One node's enrollment.
#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// Format version ([`Bundle::VERSION`]).
    #[zeroize(skip)]
    pub version: u32,
    /// The node id (= the certificate CN = the MQTT username).
    #[zeroize(skip)]
    pub node: Name,
    /// Broker host nodes dial.
    pub broker_host: String,
    /// Port of the broker's mutual-TLS listener.
    pub broker_port: u16,
    /// The master's ed25519 public key (64 hex digits) that signs desired states.
    pub master_public_key: String,
    /// The fleet CA certificate (PEM): the only root the node trusts for the broker.
    pub ca_cert: String,
    /// The one-time enrollment token (64 hex digits); expires (`[enrollment]
    /// token_ttl_s` on the master).
    pub token: String,
    /// The master's HTTPS endpoint (`https://HOST:PORT`): enrollment, renewal, artifacts.
    #[zeroize(skip)]
    pub url: String,
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle")
            .field("node", &self.node)
            .field("broker_host", &self.broker_host)
            .field("broker_port", &self.broker_port)
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .finish()
    }
}

impl Bundle {
    /// The bundle format this code writes and reads.
    pub const VERSION: u32 = 2;

    /// Reads and validates a bundle file.
    pub fn load(path: &Path) -> Result<Bundle, BundleError> {
        let text = zeroize::Zeroizing::new(BundleError::read(path)?);
        let b: Bundle = toml::from_str(&text).map_err(BundleError::parse(path))?;
        b.validate().map_err(BundleError::invalid(path))?;
        Ok(b)
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), String> {
        if self.version != Self::VERSION {
            return Err(format!(
                "bundle version {} is not supported (want {}; enroll the node again with this \
                 hedge's master)",
                self.version,
                Self::VERSION
            ));
        }
        let h = &self.broker_host;
        if h.is_empty()
            || h.len() > 253
            || !h
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        {
            return Err(format!("broker_host {h:?} is not a host name or address"));
        }
        if self.broker_port == 0 {
            return Err("broker_port must not be 0".into());
        }
        let k = self.master_public_key.trim();
        if k.len() != 64 || !k.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("master_public_key must be 64 hex digits".into());
        }
        let pem = |what: &str, s: &str, label: &str| {
            let begin = format!("-----BEGIN {label}-----");
            let end = format!("-----END {label}-----");
            if s.trim_start().starts_with(&begin) && s.trim_end().ends_with(&end) {
                Ok(())
            } else {
                Err(format!("{what} is not a PEM {label}"))
            }
        };
        let u = &self.url;
        if !u.starts_with("https://")
            || u.len() > 512
            || !u
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        {
            return Err(format!("url {u:?} is not an https:// URL"));
        }
        let t = &self.token;
        if t.len() != 64 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("token must be 64 hex digits".into());
        }
        pem("ca_cert", &self.ca_cert, "CERTIFICATE")?;
        Ok(())
    }
}
