//! `hedge master enroll --label/--region/--max-instances` and `hedge master label`: the
//! operator's placement facts are stored and shown beside what a node reports; the
//! master's directory and store are private (0700/0600). `hedge master request`: a state
//! that could not be delivered is refused, destroyed instances leave the desired state
//! once reported, a request on another node moves the instance, and concurrent
//! requests never over-fill a node.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::fleet::{master_ok_at as master, Fleet};
use common::{hedge, run_ok, wait_for};
use hedge_wire::InstanceStatus;
use serde_json::Value;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn operator_labels_and_region_are_stored_at_enrollment_and_by_label() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("m");
    run_ok(hedge().args(["master", "init", "--dir"]).arg(&m), "");
    let config = m.join("master.toml");
    // Enrollment goes through the master's HTTPS endpoint.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(
            "# listen = \"127.0.0.1:8443\"",
            "listen = \"127.0.0.1:8443\"",
        ),
    )
    .unwrap();
    let bundle = tmp.path().join("a.bundle");
    master(
        &config,
        &[
            "enroll",
            "a",
            "--out",
            bundle.to_str().unwrap(),
            "--label",
            "gpu=yes",
            "--region",
            "eu",
            "--max-instances",
            "3",
        ],
    );
    master(&config, &["label", "b", "site=lab", "--region", "us"]);
    master(&config, &["label", "a", "site=hq", "--unset", "gpu"]);

    let nodes: Value = serde_json::from_str(&master(&config, &["nodes", "--json"])).unwrap();
    let find = |id: &str| {
        nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node"] == id)
            .unwrap_or_else(|| panic!("{id} missing from {nodes}"))
            .clone()
    };
    let a = find("a");
    assert_eq!(a["labels"], serde_json::json!({"site": "hq"}), "{a}");
    assert_eq!(a["region"], "eu");
    assert_eq!(a["reported_labels"], serde_json::json!({}));
    let b = find("b");
    assert_eq!(b["labels"], serde_json::json!({"site": "lab"}), "{b}");
    assert_eq!(b["region"], "us");

    // A label without '=' is a usage error (64).
    let out = hedge()
        .args(["master", "label", "a", "oops", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));

    assert_eq!(mode(&m), 0o700, "the master directory");
    assert_eq!(mode(&m.join("master.db")), 0o600, "the store");
}

