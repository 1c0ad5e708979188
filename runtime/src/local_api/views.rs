//! What `status` answers: [`NodeStatus`] and the views it is made of.
//!
//! Contract: these structs ARE the JSON of `hedge node status --json` (and of the
//! local API's `status` answer); a field's name is its key. `scripts/bench*` read that
//! JSON by key, so renaming a field breaks them: the `status_keys_are_pinned` test
//! fails first. Enums of the wire crate are written in lower case here through serde
//! remote definitions (the compiler checks they list the same variants).

use hedge_wire::{InstanceStatus, RequestedState, Severity};
use serde::{Deserialize, Serialize};

/// Everything `hedge node status` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node's id.
    pub node: String,
    /// Its board profile id.
    pub board: String,
    /// `node.max_instances`.
    pub max_instances: u32,
    /// Every instance the daemon supervises, by name.
    pub instances: Vec<InstanceView>,
    /// The records waiting for the master.
    pub outbox: OutboxView,
    /// Open incidents, then recently resolved ones.
    pub incidents: Vec<IncidentView>,
    /// The link to the master.
    pub uplink: UplinkView,
    /// The applied desired state's expiry; `null` before the master sent one.
    pub desired: Option<DesiredView>,
    /// The software cache and its downloads.
    pub software: SoftwareView,
    /// The last health sample; `null` before the first.
    pub health: Option<HealthView>,
    /// The daemon's counters.
    pub counters: Counters,
    /// The mesh: path to the master, peers, custody held per origin.
    #[serde(default)]
    pub mesh: super::MeshView,
}

impl NodeStatus {
    /// The instance named `name`.
    pub fn instance(&self, name: &str) -> Option<&InstanceView> {
        self.instances.iter().find(|i| i.name == name)
    }
}

/// One instance as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceView {
    /// The instance's name, unique on the node.
    pub name: String,
    /// Its lifecycle state (`running`, `backoff`, …).
    #[serde(with = "InstanceStatusWord")]
    pub state: InstanceStatus,
    /// The state its requester wants (`started`, `stopped`, `destroyed`).
    #[serde(with = "RequestedStateWord")]
    pub requested: RequestedState,
    /// Its software reference, as written in the request.
    pub software: String,
    /// Its main process while one runs.
    pub pid: Option<u32>,
    /// Restarts so far.
    pub restarts: u32,
    /// How its last process ended (`exit 3`, `signal 9`).
    pub last_exit: Option<String>,
    /// Its promises, in the request's order.
    pub promises: Vec<PromiseView>,
    /// CPU ms recorded in usage records by this daemon run.
    pub usage_cpu_ms: u64,
    /// The master's fencing epoch for this placement (`None`: no terms, e.g. a local
    /// request).
    pub fence: Option<u64>,
    /// Whether the node holds the lease this copy needs to run (`None`: it needs none
    /// and runs offline indefinitely).
    pub lease_held: Option<bool>,
    /// Its newest snapshot in the node's catalog, if any.
    #[serde(default)]
    pub last_snapshot: Option<super::LastSnapshot>,
    /// Held over from an earlier master epoch: a state of a recovered master left it
    /// out, and the node keeps it as the previous state requested it until the master
    /// names it (`crate::holdover`).
    #[serde(default)]
    pub held_over: bool,
}

/// One promise of an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromiseView {
    /// The promise's name.
    pub name: String,
    /// The last check's verdict; `null` before the first check.
    pub ok: Option<bool>,
    /// When the last check ran (ms since the epoch).
    pub last_check: Option<u64>,
    /// Failed checks since the last pass.
    pub failures_in_row: u32,
}

/// Whether an incident still needs attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentStatus {
    /// Open or escalated.
    Open,
    /// The promise passes again.
    Resolved,
}

