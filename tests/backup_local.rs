//! A node's own backups, with real node processes: snapshots on a policy's schedule and
//! on request, consistency as the node could make it (frozen where it has cgroup v2,
//! a policy command's, else live), an offline local restore byte for byte while other
//! instances keep running, and a catalog that survives a SIGKILLed daemon.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{wait_for, Node};
use hedge_runtime::local_api::{BackupList, SnapshotView};
use hedge_wire::Consistency;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

/// Requests `name` from a request file: `script` run by `sh -c` in the partition,
/// then a long sleep; `backup` is the `[backup]` table's body.
fn request(node: &Node, name: &str, script: &str, backup: &str) {
    let file = node.dir.path().join(format!("{name}.toml"));
    let text = format!(
        "name = \"{name}\"\nsoftware = \"exec:/bin/sh\"\nargs = [\"-c\", {script:?}]\n{backup}"
    );
    std::fs::write(&file, text).unwrap();
    node.ok(&["request", "--file", file.to_str().unwrap()]);
}

/// Runs `hedge node ARGS` (a snapshot or a restore, whose answer may take long) and
/// waits for it at most [`WAIT`]: a daemon that never answers fails the test, not hangs it.
fn cli_within(node: &Node, args: &[&str]) -> std::process::Output {
    let mut child = common::hedge()
        .arg("node")
        .args(args)
        .arg("--config")
        .arg(node.config())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&format!("hedge node {args:?}"), WAIT, || {
        child.try_wait().unwrap()
    });
    child.wait_with_output().unwrap()
}

/// [`cli_within`], which must succeed; its stdout.
fn ok_within(node: &Node, args: &[&str]) -> String {
    let out = cli_within(node, args);
    common::assert_success(&out, &format!("hedge node {args:?} failed: "));
    String::from_utf8(out.stdout).unwrap()
}

fn backups(node: &Node, name: Option<&str>) -> Vec<SnapshotView> {
    let mut args = vec!["backups", "--json"];
    args.extend(name);
    let out = node.ok(&args);
    let list: BackupList = serde_json::from_str(&out).unwrap();
    list.snapshots
}

/// The `Backup` records in the outbox whose event is `kind` (`Taken`, `Failed`, …).
fn backup_records(node: &Node, instance: &str, kind: &str) -> Vec<Value> {
    node.outbox()
        .into_iter()
        .filter_map(|r| {
            let b = r["kind"].get("Backup")?.clone();
            let event = &b["event"];
            (b["instance"] == instance && (event.get(kind).is_some() || *event == kind))
                .then_some(b)
        })
        .collect()
}

/// The instance's cgroup v2 group when this node put it in one that can be frozen:
/// then a snapshot without a command must be `Frozen`, else `Live`.
fn freezable_group(node: &Node, instance: &str) -> Option<PathBuf> {
    // The group the daemon says it made, and the kernel's freezer in it (Linux 5.2+).
    let group = node
        .daemon_log()
        .lines()
        .find(|l| l.contains("instances run in cgroup v2 groups"))?
        .split("group=")
        .nth(1)?
        .split_whitespace()
        .next()?
        .to_owned();
    let dir = Path::new(&group).join(instance);
    dir.join("cgroup.freeze").exists().then_some(dir)
}

fn sha(path: &Path) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(std::fs::read(path).unwrap()).to_vec()
}

#[test]
fn snapshots_on_schedule_and_on_request_consistent_as_the_node_can() {
    let mut node = Node::init();
    node.start();
    request(
        &node,
        "app",
        "mkdir -p srv && echo hello > srv/data && exec sleep 1000",
        "[backup]\ninterval = 1\nretain = 2\n",
    );
    node.running_pid("app", None);
    // On schedule: at least three snapshots, one per second; pruned to retain = 2.
    wait_for("three scheduled snapshots", WAIT, || {
        (backup_records(&node, "app", "Taken").len() >= 3).then_some(())
    });
    let listed = backups(&node, Some("app"));
    assert!(
        !listed.is_empty() && listed.len() <= 3,
        "retain 2 (one more while a snapshot is being pruned): {listed:?}"
    );
    let group = freezable_group(&node, "app");
    let expected = if group.is_some() {
        Consistency::Frozen
    } else {
        Consistency::Live
    };
    eprintln!("this node can make snapshots {expected:?}");
    assert!(
        listed.iter().all(|s| s.consistency == expected),
        "{expected:?} expected: {listed:?}"
    );
    // On request: prints the id, which the list then holds.
    let id = ok_within(&node, &["backup", "app"]).trim().to_owned();
    assert_eq!(id.len(), 16, "{id:?}");
    let all = backups(&node, None);
    let s = all.iter().find(|s| s.id == id).expect("the new snapshot");
    assert_eq!((s.instance.as_str(), s.consistency), ("app", expected));
    assert!(s.bytes >= 6, "srv/data is in it: {s:?}");
    assert!(!s.uploaded, "no master here");
    // Status shows the newest snapshot per instance.
    let last = node.instance("app").unwrap().last_snapshot.unwrap();
    assert!(!last.uploaded);
    // The instance was thawed after each snapshot and ran all along.
    if let Some(g) = group {
        // (A scheduled snapshot may hold it frozen for a moment meanwhile.)
        wait_for("the group thawed", WAIT, || {
            let events = std::fs::read_to_string(g.join("cgroup.events")).unwrap();
            events.contains("frozen 0").then_some(())
        });
    }
    assert_eq!(node.instance("app").unwrap().restarts, 0);
}

