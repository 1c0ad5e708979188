#![allow(clippy::unwrap_used)]

use hedge_wire::{InstanceStatus, RequestedState, Severity};
use serde_json::{json, Value};

use super::*;

fn instance(name: &str, state: InstanceStatus) -> InstanceView {
    InstanceView {
        name: name.into(),
        state,
        requested: RequestedState::Started,
        software: "exec:/bin/sleep".into(),
        pid: Some(4242),
        restarts: 3,
        last_exit: Some("signal 9".into()),
        promises: vec![
            PromiseView {
                name: "port".into(),
                ok: Some(false),
                last_check: Some(1_700_000_000_000),
                failures_in_row: 2,
            },
            PromiseView {
                name: "fresh".into(),
                ok: None,
                last_check: None,
                failures_in_row: 0,
            },
        ],
        usage_cpu_ms: 1234,
        fence: Some(2),
        lease_held: Some(true),
        last_snapshot: None,
        held_over: false,
    }
}

fn incident(id: u64, state: hedge_wire::IncidentState) -> IncidentView {
    IncidentView {
        id,
        instance: "svc".into(),
        promise: "port".into(),
        state: state.into(),
        escalated: state == hedge_wire::IncidentState::Escalated,
        severity: Severity::Major,
        first_seen_ms: 10,
        last_seen_ms: 20,
        message: "connection refused".into(),
    }
}

/// A status with every optional part present.
fn full() -> NodeStatus {
    NodeStatus {
        node: "n1".into(),
        board: "rpi4b".into(),
        max_instances: 4,
        instances: vec![
            instance("a", InstanceStatus::Running),
            instance("b", InstanceStatus::Backoff),
        ],
        outbox: OutboxView {
            depth: 7,
            next_seq: 99,
            bytes: 4096,
            quota_bytes: 1 << 20,
        },
        incidents: vec![
            incident(1, hedge_wire::IncidentState::Escalated),
            incident(2, hedge_wire::IncidentState::Resolved),
        ],
        uplink: UplinkView {
            enabled: true,
            connected: true,
            epoch: 3,
            progress: Some(LinkProgress {
                acked_upto: 90,
                sent_upto: 95,
                deleted: 80,
                generation: Some(6),
            }),
        },
        desired: Some(DesiredView {
            generation: 6,
            expires_ms: 2_000,
            expired: false,
            trusted_now_ms: 1_500,
        }),
        software: SoftwareView {
            cache: "/var/lib/hedge/cache".into(),
            downloading: vec!["ab".repeat(32)],
            refused: vec![RefusedArtifact {
                sha256: "cd".repeat(32),
                reason: "absolute path".into(),
            }],
        },
        health: Some(HealthView {
            load1: 0.25,
            mem_total: 1 << 30,
            mem_available: 1 << 29,
            disk_free: 1 << 33,
            temp_milli_c: Some(48_500),
        }),
        counters: Counters {
            repairs: 2,
            api_refused: 1,
            ..Counters::default()
        },
        mesh: MeshView {
            enabled: true,
            connected: true,
            hops: Some(2),
            peers: vec![PeerView {
                node: "n2".into(),
                address: Some("10.0.0.2:7441".into()),
                link: "up".into(),
                hops: Some(1),
                custody_batches: 3,
                custody_bytes: 9000,
                taken_bytes: 12_000,
                shed: 1,
                shed_bytes: 3000,
                refused: 0,
            }],
            relay: RelayView {
                batches: 4,
                records: 400,
                bytes: 12_000,
                refused: 1,
                shed: 1,
                peer_params: 2,
            },
        },
    }
}

/// A status with every optional part absent (no link task, nothing applied yet).
fn bare() -> NodeStatus {
    NodeStatus {
        instances: vec![],
        incidents: vec![],
        uplink: UplinkView {
            enabled: false,
            connected: false,
            epoch: 1,
            progress: None,
        },
        desired: None,
        health: None,
        mesh: MeshView::default(),
        ..full()
    }
}

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    k.sort_unstable();
    k
}

