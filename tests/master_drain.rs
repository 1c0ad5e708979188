//! `hedge master drain`, `retire`: a drained node's instances run elsewhere and its old
//! copies are destroyed once the new ones run, nothing new is placed on it, and a
//! retired node is revoked once empty (retired is final).
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
