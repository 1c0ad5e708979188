//! The master acts for the fleet (#15): a service whose promise can never pass escalates
//! to Critical on node A; the master moves it to node B (two-phase: A's copy goes once
//! B's runs), the incident's timeline holds the move, and the instance failing on B
//! too is not moved again within the hour (the refusal shows in B's incident).
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use common::fleet::Fleet;
use common::{alive, wait_for, Node};
use hedge_master::store::{FleetStore, MasterStore};
use hedge_wire::{InstanceStatus, Name, RecordKind, RequestedState, Severity};
use serde_json::Value;

/// A started fleet node that escalates after one repair per severity, known to the
/// master.
fn fast_node(fleet: &Fleet, id: &str) -> Node {
    let mut node = fleet.node(id);
    node.edit_config(|c| {
        c.replace("escalate_after = 3", "escalate_after = 1")
            .replace("health_interval_ms = 60000", "health_interval_ms = 1000")
    });
    node.start();
    wait_for(&format!("{id} registered"), Duration::from_secs(30), || {
        (fleet.held(id).0 > 0).then_some(())
    });
    node
}

fn store(fleet: &Fleet) -> MasterStore {
    MasterStore::open(&fleet.master_dir().join("master.db")).unwrap()
}

/// `(seq, time_ms, kind)` of every record of `node` the master stored.
fn records(fleet: &Fleet, node: &str) -> Vec<(u64, u64, RecordKind)> {
    store(fleet)
        .records(&Name::new(node).unwrap(), 0, 100_000)
        .unwrap()
        .into_iter()
        .map(|r| (r.seq, r.time_ms, r.kind))
        .collect()
}

/// The time of the first record of `node` matching `pred`.
fn first_time(fleet: &Fleet, node: &str, pred: impl Fn(&RecordKind) -> bool) -> Option<u64> {
    records(fleet, node)
        .into_iter()
        .find(|(_, _, k)| pred(k))
        .map(|(_, t, _)| t)
}

fn is_state(k: &RecordKind, status: InstanceStatus) -> bool {
    matches!(k, RecordKind::InstanceState { instance, status: s, .. }
        if instance.as_str() == "web" && *s == status)
}

