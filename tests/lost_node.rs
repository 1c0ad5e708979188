//! A lost node's leased instance runs elsewhere, and never twice: a real master, broker
//! and nodes; a sampler reads the process list every 100 ms and no sample may show more
//! copies than requested.
//!
//! - Killed: node A's daemon is SIGKILLed (its instance dies with it) and stays away;
//!   after the master's `lost_after` the instance runs on B. A restarted A never starts
//!   its old copy (it has no lease) and destroys it once its desired state arrives.
//! - Cut: A keeps running but its link is cut (nftables, on A's own proxy port): A's
//!   lease lapses and A stops its copy itself before B starts one; when the link returns
//!   A destroys its copy and never runs it again.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::fleet::{can_cut, cut_port, nft, Fleet};
use common::slow_link::SlowLink;
use common::{wait_for, Node};
use hedge_wire::InstanceStatus;
use serde_json::Value;

/// The silence after which the master declares a node lost, ms, and the margin by which
/// a `move` instance's lease is shorter (it covers the node's stop grace, 1 s in tests).
const LOST_AFTER_MS: u64 = 6_000;
const LEASE_MARGIN_MS: u64 = 2_000;
const LEASE_MS: u64 = LOST_AFTER_MS - LEASE_MARGIN_MS;

/// The command line of test `test`'s copies: unique to it in this test binary's run.
fn argv(test: u32) -> Vec<String> {
    vec![
        "/bin/sleep".into(),
        format!("{}{test}", 4_000_000 + std::process::id()),
    ]
}

/// The pids of live processes whose command line is exactly `argv`.
fn copies(argv: &[String]) -> Vec<u32> {
    let want: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want))
        .collect()
}

/// One sample: when, and the pids of the copies then.
type Sample = (Instant, Vec<u32>);

/// Samples the copies every 100 ms until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Sample>>>,
}

impl Sampler {
    #[allow(clippy::disallowed_methods)] // an end-to-end test: samples in real time
    fn start(argv: Vec<String>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !stopping.load(Ordering::Relaxed) {
                samples.push((Instant::now(), copies(&argv)));
                std::thread::sleep(Duration::from_millis(100));
            }
            samples
        });
        Sampler {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sampling; every sample taken.
    fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Asserts that no sample shows more than one copy; returns how many were taken.
fn at_most_one(samples: &[Sample]) -> usize {
    let first = samples.first().map(|s| s.0);
    for (t, pids) in samples {
        assert!(
            pids.len() <= 1,
            "two copies at once, {:?} into the test: {pids:?}",
            first.map(|f| t.duration_since(f))
        );
    }
    samples.len()
}

/// A nftables table dropping every packet to and from one loopback port (removed on drop).
struct Cut(String);

impl Cut {
    fn port(port: u16) -> Cut {
        Cut(cut_port(port, &["drop"]))
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        nft(&["delete", "table", "inet", &self.0]);
    }
}

/// The fleet: a master with short lease and lost times (see `LEASE_MS`).
fn fleet() -> Fleet {
    let mut fleet = Fleet::new();
    let path = fleet.config();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, master_toml(&text)).unwrap();
    fleet.start_master();
    fleet
}

