//! Enrollment by certificate signing request: one-time tokens, first certificates and
//! renewals. The master never sees a node's private key.
//!
//! Contract:
//! - [`create_token`] (`hedge master enroll`) makes a random 32-byte token for one node,
//!   valid `ttl`, and keeps only its sha256 in `DIR/tokens/<sha256 hex>` (mode 0600,
//!   content `NODE EXPIRY_UNIX`). The token itself goes into the node's bundle.
//! - [`Enroller::answer`] (`POST /enroll` on the master's HTTPS endpoint, see
//!   [`crate::artifacts`]) takes a request body [`parse_body`] splits into an optional
//!   `token HEX` line and a PEM CSR. The CSR's signature is checked (it proves the key)
//!   and its CN names the node. Then either
//!   - **enrollment** (a token): the token file is renamed away before it is read, so a
//!     token is used at most once even by concurrent masters; it must name the CSR's node
//!     and not be expired; or
//!   - **renewal** (no token): the CSR's public key must be the key of the node's latest
//!     certificate in `DIR/issued`, and that certificate must not have expired more than
//!     `grace` ago. A node that was offline past its certificate's expiry so renews with
//!     its old key when it returns, within the grace period.
//!
//!   A revoked node gets neither. The answer is a certificate for the CSR's key, CN = the
//!   node, from [`crate::pki::issue_node_cert`] (recorded in `DIR/issued`).
//!
//! Every refusal is an [`EnrollError`]; the endpoint answers 403 and counts it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hedge_common::{hex, keyfile};
use hedge_wire::Name;
use rcgen::{CertificateSigningRequestParams, DnType, DnValue, Issuer, KeyPair};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

use crate::revocation::Revoked;

/// The token directory's name in DIR.
pub const TOKENS: &str = "tokens";
/// Largest request body accepted, bytes.
pub const MAX_BODY: usize = 8 * 1024;

/// Why an enrollment or renewal was refused.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The body is not `[token HEX\n]CSR`.
    #[error("malformed enrollment request")]
    Malformed,
    /// The CSR does not parse or its signature is wrong.
    #[error("bad certificate signing request")]
    BadCsr,
    /// The CSR's CN is not a node id (or is the masters').
    #[error("the request names no acceptable node")]
    BadNode,
    /// No such token (never issued, or already used).
    #[error("unknown or already used enrollment token")]
    UnknownToken,
    /// The token has expired.
    #[error("enrollment token expired")]
    TokenExpired,
    /// The token was issued for another node.
    #[error("enrollment token is for node {0}")]
    OtherNode(String),
    /// The node is revoked.
    #[error("node {0} is revoked")]
    Revoked(String),
    /// Renewal: no certificate of this node for this key, or past the grace period.
    #[error("node {0}: nothing to renew with this key (unknown key or past the grace period)")]
    NotRenewable(String),
    /// I/O or signing on the master.
    #[error("master: {0}")]
    Internal(String),
}

fn internal(e: impl std::fmt::Display) -> EnrollError {
    EnrollError::Internal(e.to_string())
}

/// Makes a token for `node` valid until `now + ttl`; returns it (64 hex digits).
pub fn create_token(
    dir: &Path,
    node: &Name,
    now: OffsetDateTime,
    ttl: Duration,
) -> std::io::Result<Zeroizing<String>> {
    let mut raw = Zeroizing::new([0u8; 32]);
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, raw.as_mut());
    let token = Zeroizing::new(hex::encode(raw.as_ref()));
    let tokens = dir.join(TOKENS);
    std::fs::create_dir_all(&tokens)?;
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o700))?;
    let path = tokens.join(hex::encode(&Sha256::digest(token.as_bytes())));
    let line = format!("{node} {}\n", (now + ttl).unix_timestamp());
    keyfile::write_new(&path, line.as_bytes(), 0o600)?;
    Ok(token)
}

/// A request body: `token HEX` on its first line (enrollment) or not (renewal), then
/// the PEM CSR.
pub fn parse_body(body: &[u8]) -> Result<(Option<String>, String), EnrollError> {
    let text = std::str::from_utf8(body).map_err(|_| EnrollError::Malformed)?;
    if body.len() > MAX_BODY {
        return Err(EnrollError::Malformed);
    }
    let (token, csr) = match text.strip_prefix("token ") {
        Some(rest) => {
            let (t, csr) = rest.split_once('\n').ok_or(EnrollError::Malformed)?;
            let t = t.trim();
            if t.len() != 64 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(EnrollError::Malformed);
            }
            (Some(t.to_ascii_lowercase()), csr)
        }
        None => (None, text),
    };
    if !csr
        .trim_start()
        .starts_with("-----BEGIN CERTIFICATE REQUEST-----")
    {
        return Err(EnrollError::Malformed);
    }
    Ok((token, csr.to_owned()))
}

