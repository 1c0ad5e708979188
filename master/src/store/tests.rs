#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use hedge_wire::{Limits, RestartPolicy, SoftwareRelease};

use super::*;
use crate::sign::{sign, verify, MasterKey};

pub(super) fn n(s: &str) -> Name {
    Name::new(s).unwrap()
}

/// A fresh store in a temp dir (keep the dir alive as long as the store).
pub(super) fn open() -> (tempfile::TempDir, MasterStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = MasterStore::open(&dir.path().join("master.db")).unwrap();
    (dir, store)
}

fn state_rec(seq: u64, instance: &str, status: InstanceStatus, restarts: u32) -> Record {
    Record {
        seq,
        time_ms: 1000 + seq,
        kind: RecordKind::InstanceState {
            instance: n(instance),
            status,
            pid: (status == InstanceStatus::Running).then_some(100 + seq as u32),
            restarts,
            last_exit: None,
        },
    }
}

fn usage_rec(seq: u64, instance: &str, from_ms: u64, to_ms: u64) -> Record {
    Record {
        seq,
        time_ms: to_ms,
        kind: RecordKind::Usage {
            instance: n(instance),
            from_ms,
            to_ms,
            cpu_ms: 1000,
            mem_avg_bytes: 1_000_000,
            mem_peak_bytes: 2_000_000,
            disk_bytes: 5_000,
            net_rx_bytes: None,
            net_tx_bytes: None,
            uptime_ms: to_ms - from_ms,
        },
    }
}

fn incident_rec(seq: u64, id: u64, state: IncidentState, severity: Severity) -> Record {
    Record {
        seq,
        time_ms: 2000 + seq,
        kind: RecordKind::Incident {
            id,
            instance: n("web"),
            promise: Some(n("http")),
            severity,
            state,
            first_seen_ms: 2000,
            last_seen_ms: 2000 + seq,
            message: format!("step {seq}"),
        },
    }
}

fn health_rec(seq: u64, mem_total: u64) -> Record {
    Record {
        seq,
        time_ms: 3000 + seq,
        kind: RecordKind::NodeHealth {
            load1_milli: 250,
            mem_total,
            mem_available: mem_total / 2,
            disk_free: 1 << 30,
            temp_milli_c: Some(45_000),
            uplink_up: true,
            outbox_depth: 3,
        },
    }
}

/// A master request for `/bin/sleep 1000` in `state`.
pub(super) fn request(name: &str, state: RequestedState) -> InstanceRequest {
    InstanceRequest {
        name: n(name),
        software: SoftwareRelease::Exec("/bin/sleep".into()),
        args: vec!["1000".into()],
        parameters: BTreeMap::new(),
        config_files: Vec::new(),
        promises: Vec::new(),
        limits: Limits::default(),
        restart: RestartPolicy::default(),
        state,
    }
}

/// The epoch of the test batches that do not name one.
const E1: u64 = 0xe1;

fn up(node: &str, records: Vec<Record>, covers: Option<(u64, u64)>) -> Up {
    up_in(node, E1, records, covers)
}

fn up_in(node: &str, epoch: u64, records: Vec<Record>, covers: Option<(u64, u64)>) -> Up {
    Up {
        node: n(node),
        records,
        covers,
        epoch,
    }
}

fn batch(node: &str, from: u64, to: u64) -> Up {
    let records = (from..=to)
        .map(|s| state_rec(s, "web", InstanceStatus::Running, 0))
        .collect();
    up(node, records, Some((from, to)))
}

#[test]
fn ingest_is_idempotent_and_acks_the_covered_prefix() {
    let (_d, s) = open();
    let pi = n("pi-1");
    let b = batch("pi-1", 1, 10);
    let first = s.ingest(&pi, &b, 5).unwrap();
    assert_eq!(
        first,
        Ingested {
            stored: 10,
            duplicates: 0,
            repeats: 0,
            conflicts: 0,
            ack_upto: 10,
            epoch: E1,
        }
    );
    let again = s.ingest(&pi, &b, 6).unwrap();
    assert_eq!(
        again,
        Ingested {
            stored: 0,
            duplicates: 10,
            repeats: 0,
            conflicts: 0,
            ack_upto: 10,
            epoch: E1,
        }
    );
    assert_eq!(s.count(&pi).unwrap(), 10);
    let got = s.records(&pi, 4, 3).unwrap();
    assert_eq!(got, b.records[3..6].to_vec());
    let node = &s.nodes().unwrap()[0];
    assert_eq!((node.records, node.last_seq, node.acked_upto), (10, 10, 10));
    assert_eq!((node.first_seen_ms, node.last_seen_ms), (Some(5), Some(6)));
}

