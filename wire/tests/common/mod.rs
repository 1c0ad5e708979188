//! Shared test helpers: proptest strategies for valid messages, and chunked
//! embedded-io readers and writers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;

use hedge_wire::*;
use proptest::collection::{btree_map, vec};
use proptest::option::of;
use proptest::prelude::*;

/// `n` cases, or fewer when `PROPTEST_CASES` asks for fewer: cross/test sets it under
/// qemu, where a case costs about 15 times what it does natively and the properties are
/// the same; scripts/test runs the full counts.
pub fn cases(n: u32) -> ProptestConfig {
    let cap = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(n);
    ProptestConfig::with_cases(n.min(cap))
}

/// A valid name: any length 1..=64 of the allowed bytes, filtered through `Name::new`.
pub fn name() -> impl Strategy<Value = Name> {
    prop_oneof![
        "[a-z0-9._-]{1,64}",
        "[a-z0-9_-]{1,8}",
        "[a-z]{64}",
        Just("a".to_string()),
    ]
    .prop_filter_map("valid name", |s| Name::new(&s).ok())
}

/// Argv/environment-safe text: no NUL, any other Unicode.
fn text() -> impl Strategy<Value = String> {
    "[^\\x00]{0,12}"
}

/// Free text, NUL included.
fn message() -> impl Strategy<Value = String> {
    "(?s:.){0,40}"
}

/// A relative path whose components are never `..`.
fn rel_path() -> impl Strategy<Value = String> {
    "[a-z0-9_][a-z0-9_.]{0,7}(/[a-z0-9_][a-z0-9_.]{0,7}){0,2}"
}

fn parameters() -> impl Strategy<Value = BTreeMap<String, String>> {
    btree_map("[A-Za-z_][A-Za-z0-9_.]{0,15}", text(), 0..4)
}

/// Every `SoftwareRelease` variant, valid.
pub fn software() -> impl Strategy<Value = SoftwareRelease> {
    prop_oneof![
        "[^\\x00]{1,32}".prop_map(SoftwareRelease::Exec),
        (
            btree_map(
                prop_oneof![Just("*".to_string()), "[a-z0-9._-]{1,64}"],
                any::<[u8; 32]>(),
                1..=hedge_wire::limits::MAX_VARIANTS
            ),
            rel_path()
        )
            .prop_map(|(m, entry)| SoftwareRelease::Artifact {
                variants: m
                    .into_iter()
                    .map(|(target, sha256)| ArtifactVariant { target, sha256 })
                    .collect(),
                entry,
            }),
    ]
}

/// Every `PromiseCheck` variant.
pub fn promise_check() -> impl Strategy<Value = PromiseCheck> {
    prop_oneof![
        Just(PromiseCheck::Process),
        "[a-z0-9.:]{1,20}".prop_map(|address| PromiseCheck::Tcp { address }),
        ("http://[a-z]{1,10}/[a-z]{0,10}", any::<u16>(), any::<u32>()).prop_map(
            |(url, status, max_latency_ms)| PromiseCheck::Http {
                url,
                status,
                max_latency_ms
            }
        ),
        vec(text(), 1..4).prop_map(|argv| PromiseCheck::Command { argv }),
        (rel_path(), any::<u32>())
            .prop_map(|(path, max_age_s)| PromiseCheck::File { path, max_age_s }),
    ]
}

fn promises() -> impl Strategy<Value = Vec<PromiseSpec>> {
    btree_map(
        name(),
        (promise_check(), 1..=u32::MAX, 1..=u32::MAX, 1..=u8::MAX),
        0..3,
    )
    .prop_map(|m| {
        m.into_iter()
            .map(
                |(name, (check, interval_ms, timeout_ms, threshold))| PromiseSpec {
                    name,
                    check,
                    interval_ms,
                    timeout_ms,
                    threshold,
                },
            )
            .collect()
    })
}

fn config_files() -> impl Strategy<Value = Vec<ConfigFile>> {
    btree_map(rel_path(), message(), 0..3).prop_map(|m| {
        m.into_iter()
            .map(|(path, template)| ConfigFile { path, template })
            .collect()
    })
}

fn limits() -> impl Strategy<Value = Limits> {
    (
        of(any::<u64>()),
        of(any::<u32>()),
        of(any::<u64>()),
        of(any::<u64>()),
    )
        .prop_map(|(memory_max, cpu_max_percent, nofile, nproc)| Limits {
            memory_max,
            cpu_max_percent,
            nofile,
            nproc,
        })
}

fn restart() -> impl Strategy<Value = RestartPolicy> {
    (of(1..=u32::MAX), of(any::<u32>())).prop_map(|(base, max)| RestartPolicy {
        backoff_base_ms: base,
        backoff_max_ms: match (base, max) {
            (Some(b), Some(m)) => Some(m.max(b)),
            (_, m) => m,
        },
    })
}

fn requested_state() -> impl Strategy<Value = RequestedState> {
    prop_oneof![
        Just(RequestedState::Started),
        Just(RequestedState::Stopped),
        Just(RequestedState::Destroyed),
    ]
}

