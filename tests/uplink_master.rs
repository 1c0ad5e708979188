//! Node ↔ master sync over a real mosquitto with mutual TLS and the generated ACL:
//! exactly-once records through link cuts and SIGKILLs of node, master and broker;
//! requests made while a node is offline; forged and replayed desired states; a node
//! that tries to publish as another; two masters sharing the subscription; Nagle's
//! algorithm off on every MQTT connection.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::fleet::{can_cut, Fleet};
use common::sockets::nodelay_on_port;
use common::{hedge, wait_for, Node};
use hedge_wire::InstanceStatus;
use serde_json::Value;

#[test]
fn ten_thousand_records_reach_the_master_exactly_once_through_cuts_and_kills() {
    if !common::can_run(can_cut(), "root and nft to cut links") {
        return;
    }
    let mut fleet = Fleet::new();
    fleet.start_master();
    let mut node = fleet.node("chaos");
    node.edit_config(|c| {
        c.replace("sample_interval_ms = 10000", "sample_interval_ms = 100")
            .replace("usage_interval_ms = 60000", "usage_interval_ms = 100")
    });
    node.start();
    // 20 idle instances: 200 usage records a second.
    for i in 0..20 {
        node.request_sleep(&format!("s{i}"), "100000", &[]);
    }
    let mut kills = [0u32; 3];
    let mut cuts = 0;
    let mut round = 0usize;
    while cuts < 20 || kills.iter().any(|k| *k < 3) || node.status().outbox.next_seq <= 10_000 {
        round += 1;
        fleet.cut_link();
        cuts += 1;
        std::thread::sleep(Duration::from_millis(400));
        fleet.restore_link();
        match round % 4 {
            1 if kills[0] < 3 => {
                node.kill9();
                node.start();
                kills[0] += 1;
            }
            2 if kills[1] < 3 => {
                fleet.kill_master(0);
                kills[1] += 1;
            }
            3 if kills[2] < 3 => {
                fleet.broker.kill9();
                fleet.broker.restart();
                kills[2] += 1;
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(800));
        assert!(round < 200, "not done after {round} rounds");
    }
    // Quiet the node, then let it drain.
    for i in 0..20 {
        node.ok(&["destroy", &format!("s{i}")]);
    }
    let (next, depth) = wait_for("node drained", Duration::from_secs(120), || {
        let s = node.status();
        let depth = s.outbox.depth;
        (depth == 0).then_some((s.outbox.next_seq, depth))
    });
    assert_eq!(depth, 0);
    let produced = next - 1;
    assert!(produced >= 10_000, "only {produced} records");
    let (records, last_seq) = wait_for("master caught up", Duration::from_secs(30), || {
        let h = fleet.held("chaos");
        (h.1 >= produced).then_some(h)
    });
    // Every record the node made, exactly once: as many rows as sequence numbers.
    assert_eq!(
        records,
        last_seq,
        "master holds {records} records for seqs 1..={last_seq}; seqs missing there: {:?}",
        missing_seqs(&fleet, "chaos", last_seq)
    );
    assert!(last_seq >= produced);
    // Nothing stored twice where it could be: the same event under two seqs or lives
    // (repeats), two contents for one seq (conflicts); SIGKILLs keep the node's life.
    let v: Value = serde_json::from_str(&fleet.master_ok(&["nodes", "--json"])).unwrap();
    let n = v
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == "chaos")
        .unwrap();
    let (lives, repeats, conflicts) = (
        n["lives"].as_u64().unwrap(),
        n["repeats"].as_u64().unwrap(),
        n["conflicts"].as_u64().unwrap(),
    );
    // CPU accounted twice (across the node's SIGKILLs): usage intervals of one
    // instance that overlap.
    let overlapping: usize = (0..20)
        .map(|i| {
            let spans = master_usage(&fleet, "chaos", &format!("s{i}"));
            let mut end = 0;
            let mut n = 0;
            for (k, (from, to, _)) in spans.into_iter().enumerate() {
                if k > 0 && from < end {
                    n += 1;
                }
                end = end.max(to);
            }
            n
        })
        .sum();
    eprintln!(
        "chaos: {produced} records, {cuts} cuts, kills node/master/broker {kills:?}, {round} rounds; \
         lost {}, duplicated {} (repeats {repeats}, conflicts {conflicts}, overlapping usage \
         {overlapping}), lives {lives}",
        last_seq - records,
        repeats + conflicts + overlapping as u64
    );
    assert_eq!(
        (lives, repeats, conflicts, overlapping),
        (1, 0, 0, 0),
        "{n}"
    );
}