#[test]
fn every_view_round_trips() {
    for status in [full(), bare()] {
        let text = serde_json::to_string(&Accepted::new(&status)).unwrap();
        let back: NodeStatus = serde_json::from_str(&text).unwrap();
        assert_eq!(back, status, "{text}");
    }
    // A daemon from before the mesh answers without `mesh`: read as off.
    let mut old = serde_json::to_value(full()).unwrap();
    old.as_object_mut().unwrap().remove("mesh");
    let back: NodeStatus = serde_json::from_value(old).unwrap();
    assert_eq!(back.mesh, MeshView::default());
    // A daemon from before the per-origin bytes: its PEERS rows read with zeros.
    let mut old = serde_json::to_value(full()).unwrap();
    let row = old["mesh"]["peers"][0].as_object_mut().unwrap();
    assert!(row.remove("taken_bytes").is_some() && row.remove("shed_bytes").is_some());
    let back: NodeStatus = serde_json::from_value(old).unwrap();
    let p = &back.mesh.peers[0];
    assert_eq!((p.custody_bytes, p.taken_bytes, p.shed_bytes), (9000, 0, 0));
    // A running link without a readable generation keeps its progress.
    let mut s = full();
    s.uplink.progress = s.uplink.progress.map(|p| LinkProgress {
        generation: None,
        ..p
    });
    let back: NodeStatus = serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
    assert_eq!(back.uplink, s.uplink);
    for state in [
        hedge_wire::IncidentState::Open,
        hedge_wire::IncidentState::Escalated,
        hedge_wire::IncidentState::Resolved,
    ] {
        let i = incident(9, state);
        let back: IncidentView = serde_json::from_value(serde_json::to_value(&i).unwrap()).unwrap();
        assert_eq!(back, i);
        let expected = if state == hedge_wire::IncidentState::Resolved {
            "resolved"
        } else {
            "open"
        };
        assert_eq!(word(&i.state), expected);
    }
    let page = OutboxPage {
        records: vec![hedge_wire::Record {
            seq: 5,
            time_ms: 6,
            kind: hedge_wire::RecordKind::NodeHealth {
                load1_milli: 1,
                mem_total: 2,
                mem_available: 3,
                disk_free: 4,
                temp_milli_c: None,
                uplink_up: true,
                outbox_depth: 7,
            },
        }],
    };
    let back: OutboxPage = serde_json::from_value(serde_json::to_value(&page).unwrap()).unwrap();
    assert_eq!(back, page);
}

