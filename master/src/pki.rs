//! The fleet PKI: a master directory (`hedge master init`) and node enrollment bundles
//! (`hedge master enroll`).
//!
//! Contract:
//! - [`init`] creates a master directory once (it refuses when `master.toml`, or any file
//!   it would write, exists): the fleet CA (`ca.crt`, `ca.key`), the broker's server
//!   certificate (`broker.crt`/`.key`, SANs 127.0.0.1, localhost, the broker host and any
//!   extra), the masters' MQTT client certificate (`master.crt`/`.key`, CN
//!   [`MASTER_USER`]), the ed25519 key that signs desired states (`signing.key`: the raw
//!   32-byte seed; `signing.pub`: hex), `mosquitto.conf` + `acl` (see [`crate::mosquitto`])
//!   and a commented `master.toml` ([`master_toml`]), written last. Secret files are 0600.
//! - [`enroll`] makes a one-time enrollment token for a node ([`crate::enrollment`]) and
//!   writes it, with the CA certificate, the broker address, the master's HTTPS endpoint
//!   and the master's public signing key, into ONE TOML file (0600, never overwritten): a
//!   [`Bundle`], which the node reads with [`Bundle::load`] (`hedge node init --enroll
//!   FILE`). It holds no private key: the node makes its key and sends a CSR with the
//!   token; the master answers the certificate ([`issue_node_cert`]).
//! - [`master_toml`] is the commented `master.toml` it writes ([`crate::config`] reads it).
//!
//! Keys are ECDSA P-256 (OpenSSL in mosquitto and rustls/webpki on nodes both accept it).
//! Validity starts at the Unix epoch: boards without an RTC (Raspberry Pi) may boot with a
//! clock in 1970 and must still be able to check the broker's certificate before NTP runs.
//! The CA and the broker's and masters' certificates are valid for 30/20 years; node
//! certificates for `[enrollment] cert_lifetime_s` (30 days), renewed by the node
//! ([`crate::enrollment`]). Every node certificate is recorded in `DIR/issued`, and
//! `hedge master revoke` puts them in the broker's CRL ([`crate::revocation`]).
//!
//! Private keys are held in [`Zeroizing`] buffers and rcgen's `KeyPair` is zeroized on drop
//! where the crates allow it (ring's internal key copy is not).

use std::net::IpAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use hedge_common::{hex, keyfile, KeyFileError};
use hedge_wire::Name;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

use crate::config::{ActSection, AllocationSection, MasterConfig};
pub use crate::mosquitto::MASTER_USER;

