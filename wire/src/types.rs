//! The message types exchanged between node, master and peers.
//!
//! Contract: every type here is plain data (serde + postcard). Strings that name
//! things are [`Name`]s, bounded to [`NAME_MAX`] bytes of `[a-z0-9._-]` and checked
//! when they are built *and* when they are decoded, so a peer cannot smuggle a path
//! into a name. Other collections are bounded by [`crate::limits`] and checked by
//! [`crate::validate`] after decoding; the frame size bounds what a decoder can
//! allocate in the first place.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

/// Longest name in bytes (instances, nodes, promises).
pub const NAME_MAX: usize = 64;

/// Why a name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameError {
    /// The empty string.
    Empty,
    /// Longer than [`NAME_MAX`] bytes.
    TooLong,
    /// A byte outside `[a-z0-9._-]`.
    BadChar,
    /// `.`, `..`, or containing `..`.
    Dots,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameError::Empty => "name is empty",
            NameError::TooLong => "name is longer than 64 bytes",
            NameError::BadChar => "name may hold only a-z, 0-9, '.', '_' and '-'",
            NameError::Dots => "name may not be '.' or contain '..'",
        })
    }
}

/// A validated name: 1..=64 bytes of `[a-z0-9._-]`, never `.`, never containing `..`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Name(heapless::String<NAME_MAX>);

impl Name {
    /// Checks `s` and builds a name from it.
    pub fn new(s: &str) -> Result<Self, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > NAME_MAX {
            return Err(NameError::TooLong);
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        {
            return Err(NameError::BadChar);
        }
        if s == "." || s.contains("..") {
            return Err(NameError::Dots);
        }
        let mut out = heapless::String::new();
        // Cannot fail: the length was checked above.
        out.push_str(s).map_err(|()| NameError::TooLong)?;
        Ok(Name(out))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Name {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Name::new(s)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = heapless::String::<NAME_MAX>::deserialize(d)?;
        Name::new(s.as_str()).map_err(serde::de::Error::custom)
    }
}

/// Longest target triple of an artifact variant, bytes.
pub const TARGET_MAX: usize = 64;

/// One variant of an artifact: the archive built for one target triple.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactVariant {
    /// Target triple (`aarch64-unknown-linux-gnu`), or `*` for any target: 1..=64 bytes of
    /// `[a-z0-9._-]`, or exactly `*`.
    pub target: String,
    /// sha256 of the `.tar.gz` archive.
    pub sha256: [u8; 32],
}

/// Whether `t` is a valid variant target: `*`, or 1..=[`TARGET_MAX`] bytes of `[a-z0-9._-]`.
pub fn valid_target(t: &str) -> bool {
    t == "*"
        || (!t.is_empty()
            && t.len() <= TARGET_MAX
            && t.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)))
}

/// What an instance runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SoftwareRelease {
    /// `exec:PROGRAM`: a program already on the node (absolute path or looked up in `PATH`).
    Exec(String),
    /// A content-addressed `.tar.gz` artifact with one variant per target triple; the node
    /// runs `entry` (a path relative to the extracted tree) of the variant for its target
    /// (else the `*` one).
    Artifact {
        /// The variants, targets unique (at most [`crate::limits::MAX_VARIANTS`]).
        #[serde(deserialize_with = "crate::bounded::variants")]
        variants: Vec<ArtifactVariant>,
        /// The program to run, relative to the extracted tree (e.g. `bin/app`).
        entry: String,
    },
}

impl SoftwareRelease {
    /// The sha256 of the variant a node built for `target` runs: the variant for exactly
    /// `target`, else the `*` one. `None` for `exec:` or when no variant fits.
    pub fn artifact_for(&self, target: &str) -> Option<[u8; 32]> {
        let SoftwareRelease::Artifact { variants, .. } = self else {
            return None;
        };
        variants
            .iter()
            .find(|v| v.target == target)
            .or_else(|| variants.iter().find(|v| v.target == "*"))
            .map(|v| v.sha256)
    }
}

/// Why a software release spec did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SoftwareSpecError;

