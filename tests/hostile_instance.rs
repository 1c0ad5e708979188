//! A hostile instance attacks the root daemon through the partition it owns: it breaks
//! its partition so that its command promise would run as root, races
//! `etc/connection.json` (FIFO, link to /dev/zero, a file grown after the check, `etc`
//! linked to another tenant's), swaps its log for a link and prints terminal escapes,
//! and lists the other tenants' partitions. It gains nothing, and the daemon keeps
//! supervising and answering.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{wait_for, Node};
use hedge_runtime::local_api::NodeStatus;
use serde_json::Value;

/// Requests the instance described by the TOML `text`.
fn request(node: &Node, file: &str, text: &str) {
    let path = node.dir.path().join(file);
    std::fs::write(&path, text).unwrap();
    node.ok(&["request", "--file", path.to_str().unwrap()]);
}

/// A request for an instance running `/bin/sh -c SCRIPT`.
fn sh_instance(name: &str, script: &str, extra: &str) -> String {
    format!(
        "name = \"{name}\"\nsoftware = \"exec:/bin/sh\"\nargs = [\"-c\", '''{script}''']\n{extra}"
    )
}

/// `hedge node status --json`, or `None` if it does not answer within `limit` (the
/// daemon's loop is stuck).
#[allow(clippy::disallowed_methods)] // an end-to-end test: waits for real processes, with a deadline
fn status_within(node: &Node, limit: Duration) -> Option<NodeStatus> {
    let mut child = common::hedge()
        .args(["node", "status", "--json", "--config"])
        .arg(node.config())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut out = Vec::new();
            std::io::Read::read_to_end(child.stdout.as_mut().unwrap(), &mut out).unwrap();
            return st.success().then(|| serde_json::from_slice(&out).unwrap());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_instance_that_breaks_its_partition_never_gets_its_program_run_as_root() {
    if !common::can_run_as_root("root, to give the instance its own uid") {
        return;
    }
    let mut node = Node::init();
    node.start();
    // The instance plants the program its command promise runs, waits until the check
    // ran once (as its own uid), then replaces its own etc/ by a file: the daemon can
    // no longer prepare the partition, so it has no uid to run the check as.
    let script = r#"
printf '#!/bin/sh\nid -u >> srv/ran\n' > srv/check.tmp
chmod 755 srv/check.tmp
mv srv/check.tmp srv/check
while [ ! -s srv/ran ]; do sleep 0.05; done
rm -rf etc
echo broken > etc
exec sleep 1000
"#;
    request(
        &node,
        "evil.toml",
        &sh_instance(
            "evil",
            script,
            r#"
[[promises]]
name = "planted"
kind = "command"
command = ["./srv/check"]
interval_ms = 200
timeout_ms = 200
threshold = 1
"#,
        ),
    );
    let ran = node.partition("evil").join("srv/ran");
    let uids = || -> Vec<String> {
        std::fs::read_to_string(&ran)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    };
    // The check ran as the partition's uid before the partition broke.
    let first = wait_for("the check's first run", Duration::from_secs(20), || {
        uids().first().cloned()
    });
    assert_ne!(first, "0");
    wait_for("etc/ replaced by a file", Duration::from_secs(10), || {
        std::fs::symlink_metadata(node.partition("evil").join("etc"))
            .is_ok_and(|m| m.is_file())
            .then_some(())
    });
    // Then: refused (counted), or — the bug — run as root.
    wait_for("refused command checks", Duration::from_secs(20), || {
        (node.status().counters.command_checks_refused >= 3 || uids().contains(&"0".into()))
            .then_some(())
    });
    assert!(
        !uids().contains(&"0".into()),
        "the planted program ran as root: {:?}",
        uids()
    );
    assert!(node.status().counters.command_checks_refused >= 3);
    // The refusal failed the promise.
    let inst = node.instance("evil").unwrap();
    let promise = &inst.promises[0];
    assert_eq!(promise.ok, Some(false), "{inst}");
    assert!(node.daemon_log().contains("command check refused"));
}

/// The racing instance: swaps `etc/connection.json` (atomically, `RENAME_EXCHANGE`)
/// between a good file and a FIFO or a link to /dev/zero, as fast as it can, so that a
/// check-then-open by path meets the good file at the check and the other at the open;
/// now and then it also puts a small file in place and grows it past the limit.
const RACER: &str = r#"
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, RENAME_EXCHANGE = -100, 2
def exchange(a, b):
    if libc.renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE) != 0:
        raise OSError(ctypes.get_errno(), "renameat2")
