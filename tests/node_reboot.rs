//! The daemon dies (SIGKILL) and comes back with no network: its children died with it,
//! every started instance runs again, and the outbox sequence continues with no gap and
//! no reuse.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{alive, wait_for, Node};
use hedge_wire::InstanceStatus;
use serde_json::Value;

/// `unshare -n` gives the restarted daemon a network namespace with nothing in it
/// (not even an up loopback) when we may create one (root); otherwise the daemon runs
/// as is, and the test still proves it never needed the network to start.
fn offline_wrapper() -> Vec<String> {
    let ok = Command::new("unshare")
        .args(["-n", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if common::can_run(ok, "a network namespace (unshare -n, as root)") {
        vec!["unshare".into(), "-n".into()]
    } else {
        vec![]
    }
}

fn seqs(records: &[Value]) -> Vec<u64> {
    records.iter().map(|r| r["seq"].as_u64().unwrap()).collect()
}

#[test]
fn sigkilled_daemon_restarts_offline_with_every_instance_and_a_continuous_outbox() {
    let mut node = Node::init();
    node.start();
    let names = ["a", "b", "c"];
    for n in names {
        node.request_sleep(n, "1000", &[]);
    }
    node.request_sleep("idle", "1000", &["--state", "stopped"]);
    let pids: Vec<u32> = names.iter().map(|n| node.running_pid(n, None)).collect();
    let before = node.outbox();
    let before_seqs = seqs(&before);
    assert_eq!(before_seqs, (1..=before.len() as u64).collect::<Vec<_>>());

    node.kill9();
    // Children die with the daemon: no orphans.
    wait_for(
        "children to die with the daemon",
        Duration::from_secs(5),
        || pids.iter().all(|p| !alive(*p)).then_some(()),
    );

    node.wrapper = offline_wrapper();
    node.start();
    for n in names {
        node.running_pid(n, None);
    }
    assert_eq!(
        node.instance("idle").unwrap().state,
        InstanceStatus::Stopped
    );

    let after = node.outbox();
    let all = seqs(&after);
    // Nothing was acknowledged, so the outbox holds every record ever made: 1..=N, no gap.
    assert_eq!(all, (1..=after.len() as u64).collect::<Vec<_>>());
    // The records from before the crash are unchanged, and new ones come after them.
    assert_eq!(&after[..before.len()], &before[..]);
    assert!(after.len() > before.len(), "restart produced no records");
    let status = node.status();
    assert_eq!(status.outbox.next_seq, after.len() as u64 + 1);

    // A clean stop also stops the instances, and the next boot starts them again.
    let pids: Vec<u32> = names.iter().map(|n| node.running_pid(n, None)).collect();
    assert!(node.terminate().success());
    assert!(pids.iter().all(|p| !alive(*p)));
    node.start();
    for n in names {
        node.running_pid(n, None);
    }
}

/// Group commit: records are flushed in groups, never one by one, yet every record the
/// local API showed is on disk. The daemon produces usage records fast with sled's
/// background flush out of the way, shows its outbox (`status`: its next seq), and is
/// SIGKILLed at once: after a restart, every record shown is there.
#[test]
fn records_shown_by_status_survive_a_sigkill_right_after() {
    let mut node = Node::init();
    node.edit_config(|c| {
        c.replace("sample_interval_ms = 10000", "sample_interval_ms = 100")
            .replace("usage_interval_ms = 60000", "usage_interval_ms = 100")
            .replace("# flush_interval_ms = 2000", "flush_interval_ms = 3600000")
    });
    node.start();
    for i in 0..4 {
        let name = format!("u{i}");
        node.ok(&[
            "request",
            &name,
            "--software",
            "exec:/bin/sleep",
            "--arg",
            "1000",
        ]);
    }
    for round in 0..3 {
        let floor = node.status().outbox.next_seq + 20;
        let next = wait_for("usage records to flow", Duration::from_secs(20), || {
            let n = node.status().outbox.next_seq;
            (n >= floor).then_some(n)
        });
        node.kill9();
        node.start();
        let kept: Vec<u64> = seqs(&node.outbox())
            .into_iter()
            .take_while(|s| *s < next)
            .collect();
        assert_eq!(
            kept,
            (1..next).collect::<Vec<_>>(),
            "round {round}: a record shown before the SIGKILL is missing"
        );
    }
}

#[test]
fn leftover_process_group_of_a_dead_daemon_is_cleaned_at_boot() {
    let mut node = Node::init();
    node.start();
    // The grandchild is not reached by the parent-death signal; its process group is.
    node.ok(&[
        "request",
        "forker",
        "--software",
        "exec:/bin/sh",
        "--arg",
        "-c",
        "--arg",
        "sleep 1000 & echo $! > srv/grandchild; wait",
    ]);
    node.running_pid("forker", None);
    let gc_file = node.partition("forker").join("srv/grandchild");
    let gc: u32 = wait_for("grandchild pid", Duration::from_secs(5), || {
        std::fs::read_to_string(&gc_file).ok()?.trim().parse().ok()
    });
    node.kill9();
    node.start();
    wait_for("grandchild killed at boot", Duration::from_secs(5), || {
        (!alive(gc)).then_some(())
    });
    assert!(node.status().counters.leftovers_killed >= 1);
    node.running_pid("forker", None);
}

/// The NSS modules mapped into process `pid` (`libnss_systemd.so.2`, …).
fn nss_modules(pid: u32) -> Vec<String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut libs: Vec<String> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|path| path.contains("/libnss_"))
        .map(str::to_string)
        .collect();
    libs.dedup();
    libs
}

/// Partition uids are checked against the host's users and groups (as root) by `getent`
/// in child processes: no NSS module is ever loaded into the daemon, neither when new
/// partitions get their uids nor when a boot checks the uids of existing ones. (Where
/// `nsswitch.conf` names a source other than `files` for passwd or group, such as
/// `systemd`, checking in-process loaded its module, which this test then saw.)
#[test]
fn the_daemon_never_loads_an_nss_module_booting_with_instances() {
    if !common::can_run_as_root("root (partition uids are checked only as root)") {
        return;
    }
    let mut node = Node::init();
    node.start();
    for n in ["a", "b"] {
        node.request_sleep(n, "1000", &[]);
    }
    for n in ["a", "b"] {
        node.running_pid(n, None);
    }
    let pid = node.daemon.as_ref().unwrap().id();
    assert_eq!(
        nss_modules(pid),
        Vec::<String>::new(),
        "after new partitions"
    );

    node.kill9();
    node.start();
    for n in ["a", "b"] {
        node.running_pid(n, None);
    }
    let pid = node.daemon.as_ref().unwrap().id();
    assert_eq!(nss_modules(pid), Vec::<String>::new(), "after a boot");
    // `getent` answered (no fallback to the files).
    let log = node.daemon_log();
    assert!(!log.contains("read from the file instead"), "{log}");
}