/// Errors of the PKI and of `master.toml`.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// I/O on a file or directory.
    #[error("{path}: {source}")]
    Io {
        /// File or directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// `init` found an existing master directory.
    #[error("{0}: already initialised (master.toml exists); refusing to overwrite")]
    AlreadyInitialized(PathBuf),
    /// A file that would be written exists.
    #[error("{0}: exists; refusing to overwrite it (remove it or choose another path)")]
    Exists(PathBuf),
    /// An option or argument is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// Certificate generation or parsing failed.
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    /// `master.toml` does not load.
    #[error(transparent)]
    MasterToml(#[from] crate::config::ConfigError),
    /// A key file is unreadable, readable by group or others, or malformed.
    #[error(transparent)]
    Key(#[from] KeyFileError),
    /// The issuance log, the revoked list or the CRL.
    #[error(transparent)]
    Revocation(#[from] crate::revocation::RevocationError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Options of [`init`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitOptions {
    /// The address nodes dial and the broker's nodes' listener binds (default `127.0.0.1`).
    pub broker_host: String,
    /// The nodes' TLS port (default 8883), given to nodes in enrollment bundles.
    pub broker_port: u16,
    /// Where the broker's masters' listener binds and masters dial (default `127.0.0.1`:
    /// masters run beside the broker).
    pub master_host: String,
    /// The masters' TLS port; `None`: `broker_port + 1`.
    pub master_port: Option<u16>,
    /// More names or addresses for the broker's certificate.
    pub extra_sans: Vec<String>,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            broker_host: "127.0.0.1".into(),
            broker_port: 8883,
            master_host: "127.0.0.1".into(),
            master_port: None,
            extra_sans: Vec::new(),
        }
    }
}

/// What [`init`] wrote.
#[derive(Debug, Clone)]
pub struct InitReport {
    /// The master directory (absolute).
    pub dir: PathBuf,
    /// Every file written, in order (`master.toml` last).
    pub files: Vec<PathBuf>,
    /// `DIR/master.toml`.
    pub master_toml: PathBuf,
    /// `DIR/mosquitto.conf`.
    pub mosquitto_conf: PathBuf,
    /// The master's public signing key, hex (also in `signing.pub`).
    pub signing_public: String,
}

/// Files [`init`] writes, in order; `master.toml` last marks a complete directory.
pub const INIT_FILES: [&str; 14] = [
    "ca.crt",
    "ca.key",
    "broker.crt",
    "broker.key",
    "master.crt",
    "master.key",
    "signing.key",
    "signing.pub",
    "recovery.key",
    "recovery.pub",
    "mosquitto.conf",
    "acl",
    "crl.pem",
    "master.toml",
];

const CA_YEARS: i64 = 30;
const LEAF_YEARS: i64 = 20;

/// Creates a master directory in `dir` (created if missing). See the module doc.
pub fn init(dir: &Path, opts: &InitOptions) -> Result<InitReport, PkiError> {
    check_host(&opts.broker_host)?;
    check_host(&opts.master_host)?;
    for san in &opts.extra_sans {
        check_host(san)?;
    }
    if opts.broker_port == 0 {
        return Err(PkiError::Invalid("broker port must not be 0".into()));
    }
    let master_port = match opts.master_port {
        Some(p) => p,
        None => opts.broker_port.checked_add(1).ok_or_else(|| {
            PkiError::Invalid("broker port 65535 leaves no default masters' port".into())
        })?,
    };
    if master_port == 0 || master_port == opts.broker_port {
        return Err(PkiError::Invalid(format!(
            "masters' port {master_port} must be non-zero and differ from the nodes' port"
        )));
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    // Keys, the store and the signing key live here: the owner's only.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
    let dir = std::path::absolute(dir).map_err(io(dir))?;
    if dir.join("master.toml").exists() {
        return Err(PkiError::AlreadyInitialized(dir.join("master.toml")));
    }
    for name in INIT_FILES {
        let p = dir.join(name);
        if p.exists() {
            return Err(PkiError::Exists(p));
        }
    }

    let now = OffsetDateTime::now_utc();
    let mut files = Vec::new();
    let mut put = |name: &str, data: &[u8], mode: u32| -> Result<(), PkiError> {
        let p = dir.join(name);
        write_new(&p, data, mode)?;
        files.push(p);
        Ok(())
    };

    // The fleet CA.
    let ca_key = Zeroizing::new(KeyPair::generate()?);
    let ca_params = ca_params(now);
    let ca_cert = ca_params.self_signed(&*ca_key)?;
    let issuer = Issuer::new(ca_params, &*ca_key);
    put("ca.crt", ca_cert.pem().as_bytes(), 0o644)?;
    put(
        "ca.key",
        Zeroizing::new(ca_key.serialize_pem()).as_bytes(),
        0o600,
    )?;

    // The broker's server certificate.
    let mut sans = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    for s in [&opts.broker_host, &opts.master_host]
        .into_iter()
        .chain(&opts.extra_sans)
    {
        if !sans.contains(s) {
            sans.push(s.clone());
        }
    }
    let broker_key = Zeroizing::new(KeyPair::generate()?);
    let mut bp = leaf_params("hedge-broker", now);
    bp.subject_alt_names = sans.iter().map(|s| san(s)).collect::<Result<_, _>>()?;
    bp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let broker_cert = bp.signed_by(&*broker_key, &issuer)?;
    put("broker.crt", broker_cert.pem().as_bytes(), 0o644)?;
    put(
        "broker.key",
        Zeroizing::new(broker_key.serialize_pem()).as_bytes(),
        0o600,
    )?;

    // The masters' MQTT client certificate.
    let (master_cert, master_key) = client_cert(MASTER_USER, now, &issuer)?;
    put("master.crt", master_cert.as_bytes(), 0o644)?;
    put("master.key", master_key.as_bytes(), 0o600)?;

    // The desired-state signing key.
    let signing = SigningKey::generate(&mut rand_core::OsRng);
    let seed = Zeroizing::new(signing.to_bytes());
    let signing_public = hex::encode(&signing.verifying_key().to_bytes());
    put("signing.key", seed.as_ref(), 0o600)?;
    put(
        "signing.pub",
        format!("{signing_public}\n").as_bytes(),
        0o644,
    )?;

    // The fleet's recovery key: nodes seal their snapshot keys to its public half
    // (`recovery.pub`); the secret may be moved offline (`hedge master restore
    // --recovery-key`).
    let recovery = dir.join(crate::blobs::RECOVERY_KEY);
    crate::blobs::recovery::create(&recovery)?;

    // The broker's config and ACL.
    let mut conf = crate::mosquitto::config(
        &dir,
        crate::mosquitto::Listeners {
            node_host: &opts.broker_host,
            node_port: opts.broker_port,
            master_host: &opts.master_host,
            master_port,
        },
    );
    let owner = std::fs::metadata(&dir).map_err(io(&dir))?.uid();
    if let Some(line) = crate::mosquitto::user_line(owner) {
        conf.push('\n');
        conf.push_str(line);
    }
    put("mosquitto.conf", conf.as_bytes(), 0o644)?;
    put("acl", crate::mosquitto::acl().as_bytes(), 0o644)?;
    let data = dir.join(crate::mosquitto::DATA_DIR);
    match std::fs::create_dir(&data) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(&data)(e)),
    }
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).map_err(io(&data))?;
    // An empty CRL: mosquitto's `crlfile` must name a valid one from the start.
    crate::revocation::write_crl(&dir, now)?;

    // Last: marks the directory complete.
    put(
        "master.toml",
        master_toml(
            (&opts.master_host, master_port),
            (&opts.broker_host, opts.broker_port),
        )
        .as_bytes(),
        0o644,
    )?;
    files.insert(files.len() - 1, dir.join(crate::revocation::CRL));
    files.insert(files.len() - 1, recovery.clone());
    files.insert(files.len() - 1, recovery.with_extension("pub"));

    Ok(InitReport {
        master_toml: dir.join("master.toml"),
        mosquitto_conf: dir.join("mosquitto.conf"),
        dir,
        files,
        signing_public,
    })
}