/// Several batches, one commit: each is judged on its own (a refused one leaves the
/// others stored), the results come back in order, and what is stored is exactly what
/// one `ingest` per batch would have stored.
#[test]
fn many_batches_share_one_commit_and_a_refused_one_leaves_the_others() {
    let (_d, s) = open();
    let (a, b) = (n("a"), n("b"));
    let batches = vec![
        (a.clone(), batch("a", 1, 5), 1, u64::MAX),
        // Names another node than its topic: refused, alone.
        (a.clone(), batch("b", 1, 5), 2, u64::MAX),
        (b.clone(), batch("b", 1, 3), 3, u64::MAX),
        (a.clone(), batch("a", 6, 8), 4, u64::MAX),
        // Over a (tiny) quota once a's records are in: refused, alone.
        (a.clone(), batch("a", 9, 9), 5, 1),
    ];
    let results = s.ingest_many(&batches);
    assert_eq!(results.len(), 5);
    assert_eq!(results[0].as_ref().unwrap().ack_upto, 5);
    assert!(matches!(results[1], Err(StoreError::NodeMismatch { .. })));
    assert_eq!(results[2].as_ref().unwrap().ack_upto, 3);
    assert_eq!(results[3].as_ref().unwrap().ack_upto, 8);
    assert!(matches!(results[4], Err(StoreError::QuotaExceeded { .. })));
    assert_eq!((s.count(&a).unwrap(), s.count(&b).unwrap()), (8, 3));
    // The refused batch can come again later, as a node resends it.
    assert_eq!(s.ingest(&a, &batch("a", 9, 9), 6).unwrap().ack_upto, 9);
}

#[test]
fn gaps_wait_shed_seqs_count_and_express_batches_extend_nothing() {
    let (_d, s) = open();
    let pi = n("pi-1");
    // Seqs 11..=20, of which 13 and 14 were shed.
    let mut late = batch("pi-1", 11, 20);
    late.records.retain(|r| r.seq != 13 && r.seq != 14);
    assert_eq!(s.ingest(&pi, &late, 1).unwrap().ack_upto, 0);
    // An express incident ahead of everything: stored, no ack change.
    let express = up(
        "pi-1",
        vec![incident_rec(30, 1, IncidentState::Open, Severity::Minor)],
        None,
    );
    let r = s.ingest(&pi, &express, 2).unwrap();
    assert_eq!((r.stored, r.ack_upto), (1, 0));
    assert_eq!(
        s.ingest(&pi, &batch("pi-1", 1, 10), 3).unwrap().ack_upto,
        20
    );
    // The express record resent inside a covered range is a duplicate.
    let mut tail = batch("pi-1", 21, 29);
    tail.records
        .push(incident_rec(30, 1, IncidentState::Open, Severity::Minor));
    tail.covers = Some((21, 30));
    let r = s.ingest(&pi, &tail, 4).unwrap();
    assert_eq!((r.stored, r.duplicates, r.ack_upto), (9, 1, 30));
    assert_eq!(s.count(&pi).unwrap(), 28);
    assert_eq!(
        s.coverage(&pi, E1).unwrap(),
        Coverage {
            acked: 30,
            pending: BTreeMap::new()
        }
    );
}

#[test]
fn bad_batches_are_refused_whole() {
    let (_d, s) = open();
    let pi = n("pi-1");
    assert!(matches!(
        s.ingest(&pi, &batch("pi-2", 1, 2), 0),
        Err(StoreError::NodeMismatch { .. })
    ));
    let mut big = batch("pi-1", 1, 2);
    big.records
        .push(state_rec(1 << 63, "web", InstanceStatus::Stopped, 0));
    big.covers = None;
    assert!(matches!(
        s.ingest(&pi, &big, 0),
        Err(StoreError::SeqOutOfRange(_))
    ));
    let huge = up("pi-1", Vec::new(), Some((1, u64::MAX)));
    assert!(matches!(
        s.ingest(&pi, &huge, 0),
        Err(StoreError::SeqOutOfRange(_))
    ));
    assert_eq!(s.count(&pi).unwrap(), 0);
    assert!(s.nodes().unwrap().is_empty());
}

