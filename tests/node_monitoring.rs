//! Monitoring with real processes: promises, incidents and self-repair, usage
//! accounting (also across a daemon crash), the outbox quota, and a full disk.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::ports::free_port;
use common::{wait_for, Node};
use hedge_runtime::local_api::IncidentStatus;
use hedge_wire::InstanceStatus;
use serde_json::Value;

/// A node with fast monitoring intervals.
fn fast_node(extra: &str) -> Node {
    let node = Node::init();
    let extra = extra.to_string();
    node.edit_config(move |c| {
        c.replace("sample_interval_ms = 10000", "sample_interval_ms = 100")
            .replace("usage_interval_ms = 60000", "usage_interval_ms = 1000")
            .replace("health_interval_ms = 60000", "health_interval_ms = 1000")
            .replace("summary_interval_ms = 300000", "summary_interval_ms = 1000")
            + &extra
    });
    node
}

fn kinds<'a>(records: &'a [Value], kind: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["kind"].get(kind).is_some())
        .collect()
}

fn usage_cpu_by_instance(records: &[Value]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for r in kinds(records, "Usage") {
        let u = &r["kind"]["Usage"];
        *out.entry(u["instance"].as_str().unwrap().to_string())
            .or_default() += u["cpu_ms"].as_u64().unwrap();
    }
    out
}

const SERVICE: &str = r#"
import os, socket, time
# A restart repairs it: forget the fault, listen again.
try:
    os.remove("srv/hang")
except FileNotFoundError:
    pass
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(os.environ["PORT"])))
s.listen(16)
s.settimeout(0.02)
while True:
    if os.path.exists("srv/hang"):
        s.close()          # stops answering on its port, but stays alive
        time.sleep(3600)
    try:
        c, _ = s.accept()
        c.close()
    except socket.timeout:
        pass
"#;

#[test]
fn a_service_that_stops_answering_opens_an_incident_is_repaired_and_resolves() {
    let mut node = fast_node("");
    node.start();
    let dir = node.dir.path().to_path_buf();
    std::fs::write(dir.join("svc.py"), SERVICE).unwrap();
    let port = free_port();
    std::fs::write(
        dir.join("svc.toml"),
        format!(
            r#"
name = "svc"
software = "exec:/usr/bin/python3"
args = ["{}"]
[parameters]
port = "{port}"
[[promises]]
name = "port"
kind = "tcp"
address = "127.0.0.1:{{{{port}}}}"
interval_ms = 150
timeout_ms = 150
threshold = 3
"#,
            dir.join("svc.py").display()
        ),
    )
    .unwrap();
    node.ok(&["request", "--file", dir.join("svc.toml").to_str().unwrap()]);
    let pid = node.running_pid("svc", None);
    wait_for("promise passing", Duration::from_secs(10), || {
        (node.instance("svc")?.promises.first()?.ok == Some(true)).then_some(())
    });

    // Break it: the process lives on but its port goes dark.
    std::fs::write(node.partition("svc").join("srv/hang"), "").unwrap();
    wait_for("incident opened", Duration::from_secs(10), || {
        node.status().incidents.first().cloned()
    });
    // Self-repair restarts it; the restarted service answers; the incident resolves.
    let new_pid = node.running_pid("svc", Some(pid));
    assert_ne!(new_pid, pid);
    let incident = wait_for("incident resolved", Duration::from_secs(10), || {
        let i = node.status().incidents.first()?.clone();
        (i.state == IncidentStatus::Resolved).then_some(i)
    });
    assert_eq!(incident.instance, "svc");
    assert_eq!(incident.promise, "port");
    assert!(node.status().counters.repairs >= 1);

    // Every transition is in the outbox, in order.
    let records = node.outbox();
    let pos = |pred: &dyn Fn(&Value) -> bool| records.iter().position(|r| pred(&r["kind"]));
    let failed = pos(&|k| k["PromiseResult"]["ok"] == false).expect("promise failure recorded");
    let opened = pos(&|k| k["Incident"]["state"] == "Open").expect("incident open recorded");
    let restarted = records
        .iter()
        .enumerate()
        .position(|(i, r)| {
            i > opened && r["kind"]["InstanceState"]["pid"].as_u64() == Some(u64::from(new_pid))
        })
        .expect("restart recorded after the incident opened");
    let passed_again = records
        .iter()
        .enumerate()
        .position(|(i, r)| i > restarted && r["kind"]["PromiseResult"]["ok"] == true)
        .expect("promise passing again recorded");
    let resolved = pos(&|k| k["Incident"]["state"] == "Resolved").expect("resolution recorded");
    assert!(failed < opened && opened < restarted && restarted < passed_again && passed_again <= resolved + 1,
        "order: failed {failed}, opened {opened}, restarted {restarted}, passed {passed_again}, resolved {resolved}");
    // The human status shows it too.
    let text = node.ok(&["status"]);
    assert!(text.contains("port") && text.contains("resolved"), "{text}");
}

