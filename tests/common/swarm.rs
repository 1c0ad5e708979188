//! A swarm for end-to-end tests of the mesh: enrolled nodes of a [`Fleet`], each
//! without a gateway role in a network namespace of its own (so the broker, on the
//! test's loopback, is out of its reach), joined by veth links ([`super::netns`]) that
//! a test cuts and restores; gateways run in the test's own namespace and reach the
//! broker.
//!
//! A node's certificate comes from the master's HTTPS endpoint when its daemon first
//! runs; [`Swarm::new`] therefore runs every daemon once in the test's namespace with
//! its MQTT port pointing at a dead port (so no record goes straight to the master),
//! until its certificate is there, before moving it into its namespace. For a link
//! `(a, b)`, `a` dials `b` (a static peer: beacons are off, so a test decides the
//! topology); every node listens on `0.0.0.0`, port 7441 in its namespace, a free port
//! in the test's own. Sessions are tuned for tests: a keepalive every 500 ms, a silent
//! peer dead after 2 s, redials at most 1 s apart.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use hedge_master::store::{FleetStore, MasterStore};
use hedge_wire::{Name, Record};
use serde_json::Value;

use super::broker::free_port;
use super::fleet::Fleet;
use super::netns::{Netns, Veth};
use super::{wait_for, Node};

/// The port a node in its own namespace listens on for peers.
pub const MESH_PORT: u16 = 7441;

/// One node of a swarm.
pub struct Peer {
    pub node: Node,
    /// Its namespace; `None` for a gateway (the test's own namespace).
    pub ns: Option<Netns>,
    pub mesh_port: u16,
}

/// A fleet, its swarm's nodes and the veth links between them.
pub struct Swarm {
    /// Dropped last (fields drop in order): the nodes stop before the broker.
    pub peers: BTreeMap<String, Peer>,
    pub links: BTreeMap<(String, String), Veth>,
    pub fleet: Fleet,
}

/// What a test says of its swarm.
pub struct Layout<'a> {
    /// Every node's name.
    pub nodes: &'a [&'a str],
    /// The nodes that run in the test's namespace and reach the broker.
    pub gateways: &'a [&'a str],
    /// Peer links; `(a, b)`: `a` dials `b`.
    pub links: &'a [(&'a str, &'a str)],
}

/// Whether this host can run a swarm (root, `ip`, `nsenter`); `false` skips the test,
/// which fails instead under `CI` ([`super::can_run`]).
pub fn can_run() -> bool {
    super::can_run(
        super::netns::can_use_netns(),
        "root, ip and nsenter for network namespaces",
    )
}

/// `node.toml` with its `[mesh]` section (if any) replaced by `body`.
pub fn with_mesh_section(text: &str, body: &str) -> String {
    let mut out = String::new();
    let mut in_mesh = false;
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with('[') {
            in_mesh = t.starts_with("[mesh]");
        }
        if !in_mesh {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str("\n[mesh]\n");
    out.push_str(body);
    out.push('\n');
    out
}

/// A config edit that sets `key = value` in the `[mesh]` section (appended to it).
pub fn mesh_setting(text: &str, key: &str, value: &str) -> String {
    let mut out = String::new();
    let mut in_mesh = false;
    let mut done = false;
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with('[') {
            if in_mesh && !done {
                out.push_str(&format!("{key} = {value}\n"));
                done = true;
            }
            in_mesh = t.starts_with("[mesh]");
        }
        if in_mesh && t.starts_with(&format!("{key} ")) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if in_mesh && t.starts_with("[mesh]") && !done {
            out.push_str(&format!("{key} = {value}\n"));
            done = true;
        }
    }
    assert!(done, "no [mesh] section");
    out
}