/// Writes an enrollment [`Bundle`] for `node` to `out` (mode 0600; refuses to overwrite),
/// signing its certificate with `dir/ca.key`. The broker address and the signing key come
/// from `dir/master.toml`.
pub fn enroll(dir: &Path, node: &Name, out: &Path) -> Result<(), PkiError> {
    if node.as_str() == MASTER_USER {
        return Err(PkiError::Invalid(format!(
            "{MASTER_USER:?} is the masters' identity; a node cannot be named so"
        )));
    }
    if out.exists() {
        return Err(PkiError::Exists(out.to_owned()));
    }
    if crate::revocation::revoked(dir)?.contains(node) {
        return Err(PkiError::Invalid(format!(
            "node {node} is revoked; enroll the machine under another id"
        )));
    }
    let cfg = MasterConfig::load(&dir.join("master.toml"))?;
    let url = cfg.artifacts_url().ok_or_else(|| {
        PkiError::Invalid(
            "enrollment goes through the master's HTTPS endpoint: set [artifacts] listen in \
             master.toml (and run the master) first"
                .into(),
        )
    })?;
    let ca_path = dir.join("ca.crt");
    let ca_pem = std::fs::read_to_string(&ca_path).map_err(io(&ca_path))?;
    let signing = load_signing_key(&cfg.signing.key)?;
    let ttl = Duration::seconds(i64::try_from(cfg.enrollment.token_ttl_s).unwrap_or(i64::MAX));
    let token = crate::enrollment::create_token(dir, node, OffsetDateTime::now_utc(), ttl)
        .map_err(io(&dir.join(crate::enrollment::TOKENS)))?;
    let bundle = Bundle {
        version: Bundle::VERSION,
        node: node.clone(),
        broker_host: cfg.broker.node_host().to_string(),
        broker_port: cfg.broker.node_port(),
        master_public_key: hex::encode(&signing.verifying_key().to_bytes()),
        ca_cert: ca_pem,
        token: token.to_string(),
        url,
    };
    let body = Zeroizing::new(
        toml::to_string(&bundle).map_err(|e| PkiError::Invalid(format!("bundle: {e}")))?,
    );
    let mut text = Zeroizing::new(format!(
        "# hedge enrollment bundle for node \"{node}\". SECRET until used: its one-time token\n\
         # (valid {}s) gets a certificate for the key the node makes itself.\n\
         # On the node: hedge node init --enroll THIS_FILE, then delete this file.\n",
        cfg.enrollment.token_ttl_s
    ));
    text.push_str(&body);
    write_new(out, text.as_bytes(), 0o600)
}