impl From<hedge_wire::IncidentState> for IncidentStatus {
    fn from(s: hedge_wire::IncidentState) -> Self {
        match s {
            hedge_wire::IncidentState::Resolved => IncidentStatus::Resolved,
            hedge_wire::IncidentState::Open | hedge_wire::IncidentState::Escalated => {
                IncidentStatus::Open
            }
        }
    }
}

/// One incident as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncidentView {
    /// Its id, unique on this node.
    pub id: u64,
    /// The instance whose promise failed.
    pub instance: String,
    /// The promise that failed.
    pub promise: String,
    /// Open or resolved.
    pub state: IncidentStatus,
    /// Whether it was escalated to the master.
    pub escalated: bool,
    /// `minor`, `major` or `critical`.
    #[serde(with = "SeverityWord")]
    pub severity: Severity,
    /// When the promise first failed (ms since the epoch).
    pub first_seen_ms: u64,
    /// When it last failed.
    pub last_seen_ms: u64,
    /// The last failed check's message.
    pub message: String,
}

/// The outbox: records not yet acknowledged by the master.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxView {
    /// Records not yet acknowledged by the master.
    pub depth: usize,
    /// The seq the next record gets.
    pub next_seq: u64,
    /// Bytes the waiting records take.
    pub bytes: u64,
    /// `outbox.quota_bytes`.
    pub quota_bytes: u64,
}

/// The link to the master.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UplinkView {
    /// Whether `[uplink]` is enabled.
    pub enabled: bool,
    /// Whether the link is up now.
    pub connected: bool,
    /// The store's epoch (one per life of the store).
    pub epoch: u64,
    /// Its progress, while a link task runs (absent keys otherwise).
    #[serde(flatten)]
    pub progress: Option<LinkProgress>,
}

/// How far a running link got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkProgress {
    /// Highest seq the master acknowledged.
    pub acked_upto: u64,
    /// Highest seq sent.
    pub sent_upto: u64,
    /// Records deleted after acknowledgement.
    pub deleted: u64,
    /// The applied desired generation; `null` when unreadable.
    pub generation: Option<u64>,
}

/// The applied desired state's expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredView {
    /// The master's counter for it; each new desired state has a higher one.
    pub generation: u64,
    /// When it expires (ms since the epoch).
    pub expires_ms: u64,
    /// Whether it has expired, judged at `trusted_now_ms`.
    pub expired: bool,
    /// The clock reading it was judged by (never below the store's clock floor).
    pub trusted_now_ms: u64,
}

/// The software cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SoftwareView {
    /// The cache directory.
    pub cache: String,
    /// Artifacts (sha256 hex) being downloaded.
    pub downloading: Vec<String>,
    /// Artifacts refused, with why.
    pub refused: Vec<RefusedArtifact>,
}

/// An artifact the node refused to install.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedArtifact {
    /// Its sha256, hex.
    pub sha256: String,
    /// Why it was refused.
    pub reason: String,
}

/// The last health sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HealthView {
    /// The 1-minute load average.
    pub load1: f64,
    /// Memory, bytes.
    pub mem_total: u64,
    /// Memory available, bytes.
    pub mem_available: u64,
    /// Free bytes on the state directory's filesystem.
    pub disk_free: u64,
    /// SoC temperature in milli-°C, when the board tells.
    pub temp_milli_c: Option<i32>,
}

impl From<crate::monitor::health::Health> for HealthView {
    fn from(h: crate::monitor::health::Health) -> Self {
        HealthView {
            load1: f64::from(h.load1_milli) / 1000.0,
            mem_total: h.mem_total,
            mem_available: h.mem_available,
            disk_free: h.disk_free,
            temp_milli_c: h.temp_milli_c,
        }
    }
}

