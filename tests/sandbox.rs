//! `hedge sandbox --duration 20`: a whole fleet on this machine, one node's link cut and
//! restored mid-run, and a clean summary: every record at the master exactly once.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{hedge, wait_for};

#[test]
fn sandbox_runs_a_fleet_survives_a_cut_link_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sbx = dir.path().join("sbx");
    let child = hedge()
        .args(["sandbox", "--duration", "20", "--nodes", "3", "--dir"])
        .arg(&sbx)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once the fleet is up, cut node-1's link for a while.
    wait_for("sandbox nodes", Duration::from_secs(60), || {
        sbx.join("nodes/node-1/node.log").exists().then_some(())
    });
    std::thread::sleep(Duration::from_secs(5));
    let out = hedge()
        .args(["sandbox", "link", "node-1", "down", "--dir"])
        .arg(&sbx)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_secs(5));
    let out = hedge()
        .args(["sandbox", "link", "node-1", "up", "--dir"])
        .arg(&sbx)
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "sandbox failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("records lost 0, duplicated 0"), "{stdout}");
    assert!(
        stdout.contains("clean: every record reached the master exactly once"),
        "{stdout}"
    );
    // The cut was seen, and self-repair happened (the flaky service hangs after 12 s).
    assert!(stdout.contains("cut"), "link cut not shown:\n{stdout}");
    let seen: u64 = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("incidents seen "))
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap();
    assert!(seen >= 1, "no incident in the run:\n{stdout}");
    // Unknown nodes and non-sandbox directories are refused.
    let out = hedge()
        .args(["sandbox", "link", "node-9", "down", "--dir"])
        .arg(&sbx)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let out = hedge()
        .args(["sandbox", "--duration", "1", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