impl fmt::Display for SoftwareSpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "software must be `exec:PROGRAM`, `sha256:<64 hex digits>` or \
             `artifact:TARGET=sha256:<hex>[,TARGET=sha256:<hex>...]/ENTRY`",
        )
    }
}

/// 64 lowercase hex digits to 32 bytes.
pub fn parse_sha256(h: &str) -> Option<[u8; 32]> {
    if h.len() != 64 {
        return None;
    }
    let hex = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, chunk) in h.as_bytes().chunks(2).enumerate() {
        out[i] = hex(chunk[0])? << 4 | hex(chunk[1])?;
    }
    Some(out)
}

/// 32 bytes as 64 lowercase hex digits.
pub struct Sha256Hex<'a>(pub &'a [u8; 32]);

impl fmt::Display for Sha256Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl FromStr for SoftwareRelease {
    type Err = SoftwareSpecError;
    /// `exec:PROGRAM`; `sha256:HEX` (one variant for target `*`, `entry` empty: the
    /// caller sets it); or the full form [`fmt::Display`] writes,
    /// `artifact:TARGET=sha256:HEX[,TARGET=sha256:HEX...]/ENTRY`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(p) = s.strip_prefix("exec:") {
            if p.is_empty() || p.contains('\0') {
                return Err(SoftwareSpecError);
            }
            return Ok(SoftwareRelease::Exec(p.into()));
        }
        if let Some(h) = s.strip_prefix("sha256:") {
            let sha256 = parse_sha256(h).ok_or(SoftwareSpecError)?;
            return Ok(SoftwareRelease::Artifact {
                variants: alloc::vec![ArtifactVariant {
                    target: "*".into(),
                    sha256,
                }],
                entry: String::new(),
            });
        }
        if let Some(rest) = s.strip_prefix("artifact:") {
            // Targets and hashes hold no `/`: the first one starts the entry.
            let (list, entry) = rest.split_once('/').ok_or(SoftwareSpecError)?;
            let mut variants = Vec::new();
            for v in list.split(',') {
                let (target, h) = v.split_once("=sha256:").ok_or(SoftwareSpecError)?;
                if !valid_target(target) || variants.len() >= crate::limits::MAX_VARIANTS {
                    return Err(SoftwareSpecError);
                }
                let sha256 = parse_sha256(h).ok_or(SoftwareSpecError)?;
                variants.push(ArtifactVariant {
                    target: target.into(),
                    sha256,
                });
            }
            return Ok(SoftwareRelease::Artifact {
                variants,
                entry: entry.into(),
            });
        }
        Err(SoftwareSpecError)
    }
}

impl fmt::Display for SoftwareRelease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SoftwareRelease::Exec(p) => write!(f, "exec:{p}"),
            SoftwareRelease::Artifact { variants, entry } => {
                f.write_str("artifact:")?;
                for (i, v) in variants.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{}=sha256:{}", v.target, Sha256Hex(&v.sha256))?;
                }
                write!(f, "/{entry}")
            }
        }
    }
}

/// The state the requester wants an instance in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum RequestedState {
    /// Running, restarted whenever it exits.
    #[default]
    Started,
    /// Not running; partition kept.
    Stopped,
    /// Not running; partition removed.
    Destroyed,
}

/// A config file rendered from parameters into the partition before start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigFile {
    /// Path relative to the partition root (e.g. `etc/app.conf`); never absolute, never `..`.
    pub path: String,
    /// Template text; `{{key}}` is a parameter, `{{other.key}}` another instance's connection parameter.
    pub template: String,
}

/// Resource limits of one instance. `None` means "no limit beyond the node's defaults".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Memory ceiling in bytes (cgroup `memory.max`, and `RLIMIT_AS` is *not* used for it).
    pub memory_max: Option<u64>,
    /// CPU ceiling in percent of one core (cgroup `cpu.max`).
    pub cpu_max_percent: Option<u32>,
    /// Open files (`RLIMIT_NOFILE`).
    pub nofile: Option<u64>,
    /// Processes of the partition's user (`RLIMIT_NPROC`).
    pub nproc: Option<u64>,
}