#[test]
fn a_policy_command_runs_first_and_makes_the_snapshot_command_consistent() {
    let mut node = Node::init();
    node.start();
    request(
        &node,
        "db",
        "mkdir -p srv && echo 'rows 1 2 3' > srv/db && exec sleep 1000",
        "[backup]\ninterval = \"1h\"\nretain = 4\ncommand = [\"sh\", \"-c\", \"cp srv/db srv/db.dump\"]\n",
    );
    node.running_pid("db", None);
    // Due at once (never snapshotted): the scheduled one, then one asked for.
    wait_for("the first snapshot", WAIT, || {
        (!backup_records(&node, "db", "Taken").is_empty()).then_some(())
    });
    let id = ok_within(&node, &["backup", "db"]).trim().to_owned();
    let s = backups(&node, Some("db"))
        .into_iter()
        .find(|s| s.id == id)
        .unwrap();
    assert_eq!(s.consistency, Consistency::Command);
    // The command ran in the partition, as the instance would.
    let dump = node.partition("db").join("srv/db.dump");
    assert_eq!(std::fs::read_to_string(&dump).unwrap(), "rows 1 2 3\n");
    // A failing command fails the backup, says why, and is recorded.
    request(
        &node,
        "bad",
        "mkdir -p srv && exec sleep 1000",
        "[backup]\ninterval = \"1h\"\ncommand = [\"sh\", \"-c\", \"exit 7\"]\n",
    );
    node.running_pid("bad", None);
    let out = cli_within(&node, &["backup", "bad"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exit status: 7"), "{err}");
    let failed = backup_records(&node, "bad", "Failed");
    assert!(!failed.is_empty());
    assert!(
        failed[0]["message"]
            .as_str()
            .unwrap()
            .contains("exit status: 7"),
        "{failed:?}"
    );
}

#[test]
fn offline_local_restore_is_byte_for_byte_and_survives_a_sigkilled_daemon() {
    let mut node = Node::init();
    node.start();
    node.request_sleep("other", "1000", &[]);
    request(
        &node,
        "data",
        "mkdir -p srv/sub && [ -f srv/blob ] || head -c 300000 /dev/urandom > srv/blob; \
         echo small > srv/sub/note; exec sleep 1000",
        "[backup]\ninterval = \"1h\"\nretain = 5\n",
    );
    let other = node.running_pid("other", None);
    let before = node.running_pid("data", None);
    let blob = node.partition("data").join("srv/blob");
    wait_for("the instance's data", WAIT, || blob.exists().then_some(()));
    wait_for("the first snapshot", WAIT, || {
        (!backup_records(&node, "data", "Taken").is_empty()).then_some(())
    });
    let id = ok_within(&node, &["backup", "data"]).trim().to_owned();
    let original = sha(&blob);

    // The daemon dies right after: the snapshot is still in the catalog.
    node.kill9();
    node.start();
    let listed = backups(&node, Some("data"));
    assert!(listed.iter().any(|s| s.id == id), "{listed:?}");
    let other = node.running_pid("other", Some(other));
    let before = node.running_pid("data", Some(before));

    // The instance's data changes (the test writes as root into its partition).
    std::fs::write(&blob, b"damaged").unwrap();
    std::fs::remove_file(node.partition("data").join("srv/sub/note")).unwrap();
    assert_ne!(sha(&blob), original);

    // A snapshot that is not in this node's catalog is refused, nothing stopped.
    let out = cli_within(
        &node,
        &["restore", "data", "--snapshot", "0123456789abcdef"],
    );
    assert_eq!(out.status.code(), Some(65));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no local snapshot"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(node.instance("data").unwrap().pid, Some(before));

    // The restore: stopped, rebuilt, started again; the other instance never stopped.
    let out = ok_within(&node, &["restore", "data", "--snapshot", &id]);
    assert!(out.contains(&format!("restored data from {id}")), "{out}");
    assert_eq!(sha(&blob), original);
    assert_eq!(
        std::fs::read_to_string(node.partition("data").join("srv/sub/note")).unwrap(),
        "small\n"
    );
    let after = node.running_pid("data", Some(before));
    assert_ne!(after, before, "it was stopped for the restore");
    assert_eq!(
        node.instance("other").unwrap().pid,
        Some(other),
        "other instances keep running"
    );
    let restored = backup_records(&node, "data", "Restored");
    assert_eq!(restored.len(), 1, "{restored:?}");
}

#[test]
fn without_cgroups_a_snapshot_is_live_and_says_so() {
    let mut node = Node::init();
    node.edit_config(|c| c.replace("cgroups = true", "cgroups = false"));
    node.start();
    request(
        &node,
        "plain",
        "mkdir -p srv && echo x > srv/x && exec sleep 1000",
        "[backup]\ninterval = \"1h\"\n",
    );
    node.running_pid("plain", None);
    let id = ok_within(&node, &["backup", "plain"]).trim().to_owned();
    let s = backups(&node, Some("plain"))
        .into_iter()
        .find(|s| s.id == id)
        .unwrap();
    assert_eq!(s.consistency, Consistency::Live);
    let taken = backup_records(&node, "plain", "Taken");
    assert!(
        taken
            .iter()
            .all(|t| t["event"]["Taken"]["consistency"] == "Live"),
        "{taken:?}"
    );
}
