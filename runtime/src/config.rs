//! `node.toml`: the node's configuration.
//!
//! Contract: TOML with `deny_unknown_fields` in every table; every field has a default
//! except `node.id`. [`NodeConfig::load`] parses and validates before anything binds a
//! socket or opens the store; a bad file is a [`ConfigError`] naming the problem (the
//! binary exits 64). Relative paths are relative to the file's directory.
//! [`default_file`] is the commented file `hedge node init` writes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hedge_wire::Name;
use serde::Deserialize;

use crate::supervisor::lifecycle::Policy;

/// Errors of loading `node.toml`: it cannot be read, does not parse, or a value is out
/// of range.
pub type ConfigError = hedge_common::ConfigFileError<toml::de::Error>;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// `[node]`: id, state directory, board, capacity, labels, region.
    pub node: NodeSection,
    /// `[supervisor]`: stop grace and restart backoff.
    #[serde(default)]
    pub supervisor: SupervisorSection,
    /// `[logs]`: rotation of instance logs.
    #[serde(default)]
    pub logs: LogsSection,
    /// `[partitions]`: the uids instances run as, cgroups.
    #[serde(default)]
    pub partitions: PartitionsSection,
    /// `[store]`: sled's cache and flush period.
    #[serde(default)]
    pub store: StoreSection,
    /// `[monitor]`: sampling, usage, health and summary intervals; escalation.
    #[serde(default)]
    pub monitor: MonitorSection,
    /// `[outbox]`: the quota of records kept for the master.
    #[serde(default)]
    pub outbox: OutboxSection,
    /// `[metrics]`: the Prometheus endpoint.
    #[serde(default)]
    pub metrics: MetricsSection,
    /// `[api]`: who may use the local API socket.
    #[serde(default)]
    pub api: ApiSection,
    /// `[uplink]`: the link to the master.
    #[serde(default)]
    pub uplink: UplinkSection,
    /// `[mesh]`: peers, beacons, custody for other nodes (off by default; uses the
    /// `[uplink]` CA, certificate and key).
    #[serde(default)]
    pub mesh: hedge_mesh::MeshConfig,
    /// `[backup]`: where snapshots live, the upload budget, how long an instance may
    /// stay frozen.
    #[serde(default)]
    pub backup: BackupSection,
    /// Directory of the file; relative paths are resolved against it.
    #[serde(skip)]
    pub base: PathBuf,
}

/// `[node]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// The node id (checked as a [`Name`] while parsing).
    pub id: Name,
    /// State directory (store, partitions, key, socket).
    #[serde(default = "dot")]
    pub state_dir: PathBuf,
    /// Board profile id; detected when absent (see `hedge board`).
    #[serde(default)]
    pub board: Option<String>,
    /// Most instances this node takes; the board profile's default when absent.
    #[serde(default)]
    pub max_instances: Option<u32>,
    /// Labels the master's allocation matches (`--label k=v`).
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Region, for technical or legal placement.
    #[serde(default)]
    pub region: String,
}

fn dot() -> PathBuf {
    PathBuf::from(".")
}

/// `[supervisor]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorSection {
    /// SIGTERM → SIGKILL grace, ms.
    pub grace_ms: u64,
    /// Backoff after the second quick exit, ms.
    pub backoff_base_ms: u64,
    /// Backoff ceiling, ms.
    pub backoff_max_ms: u64,
    /// A run this long resets the backoff, ms.
    pub stable_after_ms: u64,
}

impl Default for SupervisorSection {
    fn default() -> Self {
        SupervisorSection {
            grace_ms: 5000,
            backoff_base_ms: 100,
            backoff_max_ms: 30_000,
            stable_after_ms: 10_000,
        }
    }
}

/// `[logs]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogsSection {
    /// Rotate an instance log past this size.
    pub max_bytes: u64,
    /// Rotated files kept.
    pub keep: usize,
}

impl Default for LogsSection {
    fn default() -> Self {
        LogsSection {
            max_bytes: 1 << 20,
            keep: 3,
        }
    }
}