#[test]
fn cpu_and_memory_of_a_process_are_accounted() {
    let mut node = fast_node("");
    node.start();
    // Burns one second of CPU, then idles.
    node.ok(&["request", "burner", "--software", "exec:/usr/bin/python3", "--arg", "-c", "--arg",
        "import time\nt=time.process_time()\nwhile time.process_time()-t < 1.0: pass\nopen('srv/done','w').close()\ntime.sleep(3600)"]);
    // Holds ~50 MB resident.
    node.ok(&[
        "request",
        "holder",
        "--software",
        "exec:/usr/bin/python3",
        "--arg",
        "-c",
        "--arg",
        "import time\nb = b'x' * (50 << 20)\nopen('srv/done','w').close()\ntime.sleep(3600)",
    ]);
    for n in ["burner", "holder"] {
        let done = node.partition(n).join("srv/done");
        wait_for("work done", Duration::from_secs(20), || {
            done.exists().then_some(())
        });
    }
    // Wait until the burn is fully accounted: the burner's latest closed interval has
    // (almost) no CPU in it, and the holder has two intervals at full size.
    let records = wait_for("usage records", Duration::from_secs(30), || {
        let r = node.outbox();
        let burner: Vec<u64> = kinds(&r, "Usage")
            .iter()
            .filter(|u| u["kind"]["Usage"]["instance"] == "burner")
            .map(|u| u["kind"]["Usage"]["cpu_ms"].as_u64().unwrap())
            .collect();
        let burned = burner.iter().sum::<u64>() >= 500 && burner.last().is_some_and(|c| *c < 50);
        let holder_full = kinds(&r, "Usage")
            .into_iter()
            .filter(|u| {
                u["kind"]["Usage"]["instance"] == "holder"
                    && u["kind"]["Usage"]["mem_peak_bytes"].as_u64().unwrap() > 50 << 20
            })
            .count();
        (burned && holder_full >= 2).then_some(r)
    });
    let cpu = usage_cpu_by_instance(&records)["burner"];
    assert!(
        (800..=1200).contains(&cpu),
        "burner cpu {cpu} ms, want 1000 ± 20 %"
    );
    let peak = kinds(&records, "Usage")
        .iter()
        .filter(|u| u["kind"]["Usage"]["instance"] == "holder")
        .map(|u| u["kind"]["Usage"]["mem_peak_bytes"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(
        (50 << 20..=80 << 20).contains(&peak),
        "holder peak {peak} bytes, want ~50 MB"
    );
    // Intervals of one instance are contiguous.
    let spans: Vec<(u64, u64)> = kinds(&records, "Usage")
        .iter()
        .filter(|u| u["kind"]["Usage"]["instance"] == "holder")
        .map(|u| {
            (
                u["kind"]["Usage"]["from_ms"].as_u64().unwrap(),
                u["kind"]["Usage"]["to_ms"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(
        spans.windows(2).all(|w| w[0].1 == w[1].0),
        "gaps: {spans:?}"
    );
    // Health records are made, and status shows health.
    assert!(!kinds(&records, "NodeHealth").is_empty());
    assert!(node.status().health.unwrap().mem_total > 0);
}

#[test]
fn cpu_totals_survive_a_daemon_crash_without_double_count_or_gap() {
    let mut node = fast_node("");
    node.start();
    // Each start burns 0.5 s of CPU, writes its pid, then idles.
    node.ok(&["request", "burner", "--software", "exec:/usr/bin/python3", "--arg", "-c", "--arg",
        "import os, time\nt=time.process_time()\nwhile time.process_time()-t < 0.5: pass\nopen('srv/done','w').write(str(os.getpid()))\ntime.sleep(3600)"]);
    let done = node.partition("burner").join("srv/done");
    let first = wait_for("first burn", Duration::from_secs(20), || {
        std::fs::read_to_string(&done)
            .ok()
            .filter(|s| !s.is_empty())
    });
    // Let a sample see the finished burn, in the middle of a usage interval: samples
    // (every 100 ms) and health records share the daemon's loop, so a health record
    // stamped 300 ms after the burn ended proves samples ran after it (whatever the
    // machine's load).
    let burnt_ms = std::fs::metadata(&done)
        .unwrap()
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let burnt_ms = u64::try_from(burnt_ms).unwrap();
    wait_for("burn sampled", Duration::from_secs(20), || {
        kinds(&node.outbox(), "NodeHealth")
            .iter()
            .any(|r| r["time_ms"].as_u64().is_some_and(|t| t > burnt_ms + 300))
            .then_some(())
    });
    node.kill9();
    node.start();
    wait_for("second burn", Duration::from_secs(20), || {
        std::fs::read_to_string(&done)
            .ok()
            .filter(|s| !s.is_empty() && *s != first)
    });
    let total = wait_for("accounted", Duration::from_secs(30), || {
        let cpu = usage_cpu_by_instance(&node.outbox())
            .get("burner")
            .copied()
            .unwrap_or(0);
        // Wait for two further intervals to be closed after the burn.
        (cpu >= 800).then_some(cpu)
    });
    // Settle: another interval must not change the total (nothing counted twice later).
    let n = node.outbox().len();
    wait_for("another interval", Duration::from_secs(10), || {
        (node.outbox().len() > n + 2).then_some(())
    });
    let total_later = usage_cpu_by_instance(&node.outbox())["burner"];
    assert!(
        (800..=1200).contains(&total_later),
        "cpu across a crash {total_later} ms (first seen {total}), want 1000 ± 20 %"
    );
}

#[test]
fn outbox_quota_sheds_by_priority_keeping_incidents_and_usage_totals() {
    let mut node = fast_node("");
    node.edit_config(|c| {
        c.replace("usage_interval_ms = 1000", "usage_interval_ms = 100")
            .replace("health_interval_ms = 1000", "health_interval_ms = 100")
            .replace("summary_interval_ms = 1000", "summary_interval_ms = 100")
            .replace("# quota_bytes = 8388608", "quota_bytes = 16384")
    });
    node.start();
    for n in ["a", "b"] {
        node.request_sleep(n, "1000", &["--promise", "process"]);
    }
    // A flapping promise (fails every other second): incidents open and resolve.
    std::fs::write(
        node.dir.path().join("flap.toml"),
        r#"
name = "flap"
software = "exec:/bin/sleep"
args = ["1000"]
[[promises]]
name = "odd"
kind = "command"
command = ["/bin/sh", "-c", "test $(( $(date +%s) % 2 )) = 0"]
interval_ms = 200
timeout_ms = 200
threshold = 1
"#,
    )
    .unwrap();
    node.ok(&[
        "request",
        "--file",
        node.dir.path().join("flap.toml").to_str().unwrap(),
    ]);
    // A long outage, compressed: wait for shedding of every kind.
    wait_for("shedding", Duration::from_secs(60), || {
        let c = node.status().counters;
        (c.shed_merged_usage > 0 && c.shed_dropped_health > 0).then_some(())
    });
    let status = node.status();
    let records = node.outbox();
    let bytes = status.outbox.bytes;
    assert!(bytes <= 16384 + 4096, "outbox {bytes} bytes, quota 16384");
    // Every incident transition ever made is still there: ids 1..=max each opened.
    let max_id = status
        .incidents
        .iter()
        .map(|i| i.id)
        .max()
        .expect("incidents opened");
    let opened: Vec<u64> = kinds(&records, "Incident")
        .iter()
        .filter(|r| r["kind"]["Incident"]["state"] == "Open")
        .map(|r| r["kind"]["Incident"]["id"].as_u64().unwrap())
        .collect();
    // The promise keeps flapping: incidents opened after the status snapshot may be in
    // the outbox too. Every id up to the snapshot's, and none missing, must be there.
    let last = opened.last().copied().unwrap_or(0);
    assert!(
        last >= max_id,
        "incident {max_id} missing from the outbox: {opened:?}"
    );
    assert_eq!(
        opened,
        (1..=last).collect::<Vec<_>>(),
        "incident records lost"
    );
    // Usage totals preserved exactly through merging.
    let in_outbox = usage_cpu_by_instance(&records);
    for i in &status.instances {
        let name = i.name.as_str();
        assert_eq!(
            in_outbox.get(name).copied().unwrap_or(0),
            i.usage_cpu_ms,
            "{name}"
        );
    }
    // Shedding is itself reported.
    let shed = kinds(&records, "Shed");
    assert!(!shed.is_empty(), "no Shed record");
    // The sequence never goes backwards and is never reused.
    let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn a_full_disk_never_stops_supervision_and_records_resume_when_space_returns() {
    if !common::can_run_as_root("root to mount a small tmpfs") {
        return;
    }
    let mut node = fast_node("");
    // The state directory on a 16 MiB tmpfs.
    let mnt = node.home();
    let saved = node.dir.path().join("saved");
    std::fs::rename(&mnt, &saved).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m,mode=0711", "tmpfs"])
        .arg(&mnt)
        .status()
        .unwrap()
        .success();
    assert!(ok, "mount tmpfs");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", saved.display()))
        .arg(&mnt)
        .status()
        .unwrap();
    node.start();
    node.request_sleep("sleeper", "1000", &[]);
    let mut pid = node.running_pid("sleeper", None);

    // Fill the disk.
    let filler = mnt.join("filler");
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "count=64"])
        .arg(format!("of={}", filler.display()))
        .stderr(std::process::Stdio::null())
        .status();
    // sled writes into its preallocated segment until it must grow: push big records
    // (local requests with a 4 KB parameter) until writes fail.
    let big = format!("big={}", "x".repeat(4000));
    for i in 0..400 {
        let out = node.cli(&[
            "request",
            &format!("pad{i}"),
            "--software",
            "exec:/bin/true",
            "--state",
            "stopped",
            "--param",
            &big,
        ]);
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr).to_string();
            assert!(
                err.contains("No space left") || err.contains("space"),
                "{err}"
            );
            break;
        }
    }
    wait_for("store errors counted", Duration::from_secs(20), || {
        (node.status().counters.store_errors > 0).then_some(())
    });
    assert!(node.daemon_log().contains("store write failed"));
    // Supervision goes on: kills are repaired while records fail.
    for _ in 0..3 {
        nix::sys::signal::kill(common::nix_pid(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
        pid = node.running_pid("sleeper", Some(pid));
    }

    // Space returns: records resume.
    std::fs::remove_file(&filler).unwrap();
    let before = node.status().outbox.next_seq;
    nix::sys::signal::kill(common::nix_pid(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    node.running_pid("sleeper", Some(pid));
    wait_for("records resume", Duration::from_secs(20), || {
        (node.status().outbox.next_seq > before + 1).then_some(())
    });
    // And the outbox still holds a gap-free sequence of what it stored.
    let seqs: Vec<u64> = node
        .outbox()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    node.terminate();
}

#[test]
fn prometheus_endpoint_serves_instance_promise_and_outbox_metrics() {
    let port = free_port();
    let mut node = fast_node("");
    node.edit_config(|c| {
        c.replace(
            "# listen = \"127.0.0.1:9464\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        )
    });
    node.start();
    node.request_sleep("web", "1000", &["--promise", "process"]);
    node.running_pid("web", None);
    let get = || -> Option<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        Some(text)
    };
    let text = wait_for("promise metric", Duration::from_secs(20), || {
        get().filter(|t| t.contains("hedge_promise_ok{instance=\"web\",promise=\"process\"} 1"))
    });
    assert!(text.starts_with("HTTP/1.0 200"), "{text}");
    for want in [
        "hedge_instance_up{instance=\"web\"} 1",
        "hedge_outbox_depth ",
        "hedge_incidents_open 0",
        "hedge_shed_total{kind=\"usage_merged\"}",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
}

#[test]
fn a_stopped_instance_makes_no_usage_records() {
    let mut node = fast_node("");
    node.edit_config(|c| c.replace("usage_interval_ms = 1000", "usage_interval_ms = 200"));
    node.start();
    node.request_sleep("quiet", "1000", &[]);
    node.running_pid("quiet", None);
    let usage = |n: &Node| {
        kinds(&n.outbox(), "Usage")
            .iter()
            .filter(|u| u["kind"]["Usage"]["instance"] == "quiet")
            .map(|u| {
                (
                    u["kind"]["Usage"]["from_ms"].as_u64().unwrap(),
                    u["kind"]["Usage"]["to_ms"].as_u64().unwrap(),
                )
            })
            .collect::<Vec<_>>()
    };
    wait_for("usage while running", Duration::from_secs(10), || {
        (usage(&node).len() >= 2).then_some(())
    });
    node.ok(&["stop", "quiet"]);
    wait_for("stopped", Duration::from_secs(10), || {
        (node.instance("quiet")?.state == InstanceStatus::Stopped).then_some(())
    });
    // One more record may close the interval the stop fell in; then silence. Two node
    // health records (every 1 s, like usage) prove the monitor ran past an interval.
    let health = |node: &Node| kinds(&node.outbox(), "NodeHealth").len();
    let h0 = health(&node);
    wait_for(
        "a usage interval after the stop",
        Duration::from_secs(10),
        || (health(&node) >= h0 + 2).then_some(()),
    );
    let settled = usage(&node).len();
    let h1 = health(&node);
    wait_for("two more health records", Duration::from_secs(10), || {
        (health(&node) >= h1 + 2).then_some(())
    });
    assert_eq!(
        usage(&node).len(),
        settled,
        "a stopped instance keeps reporting usage"
    );
    // Started again: records resume, contiguous with the last one (the quiet time is
    // inside the next interval, with no uptime).
    node.ok(&["start", "quiet"]);
    wait_for("usage resumes", Duration::from_secs(10), || {
        (usage(&node).len() > settled + 1).then_some(())
    });
    let spans = usage(&node);
    assert!(
        spans.windows(2).all(|w| w[0].1 == w[1].0),
        "gap in {spans:?}"
    );
}
