//! The node's uplink credentials: its own key, enrollment by CSR, and certificate renewal.
//!
//! Contract:
//! - [`create_key`] (`hedge node init --enroll`) makes the node's ECDSA P-256 key
//!   (`uplink/node.key`, PKCS#8 PEM, 0600); it never leaves the node. The bundle's
//!   one-time token is kept in `uplink/enroll.token` (0600) until it is used.
//! - [`run`] (spawned by the daemon when the uplink is enabled) gets and keeps a
//!   certificate: without `uplink/node.crt` it sends `token` + a CSR to the master's
//!   `POST /enroll` (server-authenticated TLS, the fleet CA as the only root: no client
//!   certificate yet), writes the answer, deletes the token; with one, it sends a bare
//!   CSR for the same key when [`renewal_due`] says so. Each new certificate is written
//!   whole (temporary file + rename) and announced with `on_new`, which restarts the
//!   link with it. Failures are retried with a backoff up to the check interval; a
//!   refusal (403: token used or expired, node revoked, past the grace period) is logged
//!   rate-limited and retried at the check interval.
//! - Time: boards without an RTC boot in 1970. The node never trusts a clock that is
//!   behind what it knew: [`judged_now`] is the latest of the clock, the persisted floor
//!   (`uplink/time-floor`, Unix seconds, raised at every check) and the certificate's
//!   `notBefore` (the master's clock at issue, less a small skew). The node does not check
//!   its own certificate; the broker and the master do, with their real clocks. The node
//!   checks theirs with its own clock: the CA and the broker's certificate start at the
//!   Unix epoch and last decades, so a 1970 clock accepts them.
//! - A node that was offline past expiry with a working clock renews as soon as it is back
//!   ([`renewal_due`]); the master accepts its old key within its grace period. One whose
//!   clock is behind cannot tell its certificate expired: it also renews whenever its link
//!   has been down for [`DOWN_RENEW`] (the broker refuses an expired certificate), at most
//!   once per [`DOWN_RENEW`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hedge_common::{clock, keyfile};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zeroize::Zeroizing;

/// The token file's name in the uplink directory.
pub const TOKEN: &str = "enroll.token";
/// The time floor's file name in the uplink directory.
pub const FLOOR: &str = "time-floor";
/// A link down this long triggers a renewal attempt (the certificate may have expired
/// unbeknownst to a node whose clock is behind).
pub const DOWN_RENEW: Duration = Duration::from_secs(300);
const MAX_ANSWER: usize = 64 * 1024;
const TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of the credentials.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The key, certificate, CA, token or time-floor file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// Key, CSR or certificate handling failed.
    #[error("certificate: {0}")]
    Cert(String),
    /// The master's endpoint could not be reached or broke HTTP.
    #[error("enrollment endpoint: {0}")]
    Net(String),
    /// The master refused (HTTP status).
    #[error("the master refused the request (HTTP {0})")]
    Refused(u16),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CredentialsError + '_ {
    move |source| CredentialsError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Makes the node's key at `path` (PKCS#8 PEM, 0600); refuses to overwrite one.
pub fn create_key(path: &Path) -> Result<(), CredentialsError> {
    let key = rcgen::KeyPair::generate().map_err(|e| CredentialsError::Cert(e.to_string()))?;
    let pem = Zeroizing::new(key.serialize_pem());
    keyfile::write_new(path, pem.as_bytes(), 0o600).map_err(io(path))
}

/// A PEM CSR for `key_pem` with CN = `node`.
pub fn csr(key_pem: &str, node: &str) -> Result<String, CredentialsError> {
    let cert = |e: rcgen::Error| CredentialsError::Cert(e.to_string());
    let key = rcgen::KeyPair::from_pem(key_pem).map_err(cert)?;
    let mut p = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, node);
    p.distinguished_name = dn;
    p.serialize_request(&key).map_err(cert)?.pem().map_err(cert)
}

/// A certificate's validity, Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// `notBefore`.
    pub not_before: i64,
    /// `notAfter`.
    pub not_after: i64,
}

/// The validity of the first certificate in `pem`.
pub fn validity(pem: &[u8]) -> Result<Validity, CredentialsError> {
    use x509_parser::prelude::FromDer;
    let bad = |e: String| CredentialsError::Cert(e);
    let (_, block) = x509_parser::pem::parse_x509_pem(pem).map_err(|e| bad(e.to_string()))?;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&block.contents)
        .map_err(|e| bad(e.to_string()))?;
    let v = cert.validity();
    Ok(Validity {
        not_before: v.not_before.timestamp(),
        not_after: v.not_after.timestamp(),
    })
}