/// `[partitions]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PartitionsSection {
    /// First uid handed to a partition (root only).
    pub uid_min: u32,
    /// Last uid handed to a partition (inclusive).
    pub uid_max: u32,
    /// Seconds a uid freed by a destroy waits before another partition gets it.
    pub uid_quarantine_s: u64,
    /// Run each instance in its own cgroup v2 group where the host has a writable
    /// one (kill the whole group on stop/destroy); `false` tracks processes by uid only.
    pub cgroups: bool,
}

impl Default for PartitionsSection {
    fn default() -> Self {
        PartitionsSection {
            uid_min: 20_000,
            uid_max: 20_999,
            uid_quarantine_s: crate::partition::quarantine::DEFAULT_HOLD.as_secs(),
            cgroups: true,
        }
    }
}

/// `[api]`: the local API socket.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSection {
    /// A host group whose members may use the local API besides root (socket mode 0660,
    /// group-owned); root only when absent (mode 0600).
    pub group: Option<String>,
}

/// `[store]`. Absent values come from the board profile.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// sled page cache, bytes.
    pub cache_bytes: Option<u64>,
    /// sled's background flush period, ms (explicit flushes make changes durable
    /// before they are acted on; this paces the rest, sparing SD cards).
    pub flush_interval_ms: Option<u64>,
}

/// `[monitor]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorSection {
    /// How often each instance's process tree is sampled (CPU, memory), ms.
    pub sample_interval_ms: u64,
    /// Length of one usage record's interval, ms.
    pub usage_interval_ms: u64,
    /// How often a node-health record is made, ms.
    pub health_interval_ms: u64,
    /// How often each promise's checks are summarised into one record, ms.
    pub summary_interval_ms: u64,
    /// Repairs at one severity before an incident escalates.
    pub escalate_after: u32,
}

impl Default for MonitorSection {
    fn default() -> Self {
        MonitorSection {
            sample_interval_ms: 10_000,
            usage_interval_ms: 60_000,
            health_interval_ms: 60_000,
            summary_interval_ms: 300_000,
            escalate_after: 3,
        }
    }
}

/// `[outbox]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxSection {
    /// Most bytes of records kept for the master; past it, records are shed by
    /// priority. The board profile's default when absent.
    pub quota_bytes: Option<u64>,
}

/// `[metrics]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Address of the Prometheus text endpoint (`GET /metrics`); off when absent.
    pub listen: Option<std::net::SocketAddr>,
}

/// `[backup]`: snapshots of instances' partitions (their policies come with requests).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupSection {
    /// The vault: chunks, catalog, secret (default `state_dir/backup`).
    pub dir: Option<PathBuf>,
    /// Bytes per second the uploader may send to the master's blob service.
    pub upload_bytes_per_s: u64,
    /// Longest time an instance stays frozen for a snapshot, ms: waiting for the freeze
    /// and reading its paths together. Past it the instance is thawed and the snapshot
    /// counts as `Live`.
    pub freeze_max_ms: u64,
    /// Longest run of a policy's `command` before it is killed (the backup fails), s.
    pub command_timeout_s: u64,
}

impl Default for BackupSection {
    fn default() -> Self {
        BackupSection {
            dir: None,
            upload_bytes_per_s: 1024 * 1024,
            freeze_max_ms: 10_000,
            command_timeout_s: 600,
        }
    }
}

