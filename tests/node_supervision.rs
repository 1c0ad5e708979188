//! The supervisor with real processes: SIGKILLed instances come back, crash loops back
//! off with growing delays and never give up, stop/destroy clean up, config files and
//! connection parameters are rendered and propagated.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{alive, wait_for, Node};
use hedge_wire::InstanceStatus;

#[test]
fn killed_instance_comes_back_and_is_counted() {
    let mut node = Node::init();
    node.start();
    node.request_sleep("sleeper", "1000", &[]);
    let mut pid = node.running_pid("sleeper", None);
    for round in 1..=3u64 {
        nix::sys::signal::kill(common::nix_pid(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
        pid = node.running_pid("sleeper", Some(pid));
        let i = node.instance("sleeper").unwrap();
        assert_eq!(Some(u64::from(i.restarts)), Some(round));
        assert_eq!(i.last_exit.as_deref(), Some("signal 9"));
    }
}

#[test]
fn crash_loop_backs_off_with_growing_delays_and_keeps_retrying() {
    let mut node = Node::init();
    node.start();
    // Each start appends a nanosecond timestamp in the partition, then fails.
    node.ok(&[
        "request",
        "crashy",
        "--software",
        "exec:/bin/sh",
        "--arg",
        "-c",
        "--arg",
        "date +%s%N >> srv/starts; exit 3",
    ]);
    let starts_file = node.partition("crashy").join("srv/starts");
    // base 50 ms, cap 800 ms: delays ≈ 0, 50, 100, 200, 400, 800, 800, 800 …
    let starts: Vec<u128> = wait_for("10 starts", Duration::from_secs(20), || {
        let text = std::fs::read_to_string(&starts_file).ok()?;
        let v: Vec<u128> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        (v.len() >= 10).then_some(v)
    });
    let gaps_ms: Vec<f64> = starts
        .windows(2)
        .map(|w| (w[1] - w[0]) as f64 / 1e6)
        .collect();
    // Growing while below the cap (±20 % jitter keeps each ≥ 1.33× the previous)…
    for k in 1..4 {
        assert!(
            gaps_ms[k + 1] > gaps_ms[k],
            "delays not growing: {gaps_ms:?}"
        );
    }
    // …then capped (800 ms + 20 % jitter, plus scheduling slack) and still retrying.
    assert!(
        gaps_ms[6..].iter().all(|g| *g < 1400.0),
        "not capped: {gaps_ms:?}"
    );
    assert!(
        gaps_ms[6..].iter().all(|g| *g > 500.0),
        "cap not reached: {gaps_ms:?}"
    );
    let i = node.instance("crashy").unwrap();
    assert!(i.restarts >= 9);
    assert_eq!(i.last_exit.as_deref(), Some("exit 3"));
    // Output went to the partition's log.
    let log = std::fs::read_to_string(node.partition("crashy").join("var/log/crashy.log"));
    assert!(log.is_ok());
}

#[test]
fn stop_start_destroy_and_output_logs() {
    let mut node = Node::init();
    node.start();
    node.ok(&[
        "request",
        "talker",
        "--software",
        "exec:/bin/sh",
        "--arg",
        "-c",
        "--arg",
        "echo hello from $HEDGE_INSTANCE port=$PORT; exec sleep 1000",
        "--param",
        "port=4242",
    ]);
    let pid = node.running_pid("talker", None);
    let logs = wait_for("log line", Duration::from_secs(5), || {
        let l = node.ok(&["logs", "talker"]);
        l.contains("hello").then_some(l)
    });
    assert!(logs.contains("hello from talker port=4242"), "{logs}");

    node.ok(&["stop", "talker"]);
    wait_for("stopped", Duration::from_secs(5), || {
        (node.instance("talker")?.state == InstanceStatus::Stopped).then_some(())
    });
    assert!(!alive(pid));
    assert!(
        node.partition("talker").exists(),
        "stop keeps the partition"
    );

    node.ok(&["start", "talker"]);
    node.running_pid("talker", Some(pid));

    node.ok(&["destroy", "talker"]);
    wait_for("destroyed", Duration::from_secs(5), || {
        node.instance("talker").is_none().then_some(())
    });
    assert!(
        !node.partition("talker").exists(),
        "destroy removes the partition"
    );
    let last = node.outbox().last().cloned().unwrap();
    assert_eq!(last["kind"]["InstanceState"]["status"], "Destroyed");
}

#[test]
fn stop_escalates_to_sigkill_after_the_grace_period() {
    let mut node = Node::init();
    node.start();
    // Ignores SIGTERM; grace is 1 s in tests.
    node.ok(&[
        "request",
        "stubborn",
        "--software",
        "exec:/bin/sh",
        "--arg",
        "-c",
        "--arg",
        "trap '' TERM; while :; do sleep 0.1; done",
    ]);
    let pid = node.running_pid("stubborn", None);
    node.ok(&["stop", "stubborn"]);
    wait_for("stopped after SIGKILL", Duration::from_secs(10), || {
        (node.instance("stubborn")?.state == InstanceStatus::Stopped).then_some(())
    });
    assert_eq!(
        node.instance("stubborn").unwrap().last_exit.as_deref(),
        Some("signal 9")
    );
    assert!(!alive(pid));
}

#[test]
fn config_files_and_connection_parameters_render_and_restart_consumers() {
    let mut node = Node::init();
    node.start();
    let dir = node.dir.path().to_path_buf();
    // A producer publishes its connection parameters.
    std::fs::write(
        dir.join("db.toml"),
        r#"
name = "db"
software = "exec:/bin/sh"
args = ["-c", "printf '{\"port\":\"%s\"}' $PORT > etc/connection.json.tmp && mv etc/connection.json.tmp etc/connection.json; exec sleep 1000"]
[parameters]
port = "5432"
"#,
    )
    .unwrap();
    // A consumer renders the producer's port into a config file.
    std::fs::write(
        dir.join("app.toml"),
        r#"
name = "app"
software = "exec:/bin/sleep"
args = ["1000"]
[[config_files]]
path = "etc/app.conf"
template = "db_port={{db.port}}\n"
"#,
    )
    .unwrap();
    node.ok(&["request", "--file", dir.join("app.toml").to_str().unwrap()]);
    // The consumer waits for the parameter it references.
    wait_for("app waiting", Duration::from_secs(5), || {
        (node.instance("app")?.state == InstanceStatus::Waiting).then_some(())
    });
    node.ok(&["request", "--file", dir.join("db.toml").to_str().unwrap()]);
    let app_pid = node.running_pid("app", None);
    let conf = node.partition("app").join("etc/app.conf");
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), "db_port=5432\n");

    // The producer changes its port: the consumer is re-rendered and restarted.
    let db2 = std::fs::read_to_string(dir.join("db.toml"))
        .unwrap()
        .replace("5432", "6543");
    std::fs::write(dir.join("db.toml"), db2).unwrap();
    node.ok(&["request", "--file", dir.join("db.toml").to_str().unwrap()]);
    node.running_pid("app", Some(app_pid));
    wait_for("re-rendered", Duration::from_secs(10), || {
        (std::fs::read_to_string(&conf).ok()? == "db_port=6543\n").then_some(())
    });
    let published: Vec<_> = node
        .outbox()
        .into_iter()
        .filter(|r| r["kind"].get("ConnectionParameters").is_some())
        .collect();
    assert_eq!(published.len(), 2, "{published:?}");
}

#[test]
fn board_profile_limits_instances_unless_the_config_says_otherwise() {
    let mut node = Node::init();
    // The Zero 2 W profile takes 4 instances.
    node.edit_config(|c| c.replace("# board = \"rpi4b\"", "board = \"rpizero2w\""));
    node.start();
    assert_eq!(node.status().board, "rpizero2w");
    for i in 0..4 {
        node.request_sleep(&format!("s{i}"), "1000", &["--state", "stopped"]);
    }
    let out = node.cli(&[
        "request",
        "s4",
        "--software",
        "exec:/bin/sleep",
        "--arg",
        "1000",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("node is full"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Changing an existing instance is still allowed.
    node.request_sleep("s0", "1000", &[]);
    node.running_pid("s0", None);
    // The node told the master what it is, first thing at boot.
    let info = node
        .outbox()
        .into_iter()
        .find(|r| r["kind"].get("NodeInfo").is_some())
        .unwrap();
    assert_eq!(info["kind"]["NodeInfo"]["board"], "rpizero2w");
    assert_eq!(info["kind"]["NodeInfo"]["max_instances"], 4);
}