os.chdir("etc")
good = b'{"port": 1}'
def put_good():
    with open("n.tmp", "wb") as f:
        f.write(good)
    os.rename("n.tmp", "connection.json")
put_good()
os.mkfifo("fifo")
os.symlink("/dev/zero", "zero")
i = 0
while True:
    i += 1
    for other in (b"fifo", b"zero"):
        exchange(b"connection.json", other)
        exchange(b"connection.json", other)
    if i % 10000 == 0:
        put_good()
        with open("connection.json", "ab") as f:
            for _ in range(32):
                f.write(b" " * 4096)
        put_good()
"#;

#[test]
fn hostile_connection_files_neither_stall_the_daemon_nor_reach_another_tenant() {
    let mut node = Node::init();
    node.start();
    request(
        &node,
        "victim.toml",
        &sh_instance(
            "victim",
            r#"printf '{"secret": "victim-secret"}' > etc/c.tmp && mv etc/c.tmp etc/connection.json; exec sleep 1000"#,
            "",
        ),
    );
    let published = |node: &Node, name: &str| -> Vec<Value> {
        node.outbox()
            .into_iter()
            .filter_map(|r| r["kind"].get("ConnectionParameters").cloned())
            .filter(|c| c["instance"] == name)
            .collect()
    };
    wait_for("the victim's parameters", Duration::from_secs(20), || {
        (!published(&node, "victim").is_empty()).then_some(())
    });

    // `etc -> ../victim/etc`: root must not read the victim's file for this instance.
    request(
        &node,
        "linker.toml",
        &sh_instance(
            "linker",
            "rm -rf etc && ln -s ../victim/etc etc && touch srv/linked; exec sleep 1000",
            "",
        ),
    );
    wait_for("etc linked", Duration::from_secs(20), || {
        node.partition("linker")
            .join("srv/linked")
            .exists()
            .then_some(())
    });
    let refused_before = node.status().counters.bad_connection_files;
    wait_for("the link refused", Duration::from_secs(20), || {
        (node.status().counters.bad_connection_files >= refused_before + 2
            || !published(&node, "linker").is_empty())
        .then_some(())
    });
    assert_eq!(
        published(&node, "linker"),
        Vec::<Value>::new(),
        "another tenant's connection.json was read through a link"
    );

    // The racer, and a canary whose supervision must go on.
    request(
        &node,
        "racer.toml",
        &format!(
            "name = \"racer\"\nsoftware = \"exec:/usr/bin/python3\"\nargs = [\"-c\", '''{RACER}''']\n"
        ),
    );
    node.request_sleep("canary", "1000", &[]);
    let mut canary = node.running_pid("canary", None);
    let refused_before = node.status().counters.bad_connection_files;
    // Each poll meets the racer's file in some state; many polls are refused. The
    // daemon answers every time, and a killed canary is restarted, all along.
    let mut answered = 0;
    wait_for("racing files refused", Duration::from_secs(60), || {
        let s = status_within(&node, Duration::from_secs(10))
            .expect("the daemon stopped answering status");
        answered += 1;
        (s.counters.bad_connection_files >= refused_before + 5).then_some(())
    });
    assert!(answered > 0);
    for _ in 0..2 {
        nix::sys::signal::kill(common::nix_pid(canary), nix::sys::signal::Signal::SIGKILL).unwrap();
        canary = node.running_pid("canary", Some(canary));
        status_within(&node, Duration::from_secs(10)).expect("status while racing");
    }
    let daemon = node.daemon.as_mut().unwrap();
    assert!(daemon.try_wait().unwrap().is_none(), "the daemon exited");
    // The victim's secret was never published under another name.
    for r in node.outbox() {
        if let Some(c) = r["kind"].get("ConnectionParameters") {
            if c["instance"] != "victim" {
                assert!(!c.to_string().contains("victim-secret"), "{c}");
            }
        }
    }
}

