//! `hedge master enroll --label/--region/--max-instances` and `hedge master label`: the
//! operator's placement facts are stored and shown beside what a node reports; the
//! master's directory and store are private (0700/0600).
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::hedge;
use serde_json::Value;

fn master(config: &Path, args: &[&str]) -> String {
    let out = hedge()
        .arg("master")
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "hedge master {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn operator_labels_and_region_are_stored_at_enrollment_and_by_label() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("m");
    let out = hedge()
        .args(["master", "init", "--dir"])
        .arg(&m)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = m.join("master.toml");
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