#[test]
fn registry_health_and_allocation_counts() {
    let (_d, s) = open();
    let pi = n("pi-1");
    let info = NodeInfo {
        node: pi.clone(),
        board: Some("rpi4".into()),
        arch: Some("aarch64".into()),
        labels: BTreeMap::from([("site".into(), "lab".into())]),
        region: Some("eu".into()),
        cpus: Some(4),
        mem_bytes: None,
        capacity_instances: 8,
    };
    s.register_node(&info).unwrap();
    let r = up(
        "pi-1",
        vec![health_rec(1, 1), health_rec(2, 4_000_000_000)],
        Some((1, 2)),
    );
    s.ingest(&pi, &r, 10).unwrap();
    // An older health arriving later does not win.
    s.ingest(&pi, &up("pi-1", vec![health_rec(0, 7)], None), 11)
        .unwrap();
    s.update_desired(
        &pi,
        |_| {
            vec![
                request("a", RequestedState::Started),
                request("b", RequestedState::Stopped),
                request("c", RequestedState::Destroyed),
            ]
        },
        |_| {},
    )
    .unwrap();
    // Re-registering keeps counters and the reported memory.
    s.register_node(&info).unwrap();
    let all = s.nodes().unwrap();
    assert_eq!(all.len(), 1);
    let node = &all[0];
    assert_eq!(node.board.as_deref(), Some("rpi4"));
    assert_eq!(node.labels.get("site").map(String::as_str), Some("lab"));
    assert_eq!(node.mem_bytes, Some(4_000_000_000));
    assert_eq!(node.health.as_ref().map(|h| h.seq), Some(2));
    assert_eq!((node.capacity_instances, node.allocated_instances), (8, 2));
    assert_eq!((node.records, node.acked_upto), (3, 2));
}

#[test]
fn node_info_records_fill_the_registry() {
    let (_d, s) = open();
    let pi = n("pi-1");
    let info = |seq: u64, board: &str, region: &str| Record {
        seq,
        time_ms: seq,
        kind: RecordKind::NodeInfo {
            board: board.into(),
            arch: "aarch64-unknown-linux-gnu".into(),
            cores: 4,
            mem_total: 8_000_000_000,
            max_instances: 16,
            labels: BTreeMap::from([("camera".into(), "yes".into())]),
            region: region.into(),
        },
    };
    s.ingest(&pi, &up("pi-1", vec![info(5, "rpi5", "")], Some((1, 5))), 0)
        .unwrap();
    // An older boot's record arriving late changes nothing.
    s.ingest(&pi, &up("pi-1", vec![info(2, "rpi4b", "eu")], None), 1)
        .unwrap();
    let node = &s.nodes().unwrap()[0];
    assert_eq!(node.board.as_deref(), Some("rpi5"));
    assert_eq!(node.arch.as_deref(), Some("aarch64-unknown-linux-gnu"));
    assert_eq!((node.cpus, node.mem_bytes), (Some(4), Some(8_000_000_000)));
    assert_eq!(
        (node.capacity_instances, node.reported_region.as_deref()),
        (16, None)
    );
    assert_eq!(
        node.reported_labels.get("camera").map(String::as_str),
        Some("yes")
    );
    // Reported, not assigned: allocation sees none of it.
    assert!(node.labels.is_empty());
}

#[test]
fn allocation_trusts_assigned_labels_and_region_not_reported_ones() {
    use crate::alloc::{pick, AllocError, Placement};
    let (_d, s) = open();
    let claims = |seq: u64| Record {
        seq,
        time_ms: seq,
        kind: RecordKind::NodeInfo {
            board: "rpi4".into(),
            arch: "aarch64-unknown-linux-gnu".into(),
            cores: 4,
            mem_total: 1,
            max_instances: 1000,
            labels: BTreeMap::from([("gpu".into(), "yes".into())]),
            region: "eu".into(),
        },
    };
    // liar claims region eu and gpu=yes, and a huge capacity; honest was assigned them.
    for node in ["liar", "honest"] {
        s.ingest(&n(node), &up(node, vec![claims(1)], Some((1, 1))), 0)
            .unwrap();
    }
    s.update_assignment(&n("honest"), |a| {
        a.region = Some("eu".into());
        a.labels.insert("gpu".into(), "yes".into());
        a.max_instances = Some(2);
    })
    .unwrap();
    let want = Placement {
        region: Some("eu".into()),
        labels: BTreeMap::from([("gpu".into(), "yes".into())]),
        ..Placement::default()
    };
    let nodes = s.nodes().unwrap();
    assert_eq!(pick(&nodes, &want, 0, 1).unwrap().as_str(), "honest");
    let liar = nodes.iter().find(|x| x.node.as_str() == "liar").unwrap();
    assert_eq!(liar.reported_region.as_deref(), Some("eu"), "shown");
    let honest = nodes.iter().find(|x| x.node.as_str() == "honest").unwrap();
    assert_eq!(honest.capacity_instances, 2, "capped by the operator");
    // Without the honest node, nothing fits: the liar's claims count for nothing.
    let only_liar: Vec<_> = nodes
        .into_iter()
        .filter(|x| x.node.as_str() == "liar")
        .collect();
    assert!(matches!(
        pick(&only_liar, &want, 0, 1),
        Err(AllocError::NoCandidate { .. })
    ));
    // A new NodeInfo does not overwrite the assignment.
    s.ingest(
        &n("honest"),
        &up("honest", vec![claims(2)], Some((2, 2))),
        1,
    )
    .unwrap();
    assert_eq!(
        s.assignment(&n("honest")).unwrap().region.as_deref(),
        Some("eu")
    );
}