/// The JSON of `hedge node status --json` as the daemon wrote it before the views
/// existed (hand-built `json!`): same keys, same values, same words.
#[test]
fn status_json_is_what_it_was() {
    let s = full();
    let i = &s.instances[0];
    let expected = json!({
        "ok": true,
        "node": "n1",
        "board": "rpi4b",
        "max_instances": 4,
        "instances": [
            {
                "name": "a", "state": "running", "requested": "started",
                "software": "exec:/bin/sleep", "pid": 4242, "restarts": 3,
                "last_exit": "signal 9",
                "promises": [
                    {"name": "port", "ok": false, "last_check": 1_700_000_000_000_u64, "failures_in_row": 2},
                    {"name": "fresh", "ok": null, "last_check": null, "failures_in_row": 0},
                ],
                "usage_cpu_ms": 1234,
                "fence": 2, "lease_held": true, "last_snapshot": null, "held_over": false,
            },
            {
                "name": "b", "state": "backoff", "requested": "started",
                "software": "exec:/bin/sleep", "pid": 4242, "restarts": 3,
                "last_exit": "signal 9",
                "promises": serde_json::to_value(&i.promises).unwrap(),
                "usage_cpu_ms": 1234,
                "fence": 2, "lease_held": true, "last_snapshot": null, "held_over": false,
            },
        ],
        "outbox": {"depth": 7, "next_seq": 99, "bytes": 4096, "quota_bytes": 1 << 20},
        "incidents": [
            {"id": 1, "instance": "svc", "promise": "port", "state": "open", "escalated": true,
             "severity": "major", "first_seen_ms": 10, "last_seen_ms": 20,
             "message": "connection refused"},
            {"id": 2, "instance": "svc", "promise": "port", "state": "resolved", "escalated": false,
             "severity": "major", "first_seen_ms": 10, "last_seen_ms": 20,
             "message": "connection refused"},
        ],
        "uplink": {"enabled": true, "connected": true, "epoch": 3, "acked_upto": 90,
                   "sent_upto": 95, "deleted": 80, "generation": 6},
        "desired": {"generation": 6, "expires_ms": 2000, "expired": false, "trusted_now_ms": 1500},
        "software": {"cache": "/var/lib/hedge/cache", "downloading": ["ab".repeat(32)],
                     "refused": [{"sha256": "cd".repeat(32), "reason": "absolute path"}]},
        "health": {"load1": 0.25, "mem_total": 1_u64 << 30, "mem_available": 1_u64 << 29,
                   "disk_free": 1_u64 << 33, "temp_milli_c": 48_500},
        "counters": serde_json::to_value(Counters { repairs: 2, api_refused: 1, ..Counters::default() }).unwrap(),
        "mesh": {"enabled": true, "connected": true, "hops": 2,
                 "peers": [{"node": "n2", "address": "10.0.0.2:7441", "link": "up", "hops": 1,
                            "custody_batches": 3, "custody_bytes": 9000, "taken_bytes": 12_000,
                            "shed": 1, "shed_bytes": 3000, "refused": 0}],
                 "relay": {"batches": 4, "records": 400, "bytes": 12_000, "refused": 1, "shed": 1,
                           "peer_params": 2}},
    });
    assert_eq!(Accepted::new(&s).to_value().unwrap(), expected);
    // Without a link task the uplink has three keys; unset parts are null, not absent.
    let v = Accepted::new(&bare()).to_value().unwrap();
    assert_eq!(
        v["uplink"],
        json!({"enabled": false, "connected": false, "epoch": 1})
    );
    assert_eq!((&v["desired"], &v["health"]), (&Value::Null, &Value::Null));
}

/// Every key of the status JSON, pinned: renaming a field (which would break
/// `scripts/bench*`, which read this JSON by key) fails here.
#[test]
fn status_keys_are_pinned() {
    let v = Accepted::new(&full()).to_value().unwrap();
    assert_eq!(
        keys(&v),
        [
            "board",
            "counters",
            "desired",
            "health",
            "incidents",
            "instances",
            "max_instances",
            "mesh",
            "node",
            "ok",
            "outbox",
            "software",
            "uplink"
        ]
    );
    assert_eq!(
        keys(&v["mesh"]),
        ["connected", "enabled", "hops", "peers", "relay"]
    );
    assert_eq!(
        keys(&v["mesh"]["peers"][0]),
        [
            "address",
            "custody_batches",
            "custody_bytes",
            "hops",
            "link",
            "node",
            "refused",
            "shed",
            "shed_bytes",
            "taken_bytes"
        ]
    );
    assert_eq!(
        keys(&v["mesh"]["relay"]),
        [
            "batches",
            "bytes",
            "peer_params",
            "records",
            "refused",
            "shed"
        ]
    );
    assert_eq!(
        keys(&v["instances"][0]),
        [
            "fence",
            "held_over",
            "last_exit",
            "last_snapshot",
            "lease_held",
            "name",
            "pid",
            "promises",
            "requested",
            "restarts",
            "software",
            "state",
            "usage_cpu_ms"
        ]
    );
    assert_eq!(
        keys(&v["instances"][0]["promises"][0]),
        ["failures_in_row", "last_check", "name", "ok"]
    );
    assert_eq!(
        keys(&v["incidents"][0]),
        [
            "escalated",
            "first_seen_ms",
            "id",
            "instance",
            "last_seen_ms",
            "message",
            "promise",
            "severity",
            "state"
        ]
    );
    assert_eq!(
        keys(&v["outbox"]),
        ["bytes", "depth", "next_seq", "quota_bytes"]
    );
    assert_eq!(
        keys(&v["uplink"]),
        [
            "acked_upto",
            "connected",
            "deleted",
            "enabled",
            "epoch",
            "generation",
            "sent_upto"
        ]
    );
    assert_eq!(
        keys(&v["desired"]),
        ["expired", "expires_ms", "generation", "trusted_now_ms"]
    );
    assert_eq!(keys(&v["software"]), ["cache", "downloading", "refused"]);
    assert_eq!(keys(&v["software"]["refused"][0]), ["reason", "sha256"]);
    assert_eq!(
        keys(&v["health"]),
        [
            "disk_free",
            "load1",
            "mem_available",
            "mem_total",
            "temp_milli_c"
        ]
    );
    assert_eq!(
        keys(&v["counters"]),
        [
            "api_refused",
            "artifact_fetch_errors",
            "artifact_hash_mismatch",
            "artifact_installed",
            "artifact_refused",
            "bad_connection_files",
            "command_checks_refused",
            "desired_expired",
            "desired_rejected",
            "disk_walks_incomplete",
            "leftovers_killed",
            "reconcile_skipped",
            "repairs",
            "shed_dropped_health",
            "shed_dropped_promise",
            "shed_merged_usage",
            "spawn_failures",
            "store_errors",
            "stragglers_killed"
        ]
    );
}