/// The enrollment bundle is the node's type (the node-only build reads it without
/// the master): see [`hedge_uplink::bundle`].
pub use hedge_uplink::bundle::Bundle;

/// The commented `master.toml` [`init`] writes: masters dial `master` (the broker's
/// masters' listener), enrollment bundles give nodes `node` (its nodes' listener).
pub fn master_toml(master: (&str, u16), node: (&str, u16)) -> String {
    let (master_host, master_port) = master;
    let (broker_host, broker_port) = node;
    format!(
        "\
# hedge master configuration, written by `hedge master init`.
# Relative paths are relative to this file's directory. Unknown keys are errors.
# Several masters may share one broker (and one store on one machine).

[master]
# The master's store: records keyed by (node, epoch, seq), fleet registry, invoices.
store = \"master.db\"

[broker]
# Where masters reach the mosquitto of `mosquitto.conf` (MQTT over mutual TLS): its
# masters' listener, on loopback by default (masters run beside the broker).
host = \"{master_host}\"
port = {master_port}
# What enrollment bundles give nodes: its nodes' listener, where each node's client id
# is its certificate CN (`use_username_as_clientid`).
node_host = \"{broker_host}\"
node_port = {broker_port}
# The fleet CA, and this master's client certificate (CN = hedge-master) and key.
ca = \"ca.crt\"
cert = \"master.crt\"
key = \"master.key\"

[signing]
# ed25519 seed (32 raw bytes, mode 0600) that signs desired states; nodes get the
# public half (signing.pub) in their enrollment bundle.
key = \"signing.key\"

[allocation]
# A node not heard from for this long gets no new instances, in milliseconds.
stale_after_ms = {stale}

[act]
# Move an instance whose incident a node escalated to Critical to another node that
# fits (the old copy is destroyed once the new one runs).
enabled = true
# Moves made for incidents within any hour: fleet-wide, and of one instance. A
# second failure elsewhere points at the release, not the node.
moves_per_hour = {moves}
moves_per_instance_per_hour = {per_instance}
# How often the master looks, in milliseconds (it also looks within a second of
# receiving a Critical incident or an instance reported running).
interval_ms = {interval}

[failover]
# A node silent this long is lost (ms): nothing new is placed on it, and instances
# requested `--on-lost move` are placed elsewhere (their old copies stopped by lease).
lost_after_ms = {lost_after}
# Instances whose request does not say: \"wait\" keeps them on a silent node (a drone
# out of radio range is not dead; its data stays with it), \"move\" places them elsewhere.
on_lost = \"wait\"
# A `move` instance's lease is lost_after_ms less this: a node that cannot reach the
# master stops its copy at least this long before the master places it elsewhere.
lease_margin_ms = {margin}
# How often the master looks for lost, draining and retiring nodes (ms).
check_every_ms = 5000

[billing]
# A TOML price list turning usage records into invoices; no invoices without one.
# price_list = \"prices.toml\"

[artifacts]
# Software (`hedge master supply FILE --target TRIPLE [--release NAME]`), kept by sha256.
dir = \"artifacts\"
# `hedge master run` serves it to enrolled nodes over HTTPS with mutual TLS (this
# certificate and key; client certificates of the fleet CA) when `listen` is set.
# Enroll nodes after setting it: their bundle carries the URL.
# listen = \"127.0.0.1:8443\"
# Nodes enroll (one-time token + CSR) and renew their certificates here too, so set it
# before `hedge master enroll`.
# The URL nodes dial; default https://<broker.node_host>:<listen port>.
# url = \"https://{broker_host}:8443\"
cert = \"broker.crt\"
key = \"broker.key\"

[backup]
# Nodes upload their encrypted backups here (through the HTTPS endpoint above): chunks
# under dir/<node>/, at most this many bytes per node (a chunk past it is refused).
dir = \"blobs\"
quota_bytes_per_node = 4294967296

[enrollment]
# Node certificates live this long (seconds; 30 days); nodes renew them at 2/3 over
# the HTTPS endpoint with their own key, which never leaves the node.
cert_lifetime_s = 2592000
# A node back after its certificate expired may still renew within this (90 days).
renew_grace_s = 7776000
# An enrollment token (in the bundle `hedge master enroll` writes) is usable once, this long.
token_ttl_s = 604800
",
        stale = AllocationSection::default().stale_after_ms,
        moves = ActSection::default().moves_per_hour,
        per_instance = ActSection::default().moves_per_instance_per_hour,
        interval = ActSection::default().interval_ms,
        lost_after = crate::failover::LOST_AFTER_MS,
        margin = crate::failover::LEASE_MARGIN_MS,
    )
}