#[test]
fn a_request_made_while_the_node_is_offline_reaches_it_and_survives_an_offline_reboot() {
    if !common::can_run(can_cut(), "root and nft to cut links") {
        return;
    }
    let mut fleet = Fleet::new();
    fleet.start_master();
    let mut node = fleet.node("field-1");
    node.start();
    // The master knows the node once its first records arrive.
    wait_for("node registered", Duration::from_secs(30), || {
        (fleet.held("field-1").0 > 0).then_some(())
    });
    fleet.cut_link();
    wait_for("node offline", Duration::from_secs(30), || {
        (!node.status().uplink.connected).then_some(())
    });
    let out = fleet.master_ok(&[
        "request",
        "web",
        "--software",
        "exec:/bin/sleep",
        "--arg",
        "1000",
    ]);
    assert!(out.contains("field-1"), "{out}");
    // The master has published it (retained) while the node is still cut off.
    wait_for("desired state published", Duration::from_secs(30), || {
        fleet
            .master_log(0)
            .lines()
            .any(|l| l.contains("desired state published") && l.contains("field-1"))
            .then_some(())
    });
    assert!(!node.status().uplink.connected);
    assert!(
        node.instance("web").is_none(),
        "arrived through a cut link?"
    );
    fleet.restore_link();
    node.running_pid("web", None);
    assert_eq!(
        node.status().uplink.progress.and_then(|p| p.generation),
        Some(1)
    );
    // Reboot offline: still runs it, from its own store.
    fleet.cut_link();
    node.kill9();
    node.start();
    node.running_pid("web", None);
    // The master records what the node reports once it is back.
    fleet.restore_link();
    wait_for("instance reported", Duration::from_secs(30), || {
        let v: Value = serde_json::from_str(&fleet.master_ok(&["instances", "--json"])).ok()?;
        v.as_array()?
            .iter()
            .any(|i| i["name"] == "web" && i["status"] == "Running")
            .then_some(())
    });
}