/// Counters shown by `status`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Store writes that failed (records lost to a full disk, etc.).
    pub store_errors: u64,
    /// Reconciliations skipped because the desired state could not be read.
    pub reconcile_skipped: u64,
    /// Processes that could not be started.
    pub spawn_failures: u64,
    /// Leftover process groups killed at boot.
    pub leftovers_killed: u64,
    /// Processes of a stopped or destroyed instance that outlived its main process
    /// (e.g. `setsid` children) and were killed through its cgroup or uid.
    pub stragglers_killed: u64,
    /// Local API connections refused (peer not root or the API group, or too many).
    pub api_refused: u64,
    /// Malformed `etc/connection.json` files seen.
    pub bad_connection_files: u64,
    /// Restarts asked by self-repair.
    pub repairs: u64,
    /// Command checks refused, never run: as root, no partition uid to run them as.
    pub command_checks_refused: u64,
    /// Desired states refused (forged, stale, for another node, malformed, or the
    /// applied generation unreadable).
    pub desired_rejected: u64,
    /// Applied desired states found past their expiry (once per generation).
    pub desired_expired: u64,
    /// Promise summaries dropped to keep the outbox under its quota.
    pub shed_dropped_promise: u64,
    /// Health records dropped to keep the outbox under its quota.
    pub shed_dropped_health: u64,
    /// Usage records merged to keep the outbox under its quota.
    pub shed_merged_usage: u64,
    /// Software artifacts downloaded, checked and extracted into the cache.
    pub artifact_installed: u64,
    /// Artifact downloads whose sha256 was not the one asked for (deleted, retried).
    pub artifact_hash_mismatch: u64,
    /// Artifacts refused as unsafe or malformed archives (nothing kept).
    pub artifact_refused: u64,
    /// Artifact download attempts that failed (network, TLS, HTTP, disk); retried.
    pub artifact_fetch_errors: u64,
    /// Partition disk walks that could not count everything (a bound hit, an error):
    /// the usage billed is then a lower bound.
    pub disk_walks_incomplete: u64,
}

/// [`InstanceStatus`] as `status` writes it.
#[derive(Serialize, Deserialize)]
#[serde(remote = "InstanceStatus", rename_all = "snake_case")]
enum InstanceStatusWord {
    Stopped,
    Running,
    Backoff,
    Stopping,
    Waiting,
    Destroyed,
}

/// [`RequestedState`] as `status` writes it.
#[derive(Serialize, Deserialize)]
#[serde(remote = "RequestedState", rename_all = "snake_case")]
enum RequestedStateWord {
    Started,
    Stopped,
    Destroyed,
}

/// [`Severity`] as `status` writes it.
#[derive(Serialize, Deserialize)]
#[serde(remote = "Severity", rename_all = "snake_case")]
enum SeverityWord {
    Minor,
    Major,
    Critical,
}

/// Views display as their JSON (keys sorted), as `status --json` shows them.
macro_rules! display_as_json {
    ($($t:ty),*) => {$(
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match serde_json::to_value(self) {
                    Ok(v) => write!(f, "{v}"),
                    Err(_) => write!(f, "{self:?}"),
                }
            }
        }
    )*};
}
display_as_json!(NodeStatus, InstanceView, PromiseView, IncidentView);

/// The word serde writes for a unit variant (`"running"` → `running`).
pub fn word<T: Serialize + ?Sized>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(w)) => w,
        Ok(other) => other.to_string(),
        Err(e) => e.to_string(),
    }
}

/// The word `status` writes for `s` (log lines use it too, so they read alike).
pub fn state_word(s: InstanceStatus) -> String {
    #[derive(Serialize)]
    struct W(#[serde(with = "InstanceStatusWord")] InstanceStatus);
    word(&W(s))
}

/// The word `status` writes for `s`.
pub fn requested_word(s: RequestedState) -> String {
    #[derive(Serialize)]
    struct W(#[serde(with = "RequestedStateWord")] RequestedState);
    word(&W(s))
}

/// The word `status` writes for `s`.
pub fn severity_word(s: Severity) -> String {
    #[derive(Serialize)]
    struct W(#[serde(with = "SeverityWord")] Severity);
    word(&W(s))
}