/// How the supervisor restarts an instance that exits. `None` takes the node's default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartPolicy {
    /// Delay after the second quick crash in a row; doubles on each further one.
    pub backoff_base_ms: Option<u32>,
    /// Ceiling of the delay. The supervisor never gives up.
    pub backoff_max_ms: Option<u32>,
}

/// What a promise checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PromiseCheck {
    /// The instance's process is alive.
    Process,
    /// A TCP connect to `address` (`host:port`) succeeds.
    Tcp {
        /// `host:port`, parameters rendered.
        address: String,
    },
    /// An HTTP GET of `url` answers `status` within `max_latency_ms`.
    Http {
        /// `http://host:port/path`, parameters rendered.
        url: String,
        /// Expected status code.
        status: u16,
        /// Slowest acceptable answer.
        max_latency_ms: u32,
    },
    /// A command run in the partition exits 0 within the timeout.
    Command {
        /// Program and arguments.
        #[serde(deserialize_with = "crate::bounded::args")]
        argv: Vec<String>,
    },
    /// A file in the partition was modified within `max_age_s` seconds.
    File {
        /// Path relative to the partition.
        path: String,
        /// Oldest acceptable modification, seconds.
        max_age_s: u32,
    },
}

/// A periodic health check of an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromiseSpec {
    /// Unique within the instance.
    pub name: Name,
    /// What is checked.
    pub check: PromiseCheck,
    /// Time between checks.
    pub interval_ms: u32,
    /// A check that takes longer fails.
    pub timeout_ms: u32,
    /// Failures in a row that make an anomaly.
    pub threshold: u8,
}

/// One requested service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRequest {
    /// Instance name, also its partition's directory name.
    pub name: Name,
    /// What it runs.
    pub software: SoftwareRelease,
    /// Arguments, parameters rendered.
    #[serde(deserialize_with = "crate::bounded::args")]
    pub args: Vec<String>,
    /// Parameters: rendered into args, config files, promises; also the environment.
    #[serde(deserialize_with = "crate::bounded::parameters")]
    pub parameters: BTreeMap<String, String>,
    /// Files rendered into the partition before start.
    #[serde(deserialize_with = "crate::bounded::config_files")]
    pub config_files: Vec<ConfigFile>,
    /// Health checks.
    #[serde(deserialize_with = "crate::bounded::promises")]
    pub promises: Vec<PromiseSpec>,
    /// Resource limits.
    pub limits: Limits,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// Started, stopped or destroyed.
    pub state: RequestedState,
}

/// The master's terms for one instance it places on a node (wire version 4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceTerms {
    /// The instance, one of the state's `instances`.
    pub instance: Name,
    /// The placement's fencing epoch: 1 at the first placement, one more each time the
    /// master places the instance on another node. A node reports the fence its copy
    /// runs under ([`RecordKind::Fence`]), so the master tells a stale copy's late
    /// records from the current copy's.
    pub fence: u64,
    /// 0: no lease, the copy runs offline for as long as it must (placement policy
    /// `wait`). Otherwise (policy `move`) the node runs its copy only while it holds a
    /// lease: an [`Ack`] for a batch it first sent less than `lease_ms` ago. The master
    /// places the instance elsewhere only after the node was silent for longer than the
    /// lease, so the old copy has stopped by then.
    pub lease_ms: u32,
}

/// Connection parameters published by an instance on another node, which instances of
/// this node reference with the usual `{{instance.key}}` (wire version 4). The master
/// fills them from the owner's `ConnectionParameters` records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Import {
    /// The publishing instance; never one of the state's own `instances`.
    pub instance: Name,
    /// Its published values.
    #[serde(deserialize_with = "crate::bounded::parameters")]
    pub parameters: BTreeMap<String, String>,
}