/// `[uplink]`: the MQTT link to the master. Filled in by `hedge node init --enroll`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UplinkSection {
    /// Connect to the master at all.
    pub enabled: bool,
    /// Broker host.
    pub host: String,
    /// Broker TLS port.
    pub port: u16,
    /// Fleet CA certificate (PEM).
    pub ca: PathBuf,
    /// This node's client certificate (PEM, CN = node id).
    pub cert: PathBuf,
    /// This node's client key (PEM, mode 0600).
    pub key: PathBuf,
    /// The master's ed25519 public key (hex): only desired states it signed are applied.
    pub master_public_key: String,
    /// Records per batch.
    pub max_batch_records: usize,
    /// Bytes per batch (encoded).
    pub max_batch_bytes: usize,
    /// Batches awaiting acknowledgement.
    pub window: usize,
    /// Resend what is unacknowledged after this long, ms.
    pub ack_timeout_ms: u64,
    /// Bytes per second allowed on a metered link; 0 = unlimited.
    pub budget_bytes_per_sec: u32,
    /// MQTT keepalive, seconds: an idle link that died is noticed within about this.
    pub keepalive_s: u16,
    /// The master's artifact endpoint (`https://HOST:PORT`): software artifacts the node
    /// lacks are downloaded from it with the same mutual TLS. `None`: only artifacts
    /// already in the cache can run.
    pub artifacts: Option<String>,
    /// Renew the uplink certificate when this percentage of its validity has passed.
    pub renew_at_percent: u8,
    /// How often the certificate is looked at (and a pending enrollment retried), s.
    pub renew_check_s: u64,
}

impl Default for UplinkSection {
    fn default() -> Self {
        UplinkSection {
            enabled: false,
            host: "127.0.0.1".into(),
            port: 8883,
            ca: "uplink/ca.crt".into(),
            cert: "uplink/node.crt".into(),
            key: "uplink/node.key".into(),
            master_public_key: String::new(),
            max_batch_records: 1024,
            max_batch_bytes: 64 * 1024,
            window: 8,
            ack_timeout_ms: 10_000,
            budget_bytes_per_sec: 0,
            keepalive_s: 20,
            artifacts: None,
            renew_at_percent: 66,
            renew_check_s: 60,
        }
    }
}

