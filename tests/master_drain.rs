//! `hedge master drain`, `retire` and lost nodes: a drained node's instances run
//! elsewhere and its old copies are destroyed once the new ones run, nothing new is
//! placed on it, and a retired node is revoked once empty (retired is final); a lost
//! node's `move` instances run elsewhere under a new fence, its `wait` ones stay.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use common::fleet::Fleet;
use common::{alive, wait_for};
use hedge_wire::InstanceStatus;
use serde_json::Value;

/// `node`'s condition as `hedge master nodes --json` shows it.
fn condition(fleet: &Fleet, node: &str) -> String {
    let v: Value = serde_json::from_str(&fleet.master_ok(&["nodes", "--json"])).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == node)
        .map(|n| n["condition"].as_str().unwrap_or("?").to_owned())
        .unwrap_or_default()
}

fn sleeper<'a>(name: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    [
        &[
            "request",
            name,
            "--software",
            "exec:/bin/sleep",
            "--arg",
            "100000",
        ],
        extra,
    ]
    .concat()
}

#[test]
fn drain_empties_a_node_nothing_lands_on_it_and_retire_revokes_it() {
    let mut fleet = Fleet::new();
    // The master looks for draining and retiring nodes every 200 ms.
    let path = fleet.config();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains("check_every_ms = 5000"),
        "master.toml template changed"
    );
    std::fs::write(
        &path,
        text.replace("check_every_ms = 5000", "check_every_ms = 200"),
    )
    .unwrap();
    fleet.start_master();
    let a = fleet.started_node("a");
    let b = fleet.started_node("b");
    let names = ["db", "web"];
    let mut old = Vec::new();
    for name in names {
        fleet.master_ok(&sleeper(name, &["--node", "a"]));
        old.push(a.running_pid(name, None));
    }

    // An end-to-end test: the report's timing is a real duration.
    #[allow(clippy::disallowed_methods)]
    let started = std::time::Instant::now();
    let out = fleet.master_ok(&["drain", "a"]);
    assert!(out.contains("a is draining"), "{out}");
    for name in names {
        assert!(out.contains(&format!("moved {name} from a to b")), "{out}");
    }
    for name in names {
        b.running_pid(name, None);
    }
    // The old copies are destroyed once the new ones run (two-phase handover).
    for (name, pid) in names.iter().zip(&old) {
        wait_for(
            &format!("{name} gone from a"),
            Duration::from_secs(30),
            || {
                (a.instance(name)
                    .is_none_or(|i| i.state == InstanceStatus::Destroyed)
                    && !alive(*pid))
                .then_some(())
            },
        );
    }
    eprintln!(
        "drain → running on b and gone from a: {} ms",
        started.elapsed().as_millis()
    );
    assert_eq!(condition(&fleet, "a"), "draining");
    let decisions = fleet.master_ok(&["decisions"]);
    for name in names {
        assert!(
            decisions.contains(&format!(
                "moved {name} from a to b: node a draining, b fits"
            )),
            "{decisions}"
        );
    }

    // Nothing new is placed on a: allocation picks b, and naming a is refused.
    let out = fleet.master_ok(&sleeper("late", &[]));
    assert!(out.contains("late requested on b"), "{out}");
    let refused = fleet.master(&sleeper("late2", &["--node", "a"]));
    assert_eq!(refused.status.code(), Some(65));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("node a is draining"), "{err}");
    b.running_pid("late", None);

    // Retired: a is empty, so it is revoked at once; retired is final.
    let out = fleet.master_ok(&["retire", "a"]);
    assert!(out.contains("a revoked"), "{out}");
    wait_for("a retired", Duration::from_secs(30), || {
        (condition(&fleet, "a") == "retired").then_some(())
    });
    let revoked = std::fs::read_to_string(fleet.master_dir().join("revoked")).unwrap();
    assert!(revoked.lines().any(|l| l == "a"), "{revoked}");
    let undrain = fleet.master(&["undrain", "a"]);
    assert_eq!(undrain.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&undrain.stderr).contains("retired"));
    // b still runs everything.
    for name in ["db", "web", "late"] {
        b.running_pid(name, None);
    }
}

