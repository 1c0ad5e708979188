//! Node revocation: the issuance log, the revoked list, the CRL and the broker reload.
//!
//! Contract (all files live in the master directory DIR):
//! - `DIR/issued`: one line per node certificate the PKI signs, appended by
//!   [`record_issued`]: `SERIAL_HEX NODE NOT_AFTER_UNIX SPKI_SHA256_HEX [SPKI_DER_HEX]`.
//!   Revoking a node revokes every certificate ever issued to it (enrollment and each
//!   renewal). The fifth field, the public key itself (written since the mesh: lines
//!   without it are older), is what [`crate::origin`] verifies relayed batches with; a
//!   line whose key does not hash to its fourth field is malformed.
//! - `DIR/revoked`: one node id per line, appended by [`revoke`]; [`Revoked`] reads it
//!   (again whenever the file changes) and answers "is this node revoked": the master's
//!   ingest refuses such a node's records, the artifact endpoint its downloads ([`guard`]), the
//!   enrollment endpoint its renewals, and `hedge master enroll` its name.
//! - `DIR/crl.pem`: the fleet CA's CRL listing every serial issued to a revoked node,
//!   written whole (temporary file + rename) by [`write_crl`] at `init` (empty) and at
//!   every [`revoke`]. mosquitto reads it through `crlfile` (see [`crate::mosquitto`]).
//!   Its `nextUpdate` is ten years out: mosquitto (OpenSSL) refuses every client once a CRL
//!   has expired, and nothing fetches a fresher one; it is rewritten at each revocation.
//! - [`reload_broker`]: mosquitto 2.0.11 re-reads `crlfile` on SIGHUP (checked by hand:
//!   a revoked certificate keeps connecting until the SIGHUP, and gets the TLS alert
//!   "certificate revoked" after it) and writes its pid to `DIR/mosquitto.pid`
//!   (`pid_file`, also when not daemonized). [`revoke`] sends SIGHUP to that pid when it is
//!   a running `mosquitto`. A reload does not close connections that are already open: a
//!   revoked node stays connected until its connection drops, and meanwhile the master
//!   refuses (and never acknowledges) its records.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use hedge_common::{hex, keyfile};
use hedge_wire::Name;
use rcgen::{
    CertificateRevocationListParams, Issuer, KeyIdMethod, KeyPair, RevokedCertParams, SerialNumber,
};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

/// The issuance log's file name in DIR.
pub const ISSUED: &str = "issued";
/// The revoked list's file name in DIR.
pub const REVOKED: &str = "revoked";
/// The CRL's file name in DIR.
pub const CRL: &str = "crl.pem";
/// The broker's pid file name in DIR.
pub const BROKER_PID: &str = "mosquitto.pid";

const CRL_YEARS: i64 = 10;