impl NodeConfig {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        Self::parse(&ConfigError::read(path)?, path)
    }

    /// Parses and validates the text of the file at `path` (which only names the file in
    /// errors and sets the base directory: nothing is read). Pure; the fuzz target
    /// `node_config` drives it.
    pub fn parse(text: &str, path: &Path) -> Result<NodeConfig, ConfigError> {
        let mut cfg: NodeConfig = toml::from_str(text).map_err(ConfigError::parse(path))?;
        cfg.base = path
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        cfg.validate().map_err(ConfigError::invalid(path))?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), String> {
        let s = &self.supervisor;
        if s.backoff_base_ms == 0 || s.backoff_base_ms > s.backoff_max_ms {
            return Err("supervisor: need 0 < backoff_base_ms <= backoff_max_ms".into());
        }
        if s.grace_ms == 0 || s.grace_ms > 600_000 {
            return Err("supervisor.grace_ms must be in 1..=600000".into());
        }
        if self.logs.max_bytes < 4096 {
            return Err("logs.max_bytes must be at least 4096".into());
        }
        let m = &self.monitor;
        if m.sample_interval_ms < 100 || m.usage_interval_ms < m.sample_interval_ms {
            return Err("monitor: need 100 <= sample_interval_ms <= usage_interval_ms".into());
        }
        if m.health_interval_ms < 100 || m.summary_interval_ms < 100 || m.escalate_after == 0 {
            return Err("monitor: intervals must be >= 100 ms and escalate_after >= 1".into());
        }
        if let Some(b) = &self.node.board {
            if hedge_boards::by_id(b).is_none() {
                let known: Vec<&str> = hedge_boards::profiles()
                    .iter()
                    .map(|p| p.id.as_str())
                    .collect();
                return Err(format!(
                    "node.board {b:?} is not a known profile ({})",
                    known.join(", ")
                ));
            }
        }
        if self.outbox.quota_bytes.is_some_and(|q| q < 4096) {
            return Err("outbox.quota_bytes must be at least 4096".into());
        }
        if self.node.max_instances == Some(0) {
            return Err("node.max_instances must be at least 1".into());
        }
        if self.metrics.listen.is_some_and(|a| !a.ip().is_loopback()) {
            return Err("metrics.listen must be a loopback address (127.0.0.1:PORT)".into());
        }
        let u = &self.uplink;
        if u.enabled {
            crate::desired::parse_public_key(&u.master_public_key)
                .map_err(|e| format!("uplink.master_public_key: {e}"))?;
        }
        if u.max_batch_records == 0
            || u.max_batch_bytes < 1024
            || u.max_batch_bytes > hedge_wire::limits::DEFAULT_MAX_FRAME
            || u.window == 0
            || u.ack_timeout_ms < 100
            || u.keepalive_s == 0
        {
            return Err(format!(
                "uplink: need max_batch_records >= 1, 1024 <= max_batch_bytes <= {}, window >= 1, ack_timeout_ms >= 100",
                hedge_wire::limits::DEFAULT_MAX_FRAME
            ));
        }
        if let Some(url) = &u.artifacts {
            crate::artifact::fetch::parse_url(url).map_err(|e| format!("uplink.artifacts: {e}"))?;
        }
        if u.renew_at_percent > 100 || u.renew_check_s == 0 {
            return Err("uplink: need renew_at_percent <= 100 and renew_check_s >= 1".into());
        }
        self.mesh.validate().map_err(|e| e.to_string())?;
        if self.mesh.enabled && self.mesh.custody_bytes_per_origin < 64 * 1024 {
            return Err("mesh.custody_bytes_per_origin must be at least 65536 (one frame)".into());
        }
        if self.partitions.uid_min == 0 || self.partitions.uid_min > self.partitions.uid_max {
            return Err("partitions: need 0 < uid_min <= uid_max".into());
        }
        if let Some(g) = &self.api.group {
            let gid = self.api_gid().ok_or_else(|| {
                format!("api.group {g:?} is not a group of this host (see /etc/group)")
            })?;
            if gid >= self.partitions.uid_min && gid <= self.partitions.uid_max {
                return Err(format!(
                    "api.group {g:?} has gid {gid}, inside the partition uid range"
                ));
            }
        }
        Ok(())
    }

    /// The node id.
    pub fn node_id(&self) -> &Name {
        &self.node.id
    }

    /// The state directory, absolute or relative to the current directory.
    pub fn state_dir(&self) -> PathBuf {
        self.base.join(&self.node.state_dir)
    }

    /// The sled store directory.
    pub fn store_dir(&self) -> PathBuf {
        self.state_dir().join("store")
    }

    /// The gid of `api.group`, when set and known to the host.
    pub fn api_gid(&self) -> Option<u32> {
        let name = self.api.group.as_deref()?;
        nix::unistd::Group::from_name(name)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw())
    }

    /// The backup vault's directory (`[backup] dir`, default `state_dir/backup`).
    pub fn backup_dir(&self) -> PathBuf {
        match &self.backup.dir {
            Some(d) => self.state_path(d),
            None => self.state_dir().join("backup"),
        }
    }

    /// The local API socket.
    pub fn socket_path(&self) -> PathBuf {
        self.state_dir().join("hedge.sock")
    }

    /// The node's secret key file.
    pub fn key_path(&self) -> PathBuf {
        self.state_dir().join("node.key")
    }

    /// The board profile: `node.board` when set, else detected.
    pub fn profile(&self) -> &'static hedge_boards::BoardProfile {
        self.node
            .board
            .as_deref()
            .and_then(hedge_boards::by_id)
            .unwrap_or_else(hedge_boards::detect)
    }

    /// sled page cache: config, else the board's default.
    pub fn cache_bytes(&self) -> u64 {
        self.store
            .cache_bytes
            .unwrap_or(self.profile().defaults.sled_cache_bytes)
    }

    /// sled background flush period: config, else the board's default.
    pub fn flush_interval_ms(&self) -> u64 {
        self.store
            .flush_interval_ms
            .unwrap_or(self.profile().defaults.flush_interval_ms)
    }

    /// Outbox quota: config, else the board's default.
    pub fn outbox_quota(&self) -> u64 {
        self.outbox
            .quota_bytes
            .unwrap_or(self.profile().defaults.outbox_quota_bytes)
    }

    /// Instance limit: config, else the board's default.
    pub fn max_instances(&self) -> u32 {
        self.node
            .max_instances
            .unwrap_or(self.profile().defaults.max_instances)
    }

    /// A path from the config, resolved against the state directory.
    pub fn state_path(&self, p: &Path) -> PathBuf {
        self.state_dir().join(p)
    }

    /// The master's public key, when configured.
    pub fn master_key(&self) -> Option<ed25519_dalek::VerifyingKey> {
        crate::desired::parse_public_key(&self.uplink.master_public_key).ok()
    }

    /// The supervisor's timing.
    pub fn policy(&self) -> Policy {
        let s = &self.supervisor;
        Policy {
            backoff_base: Duration::from_millis(s.backoff_base_ms),
            backoff_max: Duration::from_millis(s.backoff_max_ms),
            stable_after: Duration::from_millis(s.stable_after_ms),
            grace: Duration::from_millis(s.grace_ms),
        }
    }
}