/// The time the node goes by: the latest of its clock, its floor and `notBefore`.
pub fn judged_now(clock: i64, floor: i64, cert: Option<Validity>) -> i64 {
    clock
        .max(floor)
        .max(cert.map_or(i64::MIN, |v| v.not_before))
}

/// Whether to renew at judged time `now`: `percent` of the validity has passed.
pub fn renewal_due(now: i64, v: Validity, percent: u8) -> bool {
    let span = (v.not_after - v.not_before).max(0);
    now >= v.not_before + span * i64::from(percent.min(100)) / 100
}

/// Where the uplink's files are and how to renew.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The node id (the CSR's CN).
    pub node: String,
    /// The fleet CA (PEM).
    pub ca: PathBuf,
    /// The node's certificate (PEM), written here.
    pub cert: PathBuf,
    /// The node's key (PEM, 0600).
    pub key: PathBuf,
    /// The master's HTTPS endpoint (`https://HOST:PORT`).
    pub url: String,
    /// Renew when this percentage of the validity has passed.
    pub renew_at_percent: u8,
    /// How often to look.
    pub check: Duration,
}

impl Paths {
    fn dir(&self) -> PathBuf {
        self.cert
            .parent()
            .map_or_else(PathBuf::new, Path::to_path_buf)
    }
}

/// What one check did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing due.
    Idle,
    /// A new certificate was written.
    Renewed,
}

/// One check: enroll or renew when due (see the module doc). `link_down_for`: how long
/// the link has been down, `None` while it is up.
pub async fn check(
    p: &Paths,
    link_down_for: Option<Duration>,
    last_try: &mut Option<std::time::Instant>,
) -> Result<Outcome, CredentialsError> {
    let dir = p.dir();
    let floor_path = dir.join(FLOOR);
    let floor = std::fs::read_to_string(&floor_path)
        .ok()
        .and_then(|t| t.trim().parse::<i64>().ok())
        .unwrap_or(0);
    let token_path = dir.join(TOKEN);
    let cert = std::fs::read(&p.cert).ok();
    let v = cert.as_deref().map(validity).transpose()?;
    let now = judged_now(clock::now_s(), floor, v);
    if now > floor {
        let _ = keyfile::write_atomic(&floor_path, format!("{now}\n").as_bytes(), 0o600);
    }
    let token = match &cert {
        Some(_) => None,
        None => Some(Zeroizing::new(
            std::fs::read_to_string(&token_path).map_err(io(&token_path))?,
        )),
    };
    if let Some(v) = v {
        let stale = link_down_for.is_some_and(|d| d >= DOWN_RENEW)
            && last_try.is_none_or(|t| t.elapsed() >= DOWN_RENEW);
        if !renewal_due(now, v, p.renew_at_percent) && !stale {
            return Ok(Outcome::Idle);
        }
    }
    #[allow(clippy::disallowed_methods)] // the renewal driver spaces its tries by the clock
    let tried = std::time::Instant::now();
    *last_try = Some(tried);
    let key = Zeroizing::new(std::fs::read_to_string(&p.key).map_err(io(&p.key))?);
    let csr = csr(&key, &p.node)?;
    drop(key);
    let mut body = Zeroizing::new(String::new());
    if let Some(t) = &token {
        body.push_str(&format!("token {}\n", t.trim()));
    }
    body.push_str(&csr);
    let ca = std::fs::read(&p.ca).map_err(io(&p.ca))?;
    let tls = hedge_uplink::tls::server_only_config(&ca)
        .map_err(|e| CredentialsError::Cert(e.to_string()))?;
    let pem = post(&p.url, tls, body.as_bytes()).await?;
    let nv = validity(pem.as_bytes())?;
    keyfile::write_atomic(&p.cert, pem.as_bytes(), 0o644).map_err(io(&p.cert))?;
    if token.is_some() {
        let _ = std::fs::remove_file(&token_path);
    }
    let now = judged_now(clock::now_s(), floor, Some(nv));
    let _ = keyfile::write_atomic(&floor_path, format!("{now}\n").as_bytes(), 0o600);
    tracing::info!(
        not_after = nv.not_after,
        enrolled = token.is_some(),
        "uplink certificate received"
    );
    Ok(Outcome::Renewed)
}