/// Sets `[failover]` in the fleet's master.toml.
fn failover(fleet: &Fleet, lost_after_ms: u64, margin_ms: u64, every_ms: u64) {
    let path = fleet.config();
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text
        .replace(
            &format!("lost_after_ms = {}", hedge_master::failover::LOST_AFTER_MS),
            &format!("lost_after_ms = {lost_after_ms}"),
        )
        .replace(
            &format!(
                "lease_margin_ms = {}",
                hedge_master::failover::LEASE_MARGIN_MS
            ),
            &format!("lease_margin_ms = {margin_ms}"),
        )
        .replace(
            "check_every_ms = 5000",
            &format!("check_every_ms = {every_ms}"),
        );
    assert!(text.contains(&format!("lost_after_ms = {lost_after_ms}")));
    std::fs::write(&path, text).unwrap();
}

/// `(fence, lease_ms)` of `instance` in `node`'s stored desired state.
fn terms(fleet: &Fleet, node: &str, instance: &str) -> Option<(u64, u32)> {
    use hedge_master::store::FleetStore;
    let store =
        hedge_master::store::MasterStore::open(&fleet.master_dir().join("master.db")).unwrap();
    let d = store
        .desired(&hedge_wire::Name::new(node).unwrap())
        .unwrap()?;
    d.terms_of(&hedge_wire::Name::new(instance).unwrap())
        .map(|t| (t.fence, t.lease_ms))
}

#[test]
fn a_lost_nodes_move_instances_run_elsewhere_and_its_wait_instances_stay() {
    let mut fleet = Fleet::new();
    failover(&fleet, 3_000, 1_000, 200);
    fleet.start_master();
    // Live nodes report their health every 300 ms: silence means gone.
    let talkative = |id: &str| {
        fleet.started_node_with(id, |c| {
            c.replace("health_interval_ms = 60000", "health_interval_ms = 300")
        })
    };
    let mut a = talkative("a");
    let b = talkative("b");
    fleet.master_ok(&sleeper("mv", &["--node", "a", "--on-lost", "move"]));
    fleet.master_ok(&sleeper("wt", &["--node", "a"]));
    a.running_pid("mv", None);
    a.running_pid("wt", None);
    // The signed terms carry the policy: a lease of lost_after - margin, or none.
    assert_eq!(terms(&fleet, "a", "mv"), Some((1, 2_000)));
    assert_eq!(terms(&fleet, "a", "wt"), Some((1, 0)));

    // a dies and stays away.
    a.kill9();
    #[allow(clippy::disallowed_methods)] // an end-to-end test: the report's timing
    let died = std::time::Instant::now();
    b.running_pid("mv", None);
    eprintln!(
        "node killed → mv running on b: {} ms (lost_after_ms 3000)",
        died.elapsed().as_millis()
    );
    assert_eq!(condition(&fleet, "a"), "lost");
    assert_eq!(terms(&fleet, "b", "mv"), Some((2, 2_000)), "a new fence");
    assert_eq!(terms(&fleet, "a", "mv"), Some((1, 2_000)));
    assert!(b.instance("wt").is_none(), "wait: wt stays on a");
    let log = fleet.master_log(0);
    assert!(log.contains("moved mv from a to b: node a lost"), "{log}");
    // Nothing new lands on the lost node.
    let out = fleet.master_ok(&sleeper("new", &[]));
    assert!(out.contains("new requested on b"), "{out}");

    // a comes back: it learns mv moved (destroyed in its state at once) and stops it;
    // wt, which waited, runs on.
    a.start();
    wait_for("mv gone from a", Duration::from_secs(30), || {
        a.instance("mv")
            .is_none_or(|i| i.state == InstanceStatus::Destroyed)
            .then_some(())
    });
    a.running_pid("wt", None);
    wait_for("a schedulable again", Duration::from_secs(30), || {
        (condition(&fleet, "a") == "schedulable").then_some(())
    });
    b.running_pid("mv", None);
}
