//! `master.toml`, the master's config file.
//!
//! Contract: [`MasterConfig::load`] parses `master.toml` (`deny_unknown_fields`),
//! resolves relative paths against the file's directory and validates it (values in
//! range, referenced files present, keys not readable by others) before anything binds
//! a socket; a bad file is a [`ConfigError`] naming the file. [`crate::pki::master_toml`]
//! writes the commented file `hedge master init` creates.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::pki::check_host;

/// Errors of loading `master.toml`: it cannot be read (or its directory resolved), is
/// not valid TOML for [`MasterConfig`], or a value is out of range or a referenced file
/// missing or exposed.
pub type ConfigError = hedge_common::ConfigFileError<toml::de::Error>;

/// `master.toml`, loaded: every relative path resolved against [`MasterConfig::base`].
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MasterConfig {
    /// Where the store lives.
    #[serde(default)]
    pub master: MasterSection,
    /// The broker masters dial and nodes are given, and the master's TLS files.
    pub broker: BrokerSection,
    /// The key that signs desired states.
    pub signing: SigningSection,
    /// When a node is too stale to be given instances.
    #[serde(default)]
    pub allocation: AllocationSection,
    /// What the master does for the fleet on its own.
    #[serde(default)]
    pub act: ActSection,
    /// Lost nodes: when a silent node is lost, and what happens to its instances.
    #[serde(default)]
    pub failover: FailoverSection,
    /// The price list invoices are made with.
    #[serde(default)]
    pub billing: BillingSection,
    /// Supplied software and the HTTPS endpoint that serves it.
    #[serde(default)]
    pub artifacts: ArtifactsSection,
    /// Node certificates and enrollment tokens.
    #[serde(default)]
    pub enrollment: EnrollmentSection,
    /// The blob service nodes upload their backups to.
    #[serde(default)]
    pub backup: BackupSection,
    /// Directory of the file; relative paths were resolved against it.
    #[serde(skip)]
    pub base: PathBuf,
}

/// `[master]`: the store.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MasterSection {
    /// The store file (created on first run).
    pub store: PathBuf,
}

impl Default for MasterSection {
    fn default() -> Self {
        MasterSection {
            store: PathBuf::from("master.db"),
        }
    }
}

/// `[broker]`: the MQTT broker and the master's client certificate.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSection {
    /// Broker host masters dial (its masters' listener).
    pub host: String,
    /// Broker TLS port masters dial.
    pub port: u16,
    /// Broker host nodes dial (enrollment bundles, default artifact URL); default `host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_host: Option<String>,
    /// Broker TLS port nodes dial (its nodes' listener); default `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<u16>,
    /// Fleet CA certificate (PEM).
    pub ca: PathBuf,
    /// The master's client certificate (PEM, CN = hedge-master).
    pub cert: PathBuf,
    /// Its private key (PEM, mode 0600).
    pub key: PathBuf,
}

impl BrokerSection {
    /// The host nodes dial: `node_host`, else `host`.
    pub fn node_host(&self) -> &str {
        self.node_host.as_deref().unwrap_or(&self.host)
    }

    /// The port nodes dial: `node_port`, else `port`.
    pub fn node_port(&self) -> u16 {
        self.node_port.unwrap_or(self.port)
    }
}

/// `[signing]`: the desired-state signing key.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SigningSection {
    /// The ed25519 seed file (32 raw bytes, mode 0600).
    pub key: PathBuf,
}

/// `[allocation]`: what allocation considers a live node.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AllocationSection {
    /// A node silent for longer is not allocated new instances, ms.
    pub stale_after_ms: u64,
}

impl Default for AllocationSection {
    fn default() -> Self {
        AllocationSection {
            stale_after_ms: 300_000,
        }
    }
}

/// `[act]`: what the master does for the fleet on its own ([`crate::act`]).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActSection {
    /// Move an instance whose incident escalated to Critical (default on).
    pub enabled: bool,
    /// Moves made for incidents within any hour, fleet-wide (default 10: a broken
    /// release escalating everywhere at once moves at most this many an hour, while
    /// the instances of one failing board, a handful, can all leave it).
    pub moves_per_hour: u32,
    /// Moves made for incidents within any hour, of one instance (default 1: a move
    /// tests whether the node was at fault; failing on the next node too points at the
    /// release, and moving it on would only carry the failure across the fleet).
    pub moves_per_instance_per_hour: u32,
    /// How often the master looks, ms (default 10 s; it also looks within a second
    /// of ingesting a Critical incident or an instance reported running).
    pub interval_ms: u64,
}

