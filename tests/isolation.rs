//! Tenants cannot outlive their instance or reach the daemon: a `setsid` child of a
//! destroyed instance is dead before its uid is handed out again, freed uids wait in a
//! quarantine that survives a daemon restart, processes join their cgroup before
//! `exec`, and partition uids cannot use the local API.
//!
//! These need root (partition uids, cgroups): see `common::can_run_as_root`.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

use common::{alive, wait_for, Node};
use hedge_wire::InstanceStatus;

/// Sets `[partitions]` keys (replacing the line that starts with `key =`).
fn set(node: &Node, key: &str, value: &str) {
    node.edit_config(|c| {
        let mut out = String::new();
        let mut done = false;
        for line in c.lines() {
            if line.starts_with(&format!("{key} =")) {
                out.push_str(&format!("{key} = {value}\n"));
                done = true;
            } else {
                out.push_str(line);
                out.push('\n');
            }
        }
        assert!(done, "no {key} in node.toml");
        out
    })
}

/// The partition uid range of `node` (a single uid for these tests).
fn one_uid(node: &Node) -> u32 {
    let text = std::fs::read_to_string(node.config()).unwrap();
    let lo: u32 = text
        .lines()
        .find_map(|l| l.strip_prefix("uid_min = "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    set(node, "uid_max", &lo.to_string());
    lo
}

/// uid of a live process (real uid).
fn uid_of(pid: u32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Every live (non-zombie) process with `uid` as its real uid.
fn processes_of(uid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| alive(*p) && uid_of(*p) == Some(uid))
        .collect()
}

/// An instance whose first action records its cgroup (shell builtins only: no fork
/// before it), then leaves a looping `setsid` child (its own session and process
/// group, so the process group kill misses it) and waits.
const DOUBLE_FORK: &str = r#"
software = "exec:/bin/sh"
args = ["-c", """
while read -r l; do case "$l" in 0::*) echo "$l" > srv/cgroup;; esac; done < /proc/self/cgroup
setsid sh -c 'echo $$ > srv/child.pid.tmp; mv srv/child.pid.tmp srv/child.pid; while :; do sleep 1; done' &
exec sleep 100000
"""]
"#;

fn request(node: &Node, name: &str) {
    let file = node.dir.path().join(format!("{name}.toml"));
    std::fs::write(&file, format!("name = \"{name}\"\n{DOUBLE_FORK}")).unwrap();
    node.ok(&["request", "--file", file.to_str().unwrap()]);
}

/// Waits for the `setsid` child of `name` and returns its pid.
fn setsid_child(node: &Node, name: &str) -> u32 {
    let f = node.partition(name).join("srv/child.pid");
    wait_for("the setsid child", Duration::from_secs(10), || {
        std::fs::read_to_string(&f).ok()?.trim().parse().ok()
    })
}

fn uses_cgroups(node: &Node) -> bool {
    node.daemon_log()
        .contains("instances run in cgroup v2 groups")
}

fn count(hay: &str, needle: &str) -> usize {
    hay.matches(needle).count()
}

#[test]
fn setsid_child_of_a_destroyed_instance_dies_and_its_uid_is_quarantined() {
    if !common::can_run_as_root("partition uids and cgroups") {
        return;
    }
    let mut node = Node::init();
    let uid = one_uid(&node);
    node.start();
    request(&node, "first");
    let main = node.running_pid("first", None);
    let child = setsid_child(&node, "first");
    assert!(alive(child));
    assert_eq!(uid_of(child), Some(uid));
    assert_eq!(uid_of(main), Some(uid));
    // Under CI the placement check must run: a machine without a writable cgroup v2
    // there fails rather than hides it.
    if common::can_run(
        uses_cgroups(&node),
        "a writable cgroup v2 (placement check)",
    ) {
        // Placed before exec: the program's very first action already sees its group.
        let cg = std::fs::read_to_string(node.partition("first").join("srv/cgroup")).unwrap();
        assert!(
            cg.trim().starts_with("0::/hedge/") && cg.trim().ends_with("/first"),
            "first action ran in cgroup {cg:?}"
        );
    }

    // The `setsid` child outlives a SIGKILLed daemon; the next one kills it at boot.
    node.kill9();
    assert!(alive(child));
    std::fs::remove_file(node.partition("first").join("srv/child.pid")).unwrap();
    node.start();
    wait_for(
        "the leftover killed at boot",
        Duration::from_secs(10),
        || (!alive(child)).then_some(()),
    );
    let main = node.running_pid("first", None);
    let child = setsid_child(&node, "first");
    assert_eq!(uid_of(child), Some(uid));

    node.ok(&["destroy", "first"]);
    wait_for("first destroyed", Duration::from_secs(10), || {
        node.instance("first").is_none().then_some(())
    });
    // Gone by the time the destroy is reported, before the uid can be handed out.
    assert!(!alive(child), "setsid child {child} survived the destroy");
    assert!(!alive(main));
    assert_eq!(processes_of(uid), Vec::<u32>::new());

    // The only uid of the range is quarantined: the next tenant does not get it.
    let refusal = "no free partition uid";
    request(&node, "second");
    wait_for("second refused a uid", Duration::from_secs(10), || {
        node.daemon_log().contains(refusal).then_some(())
    });
    assert_ne!(
        node.instance("second").unwrap().state,
        InstanceStatus::Running
    );
    assert_eq!(processes_of(uid), Vec::<u32>::new());

    // Still so after a daemon restart: the quarantine is on disk.
    node.terminate();
    let before = count(&node.daemon_log(), refusal);
    node.start();
    wait_for("second refused again", Duration::from_secs(10), || {
        (count(&node.daemon_log(), refusal) > before).then_some(())
    });
    assert_ne!(
        node.instance("second").unwrap().state,
        InstanceStatus::Running
    );
    assert_eq!(processes_of(uid), Vec::<u32>::new());

    // Once the quarantine is over the uid is reused, and the old child is long dead.
    node.terminate();
    set(&node, "uid_quarantine_s", "0");
    node.start();
    let pid = node.running_pid("second", None);
    assert_eq!(uid_of(pid), Some(uid));
    assert!(!alive(child));
}

#[test]
fn without_cgroups_stop_restart_and_destroy_kill_every_process_of_the_uid() {
    if !common::can_run_as_root("partition uids and cgroups") {
        return;
    }
    let mut node = Node::init();
    let uid = one_uid(&node);
    set(&node, "cgroups", "false");
    node.start();
    assert!(node
        .daemon_log()
        .contains("instances are tracked and killed by uid"));
    request(&node, "solo");
    node.running_pid("solo", None);
    let child = setsid_child(&node, "solo");
    assert_eq!(uid_of(child), Some(uid));

    node.ok(&["stop", "solo"]);
    wait_for("solo stopped", Duration::from_secs(10), || {
        (node.instance("solo")?.state == InstanceStatus::Stopped).then_some(())
    });
    assert!(!alive(child), "setsid child {child} survived the stop");

    std::fs::remove_file(node.partition("solo").join("srv/child.pid")).unwrap();
    node.ok(&["start", "solo"]);
    node.running_pid("solo", None);
    let child = setsid_child(&node, "solo");

    // A SIGKILLed daemon's direct child dies with it (parent-death signal); the
    // `setsid` child does not, and is killed by the next daemon at boot.
    node.kill9();
    assert!(alive(child));
    std::fs::remove_file(node.partition("solo").join("srv/child.pid")).unwrap();
    node.start();
    wait_for(
        "the leftover killed at boot",
        Duration::from_secs(10),
        || (!alive(child)).then_some(()),
    );
    node.running_pid("solo", None);
    let child = setsid_child(&node, "solo");
    node.ok(&["destroy", "solo"]);
    wait_for("solo destroyed", Duration::from_secs(10), || {
        node.instance("solo").is_none().then_some(())
    });
    assert!(!alive(child), "setsid child {child} survived the destroy");
    assert_eq!(processes_of(uid), Vec::<u32>::new());
}

/// A copy of the hedge binary that any uid can run (the build directory may not be
/// traversable by other users).
fn hedge_for_everyone(dir: &Path) -> std::path::PathBuf {
    let bin = dir.join("hedge-client");
    std::fs::copy(env!("CARGO_BIN_EXE_hedge"), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

fn status_as(bin: &Path, node: &Node, uid: u32) -> std::process::Output {
    common::output_of_fresh_program(
        std::process::Command::new(bin)
            .args(["node", "status", "--json", "--config"])
            .arg(node.config())
            .uid(uid)
            .gid(uid)
            .env_clear(),
    )
}

#[test]
fn partition_uids_cannot_use_the_local_api() {
    if !common::can_run_as_root("partition uids and cgroups") {
        return;
    }
    let mut node = Node::init();
    let uid = one_uid(&node);
    node.start();
    let sock = node.home().join("hedge.sock");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::symlink_metadata(&sock).unwrap().mode() & 0o777,
        0o600
    );
    std::fs::set_permissions(node.config(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let bin = hedge_for_everyone(node.dir.path());

    // The socket's mode keeps a partition uid out: connect fails with EACCES.
    let out = status_as(&bin, &node, uid);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ermission denied"), "{err}");

    // With a loose mode (a mistake, or a uid that got through) the daemon refuses the
    // peer by its credentials, with a typed answer, and counts it.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = status_as(&bin, &node, uid);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("partition uid"), "{err}");
    // Any other user that is neither root nor in the API group: refused too.
    let out = status_as(&bin, &node, 65_534);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("may not use the local API"), "{err}");

    let st = node.status();
    assert_eq!(st.counters.api_refused, 2, "{st}");
    assert!(node.daemon_log().contains("local API connection refused"));
}

/// A tenant cannot regain root through a setuid-root program: instances run with
/// `no_new_privs`, so its exec keeps the partition uid as the effective one.
#[test]
fn a_setuid_root_program_does_not_make_an_instance_root() {
    if !common::can_run_as_root("partition uids and a setuid-root program") {
        return;
    }
    // A setuid-root `id` where the partition uid can reach it (0755 all the way).
    let dir = tempfile::Builder::new()
        .prefix("hedge-suid")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let suid = dir.path().join("id");
    std::fs::copy("/usr/bin/id", &suid).unwrap();
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();
    // The bit works here: without no_new_privs the program runs as root.
    let probe = common::output_of_fresh_program(
        std::process::Command::new(&suid)
            .arg("-u")
            .uid(65_534)
            .gid(65_534),
    );
    assert_eq!(String::from_utf8_lossy(&probe.stdout).trim(), "0");

    let mut node = Node::init();
    let uid = one_uid(&node);
    node.start();
    let file = node.dir.path().join("suid.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"suid\"\nsoftware = \"exec:/bin/sh\"\nargs = [\"-c\", \"{} -u > srv/euid.tmp; mv srv/euid.tmp srv/euid; exec sleep 100000\"]\n",
            suid.display()
        ),
    )
    .unwrap();
    node.ok(&["request", "--file", file.to_str().unwrap()]);
    let pid = node.running_pid("suid", None);
    let euid = node.partition("suid").join("srv/euid");
    let seen: u32 = wait_for(
        "the instance's effective uid",
        Duration::from_secs(10),
        || std::fs::read_to_string(&euid).ok()?.trim().parse().ok(),
    );
    assert_eq!(seen, uid, "the setuid-root program ran as {seen}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.lines().any(|l| l == "NoNewPrivs:\t1"), "{status}");
}