#[test]
fn usage_selects_overlapping_intervals() {
    let (_d, s) = open();
    let pi = n("pi-1");
    let recs = vec![
        usage_rec(1, "web", 0, 100),   // before
        usage_rec(2, "web", 50, 150),  // straddles the start
        usage_rec(3, "web", 120, 180), // inside
        usage_rec(4, "web", 190, 250), // straddles the end
        usage_rec(5, "web", 200, 300), // at the end: excluded
        usage_rec(6, "web", 150, 150), // empty, inside
        state_rec(7, "web", InstanceStatus::Running, 0),
    ];
    s.ingest(&pi, &up("pi-1", recs, Some((1, 7))), 0).unwrap();
    let seqs: Vec<u64> = s
        .usage(100, 200)
        .unwrap()
        .iter()
        .map(|(_, r)| r.seq)
        .collect();
    assert_eq!(seqs, vec![2, 3, 4, 6]);
    assert!(s.usage(200, 100).unwrap().is_empty());
}

#[test]
fn incidents_keep_latest_state_and_timeline() {
    let (_d, s) = open();
    let pi = n("pi-1");
    // Arrives out of order: resolution first (express), then the rest.
    s.ingest(
        &pi,
        &up(
            "pi-1",
            vec![incident_rec(3, 7, IncidentState::Resolved, Severity::Major)],
            None,
        ),
        0,
    )
    .unwrap();
    s.ingest(
        &pi,
        &up(
            "pi-1",
            vec![
                incident_rec(1, 7, IncidentState::Open, Severity::Minor),
                incident_rec(2, 7, IncidentState::Escalated, Severity::Major),
                incident_rec(4, 8, IncidentState::Open, Severity::Minor),
            ],
            Some((1, 4)),
        ),
        1,
    )
    .unwrap();
    let all = s.incidents().unwrap();
    assert_eq!(all.len(), 2);
    let i7 = &all[0];
    assert_eq!(
        (i7.id, i7.state, i7.severity),
        (7, IncidentState::Resolved, Severity::Major)
    );
    assert_eq!(
        i7.timeline.iter().map(|t| t.state).collect::<Vec<_>>(),
        vec![
            IncidentState::Open,
            IncidentState::Escalated,
            IncidentState::Resolved
        ]
    );
    assert_eq!(i7.message, "step 3");
    assert_eq!(all[1].state, IncidentState::Open);
}

#[test]
fn instances_join_desired_local_requests_and_reports() {
    let (_d, s) = open();
    let pi = n("pi-1");
    s.update_desired(
        &pi,
        |_| {
            vec![
                request("web", RequestedState::Started),
                request("db", RequestedState::Stopped),
            ]
        },
        |_| {},
    )
    .unwrap();
    // The latest state arrives first (express); the latest by seq still wins.
    let express = up(
        "pi-1",
        vec![state_rec(3, "web", InstanceStatus::Backoff, 2)],
        None,
    );
    s.ingest(&pi, &express, 0).unwrap();
    let recs = vec![
        state_rec(1, "web", InstanceStatus::Running, 0),
        state_rec(2, "web", InstanceStatus::Running, 1),
        Record {
            seq: 4,
            time_ms: 4,
            kind: RecordKind::LocalRequest {
                request: Box::new(request("cam", RequestedState::Started)),
            },
        },
        state_rec(5, "cam", InstanceStatus::Running, 0),
        state_rec(6, "old", InstanceStatus::Stopped, 0),
    ];
    s.ingest(&pi, &up("pi-1", recs, Some((1, 6))), 0).unwrap();
    let v = s.instances().unwrap();
    let names: Vec<&str> = v.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, vec!["cam", "db", "old", "web"]);
    assert_eq!(
        (v[0].owner, v[0].status),
        (Owner::Node, Some(InstanceStatus::Running))
    );
    assert_eq!(
        (v[1].owner, v[1].requested, v[1].status),
        (Owner::Master, Some(RequestedState::Stopped), None)
    );
    assert_eq!(v[2].owner, Owner::Unknown);
    let web = &v[3];
    assert_eq!(
        (web.status, web.restarts, web.pid, web.last_seen_ms),
        (Some(InstanceStatus::Backoff), 2, None, Some(1003))
    );
}