impl Default for ActSection {
    fn default() -> Self {
        ActSection {
            enabled: true,
            moves_per_hour: 10,
            moves_per_instance_per_hour: 1,
            interval_ms: 10_000,
        }
    }
}

/// `[failover]`: lost nodes and the placement policy of their instances
/// ([`crate::failover`] has the rules and the reasons for the defaults).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailoverSection {
    /// A node silent for longer is lost (default 15 min): nothing new is placed on it
    /// and its `move` instances are placed elsewhere.
    pub lost_after_ms: u64,
    /// What happens to an instance on a lost node when its request does not say
    /// (`--on-lost`): `wait` (default) or `move`.
    pub on_lost: crate::failover::OnLost,
    /// A `move` instance's lease is `lost_after_ms` less this (default 60 s): the node
    /// stops its copy at least this long before the master may place it elsewhere.
    pub lease_margin_ms: u64,
    /// How often the master looks for lost, draining and retiring nodes (default 5 s).
    pub check_every_ms: u64,
}

impl Default for FailoverSection {
    fn default() -> Self {
        FailoverSection {
            lost_after_ms: crate::failover::LOST_AFTER_MS,
            on_lost: crate::failover::OnLost::Wait,
            lease_margin_ms: crate::failover::LEASE_MARGIN_MS,
            check_every_ms: 5_000,
        }
    }
}

impl MasterConfig {
    /// The decision core's policy: `[act]` and `[allocation]`.
    pub fn act_policy(&self) -> crate::act::Policy {
        crate::act::Policy {
            budget: crate::moves::MoveBudget {
                window_ms: 3_600_000,
                fleet: self.act.moves_per_hour,
                per_instance: self.act.moves_per_instance_per_hour,
            },
            stale_after_ms: self.allocation.stale_after_ms,
        }
    }
}

impl FailoverSection {
    /// The lease a `move` instance's terms carry: `lost_after_ms - lease_margin_ms`
    /// (validated to fit).
    pub fn lease_ms(&self) -> u32 {
        crate::failover::lease_ms(self.lost_after_ms, self.lease_margin_ms)
    }
}

/// `[enrollment]`: node certificates and enrollment tokens.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnrollmentSection {
    /// Lifetime of a node certificate, seconds (default 30 days). Nodes renew at 2/3.
    pub cert_lifetime_s: u64,
    /// How long after its certificate expired a node may still renew with its key,
    /// seconds (default 90 days).
    pub renew_grace_s: u64,
    /// How long an enrollment token stays usable, seconds (default 7 days).
    pub token_ttl_s: u64,
}

impl Default for EnrollmentSection {
    fn default() -> Self {
        EnrollmentSection {
            cert_lifetime_s: 30 * 86_400,
            renew_grace_s: 90 * 86_400,
            token_ttl_s: 7 * 86_400,
        }
    }
}

/// `[billing]`: invoices.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BillingSection {
    /// Price list file; `None`: no invoices.
    pub price_list: Option<PathBuf>,
}

/// `[artifacts]`: supplied software and its HTTPS endpoint.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArtifactsSection {
    /// Where supplied artifacts are kept (`DIR/<sha256 hex>`).
    pub dir: PathBuf,
    /// Address of the HTTPS endpoint; off when absent.
    pub listen: Option<std::net::SocketAddr>,
    /// The URL nodes dial (into enrollment bundles); default
    /// `https://<broker.node_host>:<listen port>`.
    pub url: Option<String>,
    /// The endpoint's certificate (PEM; the broker's by default, whose names nodes check).
    pub cert: PathBuf,
    /// Its key (PEM, mode 0600).
    pub key: PathBuf,
}

impl Default for ArtifactsSection {
    fn default() -> Self {
        ArtifactsSection {
            dir: PathBuf::from("artifacts"),
            listen: None,
            url: None,
            cert: PathBuf::from("broker.crt"),
            key: PathBuf::from("broker.key"),
        }
    }
}

/// `[backup]`: the blob service ([`crate::blobs`]) on the artifact endpoint.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupSection {
    /// Where nodes' encrypted chunks and snapshot lists are kept (`DIR/<node>/...`).
    pub dir: PathBuf,
    /// Bytes of chunks one node may keep here (default 4 GiB); a chunk past it is a 507.
    pub quota_bytes_per_node: u64,
}