/// `hedge master request ARGS`: (exit code, stdout, stderr).
fn request(fleet: &Fleet, args: &[&str]) -> (Option<i32>, String, String) {
    let out = fleet.master(&[&["request"], args].concat());
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The instances of `node`'s stored desired state: (name, requested state).
fn desired(fleet: &Fleet, node: &str) -> Vec<(String, hedge_wire::RequestedState)> {
    use hedge_master::store::FleetStore;
    let store =
        hedge_master::store::MasterStore::open(&fleet.master_dir().join("master.db")).unwrap();
    store
        .desired(&hedge_wire::Name::new(node).unwrap())
        .unwrap()
        .map(|d| {
            d.instances
                .into_iter()
                .map(|i| (i.name.to_string(), i.state))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the master has stored `node`'s report that `name` is `status`.
fn wait_reported(fleet: &Fleet, node: &str, name: &str, status: &str) {
    wait_for(
        &format!("{node}/{name} reported {status}"),
        Duration::from_secs(30),
        || {
            let v: Value = serde_json::from_str(&fleet.master_ok(&["instances", "--json"])).ok()?;
            v.as_array()?
                .iter()
                .any(|i| i["node"] == node && i["name"] == name && i["status"] == status)
                .then_some(())
        },
    )
}

#[test]
fn requests_that_could_not_be_delivered_are_refused_and_earlier_ones_still_run() {
    let mut fleet = Fleet::new();
    fleet.start_master();
    let node = fleet.started_node("big");
    // Six instances with a 15 KiB config file each: four fit in one 64 KiB frame.
    let mut codes = Vec::new();
    for i in 0..6 {
        let file = fleet.dir.path().join(format!("big{i}.toml"));
        std::fs::write(
            &file,
            format!(
                "name = \"big{i}\"\nsoftware = \"exec:/bin/sleep\"\nargs = [\"100000\"]\n\
                 [[config_files]]\npath = \"etc/big.conf\"\ntemplate = \"{}\"\n",
                "x".repeat(15 * 1024)
            ),
        )
        .unwrap();
        let (code, _, err) = request(&fleet, &["--file", file.to_str().unwrap(), "--node", "big"]);
        if i >= 4 {
            assert_eq!(code, Some(65), "request {i} accepted: {err}");
            assert!(
                err.contains("frame limit of 65536 bytes") && err.contains("would be"),
                "{err}"
            );
            let len: usize = err
                .split("would be ")
                .nth(1)
                .and_then(|s| s.split(' ').next())
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no size in {err}"));
            assert!(len > 65536, "{err}");
        }
        codes.push(code);
    }
    assert_eq!(codes[..4], [Some(0); 4], "the first four fit");
    // The refused ones left nothing behind: the earlier ones run, at generation 4.
    for i in 0..4 {
        node.running_pid(&format!("big{i}"), None);
    }
    assert_eq!(desired(&fleet, "big").len(), 4);
    assert_eq!(
        node.status().uplink.progress.and_then(|p| p.generation),
        Some(4)
    );
    // Later generations are delivered.
    let (code, _, err) = request(
        &fleet,
        &[
            "small",
            "--software",
            "exec:/bin/sleep",
            "--arg",
            "100000",
            "--node",
            "big",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    node.running_pid("small", None);
    assert_eq!(
        node.status().uplink.progress.and_then(|p| p.generation),
        Some(5)
    );
    assert!(node.instance("big4").is_none() && node.instance("big5").is_none());
}

#[test]
fn destroyed_instances_leave_the_desired_state_once_the_node_reported_them() {
    let mut fleet = Fleet::new();
    fleet.start_master();
    let mut node = fleet.started_node("churn");
    let sleep = [
        "--software",
        "exec:/bin/sleep",
        "--arg",
        "100000",
        "--node",
        "churn",
    ];
    let destroy = ["--software", "exec:/bin/sleep", "--state", "destroyed"];
    for i in 0..6 {
        let name = format!("job{i}");
        fleet.master_ok(&[&["request", name.as_str()], &sleep[..]].concat());
        node.running_pid(&name, None);
        fleet.master_ok(&[&["request", name.as_str()], &destroy[..]].concat());
        wait_reported(&fleet, "churn", &name, "Destroyed");
        // The next write prunes what the node reported destroyed.
        assert!(
            desired(&fleet, "churn").len() <= 2,
            "{:?}",
            desired(&fleet, "churn")
        );
    }
    fleet.master_ok(&[&["request", "keep"], &sleep[..]].concat());
    node.running_pid("keep", None);
    assert_eq!(
        desired(&fleet, "churn"),
        vec![("keep".into(), hedge_wire::RequestedState::Started)]
    );
    // Not before the node reported it: destroyed while the node is down, kept through
    // a later write.
    node.kill9();
    fleet.master_ok(&[&["request", "keep"], &destroy[..]].concat());
    fleet.master_ok(&[&["request", "other"], &sleep[..]].concat());
    assert!(
        desired(&fleet, "churn").contains(&("keep".into(), hedge_wire::RequestedState::Destroyed)),
        "{:?}",
        desired(&fleet, "churn")
    );
    node.start();
    node.running_pid("other", None);
    wait_reported(&fleet, "churn", "keep", "Destroyed");
    assert!(node
        .instance("keep")
        .is_none_or(|i| i.state == InstanceStatus::Destroyed));
    fleet.master_ok(&[&["request", "other"], &sleep[..]].concat());
    assert_eq!(
        desired(&fleet, "churn"),
        vec![("other".into(), hedge_wire::RequestedState::Started)]
    );
    // The view still shows the pruned ones as the master's, destroyed.
    let v: Value = serde_json::from_str(&fleet.master_ok(&["instances", "--json"])).unwrap();
    let keep = v
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "keep")
        .unwrap();
    assert_eq!(
        (&keep["owner"], &keep["requested"], &keep["status"]),
        (
            &Value::from("Master"),
            &Value::from("Destroyed"),
            &Value::from("Destroyed")
        )
    );
}

#[test]
fn requesting_an_instance_on_another_node_moves_it_there() {
    let mut fleet = Fleet::new();
    fleet.start_master();
    let a = fleet.started_node("a");
    let b = fleet.started_node("b");
    let on = |node: &'static str| {
        [
            "mover",
            "--software",
            "exec:/bin/sleep",
            "--arg",
            "100000",
            "--node",
            node,
        ]
    };
    fleet.master_ok(&[&["request"], &on("a")[..]].concat());
    let pid_a = a.running_pid("mover", None);
    let out = fleet.master_ok(&[&["request"], &on("b")[..]].concat());
    assert!(out.contains("mover destroyed on a"), "{out}");
    b.running_pid("mover", None);
    wait_for("mover gone from a", Duration::from_secs(30), || {
        a.instance("mover")
            .is_none_or(|i| i.state == InstanceStatus::Destroyed)
            .then_some(())
    });
    assert!(!common::alive(pid_a), "a's copy still runs");
    // Re-requesting without --node keeps it on b and leaves a alone.
    let out = fleet.master_ok(&[
        "request",
        "mover",
        "--software",
        "exec:/bin/sleep",
        "--arg",
        "100001",
    ]);
    assert!(
        out.contains("requested on b") && !out.contains("destroyed on"),
        "{out}"
    );
}

#[test]
fn two_masters_placing_at_once_never_overfill_a_node() {
    let mut fleet = Fleet::new();
    fleet.start_master();
    let node = fleet.started_node("solo");
    fleet.master_ok(&["label", "solo", "--max-instances", "1"]);
    wait_for("solo's capacity known", Duration::from_secs(30), || {
        let v: Value = serde_json::from_str(&fleet.master_ok(&["nodes", "--json"])).ok()?;
        (v[0]["capacity_instances"] == 1).then_some(())
    });
    // Sixteen request processes at once, none naming the node: one fits.
    let children: Vec<_> = (0..16)
        .map(|i| {
            hedge()
                .args(["master", "request", &format!("w{i}")])
                .args([
                    "--software",
                    "exec:/bin/sleep",
                    "--arg",
                    "100000",
                    "--config",
                ])
                .arg(fleet.config())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let ok = outs.iter().filter(|o| o.status.success()).count();
    assert_eq!(ok, 1, "{outs:?}");
    for o in outs.iter().filter(|o| !o.status.success()) {
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(65), "{err}");
        assert!(err.contains("full (1/1 instances)"), "{err}");
    }
    let placed = desired(&fleet, "solo");
    assert_eq!(placed.len(), 1, "{placed:?}");
    node.running_pid(&placed[0].0, None);
}