type Body = (
    SoftwareRelease,
    Vec<String>,
    BTreeMap<String, String>,
    Vec<ConfigFile>,
    Vec<PromiseSpec>,
    Limits,
    RestartPolicy,
    RequestedState,
);

fn instance_body() -> impl Strategy<Value = Body> {
    (
        software(),
        vec(text(), 0..4),
        parameters(),
        config_files(),
        promises(),
        limits(),
        restart(),
        requested_state(),
    )
}

fn make_instance(name: Name, b: Body) -> InstanceRequest {
    let (software, args, parameters, config_files, promises, limits, restart, state) = b;
    InstanceRequest {
        name,
        software,
        args,
        parameters,
        config_files,
        promises,
        limits,
        restart,
        state,
    }
}

/// A valid instance request.
pub fn instance() -> impl Strategy<Value = InstanceRequest> {
    (name(), instance_body()).prop_map(|(n, b)| make_instance(n, b))
}

/// A valid desired state (unique instance names, signature empty or 64 bytes, terms for
/// some of its instances, imports of instances it does not carry).
pub fn desired() -> impl Strategy<Value = DesiredState> {
    (
        (name(), any::<u64>()),
        btree_map(
            name(),
            (instance_body(), of((any::<u64>(), any::<u32>()))),
            0..3,
        ),
        prop_oneof![Just(Vec::new()), vec(any::<u8>(), 64)],
        any::<u64>(),
        btree_map(name(), parameters(), 0..3),
    )
        .prop_map(
            |((node, generation), instances, sig, expires_ms, imports)| DesiredState {
                node,
                generation,
                terms: instances
                    .iter()
                    .filter_map(|(n, (_, t))| {
                        t.map(|(fence, lease_ms)| InstanceTerms {
                            instance: n.clone(),
                            fence,
                            lease_ms,
                        })
                    })
                    .collect(),
                imports: imports
                    .into_iter()
                    .filter(|(n, _)| !instances.contains_key(n))
                    .map(|(instance, parameters)| Import {
                        instance,
                        parameters,
                    })
                    .collect(),
                instances: instances
                    .into_iter()
                    .map(|(n, (b, _))| make_instance(n, b))
                    .collect(),
                signature: sig.into_iter().collect(),
                expires_ms,
                backups: Vec::new(),
                restores: Vec::new(),
            },
        )
}

fn instance_status() -> impl Strategy<Value = InstanceStatus> {
    prop_oneof![
        Just(InstanceStatus::Stopped),
        Just(InstanceStatus::Running),
        Just(InstanceStatus::Backoff),
        Just(InstanceStatus::Stopping),
        Just(InstanceStatus::Waiting),
        Just(InstanceStatus::Destroyed),
    ]
}

fn exit_status() -> impl Strategy<Value = ExitStatus> {
    prop_oneof![
        any::<i32>().prop_map(ExitStatus::Code),
        any::<i32>().prop_map(ExitStatus::Signal),
    ]
}

fn severity() -> impl Strategy<Value = Severity> {
    prop_oneof![
        Just(Severity::Minor),
        Just(Severity::Major),
        Just(Severity::Critical)
    ]
}

fn incident_state() -> impl Strategy<Value = IncidentState> {
    prop_oneof![
        Just(IncidentState::Open),
        Just(IncidentState::Escalated),
        Just(IncidentState::Resolved),
    ]
}