/// The master's decisions in `node`'s incidents about web, from `hedge master
/// incidents --json`: (kind, reason).
fn decisions(fleet: &Fleet, node: &str) -> Vec<(String, String)> {
    let v: Value = serde_json::from_str(&fleet.master_ok(&["incidents", "--json"])).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter(|i| i["node"] == node && i["instance"] == "web")
        .flat_map(|i| i["timeline"].as_array().unwrap().clone())
        .filter_map(|t| {
            let d = t.get("decision")?;
            Some((
                d["kind"].as_str()?.to_owned(),
                d["reason"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

#[test]
#[allow(clippy::disallowed_methods)] // an end-to-end test: measures real time
fn a_service_that_never_passes_moves_once_and_its_old_copy_goes_after_the_new_one_runs() {
    let mut fleet = Fleet::new();
    let config = fleet.config();
    let text = std::fs::read_to_string(&config).unwrap();
    // The default budget: one move per instance per hour.
    assert!(text.contains("moves_per_instance_per_hour = 1"), "{text}");
    let tuned = text.replace("interval_ms = 10000", "interval_ms = 500");
    assert_ne!(tuned, text, "master.toml has no [act] interval_ms");
    std::fs::write(&config, tuned).unwrap();
    fleet.start_master();
    let a = fast_node(&fleet, "a");
    let b = fast_node(&fleet, "b");

    // A port nothing listens on: the promise can never pass, on any node.
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let file = fleet.dir.path().join("web.toml");
    std::fs::write(
        &file,
        format!(
            r#"
name = "web"
software = "exec:/bin/sleep"
args = ["100000"]
[[promises]]
name = "http"
kind = "tcp"
address = "127.0.0.1:{dead_port}"
interval_ms = 200
timeout_ms = 100
threshold = 2
"#
        ),
    )
    .unwrap();
    fleet.master_ok(&["request", "--file", file.to_str().unwrap(), "--node", "a"]);
    let pid_a = a.running_pid("web", None);
    let started = std::time::Instant::now();

    // It escalates on a, and runs on b.
    let pid_b = wait_for("web running on b", Duration::from_secs(60), || {
        let i = b.instance("web")?;
        (i.state == InstanceStatus::Running).then_some(i.pid?)
    });
    let seen_on_b = started.elapsed();
    // a's copy goes once b's runs: a destroys it.
    wait_for("web gone from a", Duration::from_secs(30), || {
        a.instance("web")
            .is_none_or(|i| i.state == InstanceStatus::Destroyed)
            .then_some(())
    });
    assert!(!alive(pid_a), "a's copy still runs");

    let critical_at = wait_for(
        "a's critical record stored",
        Duration::from_secs(10),
        || {
            first_time(&fleet, "a", |k| {
                matches!(k, RecordKind::Incident { severity: Severity::Critical, instance, .. }
                if instance.as_str() == "web")
            })
        },
    );
    let running_on_b = wait_for("b's running record stored", Duration::from_secs(10), || {
        first_time(&fleet, "b", |k| is_state(k, InstanceStatus::Running))
    });
    let destroyed_on_a = wait_for(
        "a's destroyed record stored",
        Duration::from_secs(10),
        || first_time(&fleet, "a", |k| is_state(k, InstanceStatus::Destroyed)),
    );
    assert!(
        destroyed_on_a >= running_on_b,
        "a destroyed its copy at {destroyed_on_a}, before b ran it at {running_on_b}"
    );
    println!(
        "escalation → running elsewhere: {} ms (a's Critical record at {critical_at} → b's \
         first Running record at {running_on_b}); a's copy destroyed {} ms after; the test \
         saw web run on b {} ms after it first ran on a",
        running_on_b.saturating_sub(critical_at),
        destroyed_on_a - running_on_b,
        seen_on_b.as_millis()
    );

    // The incident on a holds the move, then the handover.
    let on_a = wait_for(
        "a's timeline holds the handover",
        Duration::from_secs(10),
        || {
            let d = decisions(&fleet, "a");
            (d.len() >= 2).then_some(d)
        },
    );
    assert_eq!(on_a[0].0, "Move", "{on_a:?}");
    let line = &on_a[0].1;
    assert!(
        line.starts_with("moved web from a to b: critical incident ")
            && line.contains(", b fits arch=")
            && line.ends_with(" slots used"),
        "{on_a:?}"
    );
    assert_eq!(on_a[1].0, "Handover", "{on_a:?}");
    for (kind, line) in &on_a {
        println!("a's incident: {kind}: {line}");
    }

    // web fails on b too: Critical there, but the hour's move is spent.
    let refused = wait_for("b's refusal", Duration::from_secs(60), || {
        decisions(&fleet, "b")
            .into_iter()
            .find(|(k, _)| k == "Refused")
    });
    assert!(
        refused
            .1
            .ends_with("web moved 1 time(s) in the last hour (limit 1 per instance)"),
        "{refused:?}"
    );
    println!("b's incident: {}: {}", refused.0, refused.1);
    // Still on b, still the one copy the master requested; one move in the log.
    let s = store(&fleet);
    let moves = s
        .decisions(0)
        .unwrap()
        .into_iter()
        .filter(|d| d.kind == hedge_master::moves::DecisionKind::Move)
        .count();
    assert_eq!(moves, 1);
    let live: Vec<String> = ["a", "b"]
        .iter()
        .filter(|n| {
            s.desired(&Name::new(n).unwrap()).unwrap().is_some_and(|d| {
                d.instances
                    .iter()
                    .any(|i| i.name.as_str() == "web" && i.state != RequestedState::Destroyed)
            })
        })
        .map(|n| n.to_string())
        .collect();
    assert_eq!(live, vec!["b".to_string()]);
    // The signed states carry the fences: 1 for a's old copy (until pruned), 2 on b.
    let fence = |node: &str| {
        s.desired(&Name::new(node).unwrap())
            .unwrap()
            .and_then(|d| d.terms_of(&Name::new("web").unwrap()).map(|t| t.fence))
    };
    assert_eq!(fence("b"), Some(2));
    assert!(matches!(fence("a"), Some(1) | None), "{:?}", fence("a"));
    assert!(b
        .instance("web")
        .is_some_and(|i| i.requested == RequestedState::Started));
    let _ = pid_b;
}