#[test]
fn node_logs_neither_follows_a_planted_link_nor_prints_terminal_controls() {
    let mut node = Node::init();
    node.start();
    let secret = node.dir.path().join("secret");
    std::fs::write(&secret, "operator-only-secret\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    // Prints escapes; then, told to, swaps its log for a link to the secret.
    let script = format!(
        r#"printf 'hello \033[31mred\033[0m \033]0;title\007 \r bye\n'
while [ ! -e srv/go ]; do sleep 0.05; done
rm var/log/chatty.log && ln -s {} var/log/chatty.log && touch srv/swapped
exec sleep 1000"#,
        secret.display()
    );
    request(&node, "chatty.toml", &sh_instance("chatty", &script, ""));
    let log = node.partition("chatty").join("var/log/chatty.log");
    wait_for("the escapes logged", Duration::from_secs(20), || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|t| t.contains("bye"))
            .map(|_| ())
    });
    let out = node.cli(&["logs", "chatty"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains(r"hello \x1b[31mred\x1b[0m \x1b]0;title\x07 \x0d bye"),
        "{text:?}"
    );
    assert!(
        !text.bytes().any(|b| b < 0x20 && b != b'\n' && b != b'\t'),
        "{text:?}"
    );
    assert!(text.ends_with('\n'));

    std::fs::write(node.partition("chatty").join("srv/go"), "").unwrap();
    wait_for(
        "the log swapped for a link",
        Duration::from_secs(20),
        || {
            node.partition("chatty")
                .join("srv/swapped")
                .exists()
                .then_some(())
        },
    );
    assert!(std::fs::symlink_metadata(&log)
        .unwrap()
        .file_type()
        .is_symlink());
    let out = node.cli(&["logs", "chatty"]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        !shown.contains("operator-only-secret"),
        "followed the link: {shown}"
    );
    assert!(!out.status.success(), "a link as the log must be an error");
    node.status();
}

#[test]
fn partition_uids_cannot_list_the_other_tenants() {
    if !common::can_run_as_root("root, to give each partition its own uid") {
        return;
    }
    let mut node = Node::init();
    node.start();
    node.request_sleep("neighbour", "1000", &[]);
    node.running_pid("neighbour", None);
    request(
        &node,
        "nosy.toml",
        &sh_instance(
            "nosy",
            "ls .. > srv/ls.out 2>&1; echo $? > srv/ls.tmp; mv srv/ls.tmp srv/ls.rc; exec sleep 1000",
            "",
        ),
    );
    let rc_path = node.partition("nosy").join("srv/ls.rc");
    let rc = wait_for("the listing attempt", Duration::from_secs(20), || {
        std::fs::read_to_string(&rc_path).ok()
    });
    let listing = std::fs::read_to_string(node.partition("nosy").join("srv/ls.out")).unwrap();
    assert_ne!(rc.trim(), "0", "partitions/ listed: {listing}");
    assert!(!listing.contains("neighbour"), "{listing}");
    // Its own partition is still reachable: the instance runs from it.
    node.running_pid("nosy", None);
    let mode = std::fs::metadata(node.home().join("partitions")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o711
    );
    assert!(Path::new(&node.partition("nosy")).is_dir());
}