/// `POST /enroll` with `body` to `url`; the answer's body (a certificate PEM) on 200.
pub async fn post(
    url: &str,
    tls: Arc<rustls::ClientConfig>,
    body: &[u8],
) -> Result<String, CredentialsError> {
    let (host, port, prefix) =
        crate::artifact::fetch::parse_url(url).map_err(|e| CredentialsError::Net(e.to_string()))?;
    let name = rustls::pki_types::ServerName::try_from(host.clone())
        .map_err(|_| CredentialsError::Net(format!("{host}: not a TLS server name")))?;
    let net = |e: std::io::Error| CredentialsError::Net(e.to_string());
    let answer = tokio::time::timeout(TIMEOUT, async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(net)?;
        let mut s = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(net)?;
        let head = format!(
            "POST {prefix}/enroll HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.map_err(net)?;
        s.write_all(body).await.map_err(net)?;
        s.flush().await.map_err(net)?;
        let mut out = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = match s.read(&mut chunk).await {
                Ok(n) => n,
                // The master closes without close_notify at times; what came is the answer.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
                Err(e) => return Err(net(e)),
            };
            if n == 0 {
                break;
            }
            if out.len() + n > MAX_ANSWER {
                return Err(CredentialsError::Net("answer too large".into()));
            }
            out.extend_from_slice(&chunk[..n]);
        }
        Ok(out)
    })
    .await
    .map_err(|_| CredentialsError::Net("timed out".into()))??;
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| CredentialsError::Net("no HTTP answer".into()))?;
    let head = std::str::from_utf8(&answer[..end])
        .map_err(|_| CredentialsError::Net("bad HTTP answer".into()))?;
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| CredentialsError::Net("bad HTTP status line".into()))?;
    if status != 200 {
        return Err(CredentialsError::Refused(status));
    }
    String::from_utf8(answer[end + 4..].to_vec())
        .map_err(|_| CredentialsError::Net("answer is not PEM".into()))
}

/// Checks forever: at start, then every `p.check` (sooner after a failure, with a
/// backoff); calls `on_new` after each new certificate. `link_down_for` reports how long
/// the link has been down.
#[allow(clippy::disallowed_methods)] // the renewal driver rate-limits its log by the clock
pub async fn run(p: Paths, link_down_for: impl Fn() -> Option<Duration>, on_new: impl Fn()) {
    let mut last_try = None;
    let mut backoff = Duration::from_secs(1);
    let mut last_log: Option<std::time::Instant> = None;
    loop {
        let wait = match check(&p, link_down_for(), &mut last_try).await {
            Ok(Outcome::Renewed) => {
                on_new();
                backoff = Duration::from_secs(1);
                p.check
            }
            Ok(Outcome::Idle) => p.check,
            Err(e) => {
                if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    last_log = Some(std::time::Instant::now());
                    tracing::warn!(error = %e, "uplink certificate: enrollment or renewal failed; retrying");
                }
                let w = backoff.min(p.check);
                backoff = (backoff * 2).min(Duration::from_secs(300));
                w
            }
        };
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_clock_behind_what_the_node_knew_is_not_trusted() {
        let v = Validity {
            not_before: 1_000_000,
            not_after: 1_000_300,
        };
        // 1970 clock: the certificate's notBefore and the floor win.
        assert_eq!(judged_now(5, 0, Some(v)), 1_000_000);
        assert_eq!(judged_now(5, 1_000_250, Some(v)), 1_000_250);
        assert_eq!(judged_now(2_000_000, 1_000_250, Some(v)), 2_000_000);
        assert_eq!(judged_now(5, 7, None), 7);
        assert!(!renewal_due(1_000_000 + 197, v, 66));
        assert!(renewal_due(1_000_000 + 198, v, 66));
        assert!(renewal_due(3_000_000, v, 66), "long past expiry: renew");
        assert!(renewal_due(1_000_000, v, 0));
    }

    #[test]
    fn keys_make_csrs_and_certificates_have_validities() {
        let tmp = tempfile::tempdir().unwrap();
        let k = tmp.path().join("node.key");
        create_key(&k).unwrap();
        assert_eq!(
            std::fs::metadata(&k).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(create_key(&k).is_err(), "never overwrites a key");
        let pem = std::fs::read_to_string(&k).unwrap();
        let c = csr(&pem, "n-1").unwrap();
        assert!(c.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        let key = rcgen::KeyPair::from_pem(&pem).unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.not_before = time::OffsetDateTime::from_unix_timestamp(100).unwrap();
        p.not_after = time::OffsetDateTime::from_unix_timestamp(400).unwrap();
        let cert = p.self_signed(&key).unwrap();
        assert_eq!(
            validity(cert.pem().as_bytes()).unwrap(),
            Validity {
                not_before: 100,
                not_after: 400
            }
        );
        assert!(validity(b"junk").is_err());
    }
}
