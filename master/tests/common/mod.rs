//! Node credentials for the master's tests, obtained the way a node gets them: a bundle
//! with a one-time token from `pki::enroll`, a key made outside the master, a CSR, and the
//! master's answer from `enrollment::Enroller` (what `POST /enroll` runs).
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;

use hedge_master::enrollment::Enroller;
use hedge_master::pki::{self, Bundle};
use hedge_master::revocation::Revoked;
use hedge_wire::Name;

/// What a node holds after enrollment.
pub struct Creds {
    /// The fleet CA (PEM).
    pub ca_cert: String,
    /// Its certificate (PEM).
    pub cert: String,
    /// Its key (PEM).
    pub key: String,
}

/// Turns on `[artifacts] listen` in `dir/master.toml` (enrollment needs the endpoint).
pub fn enable_endpoint(dir: &Path) {
    let path = dir.join("master.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace(
            "# listen = \"127.0.0.1:8443\"",
            "listen = \"127.0.0.1:8443\"",
        ),
    )
    .unwrap();
}

/// A CSR for a new key with CN = `node`: (CSR PEM, key PEM).
pub fn csr(node: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, node);
    p.distinguished_name = dn;
    (
        p.serialize_request(&key).unwrap().pem().unwrap(),
        key.serialize_pem(),
    )
}

/// Enrolls `node` in master directory `dir` (endpoint enabled) and returns its credentials.
pub fn enroll(dir: &Path, node: &str) -> Creds {
    enable_endpoint(dir);
    let out = dir.join(format!("{node}.bundle"));
    pki::enroll(dir, &Name::new(node).unwrap(), &out).unwrap();
    let b = Bundle::load(&out).unwrap();
    let (csr, key) = csr(node);
    let e = Enroller::load(dir, 86_400, 0, Arc::new(Revoked::new(dir))).unwrap();
    let cert = e
        .answer(
            format!("token {}\n{csr}", b.token).as_bytes(),
            time::OffsetDateTime::now_utc(),
        )
        .unwrap();
    Creds {
        ca_cert: b.ca_cert.clone(),
        cert,
        key,
    }
}
