//! Daemon-level tests of limit changes: a changed memory/CPU limit is rewritten in the
//! running instance's cgroup (an imitation cgroupfs in a temp dir, so it runs anywhere),
//! and a changed rlimit restarts the process with the new value.
#![allow(clippy::unwrap_used)]

use hedge_wire::{InstanceRequest, Limits, Name, RequestedState};

use super::{daemon, kill_all, pump_until, sleep_request};
use crate::partition::cgroup::Cgroups;

fn sleeper(name: &str, limits: Limits) -> InstanceRequest {
    sleep_request(name, RequestedState::Started, limits)
}

/// The soft `Max open files` of `pid`, from `/proc/PID/limits`.
fn nofile_of(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line["Max open files".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn changed_limits_apply_live_in_the_cgroup_and_a_changed_rlimit_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let fs = tempfile::tempdir().unwrap();
    std::fs::write(fs.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
    std::fs::write(fs.path().join("cgroup.subtree_control"), "").unwrap();
    // The group's `cgroup.procs` exists in a real cgroupfs; the imitation needs it made.
    std::fs::create_dir_all(fs.path().join("hedge/n/lim")).unwrap();
    std::fs::write(fs.path().join("hedge/n/lim/cgroup.procs"), "").unwrap();
    let mut d = daemon(dir.path());
    d.instances.cgroups = Some(Cgroups::at(fs.path(), "n").unwrap());
    let name = Name::new("lim").unwrap();
    let read = |f: &str| std::fs::read_to_string(fs.path().join("hedge/n/lim").join(f)).unwrap();

    let mut limits = Limits {
        memory_max: Some(64 << 20),
        cpu_max_percent: Some(50),
        nofile: Some(256),
        nproc: None,
    };
    d.local_request(sleeper("lim", limits.clone())).unwrap();
    d.flush_observed(); // as the API does before it answers
    let pid = d.instances.slots[&name].lifecycle.pid().unwrap();
    assert_eq!(read("memory.max"), "67108864\n");
    assert_eq!(read("cpu.max"), "50000 100000\n");
    assert_eq!(nofile_of(pid), 256);

    // Memory and CPU: rewritten live, the same process keeps running.
    limits.memory_max = Some(128 << 20);
    limits.cpu_max_percent = Some(20);
    d.local_request(sleeper("lim", limits.clone())).unwrap();
    assert_eq!(read("memory.max"), "134217728\n");
    assert_eq!(read("cpu.max"), "20000 100000\n");
    assert_eq!(
        d.instances.slots[&name].lifecycle.pid(),
        Some(pid),
        "a cgroup limit restarted it"
    );

    // A limit taken out of the request is lifted.
    limits.memory_max = None;
    d.local_request(sleeper("lim", limits.clone())).unwrap();
    assert_eq!(read("memory.max"), "max\n");
    assert_eq!(d.instances.slots[&name].lifecycle.pid(), Some(pid));

    // An rlimit can only be set at start: the instance restarts with the new one.
    limits.nofile = Some(300);
    d.local_request(sleeper("lim", limits.clone())).unwrap();
    pump_until(&mut d, "a new process", |d| {
        d.instances.slots[&name]
            .lifecycle
            .pid()
            .is_some_and(|p| p != pid)
    })
    .await;
    let new_pid = d.instances.slots[&name].lifecycle.pid().unwrap();
    assert_eq!(nofile_of(new_pid), 300);

    kill_all(&mut d);
}