#[test]
fn desired_generations_only_grow() {
    let (_d, s) = open();
    let pi = n("pi-1");
    let key = MasterKey::generate();
    assert_eq!(s.desired(&pi).unwrap(), None);
    let d1 = s
        .update_desired(
            &pi,
            |mut v| {
                v.push(request("web", RequestedState::Started));
                v
            },
            |d| sign(&key, d, 0),
        )
        .unwrap();
    assert_eq!(d1.generation, 1);
    verify(&key.public(), &d1).unwrap();
    assert_eq!(s.desired(&pi).unwrap().as_ref(), Some(&d1));

    let g = s.next_generation(&pi).unwrap();
    assert_eq!(g, 2);
    assert_eq!(s.next_generation(&pi).unwrap(), 3, "never handed out twice");
    // A reserved generation may still be stored, if above the stored one.
    let mut d2 = d1.clone();
    d2.generation = g;
    sign(&key, &mut d2, 0);
    s.put_desired(&d2).unwrap();
    assert!(matches!(
        s.put_desired(&d2),
        Err(StoreError::StaleGeneration {
            current: 2,
            given: 2,
            ..
        })
    ));
    let d4 = s.update_desired(&pi, |v| v, |d| sign(&key, d, 0)).unwrap();
    assert_eq!((d4.generation, d4.instances.len()), (4, 1));
    // An error inside the transaction stores nothing.
    assert!(matches!(
        s.update_desired(&pi, |v| v, |d| d.generation = 99),
        Err(StoreError::SignerChangedState(_))
    ));
    assert_eq!(s.desired(&pi).unwrap().map(|d| d.generation), Some(4));
    // A state the wire would refuse is refused here too.
    let mut bad = d4.clone();
    bad.generation = 10;
    bad.signature = heapless::Vec::from_slice(&[1, 2, 3]).unwrap();
    assert!(matches!(s.put_desired(&bad), Err(StoreError::Invalid(_))));
}

#[test]
fn everything_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.db");
    let pi = n("pi-1");
    {
        let s = MasterStore::open(&path).unwrap();
        s.ingest(&pi, &batch("pi-1", 3, 5), 0).unwrap();
        s.update_desired(&pi, |v| v, |_| {}).unwrap();
    }
    let s = MasterStore::open(&path).unwrap();
    assert_eq!(s.count(&pi).unwrap(), 3);
    assert_eq!(s.ingest(&pi, &batch("pi-1", 1, 2), 1).unwrap().ack_upto, 5);
    assert_eq!(s.next_generation(&pi).unwrap(), 2);
}

