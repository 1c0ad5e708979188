//! The fleet registry, what allocation trusts, and supplied artifacts.

use super::*;
use crate::store::NodeInfo;

pub(crate) fn registry_health_and_allocation_counts<H: Harness>(h: &H) {
    let s = &h.open();
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

pub(crate) fn node_info_records_fill_the_registry<H: Harness>(h: &H) {
    let s = &h.open();
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

pub(crate) fn allocation_trusts_assigned_labels_and_region_not_reported_ones<H: Harness>(h: &H) {
    let s = &h.open();
    use crate::alloc::{pick, AllocError, Placement};
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

pub(crate) fn supplied_artifacts_make_releases<H: Harness>(h: &H) {
    let s = &h.open();
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