/// Loads the signing key (raw 32-byte seed), refusing a file readable by others.
pub fn load_signing_key(path: &Path) -> Result<SigningKey, PkiError> {
    Ok(SigningKey::from_bytes(&*keyfile::read_seed(path)?))
}

fn ca_params(now: OffsetDateTime) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "hedge");
    dn.push(DnType::CommonName, "hedge fleet CA");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = OffsetDateTime::UNIX_EPOCH;
    p.not_after = now + Duration::days(365 * CA_YEARS);
    p
}

fn leaf_params(cn: &str, now: OffsetDateTime) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "hedge");
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.use_authority_key_identifier_extension = true;
    p.not_before = OffsetDateTime::UNIX_EPOCH;
    p.not_after = now + Duration::days(365 * LEAF_YEARS);
    p
}

/// Signs a node certificate (CN = `node`, client auth) for `public`, valid from
/// [`skew`]`(lifetime)` before `now` until `now + lifetime`, with a random serial; records
/// it in `DIR/issued`. Returns its PEM.
pub fn issue_node_cert(
    dir: &Path,
    issuer: &Issuer<'_, impl rcgen::SigningKey>,
    node: &Name,
    public: &impl rcgen::PublicKeyData,
    now: OffsetDateTime,
    lifetime: Duration,
) -> Result<String, PkiError> {
    use sha2::Digest;
    let mut p = leaf_params(node.as_str(), now);
    // Only the broker and the master check a node certificate, with their real clocks;
    // the margin absorbs their skew. (The node itself never checks its own certificate;
    // it reads notBefore as a floor of the time: see hedge_runtime::credentials.)
    p.not_before = now - skew(lifetime);
    p.not_after = now + lifetime;
    let mut serial = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut serial);
    serial[0] = (serial[0] & 0x7f) | 0x01;
    p.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = p.signed_by(public, issuer)?;
    crate::revocation::record_issued(
        dir,
        &crate::revocation::Issued {
            serial: serial.to_vec(),
            node: node.clone(),
            not_after: p.not_after.unix_timestamp(),
            spki_sha256: sha2::Sha256::digest(public.subject_public_key_info()).into(),
            spki: Some(public.subject_public_key_info()),
        },
    )?;
    Ok(cert.pem())
}