/// The master's signed description of everything one node should run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredState {
    /// The node this is for.
    pub node: Name,
    /// Strictly increasing per node; a node applies only a newer one. Its high 32 bits
    /// are the master's epoch (0 until the master is first restored from a backup; a
    /// restore moves it past every generation the restored store could have issued),
    /// its low 32 bits the master's counter within that epoch: signed with the rest.
    pub generation: u64,
    /// The instances the master owns on this node.
    #[serde(deserialize_with = "crate::bounded::instances")]
    pub instances: Vec<InstanceRequest>,
    /// ed25519 signature by the master over [`DesiredState::signed_bytes`] (64 bytes).
    pub signature: heapless::Vec<u8, 64>,
    /// Milliseconds since the Unix epoch after which the state is stale: the master
    /// sets it and signs it. A node still runs a state past it but reports it (see
    /// `hedge_runtime::desired`). Added in wire version 2.
    pub expires_ms: u64,
    /// Fence and lease of each instance (at most one entry per instance; an instance
    /// without one has fence 0 and no lease). Added in wire version 4, signed.
    #[serde(deserialize_with = "crate::bounded::terms")]
    pub terms: Vec<InstanceTerms>,
    /// Other nodes' connection parameters this node's instances reference. Added in
    /// wire version 4, signed.
    #[serde(deserialize_with = "crate::bounded::imports")]
    pub imports: Vec<Import>,
    /// Backup policies of the state's instances (at most one per instance). Added in
    /// wire version 5, signed.
    #[serde(deserialize_with = "crate::bounded::backups")]
    pub backups: Vec<crate::backup::BackupPolicy>,
    /// Instances to restore from a snapshot before they first start here (at most one
    /// per instance). Added in wire version 5, signed.
    #[serde(deserialize_with = "crate::bounded::restores")]
    pub restores: Vec<crate::backup::RestoreDirective>,
}

impl DesiredState {
    /// The backup policy of `instance`, if the state carries one.
    pub fn backup_of(&self, instance: &Name) -> Option<&crate::backup::BackupPolicy> {
        self.backups.iter().find(|b| &b.instance == instance)
    }

    /// The restore directive of `instance`, if the state carries one.
    pub fn restore_of(&self, instance: &Name) -> Option<&crate::backup::RestoreDirective> {
        self.restores.iter().find(|r| &r.instance == instance)
    }

    /// The terms of `instance`, if the state carries any.
    pub fn terms_of(&self, instance: &Name) -> Option<&InstanceTerms> {
        self.terms.iter().find(|t| &t.instance == instance)
    }
}

/// A [`DesiredState`] as wire version 4 encoded it (no backups, no restores). Only for
/// reading states that a store kept from before version 5 and for refusing a version-4
/// state on the wire: its signature covers version-4 bytes, so it never verifies as a
/// version-5 state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredStateV4 {
    /// The node this is for.
    pub node: Name,
    /// The master's counter for this node.
    pub generation: u64,
    /// The instances the master owned on this node.
    pub instances: Vec<InstanceRequest>,
    /// The version-4 signature.
    pub signature: heapless::Vec<u8, 64>,
    /// Its signed expiry.
    pub expires_ms: u64,
    /// Fences and leases.
    pub terms: Vec<InstanceTerms>,
    /// Other nodes' connection parameters.
    pub imports: Vec<Import>,
}

impl From<DesiredStateV4> for DesiredState {
    /// No backups, no restores.
    fn from(v: DesiredStateV4) -> Self {
        DesiredState {
            node: v.node,
            generation: v.generation,
            instances: v.instances,
            signature: v.signature,
            expires_ms: v.expires_ms,
            terms: v.terms,
            imports: v.imports,
            backups: Vec::new(),
            restores: Vec::new(),
        }
    }
}

/// A [`DesiredState`] as wire versions 2 and 3 encoded it (no terms, no imports). Only
/// for reading states that a store kept from before version 4: the wire never decodes
/// it. Its signature covers version-2 bytes, so it never verifies as a version-4 state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredStateV2 {
    /// The node this is for.
    pub node: Name,
    /// The master's counter for this node.
    pub generation: u64,
    /// The instances the master owned on this node.
    pub instances: Vec<InstanceRequest>,
    /// The version-2 signature.
    pub signature: heapless::Vec<u8, 64>,
    /// Its signed expiry.
    pub expires_ms: u64,
}