#[test]
fn forged_and_replayed_desired_states_are_refused_and_a_node_cannot_publish_as_another() {
    let mut fleet = Fleet::new();
    fleet.start_master();
    let mut node = fleet.node("alpha");
    node.start();
    wait_for("node registered", Duration::from_secs(30), || {
        (fleet.held("alpha").0 > 0).then_some(())
    });
    fleet.master_ok(&[
        "request",
        "one",
        "--software",
        "exec:/bin/sleep",
        "--arg",
        "1000",
    ]);
    node.running_pid("one", None);
    // Keep the store as it was at generation 1, for the replay below.
    let m = fleet.dir.path().join("m");
    let old = fleet.dir.path().join("old");
    std::fs::create_dir(&old).unwrap();
    // A consistent copy of the SQLite store (WAL included) while no one writes.
    fleet.kill_master(0);
    fleet.masters[0].kill().unwrap();
    fleet.masters[0].wait().unwrap();
    for f in ["master.db", "master.db-wal", "master.db-shm"] {
        if m.join(f).exists() {
            std::fs::copy(m.join(f), old.join(f)).unwrap();
        }
    }
    fleet.masters.clear();
    fleet.start_master();
    fleet.master_ok(&[
        "request",
        "two",
        "--software",
        "exec:/bin/sleep",
        "--arg",
        "1000",
    ]);
    node.running_pid("two", None);
    assert_eq!(
        node.status().uplink.progress.and_then(|p| p.generation),
        Some(2)
    );
    let rejected = |n: &Node| n.status().counters.desired_rejected;

    // A rogue publisher with the broker credentials but not the signing key.
    let rogue = fleet.dir.path().join("rogue");
    std::fs::create_dir(&rogue).unwrap();
    for f in ["ca.crt", "master.crt", "master.key"] {
        std::fs::copy(m.join(f), rogue.join(f)).unwrap();
    }
    let key: [u8; 32] = std::array::from_fn(|i| u8::try_from(i + 1).unwrap());
    std::fs::write(rogue.join("signing.key"), key).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        rogue.join("signing.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    // Without the HTTPS endpoint (it needs the CA's key, which these copies lack).
    let toml: String = std::fs::read_to_string(m.join("master.toml"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("listen = "))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(rogue.join("master.toml"), &toml).unwrap();
    let rogue_cli = |args: &[&str]| {
        hedge()
            .arg("master")
            .args(args)
            .arg("--config")
            .arg(rogue.join("master.toml"))
            .output()
            .unwrap()
    };
    // The rogue store knows the node (copied) and signs generation 3 with its own key.
    for f in ["master.db", "master.db-wal", "master.db-shm"] {
        if m.join(f).exists() {
            std::fs::copy(m.join(f), rogue.join(f)).unwrap();
        }
    }
    let out = rogue_cli(&[
        "request",
        "evil",
        "--software",
        "exec:/bin/sh",
        "--arg",
        "-c",
        "--arg",
        "touch /tmp/pwned",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fleet.masters[0].kill().unwrap();
    fleet.masters[0].wait().unwrap();
    let mut rogue_run = hedge()
        .args(["master", "run", "--config"])
        .arg(rogue.join("master.toml"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("forgery refused", Duration::from_secs(30), || {
        (rejected(&node) >= 1).then_some(())
    });
    rogue_run.kill().unwrap();
    rogue_run.wait().unwrap();
    assert!(node.instance("evil").is_none());
    assert_eq!(
        node.status().uplink.progress.and_then(|p| p.generation),
        Some(2)
    );

    // A replay: the genuine generation-1 state, published again.
    let before = rejected(&node);
    std::fs::write(old.join("master.toml"), &toml).unwrap();
    for f in ["ca.crt", "master.crt", "master.key", "signing.key"] {
        std::fs::copy(m.join(f), old.join(f)).unwrap();
    }
    let mut replay = hedge()
        .args(["master", "run", "--config"])
        .arg(old.join("master.toml"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("replay refused", Duration::from_secs(30), || {
        (rejected(&node) > before).then_some(())
    });
    replay.kill().unwrap();
    replay.wait().unwrap();
    node.running_pid("two", None);
    assert_eq!(
        node.status().uplink.progress.and_then(|p| p.generation),
        Some(2)
    );
    // Both refusals are reported as records: in the outbox, or at a master once
    // acknowledged. The rogue and the replaying master hold the broker's credentials
    // and copies of the store: each may have stored (and acknowledged) what the node
    // sent while it ran.
    let stores = [fleet.master_dir(), rogue.clone(), old.clone()];
    let reasons = wait_for("both refusals reported", Duration::from_secs(30), || {
        let reasons = desired_refusals(&stores, &node, "alpha");
        (reasons.iter().any(|r| r.contains("signature"))
            && reasons.iter().any(|r| r.contains("is not newer")))
        .then_some(reasons)
    });
    assert!(reasons.len() >= 2, "{reasons:?}");

    // Node "beta" configured to claim alpha's id: the broker's ACL drops what it
    // publishes on alpha's topic, so the master stores nothing new for alpha from it.
    fleet.start_master();
    let beta_bundle = fleet.dir.path().join("beta.bundle");
    fleet.master_ok(&["enroll", "beta", "--out", beta_bundle.to_str().unwrap()]);
    let mut beta = Node::init_enrolled(&beta_bundle);
    let port = fleet.node_port;
    beta.edit_config(move |c| {
        c.lines()
            .map(|l| {
                if l.starts_with("port = ") {
                    format!("port = {port}")
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    // Beta gets its certificate (CN beta) as itself, then claims alpha's id.
    beta.start();
    wait_for("beta enrolled", Duration::from_secs(30), || {
        (beta.status().uplink.connected).then_some(())
    });
    beta.kill9();
    beta.edit_config(|c| c.replace("id = \"beta\"", "id = \"alpha\""));
    node.kill9(); // the real alpha goes quiet
    let (held_before, last_before) = fleet.held("alpha");
    beta.start();
    beta.request_sleep("noise", "1000", &[]);
    wait_for("beta published", Duration::from_secs(30), || {
        (beta.status().uplink.progress?.sent_upto > 0).then_some(())
    });
    // A node that connects after beta published gets its records stored: the broker
    // and the master have moved past beta's publishes.
    let mut gamma = fleet.node("gamma");
    gamma.start();
    wait_for("gamma's records stored", Duration::from_secs(30), || {
        (fleet.held("gamma").0 > 0).then_some(())
    });
    assert_eq!(
        fleet.held("alpha"),
        (held_before, last_before),
        "beta's records reached alpha's account"
    );
    assert_eq!(
        beta.status().uplink.progress.map(|p| p.acked_upto),
        Some(0),
        "the master acked beta as alpha"
    );
}

#[test]
fn two_masters_share_the_subscription_and_store_each_record_once() {
    let mut fleet = Fleet::new();
    fleet.start_master();
    fleet.start_master();
    let mut node = fleet.node("shared");
    node.edit_config(|c| {
        c.replace("sample_interval_ms = 10000", "sample_interval_ms = 100")
            .replace("usage_interval_ms = 60000", "usage_interval_ms = 100")
            .replace("max_batch_records = 1024", "max_batch_records = 16")
    });
    node.start();
    for i in 0..10 {
        node.request_sleep(&format!("s{i}"), "100000", &[]);
    }
    wait_for("2000 records", Duration::from_secs(60), || {
        (node.status().outbox.next_seq > 2000).then_some(())
    });
    for i in 0..10 {
        node.ok(&["destroy", &format!("s{i}")]);
    }
    let next = wait_for("drained", Duration::from_secs(60), || {
        let s = node.status();
        (s.outbox.depth == 0).then_some(s.outbox.next_seq)
    });
    let (records, last_seq) = wait_for("master caught up", Duration::from_secs(30), || {
        let h = fleet.held("shared");
        (h.1 >= next - 1).then_some(h)
    });
    assert_eq!(records, last_seq);
    // Both processes did part of the work.
    for m in &mut fleet.masters {
        nix::sys::signal::kill(common::nix_pid(m.id()), nix::sys::signal::Signal::SIGTERM).unwrap();
        m.wait().unwrap();
    }
    for i in 0..2 {
        let log = std::fs::read_to_string(fleet.dir.path().join(format!("master{i}.log"))).unwrap();
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains("master stopped"))
            .expect("stop line");
        assert!(
            !line.contains("batches: 0,"),
            "master {i} stored nothing: {line}"
        );
    }
}

/// With Nagle's algorithm on, a small packet (an ack, a PUBACK) waits for the peer's
/// delayed acknowledgement of the previous segment, up to 40 ms: the drain after an
/// outage stalled with every process idle. Each end of both connections (node ↔ broker,
/// master ↔ broker) must have `TCP_NODELAY`, read from the live sockets.
#[test]
fn every_mqtt_connection_sends_without_nagle_delays() {
    let mut fleet = Fleet::new();
    fleet.start_master();
    let node = fleet.started_node("swift");
    let node_pid = node.daemon.as_ref().unwrap().id();
    let master_pid = fleet.masters[0].id();
    let broker_pid = fleet.broker.pid().unwrap();
    let (nodes_port, masters_port) = (fleet.node_port, fleet.broker.port);
    for (who, pid, port) in [
        ("node", node_pid, nodes_port),
        ("broker, nodes' side", broker_pid, nodes_port),
        ("master", master_pid, masters_port),
        ("broker, masters' side", broker_pid, masters_port),
    ] {
        let seen = nodelay_on_port(pid, port);
        assert!(!seen.is_empty(), "{who}: no connection on port {port}");
        assert!(
            seen.iter().all(|on| *on),
            "{who}: TCP_NODELAY off on a connection of port {port}: {seen:?}"
        );
    }
}

#[test]
fn usage_records_reach_the_master_without_waiting_for_another_record() {
    let mut fleet = Fleet::new();
    fleet.start_master();
    let mut node = fleet.node("meter");
    // Health every 60 s and promise summaries every 300 s (the defaults): after the
    // start, usage records are the only ones the node appends.
    node.edit_config(|c| {
        c.replace("sample_interval_ms = 10000", "sample_interval_ms = 100")
            .replace("usage_interval_ms = 60000", "usage_interval_ms = 500")
    });
    node.start();
    node.request_sleep("metered", "100000", &[]);
    // Several intervals, each sent as it is appended, well before the next health record.
    wait_for(
        "usage records at the master",
        Duration::from_secs(20),
        || {
            let v: Value = serde_json::from_str(&fleet.master_ok(&["usage", "--json"])).ok()?;
            let n = v
                .as_array()?
                .iter()
                .filter(|r| r["node"] == "meter" && r["usage"]["instance"] == "metered")
                .count();
            (n >= 3).then_some(())
        },
    );
}

#[test]
fn a_busy_node_connects_over_a_slow_link() {
    let mut fleet = Fleet::new();
    fleet.start_master();
    // 250 ms each way: TCP, TLS and MQTT CONNECT take well over a second.
    let slow = common::slow_link::SlowLink::start(fleet.node_port, Duration::from_millis(250));
    let mut node = fleet.node("busy");
    let (direct, via) = (
        format!("port = {}", fleet.node_port),
        format!("port = {}", slow.port),
    );
    node.edit_config(|c| {
        assert!(c.contains(&direct));
        c.replace(&direct, &via)
            .replace("sample_interval_ms = 10000", "sample_interval_ms = 100")
            .replace("usage_interval_ms = 60000", "usage_interval_ms = 100")
    });
    node.start();
    // Twenty instances metered every 100 ms: an append every few milliseconds, each
    // waking the link while it connects.
    for i in 0..20 {
        node.request_sleep(&format!("b{i}"), "100000", &[]);
    }
    wait_for("busy node connected", Duration::from_secs(60), || {
        (node.status().uplink.connected).then_some(())
    });
    wait_for("records at the master", Duration::from_secs(60), || {
        (fleet.held("busy").0 > 0).then_some(())
    });
}

/// (from_ms, to_ms, cpu_ms) of usage records.
type Spans = Vec<(u64, u64, u64)>;

/// Usage intervals the master holds for `instance` of `node`, sorted.
fn master_usage(fleet: &Fleet, node: &str, instance: &str) -> Spans {
    let v: Value = serde_json::from_str(&fleet.master_ok(&["usage", "--json"])).unwrap();
    let mut spans: Spans = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["node"] == node && r["usage"]["instance"] == instance)
        .map(|r| {
            let u = &r["usage"];
            (
                u["from_ms"].as_u64().unwrap(),
                u["to_ms"].as_u64().unwrap(),
                u["cpu_ms"].as_u64().unwrap(),
            )
        })
        .collect();
    spans.sort_unstable();
    spans
}

#[test]
fn shedding_never_touches_what_the_uplink_holds_when_the_link_dies_unnoticed() {
    if !common::can_run(can_cut(), "root and nft to cut links") {
        return;
    }
    let mut fleet = Fleet::new();
    fleet.start_master();
    let mut node = fleet.node("quota");
    node.edit_config(|c| {
        c.replace("sample_interval_ms = 10000", "sample_interval_ms = 100")
            .replace("usage_interval_ms = 60000", "usage_interval_ms = 100")
            .replace("health_interval_ms = 60000", "health_interval_ms = 100")
            .replace("# quota_bytes = 8388608", "quota_bytes = 16384")
    });
    node.start();
    let names = ["u1", "u2", "u3"];
    for n in names {
        node.ok(&[
            "request",
            n,
            "--software",
            "exec:/bin/sh",
            "--arg",
            "-c",
            "--arg",
            "while :; do i=0; while [ $i -lt 3000 ]; do i=$((i+1)); done; sleep 0.1; done",
        ]);
    }
    wait_for("records acknowledged", Duration::from_secs(30), || {
        (node.status().uplink.progress?.acked_upto > 20).then_some(())
    });
    // Packets vanish: the uplink keeps its look-ahead and in-flight batches loaded
    // while the outbox grows past its quota and is shed.
    fleet.cut_link_silently();
    wait_for(
        "usage merged and health dropped",
        Duration::from_secs(90),
        || {
            let c = node.status().counters;
            (c.shed_merged_usage > 50 && c.shed_dropped_health > 20).then_some(())
        },
    );
    fleet.restore_link();
    // Stop producing, then wait for everything to be acknowledged.
    for n in names {
        node.ok(&["stop", n]);
    }
    wait_for("instances stopped", Duration::from_secs(30), || {
        names
            .iter()
            .all(|n| {
                node.instance(n)
                    .is_some_and(|i| i.state == InstanceStatus::Stopped)
            })
            .then_some(())
    });
    // Everything the node counted reaches the master: wait until a snapshot's records
    // are all acknowledged and the master's totals match it.
    let (status, held) = wait_for(
        "usage totals at the master",
        Duration::from_secs(90),
        || {
            let status = node.status();
            let last = status.outbox.next_seq - 1;
            if status.uplink.progress?.acked_upto < last {
                return None;
            }
            let held: Vec<(String, Spans)> = names
                .iter()
                .map(|n| (n.to_string(), master_usage(&fleet, "quota", n)))
                .collect();
            let all = held.iter().all(|(n, spans)| {
                let node_cpu = status.instance(n).map(|i| i.usage_cpu_ms);
                node_cpu == Some(spans.iter().map(|s| s.2).sum())
            });
            all.then_some((status, held))
        },
    );
    assert!(status.counters.shed_merged_usage > 50);
    for (name, spans) in held {
        assert!(spans.len() > 3, "{name}: {spans:?}");
        // Merged or not, the intervals the master holds join end to start: a usage
        // record lost to a merge leaves a gap.
        for w in spans.windows(2) {
            assert_eq!(w[0].1, w[1].0, "{name}: usage lost between {w:?}");
        }
    }
}

/// Reasons of the desired states `node` (id `id`) refused: from its outbox, and from
/// the master's store for the ones already acknowledged.
/// The seqs in `1..=last` the master's store holds no record of `id` for, as ranges.
fn missing_seqs(fleet: &Fleet, id: &str, last: u64) -> Vec<(u64, u64)> {
    use hedge_master::store::FleetStore;
    let store =
        hedge_master::store::MasterStore::open(&fleet.master_dir().join("master.db")).unwrap();
    let id = hedge_wire::Name::new(id).unwrap();
    let held: std::collections::BTreeSet<u64> = store
        .records(&id, 0, u32::MAX)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for seq in (1..=last).filter(|s| !held.contains(s)) {
        match ranges.last_mut() {
            Some((_, to)) if *to + 1 == seq => *to = seq,
            _ => ranges.push((seq, seq)),
        }
    }
    ranges
}

/// The reasons of the refused desired states `node` reported as `id`: those still in its
/// outbox, and those stored by the masters whose directories are `masters`.
fn desired_refusals(masters: &[PathBuf], node: &Node, id: &str) -> Vec<String> {
    let mut out: Vec<String> = node
        .outbox()
        .into_iter()
        .filter(|r| r["kind"]["Desired"]["accepted"] == false)
        .filter_map(|r| Some(r["kind"]["Desired"]["reason"].as_str()?.to_string()))
        .collect();
    use hedge_master::store::FleetStore;
    let id = hedge_wire::Name::new(id).unwrap();
    for dir in masters {
        let store = hedge_master::store::MasterStore::open(&dir.join("master.db")).unwrap();
        for r in store.records(&id, 0, u32::MAX).unwrap() {
            if let hedge_wire::RecordKind::Desired {
                accepted: false,
                reason,
                ..
            } = r.kind
            {
                out.push(reason);
            }
        }
    }
    out
}