/// Every `RecordKind` variant.
pub fn record_kind() -> impl Strategy<Value = RecordKind> {
    prop_oneof![
        (
            name(),
            instance_status(),
            of(any::<u32>()),
            any::<u32>(),
            of(exit_status())
        )
            .prop_map(|(instance, status, pid, restarts, last_exit)| {
                RecordKind::InstanceState {
                    instance,
                    status,
                    pid,
                    restarts,
                    last_exit,
                }
            }),
        (
            name(),
            name(),
            any::<bool>(),
            any::<u32>(),
            any::<u32>(),
            of(any::<(u32, u32, u32)>()),
            message()
        )
            .prop_map(
                |(instance, promise, ok, checks, failures, latency_ms, message)| {
                    RecordKind::PromiseResult {
                        instance,
                        promise,
                        ok,
                        checks,
                        failures,
                        latency_ms,
                        message,
                    }
                }
            ),
        (
            name(),
            any::<[u64; 6]>(),
            of(any::<u64>()),
            of(any::<u64>()),
            any::<u64>()
        )
            .prop_map(|(instance, n, net_rx_bytes, net_tx_bytes, uptime_ms)| {
                RecordKind::Usage {
                    instance,
                    from_ms: n[0],
                    to_ms: n[1],
                    cpu_ms: n[2],
                    mem_avg_bytes: n[3],
                    mem_peak_bytes: n[4],
                    disk_bytes: n[5],
                    net_rx_bytes,
                    net_tx_bytes,
                    uptime_ms,
                }
            }),
        (
            any::<u64>(),
            name(),
            of(name()),
            severity(),
            incident_state(),
            any::<u64>(),
            any::<u64>(),
            message()
        )
            .prop_map(
                |(id, instance, promise, severity, state, first_seen_ms, last_seen_ms, message)| {
                    RecordKind::Incident {
                        id,
                        instance,
                        promise,
                        severity,
                        state,
                        first_seen_ms,
                        last_seen_ms,
                        message,
                    }
                }
            ),
        (
            any::<u32>(),
            any::<[u64; 3]>(),
            of(any::<i32>()),
            any::<bool>(),
            any::<u64>()
        )
            .prop_map(|(load1_milli, m, temp_milli_c, uplink_up, outbox_depth)| {
                RecordKind::NodeHealth {
                    load1_milli,
                    mem_total: m[0],
                    mem_available: m[1],
                    disk_free: m[2],
                    temp_milli_c,
                    uplink_up,
                    outbox_depth,
                }
            }),
        ("[a-z0-9]{1,20}", any::<u32>(), any::<u64>(), parameters()).prop_map(
            |(board, cores, mem_total, labels)| RecordKind::NodeInfo {
                arch: "aarch64-unknown-linux-gnu".into(),
                board,
                cores,
                mem_total,
                max_instances: cores,
                labels,
                region: "eu".into(),
            }
        ),
        (any::<u64>(), any::<bool>(), "[a-z ]{0,40}").prop_map(|(generation, accepted, reason)| {
            RecordKind::Desired {
                generation,
                accepted,
                reason,
            }
        }),
        (name(), any::<u64>(), any::<bool>()).prop_map(|(instance, fence, holding)| {
            RecordKind::Fence {
                instance,
                fence,
                holding,
            }
        }),
        any::<[u64; 3]>().prop_map(|g| RecordKind::DesiredExpired {
            generation: g[0],
            expires_ms: g[1],
            judged_at_ms: g[2],
        }),
        (any::<[u32; 3]>(), any::<[u64; 2]>()).prop_map(|(d, b)| RecordKind::Shed {
            dropped_promise: d[0],
            dropped_health: d[1],
            merged_usage: d[2],
            bytes_before: b[0],
            bytes_after: b[1],
        }),
        instance().prop_map(|request| RecordKind::LocalRequest {
            request: Box::new(request)
        }),
        (name(), parameters()).prop_map(|(instance, parameters)| {
            RecordKind::ConnectionParameters {
                instance,
                parameters,
            }
        }),
        (
            any::<[u8; 32]>(),
            prop_oneof![Just("*".to_string()), "[a-z0-9._-]{1,64}"],
            prop_oneof![
                Just(ArtifactOutcome::Installed),
                Just(ArtifactOutcome::HashMismatch),
                Just(ArtifactOutcome::Refused),
            ],
            message()
        )
            .prop_map(|(sha256, target, outcome, message)| RecordKind::Artifact {
                sha256,
                target,
                outcome,
                message
            }),
    ]
}

/// A valid batch: strictly increasing `seq`.
pub fn up() -> impl Strategy<Value = Up> {
    (
        name(),
        0..u64::MAX / 2,
        vec((1..1000u64, any::<u64>(), record_kind()), 0..5),
        1..=u64::MAX,
    )
        .prop_map(|(node, base, recs, epoch)| {
            let mut seq = base;
            let records: Vec<Record> = recs
                .into_iter()
                .map(|(step, time_ms, kind)| {
                    seq += step;
                    Record { seq, time_ms, kind }
                })
                .collect();
            let covers = match (records.first(), records.last()) {
                (Some(a), Some(b)) => Some((a.seq, b.seq)),
                _ => None,
            };
            Up {
                node,
                records,
                covers,
                epoch,
            }
        })
}

/// Any valid message.
pub fn message_strategy() -> impl Strategy<Value = Message> {
    prop_oneof![
        desired().prop_map(Message::Desired),
        up().prop_map(Message::Up),
        (any::<u64>(), any::<u64>()).prop_map(|(upto, epoch)| Message::Ack(Ack { upto, epoch })),
    ]
}

/// A reader over a byte slice that hands out at most `chunk` bytes per `read`.
pub struct Chunked<'a> {
    /// Bytes not yet read.
    pub data: &'a [u8],
    /// Largest read.
    pub chunk: usize,
}

impl embedded_io::ErrorType for Chunked<'_> {
    type Error = Infallible;
}

impl embedded_io::Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Infallible> {
        let n = buf.len().min(self.chunk).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// A writer into a `Vec` that accepts at most `chunk` bytes per `write`.
pub struct Sink {
    /// Everything written.
    pub out: Vec<u8>,
    /// Largest write.
    pub chunk: usize,
    /// Flushes seen.
    pub flushes: usize,
}

impl Sink {
    /// An empty sink.
    pub fn new(chunk: usize) -> Self {
        Sink {
            out: Vec::new(),
            chunk,
            flushes: 0,
        }
    }
}

impl embedded_io::ErrorType for Sink {
    type Error = Infallible;
}

impl embedded_io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Infallible> {
        let n = buf.len().min(self.chunk);
        self.out.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> Result<(), Infallible> {
        self.flushes += 1;
        Ok(())
    }
}