/// Errors of revocation.
#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    /// I/O on a file of DIR.
    #[error("{path}: {source}")]
    Io {
        /// `issued`, `revoked`, the CRL or the CA certificate or key, in DIR.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A line of `issued` or `revoked` is malformed.
    #[error("{path}:{line}: malformed line")]
    Malformed {
        /// `issued` or `revoked`.
        path: PathBuf,
        /// 1-based line.
        line: usize,
    },
    /// Signing the CRL failed.
    #[error("CRL: {0}")]
    Cert(#[from] rcgen::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RevocationError + '_ {
    move |source| RevocationError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One line of the issuance log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// The certificate's serial number (big-endian bytes).
    pub serial: Vec<u8>,
    /// The node (certificate CN).
    pub node: Name,
    /// Its `notAfter`, Unix seconds.
    pub not_after: i64,
    /// sha256 of its SubjectPublicKeyInfo (DER): which key the node holds.
    pub spki_sha256: [u8; 32],
    /// The SubjectPublicKeyInfo (DER) itself; `None` on lines written before the mesh.
    pub spki: Option<Vec<u8>>,
}

impl Issued {
    fn line(&self) -> String {
        let key = self
            .spki
            .as_ref()
            .map_or(String::new(), |k| format!(" {}", hex::encode(k)));
        format!(
            "{} {} {} {}{key}\n",
            hex::encode(&self.serial),
            self.node,
            self.not_after,
            hex::encode(&self.spki_sha256)
        )
    }

    fn parse(l: &str) -> Option<Issued> {
        let mut f = l.split(' ');
        let serial = hex::decode(f.next()?)?;
        let node = Name::new(f.next()?).ok()?;
        let not_after = f.next()?.parse().ok()?;
        let spki_sha256: [u8; 32] = hex::decode(f.next()?)?.try_into().ok()?;
        let spki = match f.next() {
            Some(k) => {
                use sha2::Digest;
                let k = hex::decode(k)?;
                if <[u8; 32]>::from(sha2::Sha256::digest(&k)) != spki_sha256 {
                    return None;
                }
                Some(k)
            }
            None => None,
        };
        if f.next().is_some() || serial.is_empty() || serial.len() > 20 {
            return None;
        }
        Some(Issued {
            serial,
            node,
            not_after,
            spki_sha256,
            spki,
        })
    }
}

/// Appends `entry` to `DIR/issued` (created 0644 when missing; synced).
pub fn record_issued(dir: &Path, entry: &Issued) -> Result<(), RevocationError> {
    append(&dir.join(ISSUED), &entry.line())
}

/// Appends `line` to `path` (created 0644 when missing) and syncs it.
fn append(path: &Path, line: &str) -> Result<(), RevocationError> {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .open(path)
        .map_err(io(path))?;
    f.write_all(line.as_bytes()).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// Every entry of `DIR/issued` (none when the file is missing).
pub fn issued(dir: &Path) -> Result<Vec<Issued>, RevocationError> {
    let path = dir.join(ISSUED);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(&path)(e)),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            Issued::parse(l.trim()).ok_or(RevocationError::Malformed {
                path: path.clone(),
                line: i + 1,
            })
        })
        .collect()
}

/// The revoked node ids of `DIR/revoked` (none when the file is missing).
pub fn revoked(dir: &Path) -> Result<BTreeSet<Name>, RevocationError> {
    read_revoked(&dir.join(REVOKED))
}

fn read_revoked(path: &Path) -> Result<BTreeSet<Name>, RevocationError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(e) => return Err(io(path)(e)),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            Name::new(l.trim()).map_err(|_| RevocationError::Malformed {
                path: path.to_owned(),
                line: i + 1,
            })
        })
        .collect()
}

/// What [`revoke`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// The node was already revoked (the CRL was rewritten anyway).
    pub already: bool,
    /// Certificates of the node now in the CRL.
    pub certificates: usize,
    /// The broker pid that got SIGHUP, when one runs.
    pub reloaded: Option<u32>,
}

/// Revokes `node`: appends it to `DIR/revoked`, rewrites `DIR/crl.pem` with `ca_key`,
/// and makes a running broker reload it. See the module doc.
pub fn revoke(dir: &Path, node: &Name) -> Result<Revocation, RevocationError> {
    let mut set = revoked(dir)?;
    let already = !set.insert(node.clone());
    if !already {
        append(&dir.join(REVOKED), &format!("{node}\n"))?;
    }
    write_crl(dir, OffsetDateTime::now_utc())?;
    let certificates = issued(dir)?.iter().filter(|i| &i.node == node).count();
    Ok(Revocation {
        already,
        certificates,
        reloaded: reload_broker(dir),
    })
}