/// The master's side of enrollment and renewal (held by `hedge master run`).
pub struct Enroller {
    dir: PathBuf,
    ca_pem: String,
    ca_key: Zeroizing<KeyPair>,
    lifetime: Duration,
    grace: Duration,
    revoked: Arc<Revoked>,
    refusals: std::sync::atomic::AtomicU64,
    log: crate::log_limit::LogLimit,
}

impl std::fmt::Debug for Enroller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enroller").field("dir", &self.dir).finish()
    }
}

impl Enroller {
    /// Loads the fleet CA of master directory `dir`; certificates live `lifetime_s`,
    /// renewals are accepted up to `grace_s` after expiry.
    pub fn load(
        dir: &Path,
        lifetime_s: u64,
        grace_s: u64,
        revoked: Arc<Revoked>,
    ) -> Result<Enroller, crate::pki::PkiError> {
        let secs = |s: u64| Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX));
        let (lifetime, grace) = (secs(lifetime_s), secs(grace_s));
        let (ca_pem, ca_key) = crate::pki::load_ca(dir)?;
        Ok(Enroller {
            dir: dir.to_owned(),
            ca_pem,
            ca_key,
            lifetime,
            grace,
            revoked,
            refusals: std::sync::atomic::AtomicU64::new(0),
            log: crate::log_limit::LogLimit::default(),
        })
    }

    /// Answers one request body at `now`: a certificate PEM, or why not.
    pub fn answer(&self, body: &[u8], now: OffsetDateTime) -> Result<String, EnrollError> {
        let (token, csr) = parse_body(body)?;
        let csr =
            CertificateSigningRequestParams::from_pem(&csr).map_err(|_| EnrollError::BadCsr)?;
        let cn = csr
            .params
            .distinguished_name
            .get(&DnType::CommonName)
            .and_then(dn_text)
            .ok_or(EnrollError::BadNode)?;
        let node = Name::new(&cn).map_err(|_| EnrollError::BadNode)?;
        if node.as_str() == crate::pki::MASTER_USER {
            return Err(EnrollError::BadNode);
        }
        if self.revoked.contains(node.as_str()) {
            self.revoked.refused("certificate", node.as_str());
            return Err(EnrollError::Revoked(node.to_string()));
        }
        match token {
            Some(t) => self.consume(&t, &node, now)?,
            None => {
                let spki: [u8; 32] = Sha256::digest(rcgen::PublicKeyData::subject_public_key_info(
                    &csr.public_key,
                ))
                .into();
                let latest = crate::revocation::issued(&self.dir)
                    .map_err(internal)?
                    .into_iter()
                    .rfind(|i| i.node == node);
                let ok = latest.is_some_and(|i| {
                    i.spki_sha256 == spki
                        && now.unix_timestamp() <= i.not_after + self.grace.whole_seconds()
                });
                if !ok {
                    return Err(EnrollError::NotRenewable(node.to_string()));
                }
            }
        }
        let issuer = Issuer::from_ca_cert_pem(&self.ca_pem, &*self.ca_key).map_err(internal)?;
        crate::pki::issue_node_cert(
            &self.dir,
            &issuer,
            &node,
            &csr.public_key,
            now,
            self.lifetime,
        )
        .map_err(internal)
    }

    /// Counts and logs (at most every 10 s) a refused request.
    pub fn refused(&self, e: &EnrollError) {
        let n = self
            .refusals
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        if self.log.allow("enrollment") {
            tracing::warn!(error = %e, refused_total = n, "enrollment refused");
        }
    }

    /// Requests refused so far.
    pub fn refused_total(&self) -> u64 {
        self.refusals.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Uses token `t` for `node`: renamed away first (single use), then checked.
    fn consume(&self, t: &str, node: &Name, now: OffsetDateTime) -> Result<(), EnrollError> {
        let tokens = self.dir.join(TOKENS);
        let name = hex::encode(&Sha256::digest(t.as_bytes()));
        let taken = tokens.join(format!(".used-{name}-{}", std::process::id()));
        std::fs::rename(tokens.join(&name), &taken).map_err(|_| EnrollError::UnknownToken)?;
        let text = std::fs::read_to_string(&taken).map_err(internal);
        let _ = std::fs::remove_file(&taken);
        let text = text?;
        let (who, expiry) = text
            .trim()
            .split_once(' ')
            .ok_or(EnrollError::UnknownToken)?;
        let expiry: i64 = expiry.parse().map_err(|_| EnrollError::UnknownToken)?;
        if who != node.as_str() {
            return Err(EnrollError::OtherNode(who.to_owned()));
        }
        if now.unix_timestamp() > expiry {
            return Err(EnrollError::TokenExpired);
        }
        Ok(())
    }
}

fn dn_text(v: &DnValue) -> Option<String> {
    match v {
        DnValue::Utf8String(s) => Some(s.clone()),
        DnValue::PrintableString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}