impl From<DesiredStateV2> for DesiredState {
    /// No terms (fence 0, no lease) and no imports.
    fn from(v: DesiredStateV2) -> Self {
        DesiredStateV4 {
            node: v.node,
            generation: v.generation,
            instances: v.instances,
            signature: v.signature,
            expires_ms: v.expires_ms,
            terms: Vec::new(),
            imports: Vec::new(),
        }
        .into()
    }
}

/// A [`DesiredState`] as wire version 1 encoded it (no expiry). Only for reading states
/// that a store kept from before version 2: the wire itself never decodes it. Its
/// signature covers version-1 bytes, so it never verifies as a later state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredStateV1 {
    /// The node this is for.
    pub node: Name,
    /// The master's counter for this node; a node applies only a higher one.
    pub generation: u64,
    /// The instances the master owned on this node.
    pub instances: Vec<InstanceRequest>,
    /// The version-1 signature.
    pub signature: heapless::Vec<u8, 64>,
}

impl From<DesiredStateV1> for DesiredState {
    /// Expiry 0: a state without an expiry is reported as expired.
    fn from(v: DesiredStateV1) -> Self {
        DesiredStateV2 {
            node: v.node,
            generation: v.generation,
            instances: v.instances,
            signature: v.signature,
            expires_ms: 0,
        }
        .into()
    }
}

impl DesiredState {
    /// Reads a desired state a store kept, whichever version wrote it: version 5 (this
    /// type), else version 4 (no backups, no restores), else version 2 (no terms, no
    /// imports), else version 1 (no expiry). The error is the version-5 decoder's, for
    /// the caller to report.
    ///
    /// # Errors
    ///
    /// The bytes decode as none of the three.
    pub fn from_stored(bytes: &[u8]) -> Result<DesiredState, postcard::Error> {
        postcard::from_bytes::<DesiredState>(bytes).or_else(|e| {
            postcard::from_bytes::<DesiredStateV4>(bytes)
                .map(Into::into)
                .or_else(|_| postcard::from_bytes::<DesiredStateV2>(bytes).map(Into::into))
                .or_else(|_| postcard::from_bytes::<DesiredStateV1>(bytes).map(Into::into))
                .map_err(|_| e)
        })
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit {c}"),
            ExitStatus::Signal(s) => write!(f, "signal {s}"),
        }
    }
}

/// The lifecycle state of an instance as the supervisor sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstanceStatus {
    /// Not running, not wanted.
    Stopped,
    /// Its process is alive (started, not yet seen to exit).
    Running,
    /// Exited; waiting out the backoff delay before the next start.
    Backoff,
    /// Told to stop; waiting for it to exit.
    Stopping,
    /// Cannot start yet (e.g. a referenced connection parameter is missing); retried.
    Waiting,
    /// Stopped and partition removed.
    Destroyed,
}

/// Severity of an incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Severity {
    /// Noticed, repaired locally.
    Minor,
    /// Repairs are not helping.
    Major,
    /// Escalated to the master for re-allocation.
    Critical,
}

/// Open or resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IncidentState {
    /// Still a problem.
    Open,
    /// Escalated (severity raised, master asked to act).
    Escalated,
    /// The promise passes again.
    Resolved,
}