/// The line `port = N` of the `[uplink]` section set to `port`.
fn with_uplink_port(text: &str, port: u16) -> String {
    text.lines()
        .map(|l| {
            if l.starts_with("port = ") {
                format!("port = {port}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

impl Swarm {
    /// Enrolls and lays out the swarm (every link up); `edit` may change each node's
    /// config (called with the node's name). The fleet's master must be running
    /// (enrollment). [`Swarm::start_all`] starts the daemons, each in its namespace.
    pub fn new(fleet: Fleet, layout: &Layout, edit: impl Fn(&str, String) -> String) -> Swarm {
        let mut peers = BTreeMap::new();
        let dead = free_port();
        for &name in layout.nodes {
            let mut node = fleet.node(name);
            let real = fleet.node_port;
            node.edit_config(|c| {
                with_uplink_port(&c, dead).replace("renew_check_s = 60", "renew_check_s = 1")
            });
            node.start();
            let gateway = layout.gateways.contains(&name);
            peers.insert(
                name.to_string(),
                (
                    node,
                    (!gateway).then(Netns::new),
                    if gateway { free_port() } else { MESH_PORT },
                    real,
                ),
            );
        }
        for (name, (node, ..)) in &peers {
            let crt = node.home().join("uplink/node.crt");
            wait_for(
                &format!("{name}'s certificate"),
                Duration::from_secs(30),
                || crt.exists().then_some(()),
            );
        }
        let mut links = BTreeMap::new();
        let mut dials: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for &(a, b) in layout.links {
            let veth = Veth::new(peers[a].1.as_ref(), peers[b].1.as_ref());
            dials
                .entry(a.to_string())
                .or_default()
                .push(format!("\"{}:{}\"", veth.b.addr, peers[b].2));
            links.insert((a.to_string(), b.to_string()), veth);
        }
        let mut swarm = Swarm {
            peers: BTreeMap::new(),
            links,
            fleet,
        };
        for (name, (mut node, ns, mesh_port, real)) in peers {
            node.terminate();
            let list = dials.get(&name).cloned().unwrap_or_default().join(", ");
            node.edit_config(|c| {
                let c = with_uplink_port(&c, real);
                let c = with_mesh_section(
                    &c,
                    &format!(
                        "enabled = true\nlisten = \"0.0.0.0:{mesh_port}\"\npeers = [{list}]\nbeacon_interfaces = []\n\
                         keepalive_ms = 500\ndead_after_ms = 2000\nmax_backoff_ms = 1000"
                    ),
                );
                edit(&name, c)
            });
            if let Some(ns) = &ns {
                node.wrapper = ns.wrapper();
            }
            swarm.peers.insert(
                name,
                Peer {
                    node,
                    ns,
                    mesh_port,
                },
            );
        }
        swarm
    }

    /// [`Swarm::new`] on a new fleet whose master runs.
    pub fn with_master(layout: &Layout, edit: impl Fn(&str, String) -> String) -> Swarm {
        let mut fleet = Fleet::new();
        fleet.start_master();
        Swarm::new(fleet, layout, edit)
    }

    /// Starts every daemon that is not running, each in its namespace.
    pub fn start_all(&mut self) {
        for p in self.peers.values_mut() {
            if p.node.daemon.is_none() {
                p.node.start();
            }
        }
    }

    /// Every record the master holds of `name` (its latest life), by seq.
    pub fn master_records(&self, name: &str) -> BTreeMap<u64, Record> {
        let store = MasterStore::open(&self.fleet.master_dir().join("master.db")).unwrap();
        let id = Name::new(name).unwrap();
        let mut out = BTreeMap::new();
        let mut from = 0;
        loop {
            let page = store.records(&id, from, 10_000).unwrap();
            let Some(last) = page.last().map(|r| r.seq) else {
                break;
            };
            for r in page {
                assert!(out.insert(r.seq, r).is_none(), "{name}: a seq stored twice");
            }
            from = last + 1;
        }
        out
    }

    /// The records in `name`'s outbox now, by seq.
    pub fn outbox_records(&self, name: &str) -> BTreeMap<u64, Record> {
        self.node(name)
            .outbox()
            .into_iter()
            .map(|v| {
                let r: Record = serde_json::from_value(v).unwrap();
                (r.seq, r)
            })
            .collect()
    }

    pub fn node(&self, name: &str) -> &Node {
        &self.peers[name].node
    }

    pub fn node_mut(&mut self, name: &str) -> &mut Node {
        &mut self.peers.get_mut(name).unwrap().node
    }

    fn veth(&mut self, a: &str, b: &str) -> &mut Veth {
        let key = if self.links.contains_key(&(a.to_string(), b.to_string())) {
            (a.to_string(), b.to_string())
        } else {
            (b.to_string(), a.to_string())
        };
        self.links
            .get_mut(&key)
            .unwrap_or_else(|| panic!("no link {a}–{b}"))
    }

    /// Takes the peer link between `a` and `b` down (`ip link set down`, both ends).
    pub fn cut(&mut self, a: &str, b: &str) {
        self.veth(a, b).set(false);
    }

    /// Brings the peer link between `a` and `b` back up.
    pub fn restore(&mut self, a: &str, b: &str) {
        self.veth(a, b).set(true);
    }

    /// SIGKILLs `name`'s daemon and starts it again (in its namespace).
    pub fn kill9_and_restart(&mut self, name: &str) {
        let node = self.node_mut(name);
        node.kill9();
        node.start();
    }

    /// Stops every master process of the fleet (the broker stays).
    pub fn stop_masters(&mut self) {
        for m in &mut self.fleet.masters {
            let _ = m.kill();
            let _ = m.wait();
        }
        self.fleet.masters.clear();
    }

    /// `hedge node status --json` of `name`, as JSON (the mesh fields included).
    pub fn status_json(&self, name: &str) -> Value {
        serde_json::from_str(&self.node(name).ok(&["status", "--json"])).unwrap()
    }

    /// The master's `nodes --json` entry of `name` (Null when unknown).
    pub fn master_entry(&self, name: &str) -> Value {
        let v: Value = serde_json::from_str(&self.fleet.master_ok(&["nodes", "--json"])).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .find(|n| n["node"] == name)
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// [`super::wait_for`], and on timeout the panic shows every daemon's log tail.
    #[allow(clippy::disallowed_methods)] // an end-to-end test: waits for real processes, with a deadline
    pub fn wait<T>(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(v) = f() {
                return v;
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every daemon's log, for a failing test's message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for i in 0..self.fleet.masters.len().max(1) {
            let log = self.fleet.master_log(i);
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            out.push_str(&format!("--- master{i} (last 40 lines)\n"));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        for (name, p) in &self.peers {
            let log = p.node.daemon_log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            out.push_str(&format!("--- {name} (last 40 lines)\n"));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}