/// The words `status` (and the `instance state` log line) used before serde wrote them.
#[test]
fn enum_words_are_lower_case() {
    let states = [
        (InstanceStatus::Stopped, "stopped"),
        (InstanceStatus::Running, "running"),
        (InstanceStatus::Backoff, "backoff"),
        (InstanceStatus::Stopping, "stopping"),
        (InstanceStatus::Waiting, "waiting"),
        (InstanceStatus::Destroyed, "destroyed"),
    ];
    for (s, word) in states {
        assert_eq!(state_word(s), word);
        assert_eq!(super::word(&s), format!("{s:?}"), "the record wire's word");
        let v = serde_json::to_value(instance("x", s)).unwrap();
        assert_eq!(v["state"], word);
        let back: InstanceView = serde_json::from_value(v).unwrap();
        assert_eq!(back.state, s);
    }
    for (r, word) in [
        (RequestedState::Started, "started"),
        (RequestedState::Stopped, "stopped"),
        (RequestedState::Destroyed, "destroyed"),
    ] {
        let v = serde_json::to_value(InstanceView {
            requested: r,
            ..instance("x", InstanceStatus::Stopped)
        })
        .unwrap();
        assert_eq!(v["requested"], word);
        assert_eq!(requested_word(r), word);
    }
    for (sev, word) in [
        (Severity::Minor, "minor"),
        (Severity::Major, "major"),
        (Severity::Critical, "critical"),
    ] {
        let v = serde_json::to_value(IncidentView {
            severity: sev,
            ..incident(1, hedge_wire::IncidentState::Open)
        })
        .unwrap();
        assert_eq!(v["severity"], word);
        assert_eq!(severity_word(sev), word);
    }
    // The record wire (outbox, master) keeps its own spelling.
    assert_eq!(
        serde_json::to_value(InstanceStatus::Running).unwrap(),
        "Running"
    );
}

fn every_refusal() -> Vec<Refusal> {
    let name = || "web".to_string();
    vec![
        Refusal::BadName {
            name: "../x".into(),
            reason: "bad".into(),
        },
        Refusal::NotFound { name: name() },
        Refusal::NoLocalInstance { name: name() },
        Refusal::OwnedByMaster { name: name() },
        Refusal::NodeFull {
            max: 4,
            board: "rpi3b".into(),
        },
        Refusal::DesiredUnreadable {
            reason: "corrupt".into(),
        },
        Refusal::OutOfBounds {
            reason: "too many files".into(),
        },
        Refusal::Store {
            reason: "disk full".into(),
        },
        Refusal::Malformed {
            reason: "eof".into(),
        },
        Refusal::TooLong,
        Refusal::Unreadable {
            reason: "reset".into(),
        },
        Refusal::Unanswerable {
            reason: "path".into(),
        },
        Refusal::ShuttingDown,
        Refusal::Partition { uid: 20000 },
        Refusal::NotAllowed {
            uid: 1000,
            gid: 100,
        },
        Refusal::NoCredentials,
        Refusal::Busy,
    ]
}