/// What a record says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordKind {
    /// An instance changed lifecycle state.
    InstanceState {
        /// Which instance.
        instance: Name,
        /// Its new state.
        status: InstanceStatus,
        /// Its process id, when running.
        pid: Option<u32>,
        /// Restarts so far.
        restarts: u32,
        /// How the last run ended.
        last_exit: Option<ExitStatus>,
    },
    /// A promise changed state, or a periodic summary of its checks.
    PromiseResult {
        /// Which instance.
        instance: Name,
        /// Which promise.
        promise: Name,
        /// Passing now.
        ok: bool,
        /// Checks and failures summarised by this record (1/0 or 1/1 for a change of state).
        checks: u32,
        /// Failed checks among them.
        failures: u32,
        /// Latency min/median/max in ms over the summarised checks.
        latency_ms: Option<(u32, u32, u32)>,
        /// Last failure's message, if any.
        message: String,
    },
    /// Resources one instance used over `[from_ms, to_ms)`.
    Usage {
        /// Which instance.
        instance: Name,
        /// Interval start, ms since the Unix epoch.
        from_ms: u64,
        /// Interval end (exclusive), ms since the Unix epoch.
        to_ms: u64,
        /// CPU time (user+system) of the whole process tree, ms.
        cpu_ms: u64,
        /// Average resident memory, bytes.
        mem_avg_bytes: u64,
        /// Peak resident memory, bytes.
        mem_peak_bytes: u64,
        /// Disk bytes of the partition at the end of the interval.
        disk_bytes: u64,
        /// Network bytes received, where measurable.
        net_rx_bytes: Option<u64>,
        /// Network bytes sent, where measurable.
        net_tx_bytes: Option<u64>,
        /// Time running within the interval, ms.
        uptime_ms: u64,
    },
    /// An incident opened, escalated or resolved.
    Incident {
        /// Node-local incident id.
        id: u64,
        /// Which instance.
        instance: Name,
        /// Which promise, if one.
        promise: Option<Name>,
        /// How bad.
        severity: Severity,
        /// Transition this record reports.
        state: IncidentState,
        /// First seen, ms since the epoch.
        first_seen_ms: u64,
        /// Last seen, ms since the epoch.
        last_seen_ms: u64,
        /// Human-readable description.
        message: String,
    },
    /// The node's own health.
    NodeHealth {
        /// 1-minute load average × 1000.
        load1_milli: u32,
        /// Total memory, bytes.
        mem_total: u64,
        /// Available memory, bytes.
        mem_available: u64,
        /// Free bytes on the state directory's filesystem.
        disk_free: u64,
        /// Temperature in milli-°C, where a thermal zone exists.
        temp_milli_c: Option<i32>,
        /// Uplink connected.
        uplink_up: bool,
        /// Records waiting in the outbox.
        outbox_depth: u64,
    },
    /// A request made on the node itself, reported so the master learns of it.
    LocalRequest {
        /// The request as stored.
        request: alloc::boxed::Box<InstanceRequest>,
    },
    /// What the node is, sent at every boot: the master's registry and allocation use it.
    NodeInfo {
        /// Board profile id (e.g. `rpi4b`, `generic`).
        board: String,
        /// Target triple the binary was built for.
        arch: String,
        /// CPU cores.
        cores: u32,
        /// Total memory, bytes.
        mem_total: u64,
        /// Most instances this node takes.
        max_instances: u32,
        /// Labels for allocation (`k=v`).
        labels: BTreeMap<String, String>,
        /// Region, for technical or legal placement.
        region: String,
    },
    /// The node accepted or refused a desired state from the master.
    Desired {
        /// The generation of the state accepted or refused.
        generation: u64,
        /// Applied (true) or refused (false).
        accepted: bool,
        /// Why it was refused (empty when accepted).
        reason: String,
    },
    /// The outbox reached its quota and records were shed to stay under it.
    Shed {
        /// Promise summaries dropped (oldest first).
        dropped_promise: u32,
        /// Node-health records dropped (oldest first).
        dropped_health: u32,
        /// Usage records merged into coarser intervals (totals preserved).
        merged_usage: u32,
        /// Outbox bytes before shedding.
        bytes_before: u64,
        /// Outbox bytes after shedding.
        bytes_after: u64,
    },
    /// An instance published connection parameters (`etc/connection.json`).
    ConnectionParameters {
        /// Which instance.
        instance: Name,
        /// The published values.
        #[serde(deserialize_with = "crate::bounded::parameters")]
        parameters: BTreeMap<String, String>,
    },
    /// The node installed, or refused, a software artifact.
    Artifact {
        /// The archive's sha256 (as requested).
        sha256: [u8; 32],
        /// The variant's target (`*` or a triple).
        target: String,
        /// What happened.
        outcome: ArtifactOutcome,
        /// Details (the refusal's reason, the hash found).
        message: String,
    },
    /// The desired state the node runs is past its expiry (judged against the node's
    /// trusted time floor); the node keeps running it. Sent once per generation.
    DesiredExpired {
        /// The generation of the expired state.
        generation: u64,
        /// Its expiry, ms since the epoch.
        expires_ms: u64,
        /// The node's trusted time when it judged so, ms since the epoch.
        judged_at_ms: u64,
    },
    /// This node's copy of `instance` now runs under the master's `fence` (`holding`),
    /// or gave it up (not `holding`: its lease lapsed, or the master moved it away).
    /// Records about the instance that follow it in the node's seq order were made
    /// under that fence. Added in wire version 4 (last, so records stored before it
    /// keep their encoding).
    Fence {
        /// Which instance.
        instance: Name,
        /// The fence of [`InstanceTerms`] the copy runs, or ran, under.
        fence: u64,
        /// Runs under it (true), or stopped (false).
        holding: bool,
    },
    /// A peer's own batch this node took custody of as a relay (see [`crate::mesh`]):
    /// stored whole, signature and all, and carried to the master in this node's own
    /// batches. Added with the mesh (last, so records stored before it keep their
    /// encoding).
    Relayed(crate::mesh::SignedBatch),
    /// A snapshot of an instance was taken, uploaded or failed, or an instance was
    /// restored from one (or refused to be). Added with backups (last, so records stored
    /// before it keep their encoding).
    Backup {
        /// Which instance.
        instance: Name,
        /// Which snapshot.
        snapshot: crate::backup::SnapshotId,
        /// What happened.
        event: crate::backup::BackupEvent,
        /// Details (why it failed; empty otherwise).
        message: String,
    },
}