/// Writes `DIR/crl.pem`: every serial issued to a revoked node, signed with `DIR/ca.key`.
pub fn write_crl(dir: &Path, now: OffsetDateTime) -> Result<(), RevocationError> {
    let set = revoked(dir)?;
    let revoked_certs = issued(dir)?
        .into_iter()
        .filter(|i| set.contains(&i.node))
        .map(|i| RevokedCertParams {
            serial_number: SerialNumber::from_slice(&i.serial),
            revocation_time: now,
            reason_code: None,
            invalidity_date: None,
        })
        .collect();
    let ca_path = dir.join("ca.crt");
    let key_path = dir.join("ca.key");
    let ca_pem = std::fs::read_to_string(&ca_path).map_err(io(&ca_path))?;
    let key_pem = Zeroizing::new(std::fs::read_to_string(&key_path).map_err(io(&key_path))?);
    let key = Zeroizing::new(KeyPair::from_pem(&key_pem)?);
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, &*key)?;
    // The broker's clock may lag a little behind this machine's.
    let this_update = now - Duration::hours(1);
    let params = CertificateRevocationListParams {
        this_update,
        next_update: now + Duration::days(365 * CRL_YEARS),
        crl_number: SerialNumber::from(u64::try_from(now.unix_timestamp()).unwrap_or(1)),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let pem = params.signed_by(&issuer)?.pem()?;
    let path = dir.join(CRL);
    keyfile::write_atomic(&path, pem.as_bytes(), 0o644).map_err(io(&path))
}