#[test]
fn refusals_round_trip_with_their_words() {
    for r in every_refusal() {
        let v = serde_json::to_value(Refused::from(r.clone())).unwrap();
        assert_eq!(v["ok"], false, "{v}");
        assert_eq!(v["error"], r.to_string(), "{v}");
        assert_eq!(v.get("refused").is_some(), r.of_peer(), "{v}");
        let back: Refused = serde_json::from_value(v).unwrap();
        assert_eq!(back.refusal, r);
    }
}

#[test]
fn refusal_wire_form() {
    let v = |r: Refusal| serde_json::to_value(Refused::from(r)).unwrap();
    assert_eq!(
        v(Refusal::OwnedByMaster { name: "web".into() }),
        json!({
            "ok": false,
            "error": "instance \"web\" is owned by the master; change it there",
            "refusal": {"kind": "owned_by_master", "name": "web"},
        })
    );
    assert_eq!(
        v(Refusal::NodeFull {
            max: 4,
            board: "rpi3b".into()
        }),
        json!({
            "ok": false,
            "error": "node is full: 4 instances (node.max_instances, board rpi3b)",
            "refusal": {"kind": "node_full", "max": 4, "board": "rpi3b"},
        })
    );
    assert_eq!(
        v(Refusal::NoLocalInstance { name: "x".into() }),
        json!({
            "ok": false,
            "error": "no local instance named \"x\"",
            "refusal": {"kind": "no_local_instance", "name": "x"},
        })
    );
    assert_eq!(
        v(Refusal::NotFound { name: "x".into() })["error"],
        "no instance named \"x\""
    );
    assert_eq!(
        v(Refusal::Partition { uid: 20000 }),
        json!({
            "ok": false,
            "refused": true,
            "error": "uid 20000 is a partition uid; instances may not use the local API",
            "refusal": {"kind": "partition", "uid": 20000},
        })
    );
    assert_eq!(
        v(Refusal::Busy),
        json!({
            "ok": false,
            "refused": true,
            "error": "too many local API connections; try again",
            "refusal": {"kind": "busy"},
        })
    );
    assert_eq!(
        v(Refusal::Malformed {
            reason: "eof".into()
        })["error"],
        "malformed request: eof"
    );
}

#[test]
fn answers_are_flat_objects_beside_ok() {
    let a = Answer::Requested(Requested { name: "web".into() });
    assert_eq!(
        Accepted::new(&a).to_value().unwrap(),
        json!({"ok": true, "name": "web"})
    );
    let a = Answer::Metrics(MetricsText {
        text: "x 1\n".into(),
    });
    assert_eq!(
        Accepted::new(&a).to_value().unwrap(),
        json!({"ok": true, "text": "x 1\n"})
    );
    let a = Answer::LogPath(LogPath {
        path: "/p/log".into(),
    });
    let back: LogPath = serde_json::from_value(Accepted::new(&a).to_value().unwrap()).unwrap();
    assert_eq!(back.path, std::path::Path::new("/p/log"));
    // The request side keeps its wire form too.
    let r: ApiRequest = serde_json::from_str(r#"{"op":"outbox"}"#).unwrap();
    assert!(matches!(
        r,
        ApiRequest::Outbox {
            from: 0,
            limit: 100
        }
    ));
    assert_eq!(
        serde_json::to_value(ApiRequest::Stop { name: "a".into() }).unwrap(),
        json!({"op": "stop", "name": "a"})
    );
}