/// What became of an artifact the node needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ArtifactOutcome {
    /// Downloaded, hash checked, extracted into the node's cache.
    Installed,
    /// The download's sha256 is not the one asked for; deleted, retried later.
    HashMismatch,
    /// The hash matched but the archive is unsafe or unreadable (an absolute path, `..`,
    /// a link leaving the tree, a device file, over a bound): nothing kept. Permanent for
    /// these bytes: the release itself must change.
    Refused,
}

/// One entry of the node's outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Outbox sequence number: unique per node, never reused, no gaps.
    pub seq: u64,
    /// When it was made, ms since the Unix epoch.
    pub time_ms: u64,
    /// What it says.
    pub kind: RecordKind,
}

/// A batch of records, node → master (`hedge/v1/<node>/up`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Up {
    /// Sending node.
    pub node: Name,
    /// Records in increasing `seq` order.
    #[serde(deserialize_with = "crate::bounded::records")]
    pub records: Vec<Record>,
    /// `Some((from, to))`: these are *all* the records the node still holds with
    /// `from <= seq <= to` (seqs in between that are missing were shed and will never
    /// come), so the master may acknowledge up to `to` once it has stored everything
    /// below `from`. `None`: an express batch of selected records (e.g. incidents sent
    /// ahead on a slow link); the master stores them but they extend no range.
    pub covers: Option<(u64, u64)>,
    /// The node's life (incarnation) these records belong to: a random id its store
    /// made when it was created (or found itself restored). Sequence numbers are
    /// unique only within one epoch; the master keys records by `(node, epoch, seq)`
    /// and acknowledges per `(node, epoch)`. `0` is reserved for records stored before
    /// epochs existed; a node never sends it.
    pub epoch: u64,
}

/// The master has stored every record of the node's life `epoch` up to and including
/// `upto`. A node ignores an ack for another epoch than its own (an old life's ack
/// never deletes a new life's records).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// Highest stored sequence number.
    pub upto: u64,
    /// The life acknowledged (the `epoch` of the batches it answers).
    pub epoch: u64,
}

/// Everything that travels in a frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Master → node desired state.
    Desired(DesiredState),
    /// Node → master records.
    Up(Up),
    /// Master → node acknowledgement.
    Ack(Ack),
    /// A relay → master, on its own `up` topic: send me the latest signed desired states
    /// of these nodes (at most [`crate::mesh::MAX_CARRIED`]), which I carry. Added with
    /// the mesh.
    Fetch(#[serde(deserialize_with = "crate::bounded::fetch")] Vec<Name>),
    /// Master → relay, on the relay's `carry` topic: an acknowledgement for a node whose
    /// records the relay carried. Added with the mesh.
    Carried(crate::mesh::SignedAck),
}