impl Default for BackupSection {
    fn default() -> Self {
        BackupSection {
            dir: PathBuf::from("blobs"),
            quota_bytes_per_node: 4 << 30,
        }
    }
}

impl MasterConfig {
    /// The artifact URL nodes are given, when the endpoint is on.
    pub fn artifacts_url(&self) -> Option<String> {
        let listen = self.artifacts.listen?;
        Some(self.artifacts.url.clone().unwrap_or_else(|| {
            let host = self.broker.node_host();
            if host.contains(':') {
                format!("https://[{host}]:{}", listen.port())
            } else {
                format!("https://{host}:{}", listen.port())
            }
        }))
    }

    /// Parses `path`, resolves relative paths against its directory, and validates.
    pub fn load(path: &Path) -> Result<MasterConfig, ConfigError> {
        let text = ConfigError::read(path)?;
        let mut cfg: MasterConfig = toml::from_str(&text).map_err(ConfigError::parse(path))?;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let base = std::path::absolute(parent).map_err(|source| ConfigError::Read {
            path: parent.to_owned(),
            source,
        })?;
        cfg.resolve(&base);
        cfg.validate().map_err(ConfigError::invalid(path))?;
        Ok(cfg)
    }

    fn resolve(&mut self, base: &Path) {
        let r = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        r(&mut self.master.store);
        r(&mut self.broker.ca);
        r(&mut self.broker.cert);
        r(&mut self.broker.key);
        r(&mut self.signing.key);
        if let Some(p) = self.billing.price_list.as_mut() {
            r(p);
        }
        r(&mut self.artifacts.dir);
        r(&mut self.artifacts.cert);
        r(&mut self.artifacts.key);
        r(&mut self.backup.dir);
        self.base = base.to_owned();
    }

    /// Checks values and that the referenced files exist (keys: not readable by others).
    pub fn validate(&self) -> Result<(), String> {
        check_host(&self.broker.host).map_err(|e| format!("broker.host: {e}"))?;
        if self.broker.port == 0 || self.broker.node_port == Some(0) {
            return Err("broker.port and broker.node_port must not be 0".into());
        }
        if let Some(h) = &self.broker.node_host {
            check_host(h).map_err(|e| format!("broker.node_host: {e}"))?;
        }
        let e = &self.enrollment;
        if e.cert_lifetime_s < 10 || e.cert_lifetime_s > 5 * 365 * 86_400 || e.token_ttl_s == 0 {
            return Err(
                "enrollment: need 10 <= cert_lifetime_s <= 5 years and token_ttl_s > 0".into(),
            );
        }
        if self.backup.quota_bytes_per_node == 0 {
            return Err("backup.quota_bytes_per_node must be > 0".into());
        }
        if self.allocation.stale_after_ms == 0 {
            return Err("allocation.stale_after_ms must be > 0".into());
        }
        if self.act.interval_ms < 100 {
            return Err("act.interval_ms must be >= 100".into());
        }
        crate::failover::check(&self.failover)?;
        let file = |what: &str, p: &Path| -> Result<std::fs::Metadata, String> {
            match std::fs::metadata(p) {
                Ok(m) if m.is_file() => Ok(m),
                Ok(_) => Err(format!("{what} = {}: not a file", p.display())),
                Err(e) => Err(format!("{what} = {}: {e}", p.display())),
            }
        };
        let secret = |what: &str, p: &Path| -> Result<(), String> {
            if !hedge_common::keyfile::is_private(&file(what, p)?) {
                return Err(format!(
                    "{what} = {}: mode allows group/other access; chmod 600 it",
                    p.display()
                ));
            }
            Ok(())
        };
        file("broker.ca", &self.broker.ca)?;
        file("broker.cert", &self.broker.cert)?;
        secret("broker.key", &self.broker.key)?;
        secret("signing.key", &self.signing.key)?;
        if let Some(p) = &self.billing.price_list {
            file("billing.price_list", p)?;
        }
        if self.artifacts.listen.is_some() {
            file("artifacts.cert", &self.artifacts.cert)?;
            secret("artifacts.key", &self.artifacts.key)?;
        }
        if let Some(u) = &self.artifacts.url {
            let ok = u.starts_with("https://")
                && u.len() <= 512
                && u.bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
            if !ok {
                return Err(format!("artifacts.url {u:?}: not an https:// URL"));
            }
        }
        if let Some(parent) = self.master.store.parent() {
            if !parent.is_dir() {
                return Err(format!(
                    "master.store = {}: directory {} does not exist",
                    self.master.store.display(),
                    parent.display()
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
