//! Test helpers of the mesh crate: a throw-away fleet CA issuing node certificates the way
//! `hedge master enroll` does (CN = node id, `clientAuth`), a foreign CA, and waiting for
//! a condition or an event with a deadline.
#![allow(dead_code, clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use hedge_mesh::{MeshConfig, NetTls, PeerEvent, PeerEventKind};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use tokio::sync::mpsc;

/// How long a test waits for anything.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A certificate authority.
pub struct Ca {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let pem = p.self_signed(&key).unwrap().pem();
        Ca {
            pem,
            issuer: Issuer::new(p, key),
        }
    }

    /// A node certificate and key (PEM), CN = `cn`, as the master issues them.
    pub fn node(&self, cn: &str) -> (String, String) {
        self.node_valid(cn, None)
    }

    /// [`Ca::node`] valid from `days.0` to `days.1` days from now (default: rcgen's).
    pub fn node_valid(&self, cn: &str, days: Option<(i64, i64)>) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        p.distinguished_name = dn;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.use_authority_key_identifier_extension = true;
        if let Some((from, to)) = days {
            let now = time::OffsetDateTime::now_utc();
            p.not_before = now + time::Duration::days(from);
            p.not_after = now + time::Duration::days(to);
        }
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// The TLS of node `cn` trusting `trust` (normally this CA's PEM).
    pub fn tls(&self, cn: &str, trust: &str) -> NetTls {
        self.tls_valid(cn, trust, None)
    }

    /// [`Ca::tls`] with a certificate valid as [`Ca::node_valid`] says.
    pub fn tls_valid(&self, cn: &str, trust: &str, days: Option<(i64, i64)>) -> NetTls {
        let (cert, key) = self.node_valid(cn, days);
        NetTls::new(trust.as_bytes(), cert.as_bytes(), key.as_bytes()).unwrap()
    }
}

/// A mesh on loopback with an OS-chosen port, fast keepalives, no beacons.
pub fn loopback(peers: Vec<String>) -> MeshConfig {
    MeshConfig {
        enabled: true,
        listen: "127.0.0.1:0".parse().unwrap(),
        peers,
        keepalive_ms: 200,
        dead_after_ms: 1000,
        max_backoff_ms: 1000,
        ..MeshConfig::default()
    }
}

/// The next event, or a panic at the deadline.
pub async fn next(rx: &mut mpsc::Receiver<PeerEvent>) -> PeerEvent {
    tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .expect("no event before the deadline")
        .expect("events closed")
}

/// Events until one matches `f` (which is returned); panics at the deadline.
pub async fn until(
    rx: &mut mpsc::Receiver<PeerEvent>,
    mut f: impl FnMut(&PeerEvent) -> bool,
) -> PeerEvent {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let ev = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("no matching event before the deadline")
            .expect("events closed");
        if f(&ev) {
            return ev;
        }
    }
}

/// Polls `f` every 20 ms until it holds; panics at the deadline.
pub async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn is_up(ev: &PeerEvent, peer: &str) -> bool {
    ev.peer.as_str() == peer && matches!(ev.kind, PeerEventKind::Up { .. })
}

pub fn is_down(ev: &PeerEvent, peer: &str) -> bool {
    ev.peer.as_str() == peer && ev.kind == PeerEventKind::Down
}

/// Whether a test that needs root can run here. `false` means the caller returns early;
/// under `CI` a test that cannot run fails instead, so a green CI never hides it.
pub fn can_run_as_root(what: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "this test needs {what} and CI is set: it must run here"
    );
    eprintln!("skipped: needs {what}");
    false
}
