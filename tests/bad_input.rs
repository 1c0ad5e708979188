//! Bad input gets a clear error and changes nothing: invalid names, unknown config
//! keys, path traversal in config-file paths, malformed request files, and garbage on
//! the local API socket. The daemon keeps running with its data intact.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;

use common::{hedge, tree, Node};
use hedge_runtime::local_api::Refused;
use hedge_wire::InstanceStatus;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn bad_requests_are_refused_with_a_clear_error_and_nothing_changes() {
    let mut node = Node::init();
    node.start();
    node.request_sleep("keep", "1000", &[]);
    node.running_pid("keep", None);
    let before_disk = tree(&node.home().join("partitions"));
    let before_seq = node.status().outbox.next_seq;
    let dir = node.dir.path().to_path_buf();

    let good = r#"
name = "web"
software = "exec:/bin/sleep"
args = ["1000"]
[[config_files]]
path = "etc/app.conf"
template = "x"
"#;
    let cases: Vec<(&str, String, &str)> = vec![
        ("bad name", good.replace("\"web\"", "\"../web\""), "name"),
        (
            "upper-case name",
            good.replace("\"web\"", "\"Web\""),
            "name",
        ),
        (
            "long name",
            good.replace("\"web\"", &format!("\"{}\"", "a".repeat(65))),
            "64",
        ),
        (
            "traversal",
            good.replace("etc/app.conf", "../../../etc/passwd"),
            "config_files",
        ),
        (
            "absolute path",
            good.replace("etc/app.conf", "/etc/passwd"),
            "config_files",
        ),
        (
            "unknown key",
            format!("{good}\ncolour = \"red\"\n"),
            "colour",
        ),
        (
            "malformed",
            "name = \"web\nsoftware =".into(),
            "TOML parse error",
        ),
        (
            "bad software",
            good.replace("exec:/bin/sleep", "tarball:x"),
            "software",
        ),
    ];
    for (what, text, word) in cases {
        let f = dir.join("req.toml");
        std::fs::write(&f, text).unwrap();
        let out = node.cli(&["request", "--file", f.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(65), "{what}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(word),
            "{what}: error should mention {word:?}: {}",
            stderr(&out)
        );
    }
    // Flags go through the same checks.
    let out = node.cli(&["request", "../x", "--software", "exec:/bin/true"]);
    assert_eq!(out.status.code(), Some(65), "{}", stderr(&out));
    let out = node.cli(&[
        "request",
        "x",
        "--software",
        "exec:/bin/true",
        "--param",
        "novalue",
    ]);
    assert_eq!(out.status.code(), Some(65), "{}", stderr(&out));
    // Unknown instances are refused by the daemon.
    let out = node.cli(&["stop", "nosuch"]);
    assert!(
        !out.status.success() && stderr(&out).contains("nosuch"),
        "{}",
        stderr(&out)
    );

    // Garbage and hostile JSON on the socket: an error answer, the daemon lives on.
    for line in [
        "this is not json\n",
        "{\"op\":\"request\",\"request\":{\"name\":\"../../etc\"}}\n",
        "{\"op\":\"destroy\",\"name\":\"../partitions\"}\n",
        "{\"op\":\"launch_missiles\"}\n",
    ] {
        let mut s = UnixStream::connect(node.home().join("hedge.sock")).unwrap();
        s.write_all(line.as_bytes()).unwrap();
        let mut answer = String::new();
        BufReader::new(&s).read_line(&mut answer).unwrap();
        let v: Refused = serde_json::from_str(&answer).unwrap();
        assert!(!v.ok, "{line} -> {answer}");
        assert!(!v.error.is_empty());
    }

    // Nothing changed: same partitions, no record appended, the instance still runs.
    assert_eq!(tree(&node.home().join("partitions")), before_disk);
    let status = node.status();
    assert_eq!(status.outbox.next_seq, before_seq);
    assert_eq!(
        node.instance("keep").unwrap().state,
        InstanceStatus::Running
    );
}

#[test]
fn unknown_or_invalid_config_exits_64_before_touching_anything() {
    let dir = tempfile::tempdir().unwrap();
    for (text, word) in [
        (
            "[node]\nid = \"n\"\nstate_dir = \"s\"\ncolour = \"red\"\n",
            "colour",
        ),
        (
            "[node]\nid = \"n\"\nstate_dir = \"s\"\n[supervisr]\n",
            "supervisr",
        ),
        ("[node]\nid = \"N 1\"\nstate_dir = \"s\"\n", "node.id"),
        (
            "[node]\nid = \"n\"\nstate_dir = \"s\"\n[supervisor]\nbackoff_base_ms = 0\n",
            "backoff_base_ms",
        ),
        ("[node\n", "TOML"),
        (
            "[node]\nid = \"n\"\nstate_dir = \"s\"\nboard = \"pi9\"\n",
            "node.board",
        ),
    ] {
        let cfg = dir.path().join("node.toml");
        std::fs::write(&cfg, text).unwrap();
        let out = hedge()
            .args(["node", "run", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{text}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.to_lowercase().contains(&word.to_lowercase())
                || (word == "node.id" && err.contains("id")),
            "{text}: error should name {word:?}: {err}"
        );
        assert!(
            !dir.path().join("s").exists(),
            "state dir created despite a bad config"
        );
    }
    // A missing config names the file.
    let out = hedge()
        .args(["node", "status", "--config", "/nonexistent/node.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(stderr(&out).contains("/nonexistent/node.toml"));
}

#[test]
fn init_refuses_to_overwrite_and_client_without_daemon_exits_69() {
    let node = Node::init();
    let out = hedge()
        .args(["node", "init", "--dir"])
        .arg(node.home())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    let out = node.cli(&["status"]);
    assert_eq!(out.status.code(), Some(69), "{}", stderr(&out));
    assert!(stderr(&out).contains("hedge node run"), "{}", stderr(&out));
}

/// `hedge board --all | head -1`: the reader is gone before hedge writes. A client
/// command ends as a Unix filter does (SIGPIPE), not with a panic about printing.
#[test]
fn a_client_whose_stdout_is_closed_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    let out = hedge()
        .args(["board", "--all"])
        .stdout(write)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(nix::sys::signal::Signal::SIGPIPE as i32),
        "{:?}: {}",
        out.status,
        stderr(&out)
    );
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
}