/// How long before its issue a node certificate starts: 1/30 of its lifetime, at most an
/// hour (so `notBefore` + 2/3 of the validity is still about 2/3 of the lifetime).
pub fn skew(lifetime: Duration) -> Duration {
    std::cmp::min(lifetime / 30_i32, Duration::hours(1))
}

/// The fleet CA as an issuer: (CA certificate PEM, its key).
pub fn load_ca(dir: &Path) -> Result<(String, Zeroizing<KeyPair>), PkiError> {
    let ca_path = dir.join("ca.crt");
    let ca_key_path = dir.join("ca.key");
    let ca_pem = std::fs::read_to_string(&ca_path).map_err(io(&ca_path))?;
    let ca_key_pem =
        Zeroizing::new(std::fs::read_to_string(&ca_key_path).map_err(io(&ca_key_path))?);
    Ok((ca_pem, Zeroizing::new(KeyPair::from_pem(&ca_key_pem)?)))
}

/// A client certificate with CN = `cn`: (certificate PEM, key PEM).
fn client_cert(
    cn: &str,
    now: OffsetDateTime,
    issuer: &Issuer<'_, impl rcgen::SigningKey>,
) -> Result<(String, Zeroizing<String>), PkiError> {
    let key = Zeroizing::new(KeyPair::generate()?);
    let mut p = leaf_params(cn, now);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = p.signed_by(&*key, issuer)?;
    Ok((cert.pem(), Zeroizing::new(key.serialize_pem())))
}

fn san(s: &str) -> Result<SanType, PkiError> {
    Ok(match s.parse::<IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(s.try_into()?),
    })
}

/// A host is an IP address or a DNS name: non-empty, printable ASCII without spaces.
pub(crate) fn check_host(h: &str) -> Result<(), PkiError> {
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(PkiError::Invalid(format!(
            "{h:?} is not a host name or IP address"
        )))
    }
}

fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), PkiError> {
    keyfile::write_new(path, data, mode).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            PkiError::Exists(path.to_owned())
        } else {
            io(path)(e)
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn opts() -> InitOptions {
        InitOptions {
            extra_sans: vec!["broker.example".into()],
            ..InitOptions::default()
        }
    }

    #[test]
    fn init_writes_everything_with_safe_modes_and_refuses_twice() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("m");
        let r = init(&dir, &opts()).unwrap();
        assert_eq!(r.files.last().unwrap(), &dir.join("master.toml"));
        for name in [
            "ca.key",
            "broker.key",
            "master.key",
            "signing.key",
            "recovery.key",
        ] {
            let mode = std::fs::metadata(dir.join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        assert_eq!(std::fs::read(dir.join("signing.key")).unwrap().len(), 32);
        let public = std::fs::read_to_string(dir.join("signing.pub")).unwrap();
        assert_eq!(public.trim(), r.signing_public);
        assert!(dir.join("mosquitto-data").is_dir());
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "the master directory");
        let conf = std::fs::read_to_string(dir.join("mosquitto.conf")).unwrap();
        assert!(conf.contains(&format!("cafile {}", dir.join("ca.crt").display())));

        let cfg = MasterConfig::load(&dir.join("master.toml")).unwrap();
        // Masters dial the masters' listener (default: the nodes' port + 1).
        assert_eq!(cfg.broker.host, "127.0.0.1");
        assert_eq!(cfg.broker.port, 8884);
        assert_eq!(
            (cfg.broker.node_host(), cfg.broker.node_port()),
            ("127.0.0.1", 8883)
        );
        assert_eq!(cfg.broker.key, dir.join("master.key"));
        assert_eq!(cfg.master.store, dir.join("master.db"));
        assert_eq!(cfg.allocation.stale_after_ms, 300_000);
        assert!(cfg.billing.price_list.is_none());
        let key = load_signing_key(&cfg.signing.key).unwrap();
        assert_eq!(
            hex::encode(&key.verifying_key().to_bytes()),
            r.signing_public
        );

        match init(&dir, &opts()) {
            Err(PkiError::AlreadyInitialized(_)) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn init_refuses_a_leftover_ca_key_and_bad_hosts() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("ca.key"), "old").unwrap();
        assert!(matches!(
            init(tmp.path(), &opts()),
            Err(PkiError::Exists(p)) if p.ends_with("ca.key")
        ));
        let bad = InitOptions {
            broker_host: "a b\nlistener 1883".into(),
            ..InitOptions::default()
        };
        assert!(matches!(init(tmp.path(), &bad), Err(PkiError::Invalid(_))));
        for (broker_port, master_port) in [(1883, Some(1883)), (1883, Some(0)), (65535, None)] {
            let bad = InitOptions {
                broker_port,
                master_port,
                ..InitOptions::default()
            };
            assert!(matches!(init(tmp.path(), &bad), Err(PkiError::Invalid(_))));
        }
    }

    #[test]
    fn enroll_writes_one_bundle_with_a_token_and_no_key() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("m");
        let opts = InitOptions {
            broker_host: "broker.example".into(),
            broker_port: 18883,
            master_port: Some(9000),
            ..opts()
        };
        let r = init(&dir, &opts).unwrap();
        let cfg = MasterConfig::load(&dir.join("master.toml")).unwrap();
        assert_eq!(
            (cfg.broker.host.as_str(), cfg.broker.port),
            ("127.0.0.1", 9000)
        );
        let out = tmp.path().join("a.toml");
        let node = Name::new("node-a").unwrap();
        // Enrollment goes through the HTTPS endpoint: refused while it is off.
        assert!(matches!(
            enroll(&dir, &node, &out),
            Err(PkiError::Invalid(m)) if m.contains("[artifacts] listen")
        ));
        let toml = dir.join("master.toml");
        let text = std::fs::read_to_string(&toml).unwrap();
        std::fs::write(
            &toml,
            text.replace("# listen = \"127.0.0.1:8443\"", "listen = \"0.0.0.0:9443\""),
        )
        .unwrap();
        enroll(&dir, &node, &out).unwrap();
        let mode = std::fs::metadata(&out).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let raw = std::fs::read_to_string(&out).unwrap();
        assert!(!raw.contains("PRIVATE KEY"), "{raw}");
        let b = Bundle::load(&out).unwrap();
        assert_eq!(b.node, node);
        // Nodes get the nodes' listener, never the masters' one.
        assert_eq!(
            (b.broker_host.as_str(), b.broker_port),
            ("broker.example", 18883)
        );
        assert_eq!(b.master_public_key, r.signing_public);
        assert_eq!(
            b.ca_cert,
            std::fs::read_to_string(dir.join("ca.crt")).unwrap()
        );
        assert_eq!(b.url, "https://broker.example:9443");
        assert_eq!(b.token.len(), 64);
        assert!(!format!("{b:?}").contains(&b.token));

        assert!(matches!(
            enroll(&dir, &node, &out),
            Err(PkiError::Exists(_))
        ));
        let master = Name::new(MASTER_USER).unwrap();
        assert!(matches!(
            enroll(&dir, &master, &tmp.path().join("m.toml")),
            Err(PkiError::Invalid(_))
        ));
    }

    #[test]
    fn bundle_rejects_garbage() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("b.toml");
        std::fs::write(
            &p,
            "version = 2\nnode = \"a\"\nbroker_host = \"h\"\nbroker_port = 1\n\
             master_public_key = \"00\"\nca_cert = \"x\"\ntoken = \"x\"\nurl = \"https://h:1\"\n",
        )
        .unwrap();
        let err = Bundle::load(&p).unwrap_err().to_string();
        assert!(err.contains("master_public_key"), "{err}");
        std::fs::write(&p, "version = 1\nnode = \"../x\"\n").unwrap();
        assert!(matches!(
            Bundle::load(&p),
            Err(hedge_uplink::bundle::BundleError::Parse { .. })
        ));
    }
}