/// `master.toml` with this test's `[failover]` times, checked every 200 ms.
fn master_toml(text: &str) -> String {
    let mut done = 0;
    let out = text
        .lines()
        .map(|l| {
            let mut set = |v: u64| {
                done += 1;
                format!("{} = {v}", l.split(" =").next().unwrap())
            };
            if l.starts_with("lost_after_ms = ") {
                set(LOST_AFTER_MS)
            } else if l.starts_with("lease_margin_ms = ") {
                set(LEASE_MARGIN_MS)
            } else if l.starts_with("check_every_ms = ") {
                set(200)
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(done, 3, "master.toml's [failover] changed");
    out + "\n"
}

/// A started node `id` known to the master, its uplink through `via` (a proxy port) if
/// given. An idle node (no leased instance, so no heartbeat) is heard at its health
/// records: more often than `lost_after` here, so that B is not lost itself.
fn node(fleet: &Fleet, id: &str, via: Option<u16>) -> Node {
    let from = format!("port = {}", fleet.node_port);
    fleet.started_node_with(id, |c| {
        let c = c.replace("health_interval_ms = 60000", "health_interval_ms = 1000");
        match via {
            Some(port) => c.replace(&from, &format!("port = {port}")),
            None => c,
        }
    })
}

/// Requests the `move` instance `web` (its command line `argv`) on node `on`.
fn request_web(fleet: &Fleet, argv: &[String], on: &str) {
    fleet.master_ok(&[
        "request",
        "web",
        "--software",
        &format!("exec:{}", argv[0]),
        "--arg",
        &argv[1],
        "--node",
        on,
        "--on-lost",
        "move",
    ]);
}

/// The pid of `web` on `node` once it runs there, holding its lease; on a timeout, what
/// the master said and decided.
#[allow(clippy::disallowed_methods)] // an end-to-end test: waits with a deadline
fn web_running(fleet: &Fleet, node: &Node, within: Duration) -> u32 {
    let deadline = Instant::now() + within;
    loop {
        let i = node.try_status().and_then(|s| s.instance("web").cloned());
        if let Some(i) = &i {
            if i.state == InstanceStatus::Running && i.lease_held == Some(true) {
                if let Some(pid) = i.pid {
                    return pid;
                }
            }
        }
        if Instant::now() > deadline {
            let log = fleet.master_log(0);
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "web not running within {within:?}: {i:?}\nnodes: {}\nmaster log (last lines first):\n{}",
                fleet.master_ok(&["nodes"]),
                tail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Records of `kind` about `web` in the node's outbox, as JSON.
fn web_records(node: &Node, kind: &str) -> Vec<Value> {
    node.outbox()
        .into_iter()
        .filter(|r| r["kind"][kind]["instance"] == "web")
        .collect()
}

#[test]
#[allow(clippy::disallowed_methods)] // an end-to-end test: times a real failover
fn a_killed_node_s_instance_runs_elsewhere_and_its_old_copy_never_starts_again() {
    let fleet = fleet();
    let argv = argv(1);
    let sampler = Sampler::start(argv.clone());
    let mut a = node(&fleet, "node-a", None);
    let b = node(&fleet, "node-b", None);
    request_web(&fleet, &argv, "node-a");
    let on_a = web_running(&fleet, &a, Duration::from_secs(30));
    assert_eq!(copies(&argv), vec![on_a]);

    // A dies (its instance with it: PDEATHSIG) and stays away.
    a.kill9();
    let lost = Instant::now();
    let on_b = web_running(&fleet, &b, Duration::from_millis(LOST_AFTER_MS) * 4);
    let took = lost.elapsed();
    eprintln!(
        "node lost -> running elsewhere: {took:?} (lease {LEASE_MS} ms, lost_after {LOST_AFTER_MS} ms)"
    );
    // The master last heard A at most a heartbeat (a third of the lease) before the kill.
    assert!(
        took >= Duration::from_millis(LOST_AFTER_MS - LEASE_MS / 3 - 500),
        "{took:?}"
    );
    assert_eq!(copies(&argv), vec![on_b]);

    // A comes back: its stored state still names web, but it has no lease; once the
    // master's state arrives it destroys its copy, never having started it.
    let back = Instant::now();
    a.start();
    wait_for("web destroyed on A", Duration::from_secs(30), || {
        let s = a.try_status()?;
        s.instance("web")
            .is_none_or(|i| i.state == InstanceStatus::Destroyed)
            .then_some(())
    });
    assert!(!a.partition("web").exists(), "A's partition of web removed");
    assert_eq!(copies(&argv), vec![on_b], "B's copy runs on");
    let samples = sampler.finish();
    eprintln!("{} samples, never two copies", at_most_one(&samples));
    // Once A was back, the only copy ever seen is B's.
    assert!(samples
        .iter()
        .filter(|(t, _)| *t >= back)
        .all(|(_, pids)| pids.iter().all(|&p| p == on_b)));
    drop(b);
}

#[test]
#[allow(clippy::disallowed_methods)] // an end-to-end test: times a real failover
fn a_cut_off_node_fences_itself_before_its_instance_runs_elsewhere() {
    if !common::can_run(can_cut(), "root and nft to cut one node's link") {
        return;
    }
    let fleet = fleet();
    let argv = argv(2);
    let sampler = Sampler::start(argv.clone());
    let proxy = SlowLink::start(fleet.node_port, Duration::ZERO);
    let a = node(&fleet, "node-c", Some(proxy.port));
    let b = node(&fleet, "node-d", None);
    request_web(&fleet, &argv, "node-c");
    let on_a = web_running(&fleet, &a, Duration::from_secs(30));
    assert_eq!(copies(&argv), vec![on_a]);

    // A's link (only A's) goes silent; A keeps running.
    let cut = Cut::port(proxy.port);
    let lost = Instant::now();
    let fenced = wait_for(
        "A fenced itself",
        Duration::from_millis(LEASE_MS) * 4,
        || {
            let i = a.instance("web")?;
            (i.lease_held == Some(false) && i.pid.is_none()).then(|| lost.elapsed())
        },
    );
    let on_b = web_running(&fleet, &b, Duration::from_millis(LOST_AFTER_MS) * 4);
    let took = lost.elapsed();
    eprintln!("link cut -> A fenced itself: {fenced:?}; -> running on B: {took:?}");
    assert!(
        fenced <= Duration::from_millis(LEASE_MS) + Duration::from_secs(2),
        "{fenced:?}"
    );
    assert!(fenced < took);
    assert_eq!(copies(&argv), vec![on_b]);
    // A said so: it gave its fence up.
    assert!(web_records(&a, "Fence")
        .iter()
        .any(|r| r["kind"]["Fence"]["holding"] == false));

    // The link returns: A learns web moved and destroys its copy; it never ran it again.
    drop(cut);
    wait_for("web destroyed on A", Duration::from_secs(30), || {
        let s = a.try_status()?;
        s.instance("web")
            .is_none_or(|i| i.state == InstanceStatus::Destroyed)
            .then_some(())
    });
    assert_eq!(copies(&argv), vec![on_b]);
    let samples = sampler.finish();
    eprintln!("{} samples, never two copies", at_most_one(&samples));
    // No sample after A fenced itself shows A's copy.
    assert!(samples
        .iter()
        .filter(|(t, _)| *t > lost + fenced)
        .all(|(_, pids)| !pids.contains(&on_a)));
    drop((a, b));
}