/// What `hedge node init --enroll` knows about the master.
#[derive(Debug, Clone, Default)]
pub struct Enrollment {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Master public key, hex.
    pub master_key: String,
    /// The master's artifact endpoint, when it serves one.
    pub artifacts: Option<String>,
}

/// The commented default `node.toml` for node `id`, not enrolled.
pub fn default_file(id: &str) -> String {
    file(id, None)
}

/// The commented `node.toml` for node `id`, with its uplink when enrolled.
pub fn file(id: &str, enrollment: Option<&Enrollment>) -> String {
    let (enabled, host, port, master_key) = match enrollment {
        Some(e) => (true, e.host.as_str(), e.port, e.master_key.as_str()),
        None => (false, "127.0.0.1", 8883, ""),
    };
    let artifacts = match enrollment.and_then(|e| e.artifacts.as_deref()) {
        Some(url) => format!("artifacts = \"{url}\""),
        None => "# artifacts = \"https://127.0.0.1:8443\"".to_owned(),
    };
    format!(
        r#"# hedge node configuration. Unknown keys are an error.
# Relative paths are relative to this file's directory.

[node]
# This node's id: 1-64 bytes of a-z 0-9 . _ -  (the master knows the node by it).
id = "{id}"
# Where the node keeps its store, partitions, identity key and API socket.
state_dir = "."
# Board profile (`hedge board` lists and detects them); detected when absent.
# board = "rpi4b"
# Most instances this node takes (default: from the board profile).
# max_instances = 16
# Labels and region for the master's allocation.
labels = {{}}
region = ""

[supervisor]
# Time between SIGTERM and SIGKILL when stopping an instance.
grace_ms = 5000
# Restart delays: the first exit after a stable run restarts at once; further quick
# exits wait backoff_base_ms, doubling up to backoff_max_ms (±20 % jitter). Never gives up.
backoff_base_ms = 100
backoff_max_ms = 30000
# A run at least this long counts as stable and resets the delay.
stable_after_ms = 10000

[logs]
# Instance output goes to partitions/<name>/var/log/<name>.log, rotated past max_bytes.
max_bytes = 1048576
keep = 3

[partitions]
# When run as root, each partition gets its own uid (= gid) from this range.
uid_min = 20000
uid_max = 20999
# A destroyed instance's processes are killed (its cgroup, or every process of its uid)
# and its uid then waits this long before another partition gets it.
uid_quarantine_s = 600
# Each instance runs in its own cgroup v2 group where the host has a writable one.
cgroups = true

[store]
# sled page cache and background flush period (defaults: from the board profile;
# small boards want a small cache, SD cards fewer, larger writes).
# cache_bytes = 4194304
# flush_interval_ms = 2000

[monitor]
# Each instance's process tree is sampled this often (CPU time, memory).
sample_interval_ms = 10000
# One usage record per instance per interval.
usage_interval_ms = 60000
# One node-health record (load, memory, disk, temperature) per interval.
health_interval_ms = 60000
# Promise checks are summarised (count, failures, latency) once per interval;
# a change of a promise's state is recorded at once.
summary_interval_ms = 300000
# Repairs (restarts) at one severity before an incident escalates to the master.
escalate_after = 3

[outbox]
# Records kept for the master while offline. Past the quota, usage records are
# merged into coarser intervals (totals kept), then promise summaries and health
# records are dropped oldest first. Incidents are never dropped.
# Default: from the board profile.
# quota_bytes = 8388608

[metrics]
# Prometheus text endpoint (GET /metrics) on a loopback address; off when absent.
# listen = "127.0.0.1:9464"

[api]
# The local API socket (state_dir/hedge.sock) admits root; set a host group to also
# admit its members (never a partition uid).
# group = "hedge"

[uplink]
# The MQTT link to the master (mutual TLS). `hedge node init --enroll FILE` fills this
# in; without it the node runs fully offline and keeps its records.
enabled = {enabled}
host = "{host}"
port = {port}
ca = "uplink/ca.crt"             # relative to state_dir
cert = "uplink/node.crt"
key = "uplink/node.key"
master_public_key = "{master_key}"
max_batch_records = 1024
max_batch_bytes = 65536
window = 8                       # batches awaiting the master's ack
ack_timeout_ms = 10000           # then resend from the last ack
budget_bytes_per_sec = 0         # metered links: bytes/s; 0 = unlimited
keepalive_s = 20                 # an idle dead link is noticed within about this
# The master's HTTPS endpoint: `sha256:` software the node lacks is downloaded from it
# (same mutual TLS), checked and extracted into state_dir/software/, which is kept
# across reboots. Absent: only software already there runs. The node also gets its
# certificate there (its own key, a CSR and the bundle's one-time token) and renews it.
{artifacts}
renew_at_percent = 66            # renew the certificate when 66% of its validity passed
renew_check_s = 60               # look at it (and retry a pending enrollment) this often

[mesh]
# Swarm peers: nodes that reach the master through each other (TCP + mutual TLS under
# the fleet CA, with the [uplink] CA, certificate and key; a peer is its certificate's
# CN). Off by default.
enabled = false
# listen = "0.0.0.0:7441"
# peers = ["10.0.0.2:7441"]      # static peers, dialled and redialled
# beacon_interfaces = ["wlan0"]  # UDP multicast discovery (hints only)
# Most bytes of one other node's batches held in custody; past it, that node's oldest
# batches without incidents or instance states are shed (it keeps its own copy until
# the master acknowledges them).
# custody_bytes_per_origin = 4194304

[backup]
# Snapshots of instances' partitions, for those whose request has a [backup] policy:
# content-defined chunks, encrypted, deduplicated, kept here and uploaded to the master.
# dir = "backup"                 # relative to state_dir; default state_dir/backup
upload_bytes_per_s = 1048576     # the uploader's budget towards the master
# An instance without a policy command is frozen (cgroup v2) while its paths are read,
# at most this long; past it, it is thawed and the snapshot counts as live.
freeze_max_ms = 10000
command_timeout_s = 600          # a policy command running longer fails the backup
"#
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn load(text: &str) -> Result<NodeConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node.toml");
        std::fs::write(&p, text).unwrap();
        NodeConfig::load(&p)
    }

    #[test]
    fn default_file_loads_with_defaults() {
        let c = load(&default_file("n1")).unwrap();
        assert_eq!(c.node_id().as_str(), "n1");
        assert_eq!(c.policy(), Policy::default());
        assert!(!c.mesh.enabled, "the mesh is off by default");
        assert_eq!(c.mesh.custody_bytes_per_origin, 4 << 20);
    }

    #[test]
    fn the_backup_section_defaults_match_the_commented_file() {
        let c = load(&default_file("n1")).unwrap();
        let d = BackupSection::default();
        assert_eq!(c.backup.upload_bytes_per_s, d.upload_bytes_per_s);
        assert_eq!(c.backup.freeze_max_ms, d.freeze_max_ms);
        assert_eq!(c.backup.command_timeout_s, d.command_timeout_s);
        assert_eq!(c.backup_dir(), c.state_dir().join("backup"));
        let b = |body: &str| load(&format!("[node]\nid = \"a\"\n[backup]\n{body}\n"));
        let c = b("dir = \"/srv/vault\"\nfreeze_max_ms = 50").unwrap();
        assert_eq!(c.backup_dir(), PathBuf::from("/srv/vault"));
        assert_eq!(c.backup.freeze_max_ms, 50);
        assert!(b("bogus = 1").is_err(), "unknown keys are refused");
    }

    #[test]
    fn the_mesh_section_is_validated() {
        let mesh = |body: &str| load(&format!("[node]\nid = \"a\"\n[mesh]\n{body}\n"));
        let c = mesh("enabled = true\npeers = [\"10.0.0.2:7441\"]").unwrap();
        assert_eq!(c.mesh.peers, vec!["10.0.0.2:7441".to_owned()]);
        let err = mesh("enabled = true\ncustody_bytes_per_origin = 1000").unwrap_err();
        assert!(
            err.to_string().contains("custody_bytes_per_origin"),
            "{err}"
        );
        assert!(mesh("peers = [\"no-port\"]").is_err());
        assert!(mesh("bogus = 1").is_err(), "unknown keys are refused");
    }

    #[test]
    fn the_api_group_must_exist_outside_the_partition_range() {
        let c = load("[node]\nid = \"a\"\n[api]\ngroup = \"root\"\n").unwrap();
        assert_eq!(c.api_gid(), Some(0));
        assert_eq!(load("[node]\nid = \"a\"\n").unwrap().api_gid(), None);
        let err = load("[node]\nid = \"a\"\n[api]\ngroup = \"no-such-group-x\"\n").unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { .. }), "{err}");
        assert!(err.to_string().contains("api.group"), "{err}");
        // A group whose gid a partition could get is refused.
        let g = (1..1000)
            .find_map(|g| nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(g)).ok()?)
            .unwrap();
        let gid = g.gid.as_raw();
        let err = load(&format!(
            "[node]\nid = \"a\"\n[api]\ngroup = \"{}\"\n[partitions]\nuid_min = {gid}\nuid_max = {gid}\n",
            g.name
        ))
        .unwrap_err();
        assert!(
            err.to_string().contains("inside the partition uid range"),
            "{err}"
        );
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let err = load("[node]\nid = \"a\"\ncolour = \"red\"\n").unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
        let err = load("[node]\nid = \"a\"\n[supervisr]\n").unwrap_err();
        assert!(err.to_string().contains("supervisr"), "{err}");
    }

    #[test]
    fn the_artifact_url_is_checked() {
        let c =
            load("[node]\nid = \"a\"\n[uplink]\nartifacts = \"https://10.0.0.1:8443\"\n").unwrap();
        assert_eq!(c.uplink.artifacts.as_deref(), Some("https://10.0.0.1:8443"));
        let err = load("[node]\nid = \"a\"\n[uplink]\nartifacts = \"http://h:1\"\n").unwrap_err();
        assert!(err.to_string().contains("uplink.artifacts"), "{err}");
        let enrolled = file(
            "a",
            Some(&Enrollment {
                host: "h".into(),
                port: 1,
                master_key: "00".repeat(32),
                artifacts: Some("https://h:8443".into()),
            }),
        );
        assert!(
            enrolled.contains("\nartifacts = \"https://h:8443\"\n"),
            "{enrolled}"
        );
        assert!(default_file("a").contains("\n# artifacts = "));
    }

    #[test]
    fn bad_values_are_errors() {
        assert!(matches!(
            load("[node]\nid = \"Bad Id\"\n"),
            Err(ConfigError::Parse { .. })
        ));
        assert!(matches!(
            load("[node]\nid = \"a\"\n[supervisor]\nbackoff_base_ms = 0\n"),
            Err(ConfigError::Invalid { .. })
        ));
    }
}