/// Sends SIGHUP to the broker whose pid is in `DIR/mosquitto.pid`, when that process is
/// a running `mosquitto`; returns its pid.
pub fn reload_broker(dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(dir.join(BROKER_PID)).ok()?;
    let pid: i32 = text.trim().parse().ok().filter(|p| *p > 1)?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    if comm.trim() != "mosquitto" {
        return None;
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .ok()?;
    u32::try_from(pid).ok()
}

/// A file's (mtime, size).
type Stamp = (SystemTime, u64);

/// The revoked list, re-read whenever `DIR/revoked` changes (size or mtime). Shared by
/// the ingest loop and the artifact endpoint.
#[derive(Debug)]
pub struct Revoked {
    path: PathBuf,
    cache: Mutex<(Option<Stamp>, BTreeSet<Name>)>,
    refused: std::sync::atomic::AtomicU64,
    log: crate::log_limit::LogLimit,
}

impl Revoked {
    /// The list of master directory `dir`.
    pub fn new(dir: &Path) -> Revoked {
        Revoked {
            path: dir.join(REVOKED),
            cache: Mutex::new((None, BTreeSet::new())),
            refused: std::sync::atomic::AtomicU64::new(0),
            log: crate::log_limit::LogLimit::default(),
        }
    }

    /// Counts a refusal of a revoked node's `what` and logs it (each `what` at most
    /// every 10 s).
    pub fn refused(&self, what: &'static str, node: &str) {
        let n = self
            .refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        if self.log.allow(what) {
            tracing::warn!(node, what, refused_total = n, "revoked node refused");
        }
    }

    /// Refusals counted by [`Revoked::refused`].
    pub fn refused_total(&self) -> u64 {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether `node` is revoked. A list that cannot be read counts everyone revoked
    /// (fail closed) and is logged.
    pub fn contains(&self, node: &str) -> bool {
        let stamp = match std::fs::metadata(&self.path) {
            Ok(m) => Some((m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "revoked list unreadable: refusing");
                return true;
            }
        };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if stamp.is_none() {
            cache.0 = None;
            cache.1.clear();
            return false;
        }
        if cache.0 != stamp {
            match read_revoked(&self.path) {
                Ok(set) => *cache = (stamp, set),
                Err(e) => {
                    tracing::warn!(error = %e, "revoked list unreadable: refusing");
                    return true;
                }
            }
        }
        cache.1.iter().any(|n| n.as_str() == node)
    }
}

/// `inner`, except that a revoked node gets nothing (counted and logged as a refused
/// "artifact download"): what the artifact endpoint asks before serving a node.
pub fn guard(
    revoked: std::sync::Arc<Revoked>,
    inner: crate::artifacts::Authorize,
) -> crate::artifacts::Authorize {
    std::sync::Arc::new(move |node: &Name, sha: &[u8; 32]| {
        if revoked.contains(node.as_str()) {
            revoked.refused("artifact download", node.as_str());
            return false;
        }
        inner(node, sha)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn issued_lines_round_trip_and_garbage_is_refused() {
        let e = Issued {
            serial: vec![0x01, 0xab],
            node: Name::new("n-1").unwrap(),
            not_after: 1_700_000_000,
            spki_sha256: [7; 32],
            spki: None,
        };
        assert_eq!(Issued::parse(e.line().trim()), Some(e.clone()));
        for bad in ["", "zz n 1 00", "01 ../x 1 00", "01 n x 00", "01 n 1 0707"] {
            assert_eq!(Issued::parse(bad), None, "{bad}");
        }
        // With the key: it must hash to the fourth field.
        use sha2::Digest;
        let key = vec![0x30, 0x59, 1, 2, 3];
        let with = Issued {
            spki_sha256: sha2::Sha256::digest(&key).into(),
            spki: Some(key),
            ..e.clone()
        };
        assert_eq!(Issued::parse(with.line().trim()), Some(with.clone()));
        let forged = Issued {
            spki: Some(vec![0x30, 0x59, 9]),
            ..with
        };
        assert_eq!(Issued::parse(forged.line().trim()), None);
    }

    fn crl_serials(dir: &Path) -> Vec<Vec<u8>> {
        use x509_parser::prelude::FromDer;
        let pem = std::fs::read(dir.join(CRL)).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
        let (_, crl) =
            x509_parser::revocation_list::CertificateRevocationList::from_der(&pem.contents)
                .unwrap();
        crl.iter_revoked_certificates()
            .map(|r| r.raw_serial().to_vec())
            .collect()
    }

    #[test]
    fn revoking_a_node_lists_every_certificate_it_was_issued() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        crate::pki::init(dir, &crate::pki::InitOptions::default()).unwrap();
        assert!(crl_serials(dir).is_empty(), "init writes an empty CRL");
        let a = Name::new("a").unwrap();
        let b = Name::new("b").unwrap();
        let (ca, ca_key) = crate::pki::load_ca(dir).unwrap();
        let issuer = Issuer::from_ca_cert_pem(&ca, &*ca_key).unwrap();
        for n in [&a, &a, &b] {
            let key = KeyPair::generate().unwrap();
            crate::pki::issue_node_cert(
                dir,
                &issuer,
                n,
                &key,
                OffsetDateTime::now_utc(),
                Duration::days(1),
            )
            .unwrap();
        }
        let log = issued(dir).unwrap();
        assert_eq!(log.len(), 3);
        let r = revoke(dir, &a).unwrap();
        assert_eq!((r.already, r.certificates, r.reloaded), (false, 2, None));
        let mut want: Vec<Vec<u8>> = log
            .iter()
            .filter(|i| i.node == a)
            .map(|i| i.serial.clone())
            .collect();
        let mut got = crl_serials(dir);
        want.sort();
        got.sort();
        assert_eq!(got, want);
        assert!(revoke(dir, &a).unwrap().already);
        assert_eq!(revoked(dir).unwrap().len(), 1);
        assert!(Revoked::new(dir).contains("a"));
        assert!(!Revoked::new(dir).contains("b"));
        assert!(matches!(
            crate::pki::enroll(dir, &a, &dir.join("a3")),
            Err(crate::pki::PkiError::Invalid(_))
        ));
    }

    #[test]
    fn revoked_list_follows_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let r = Revoked::new(tmp.path());
        assert!(!r.contains("a"));
        std::fs::write(tmp.path().join(REVOKED), "a\n").unwrap();
        assert!(r.contains("a"));
        assert!(!r.contains("b"));
        std::fs::write(tmp.path().join(REVOKED), "a\nbb\n").unwrap();
        assert!(r.contains("bb"));
        std::fs::write(tmp.path().join(REVOKED), "../x\n").unwrap();
        assert!(r.contains("b"), "an unreadable list fails closed");
    }
}