#[test]
fn concurrent_stores_on_one_file_store_each_record_once() {
    // Each thread opens its own store, as separate master processes would.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.db");
    let threads = 6;
    let results: Vec<(usize, u64, Vec<u64>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let path = path.clone();
                scope.spawn(move || {
                    let s = MasterStore::open(&path).unwrap();
                    let pi = n("pi-1");
                    let mut stored = 0;
                    let mut ack = 0;
                    // Every thread sends the same batches, in a different order.
                    for i in 0..20u64 {
                        let k = (i + t as u64 * 7) % 20;
                        let r = s
                            .ingest(&pi, &batch("pi-1", k * 10 + 1, k * 10 + 10), i)
                            .unwrap();
                        stored += r.stored;
                        ack = ack.max(r.ack_upto);
                    }
                    let gens = (0..10).map(|_| s.next_generation(&pi).unwrap()).collect();
                    (stored, ack, gens)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let stored: usize = results.iter().map(|r| r.0).sum();
    assert_eq!(stored, 200, "each (node, seq) stored exactly once");
    assert!(results.iter().any(|r| r.1 == 200));
    let gens: BTreeSet<u64> = results.iter().flat_map(|r| r.2.clone()).collect();
    assert_eq!(gens.len(), threads * 10, "no generation handed out twice");
    let s = MasterStore::open(&path).unwrap();
    assert_eq!(s.count(&n("pi-1")).unwrap(), 200);
    assert_eq!(s.nodes().unwrap()[0].records, 200);
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.db");
    drop(MasterStore::open(&path).unwrap());
    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    assert!(matches!(
        MasterStore::open(&path),
        Err(StoreError::SchemaTooNew(v)) if v == SCHEMA_VERSION + 1
    ));
}

#[test]
fn supplied_artifacts_make_releases() {
    let (_d, s) = open();
    let web = n("web");
    s.supply_artifact(Some(&web), "aarch64-unknown-linux-gnu", &[1; 32], 10, 1)
        .unwrap();
    s.supply_artifact(Some(&web), "x86_64-unknown-linux-gnu", &[2; 32], 20, 2)
        .unwrap();
    // A new build for one target replaces that variant only.
    s.supply_artifact(Some(&web), "aarch64-unknown-linux-gnu", &[3; 32], 30, 3)
        .unwrap();
    // Unnamed supplies are kept once per (sha256, target).
    s.supply_artifact(None, "*", &[4; 32], 40, 4).unwrap();
    s.supply_artifact(None, "*", &[4; 32], 40, 5).unwrap();
    let v = s.release_variants(&web).unwrap();
    assert_eq!(
        v,
        vec![
            hedge_wire::ArtifactVariant {
                target: "aarch64-unknown-linux-gnu".into(),
                sha256: [3; 32]
            },
            hedge_wire::ArtifactVariant {
                target: "x86_64-unknown-linux-gnu".into(),
                sha256: [2; 32]
            },
        ]
    );
    assert!(s.release_variants(&n("db")).unwrap().is_empty());
    let all = s.artifacts().unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[0].release, None);
    assert_eq!(all[0].sha256, "04".repeat(32));
    assert_eq!(all[0].supplied_ms, 5);
    // An Artifact record from a node is stored like any other.
    let rec = Record {
        seq: 1,
        time_ms: 1,
        kind: RecordKind::Artifact {
            sha256: [3; 32],
            target: "aarch64-unknown-linux-gnu".into(),
            outcome: hedge_wire::ArtifactOutcome::Refused,
            message: "path \"../x\" has a `..` component".into(),
        },
    };
    s.ingest(&n("a"), &up("a", vec![rec], Some((1, 1))), 1)
        .unwrap();
    assert_eq!(s.count(&n("a")).unwrap(), 1);
}

#[test]
fn the_store_and_its_journal_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, store) = open();
    store.ingest(&n("a"), &batch("a", 1, 3), 1).unwrap();
    for f in ["master.db", "master.db-wal", "master.db-shm"] {
        let mode = std::fs::metadata(dir.path().join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
}

#[test]
fn a_node_over_its_byte_quota_is_refused_and_others_are_not() {
    let (_dir, store) = open();
    let first = store
        .ingest_within(&n("a"), &batch("a", 1, 10), 1, 100)
        .unwrap();
    assert_eq!(first.stored, 10);
    let used = store.stored_bytes(&n("a")).unwrap();
    assert!(used >= 100, "ten records take {used} bytes");
    match store.ingest_within(&n("a"), &batch("a", 11, 12), 2, 100) {
        Err(StoreError::QuotaExceeded { stored, limit, .. }) => {
            assert_eq!((stored, limit), (used, 100));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(store.count(&n("a")).unwrap(), 10, "nothing stored");
    assert_eq!(
        store.coverage(&n("a"), E1).unwrap().acked,
        10,
        "nothing acked"
    );
    // Another node has its own quota; duplicates add no bytes.
    store
        .ingest_within(&n("b"), &batch("b", 1, 2), 3, 100)
        .unwrap();
    store.ingest(&n("a"), &batch("a", 1, 10), 4).unwrap();
    assert_eq!(store.stored_bytes(&n("a")).unwrap(), used);
}

/// A node wiped and restarted with the same id: its seqs start at 1 again in a new epoch.
#[test]
fn a_new_life_is_stored_beside_the_old_one_and_acked_on_its_own() {
    let (_d, s) = open();
    let pi = n("pi-1");
    const E2: u64 = u64::MAX - 3;
    let old = s.ingest(&pi, &batch("pi-1", 1, 10), 5).unwrap();
    assert_eq!((old.stored, old.ack_upto, old.epoch), (10, 10, E1));
    // The new life's records 1..=4: other events under seqs the old life used.
    let new_records: Vec<Record> = (1..=4)
        .map(|q| state_rec(q, "db", InstanceStatus::Stopped, 0))
        .collect();
    let new = s
        .ingest(
            &pi,
            &up_in("pi-1", E2, new_records.clone(), Some((1, 4))),
            6,
        )
        .unwrap();
    assert_eq!(
        new,
        Ingested {
            stored: 4,
            duplicates: 0,
            repeats: 0,
            conflicts: 0,
            ack_upto: 4,
            epoch: E2,
        },
        "a new life's seqs are not the old life's duplicates"
    );
    assert_eq!(s.count(&pi).unwrap(), 14);
    assert_eq!(s.coverage(&pi, E1).unwrap().acked, 10);
    assert_eq!(s.coverage(&pi, E2).unwrap().acked, 4);
    let node = &s.nodes().unwrap()[0];
    assert_eq!(
        (node.records, node.lives, node.last_seq, node.acked_upto),
        (14, 2, 4, 4),
        "the fleet view follows the latest life"
    );
    assert_eq!((node.repeats, node.conflicts), (0, 0));
    // Every life's records, oldest life first.
    let all = s.records(&pi, 1, 100).unwrap();
    assert_eq!(all.len(), 14);
    assert_eq!(all[10..], new_records[..]);
    // A late resend of the old life changes nothing of the new one.
    let late = s.ingest(&pi, &batch("pi-1", 1, 10), 7).unwrap();
    assert_eq!((late.stored, late.ack_upto, late.epoch), (0, 10, E1));
    let node = &s.nodes().unwrap()[0];
    assert_eq!((node.last_seq, node.acked_upto), (4, 4));
}

#[test]
fn views_and_usage_hold_every_life() {
    let (_d, s) = open();
    let pi = n("pi-1");
    const E2: u64 = 0xe2;
    let life = |epoch, start: u64, seq_of_state: u64| {
        up_in(
            "pi-1",
            epoch,
            vec![
                usage_rec(1, "web", start, start + 60_000),
                incident_rec(2, 1, IncidentState::Open, Severity::Minor),
                state_rec(
                    seq_of_state,
                    "web",
                    if epoch == E1 {
                        InstanceStatus::Running
                    } else {
                        InstanceStatus::Backoff
                    },
                    0,
                ),
            ],
            Some((1, seq_of_state)),
        )
    };
    // The old life got far (state at seq 50); the new one is at seq 3.
    s.ingest(&pi, &life(E1, 0, 50), 1).unwrap();
    s.ingest(&pi, &life(E2, 60_000, 3), 2).unwrap();
    let usage = s.usage(0, 120_000).unwrap();
    assert_eq!(usage.len(), 2, "both lives' usage is billed: {usage:?}");
    let incidents = s.incidents().unwrap();
    assert_eq!(
        incidents.iter().map(|i| (i.life, i.id)).collect::<Vec<_>>(),
        vec![(1, 1), (2, 1)],
        "incident ids of two lives are two incidents"
    );
    let inst = s.instances().unwrap();
    assert_eq!(inst.len(), 1);
    assert_eq!(
        inst[0].status,
        Some(InstanceStatus::Backoff),
        "the latest life's state wins, though its seq is lower"
    );
}

#[test]
fn repeated_events_and_conflicting_deliveries_are_counted() {
    let (_d, s) = open();
    let pi = n("pi-1");
    const E2: u64 = 0xe2;
    let first = batch("pi-1", 1, 5);
    s.ingest(&pi, &first, 1).unwrap();
    // A restored store resends seqs 4 and 5 under its new epoch: the same events.
    let again = up_in("pi-1", E2, first.records[3..].to_vec(), Some((1, 5)));
    let r = s.ingest(&pi, &again, 2).unwrap();
    assert_eq!((r.stored, r.repeats, r.conflicts), (2, 2, 0));
    // A clone of the old life delivers seq 3 with other content: kept as first stored.
    let clone = up("pi-1", vec![usage_rec(3, "web", 0, 1000)], Some((3, 3)));
    let r = s.ingest(&pi, &clone, 3).unwrap();
    assert_eq!((r.stored, r.duplicates, r.conflicts), (0, 1, 1));
    assert_eq!(s.records(&pi, 3, 1).unwrap()[0], first.records[2]);
    // A plain resend is neither.
    let r = s.ingest(&pi, &first, 4).unwrap();
    assert_eq!(
        (r.stored, r.duplicates, r.repeats, r.conflicts),
        (0, 5, 0, 0)
    );
    let node = &s.nodes().unwrap()[0];
    assert_eq!((node.repeats, node.conflicts), (2, 1));
}

/// The schema before epochs (version 1), as an older master wrote it.
const SCHEMA_V1: &str = "
CREATE TABLE records (node TEXT NOT NULL, seq INTEGER NOT NULL, time_ms INTEGER NOT NULL,
    kind_tag TEXT NOT NULL, instance TEXT, span_from INTEGER, span_to INTEGER,
    kind BLOB NOT NULL, PRIMARY KEY (node, seq));
CREATE INDEX records_by_tag ON records (kind_tag, node, instance, seq);
CREATE INDEX records_by_span ON records (kind_tag, span_from);
CREATE TABLE coverage (node TEXT PRIMARY KEY, acked INTEGER NOT NULL, pending BLOB NOT NULL);
CREATE TABLE nodes (node TEXT PRIMARY KEY, first_seen_ms INTEGER, last_seen_ms INTEGER,
    board TEXT, arch TEXT, labels TEXT NOT NULL DEFAULT '{}', region TEXT, cpus INTEGER,
    mem_bytes INTEGER, capacity_instances INTEGER NOT NULL DEFAULT 0,
    records INTEGER NOT NULL DEFAULT 0, last_seq INTEGER NOT NULL DEFAULT 0,
    health_seq INTEGER, health BLOB, info_seq INTEGER);
PRAGMA user_version = 1;
";

#[test]
fn a_version_1_store_is_migrated_and_keeps_its_records_as_life_0() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.db");
    {
        let c = Connection::open(&path).unwrap();
        c.execute_batch(SCHEMA_V1).unwrap();
        for q in 1..=3u64 {
            let r = usage_rec(q, "web", q * 1000, q * 1000 + 1000);
            c.execute(
                "INSERT INTO records VALUES ('pi-1', ?1, ?2, 'usage', 'web', ?3, ?4, ?5)",
                params![
                    q as i64,
                    r.time_ms as i64,
                    (q * 1000) as i64,
                    (q * 1000 + 1000) as i64,
                    postcard::to_allocvec(&r.kind).unwrap()
                ],
            )
            .unwrap();
        }
        c.execute(
            "INSERT INTO coverage VALUES ('pi-1', 3, ?1)",
            [postcard::to_allocvec(&BTreeMap::<u64, u64>::new()).unwrap()],
        )
        .unwrap();
        c.execute(
            "INSERT INTO nodes (node, first_seen_ms, records, last_seq) VALUES ('pi-1', 1, 3, 3)",
            [],
        )
        .unwrap();
    }
    let s = MasterStore::open(&path).unwrap();
    let pi = n("pi-1");
    assert_eq!(s.count(&pi).unwrap(), 3);
    assert_eq!(s.coverage(&pi, 0).unwrap().acked, 3);
    assert_eq!(s.usage(0, 10_000).unwrap().len(), 3);
    // The upgraded node's first life under an epoch counts from its own seq 1.
    let r = s
        .ingest(
            &pi,
            &up("pi-1", vec![usage_rec(1, "web", 4000, 5000)], Some((1, 1))),
            2,
        )
        .unwrap();
    assert_eq!((r.stored, r.ack_upto), (1, 1));
    assert_eq!(s.usage(0, 10_000).unwrap().len(), 4);
    let node = &s.nodes().unwrap()[0];
    assert_eq!((node.records, node.lives), (4, 2));
    drop(s);
    // Reopening a migrated store is a no-op.
    let s = MasterStore::open(&path).unwrap();
    assert_eq!(s.count(&pi).unwrap(), 4);
}

#[test]
fn states_near_their_expiry_are_re_signed_with_the_same_instances() {
    use crate::sign::{needs_renewal, renew_expiring, DESIRED_TTL_MS};
    let (_d, s) = open();
    let key = MasterKey::generate();
    let (pi, pj) = (n("pi-1"), n("pi-2"));
    let t0 = 1_000_000;
    let with_web = |mut v: Vec<InstanceRequest>| {
        v.push(request("web", RequestedState::Started));
        v
    };
    let d1 = s
        .update_desired(&pi, with_web, |d| sign(&key, d, t0))
        .unwrap();
    assert_eq!(d1.expires_ms, t0 + DESIRED_TTL_MS);
    // Nothing is due while more than half the lifetime is left.
    assert!(!needs_renewal(d1.expires_ms, t0 + DESIRED_TTL_MS / 2 - 1));
    assert!(renew_expiring(&s, &key, t0 + DESIRED_TTL_MS / 2 - 1)
        .unwrap()
        .is_empty());
    // pi-2 was signed later: only pi-1 is due.
    let later = t0 + DESIRED_TTL_MS / 2 + 1;
    s.update_desired(&pj, with_web, |d| sign(&key, d, later))
        .unwrap();
    let renewed = renew_expiring(&s, &key, later).unwrap();
    assert_eq!(renewed, vec![(pi.clone(), 2)]);
    let d2 = s.desired(&pi).unwrap().unwrap();
    assert_eq!(d2.generation, 2);
    assert_eq!(d2.instances, d1.instances);
    assert_eq!(d2.expires_ms, later + DESIRED_TTL_MS);
    verify(&key.public(), &d2).unwrap();
    // A state without an expiry (stored before wire version 2) is due at once.
    assert!(needs_renewal(0, 1));
}

#[test]
fn a_desired_state_stored_before_wire_version_2_still_reads() {
    let (_d, s) = open();
    let pi = n("pi-1");
    let v1 = hedge_wire::DesiredStateV1 {
        node: pi.clone(),
        generation: 3,
        instances: vec![request("web", RequestedState::Started)],
        signature: heapless::Vec::new(),
    };
    s.conn()
        .execute(
            "INSERT INTO desired (node, generation, allocated, state) VALUES (?1, 3, 0, ?2)",
            rusqlite::params![pi.as_str(), postcard::to_allocvec(&v1).unwrap()],
        )
        .unwrap();
    let d = s.desired(&pi).unwrap().unwrap();
    assert_eq!((d.generation, d.expires_ms), (3, 0));
    assert_eq!(d.instances, v1.instances);
}
