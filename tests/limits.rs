//! A changed `[limits]` takes effect on a running instance: `nofile` (an rlimit, set
//! only at start) restarts it with the new value; `memory_max` is rewritten live in its
//! cgroup v2 group (same process).
//!
//! These need root (partition uids, cgroups): see `common::can_run_as_root`. Where the
//! host's memory controller is not in its cgroup v2 hierarchy (a hybrid layout binds it
//! to cgroup v1), the memory test checks instead that the node reports the limit as not
//! enforced.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{wait_for, Node};

fn request(node: &Node, name: &str, limits: &str) {
    let file = node.dir.path().join(format!("{name}.toml"));
    std::fs::write(
        &file,
        format!(
            "name = \"{name}\"\nsoftware = \"exec:/bin/sleep\"\nargs = [\"100000\"]\n\n[limits]\n{limits}\n"
        ),
    )
    .unwrap();
    node.ok(&["request", "--file", file.to_str().unwrap()]);
}

/// The soft `Max open files` of `pid`.
fn nofile_of(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The cgroup v2 directory of `pid` (its `0::` line under the host's cgroup2 mount).
fn cgroup_dir(pid: u32) -> Option<PathBuf> {
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let rel = cg.lines().find_map(|l| l.strip_prefix("0::"))?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2").then(|| left.split_whitespace().nth(4))?
    })?;
    Some(PathBuf::from(mount).join(rel.trim_start_matches('/')))
}

#[test]
fn a_changed_rlimit_restarts_the_instance_with_the_new_value() {
    if !common::can_run_as_root("partition uids") {
        return;
    }
    let mut node = Node::init();
    node.start();
    request(&node, "lim", "nofile = 256");
    let pid = node.running_pid("lim", None);
    assert_eq!(nofile_of(pid), Some(256));

    request(&node, "lim", "nofile = 300");
    let new_pid = node.running_pid("lim", Some(pid));
    assert_ne!(new_pid, pid);
    assert_eq!(nofile_of(new_pid), Some(300));
    assert!(!common::alive(pid), "the old process survived");
}

#[test]
fn a_changed_memory_limit_is_rewritten_live_in_the_cgroup() {
    if !common::can_run_as_root("partition uids and cgroups") {
        return;
    }
    let mut node = Node::init();
    node.start();
    request(&node, "mem", "memory_max = \"64M\"");
    let pid = node.running_pid("mem", None);
    let dir = cgroup_dir(pid);
    let memory_max = dir.as_ref().map(|d| d.join("memory.max"));
    let enforced = memory_max.as_ref().is_some_and(|f| f.exists());
    if !enforced {
        // A host whose memory controller is bound to cgroup v1 (hybrid layout, as on
        // the CI machines): the node must say the limit is not enforced, and why,
        // while the instance runs. The live rewrite itself is proven against a fake
        // cgroupfs (daemon::tests_limits).
        let log = node.daemon_log();
        assert!(
            log.contains("resource limits not enforced") && log.contains("controller"),
            "an unenforceable memory limit went unreported:\n{log}"
        );
        assert!(common::alive(pid));
        return;
    }
    let memory_max = memory_max.unwrap();
    let read = || std::fs::read_to_string(&memory_max).unwrap();
    assert_eq!(read().trim(), (64u64 << 20).to_string());

    request(&node, "mem", "memory_max = \"128M\"");
    wait_for("memory.max rewritten", Duration::from_secs(10), || {
        (read().trim() == (128u64 << 20).to_string()).then_some(())
    });
    // Live: the same process runs on.
    assert_eq!(node.instance("mem").unwrap().pid, Some(pid));
    assert!(common::alive(pid));
}
