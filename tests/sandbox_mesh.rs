//! `hedge sandbox --mesh chain --nodes 3`: a swarm on loopback, no root; only node-1
//! has an uplink. node-3's records cross node-2 and node-1 (the master shows the path);
//! `hedge sandbox link node-3 node-2 down` cuts the peer link (node-3's records wait),
//! `up` restores it; the summary finds every record at the master exactly once.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::sandbox_run::{json_of, SandboxRun};
use common::{hedge, run_ok, wait_for};
use serde_json::Value;

#[test]
fn a_mesh_sandbox_carries_the_far_node_through_the_chain_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sbx = dir.path().join("sbx");
    let run = SandboxRun::start(
        &["--mesh", "chain", "--duration", "90", "--nodes", "3"],
        &sbx,
    );
    let entry = |node: &str| -> Option<Value> {
        json_of(
            &["master", "nodes", "--json"],
            &sbx.join("master/master.toml"),
        )?
        .as_array()?
        .iter()
        .find(|n| n["node"] == node)
        .cloned()
    };
    let node3_status = || {
        json_of(
            &["node", "status", "--json"],
            &sbx.join("nodes/node-3/node.toml"),
        )
    };
    // node-3 has no uplink: its records reach the master through node-2 and node-1.
    let e = wait_for("node-3 at the master", Duration::from_secs(90), || {
        let e = entry("node-3")?;
        (e["records"].as_u64()? > 0).then_some(e)
    });
    assert_eq!(e["path"], "via node-1,node-2", "{e}");
    wait_for(
        "the table shows node-3's path",
        Duration::from_secs(30),
        || {
            run.printed(|l| l.starts_with("node-3") && l.contains("via node-1,node-2"))
                .then_some(())
        },
    );
    // A link that does not exist is refused; the real one is cut.
    let out = hedge()
        .args(["sandbox", "link", "node-3", "node-1", "down", "--dir"])
        .arg(&sbx)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    run_ok(
        hedge()
            .args(["sandbox", "link", "node-3", "node-2", "down", "--dir"])
            .arg(&sbx),
        "",
    );
    // node-3's records made meanwhile wait in its outbox, then reach the master.
    let depth = |v: &Value| v["outbox"]["depth"].as_u64();
    let waiting = wait_for("node-3's records waiting", Duration::from_secs(60), || {
        let s = node3_status()?;
        (depth(&s)? >= 5).then_some(s["outbox"]["next_seq"].as_u64()? - 1)
    });
    run_ok(
        hedge()
            .args(["sandbox", "link", "node-3", "node-2", "up", "--dir"])
            .arg(&sbx),
        "",
    );
    wait_for(
        "node-3's waiting records at the master",
        Duration::from_secs(60),
        || (entry("node-3")?["last_seq"].as_u64()? >= waiting).then_some(()),
    );
    let (out, stdout) = run.finish();
    assert!(
        out.status.success(),
        "sandbox failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("records lost 0, duplicated 0"), "{stdout}");
    for n in ["node-1", "node-2", "node-3"] {
        let e = entry(n).unwrap();
        assert_eq!(e["records"], e["last_seq"], "{e}");
        assert_eq!(
            (e["repeats"].as_u64(), e["conflicts"].as_u64()),
            (Some(0), Some(0))
        );
    }
    for l in stdout.lines().skip_while(|l| *l != "summary") {
        eprintln!("{l}");
    }
}
