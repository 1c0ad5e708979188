//! Daemon-level tests with a real store and real processes, no network: the daemon
//! booted from a default config in a temp dir, driven through its own methods.
#![allow(clippy::unwrap_used)]

mod disk;
mod imports;
mod lease;
mod limits;
mod mesh;
mod restore;

use std::time::Duration;

use hedge_wire::{InstanceRequest, Limits, Name, RequestedState, SoftwareRelease};

use super::Daemon;
use crate::config::{self, NodeConfig};

/// A daemon booted in `dir` (binds nothing).
fn daemon(dir: &std::path::Path) -> Daemon {
    let path = dir.join("node.toml");
    std::fs::write(&path, config::default_file("unit")).unwrap();
    Daemon::boot(NodeConfig::load(&path).unwrap()).unwrap()
}

/// A request for `/bin/sleep 1000` in `state` with `limits`.
fn sleep_request(name: &str, state: RequestedState, limits: Limits) -> InstanceRequest {
    InstanceRequest {
        name: Name::new(name).unwrap(),
        software: SoftwareRelease::Exec("/bin/sleep".into()),
        args: vec!["1000".into()],
        parameters: Default::default(),
        config_files: vec![],
        promises: vec![],
        limits,
        restart: Default::default(),
        state,
    }
}

/// Ends a test's daemon: shutting down, every instance's process group killed.
fn kill_all(d: &mut Daemon) {
    d.confirm_execs();
    d.shutting_down = true;
    for slot in d.instances.slots.values_mut() {
        if let Some(pid) = slot.lifecycle.pid() {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Feeds the daemon's own events (process exits) until `done` holds.
pub(super) async fn pump_until(d: &mut Daemon, what: &str, mut done: impl FnMut(&Daemon) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done(d) {
        d.tick();
        match tokio::time::timeout_at(deadline, d.events_rx.recv()).await {
            // As the loop does: the event, then the turn's execs confirmed.
            Ok(Some(ev)) => {
                d.on_event(ev);
                d.flush_observed();
            }
            Ok(None) => panic!("event channel closed waiting for {what}"),
            Err(_) => panic!("timed out waiting for {what}"),
        }
    }
}

fn sleeper(name: &str) -> InstanceRequest {
    sleep_request(name, RequestedState::Started, Limits::default())
}

/// A store that cannot be read (closed after a failed reopen) is not an empty desired
/// set: reconciling must stop, never destroy the instances and their partitions.
#[tokio::test]
async fn an_unreadable_store_stops_reconciliation_and_destroys_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = daemon(dir.path());
    d.local_request(sleeper("keep")).unwrap();
    let name = Name::new("keep").unwrap();
    assert!(d.instances.slots[&name].lifecycle.wants_running());
    let partition = d.instances.partitions.path(&name);
    std::fs::write(partition.join("srv/data"), b"tenant data").unwrap();

    d.outbox.store.close();
    d.reconcile();

    assert_eq!(d.counters.reconcile_skipped, 1);
    assert!(d.counters.store_errors >= 1);
    let slot = &d.instances.slots[&name];
    assert!(
        !slot.destroying,
        "an unreadable store destroyed the instance"
    );
    assert!(slot.lifecycle.wants_running());
    assert_eq!(
        std::fs::read(partition.join("srv/data")).unwrap(),
        b"tenant data"
    );
    // Nor can a local request take a name while the desired state is unreadable.
    let err = d.local_request(sleeper("other")).unwrap_err();
    assert!(
        err.to_string().contains("cannot read the desired state"),
        "{err}"
    );
    kill_all(&mut d);
}

/// A boot-like burst: ten instances started in one turn, their execs confirmed together
/// at its end. The one whose program is missing is a failed start (`SpawnFailed`:
/// counted, retried), never a process that ran and exited; the others run.
#[tokio::test]
async fn a_failed_exec_among_many_started_together_is_a_failed_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = daemon(dir.path());
    let mut bad = sleeper("bad");
    bad.software = SoftwareRelease::Exec("/no/such/program".into());
    for i in 0..10 {
        let r = if i == 4 {
            bad.clone()
        } else {
            sleeper(&format!("s{i}"))
        };
        d.local_request(r).unwrap();
    }
    // Started side by side: no exec confirmed yet, none running.
    assert_eq!(
        d.execs.len(),
        10,
        "the turn's starts waited for their execs"
    );
    // A change that needs no restart (a cgroup limit; this node has no cgroups) while
    // its start is pending: the instance is not restarted.
    let limits = Limits {
        memory_max: Some(64 << 20),
        ..Limits::default()
    };
    d.local_request(sleep_request("s0", RequestedState::Started, limits))
        .unwrap();
    d.flush_observed();
    assert!(d.execs.is_empty());
    let bad = &d.instances.slots[&Name::new("bad").unwrap()];
    // Failed, retried at once, failed again: then it backs off.
    assert!(d.counters.spawn_failures >= 1);
    assert_eq!(bad.lifecycle.pid(), None);
    assert_eq!(
        bad.lifecycle.last_exit(),
        None,
        "a failed exec became an exit"
    );
    assert!(
        bad.lifecycle.restarts() >= 1,
        "the failed start is not retried"
    );
    for (name, slot) in &d.instances.slots {
        if name.as_str() != "bad" {
            let pid = slot
                .lifecycle
                .pid()
                .expect("a good instance is not running");
            assert_eq!(
                slot.lifecycle.status(),
                hedge_wire::InstanceStatus::Running,
                "{name} is being restarted"
            );
            assert!(slot.start_ticks.is_some(), "{name}: no start time recorded");
            assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
        }
    }
    kill_all(&mut d);
}
