//! Two nodes in their own network namespaces joined by a veth pair, as on a LAN: they find
//! each other by beacons on the veth interface, lose each other when the link is cut with
//! `ip link set down` (keepalives stop), and find each other again when it is restored,
//! and again after the veth is deleted and created anew.
//! Needs root (and fails instead of skipping when `CI` is set and it cannot run).
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::process::Command;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use common::{is_down, is_up, until, wait_for, Ca};
use hedge_mesh::{start, MeshConfig, NetHandle, NetTls, PeerEvent, PeerEventKind};
use hedge_wire::mesh::{Hello, PeerMessage};
use hedge_wire::Name;
use tokio::sync::{mpsc, oneshot};

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces and the veth between them; removed on drop.
struct Lan {
    ns: [String; 2],
    ifs: [String; 2],
}

impl Lan {
    fn new() -> Lan {
        let id = std::process::id() % 100_000;
        let ns = [format!("hmesh-a-{id}"), format!("hmesh-b-{id}")];
        let ifs = [format!("hma{id}"), format!("hmb{id}")];
        let lan = Lan { ns, ifs };
        for ns in &lan.ns {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        lan.veth();
        lan
    }

    /// Creates the veth pair, one end in each namespace, addressed and up.
    fn veth(&self) {
        ip(&[
            "link",
            "add",
            &self.ifs[0],
            "type",
            "veth",
            "peer",
            "name",
            &self.ifs[1],
        ]);
        for i in 0..2 {
            ip(&["link", "set", &self.ifs[i], "netns", &self.ns[i]]);
            let addr = format!("10.231.0.{}/24", i + 1);
            ip(&["-n", &self.ns[i], "addr", "add", &addr, "dev", &self.ifs[i]]);
            ip(&["-n", &self.ns[i], "link", "set", &self.ifs[i], "up"]);
        }
    }

    /// Removes the veth pair (as a USB radio unplugged at both ends).
    fn unplug(&self) {
        ip(&["-n", &self.ns[0], "link", "del", &self.ifs[0]]);
    }

    fn link(&self, up: bool) {
        ip(&[
            "-n",
            &self.ns[0],
            "link",
            "set",
            &self.ifs[0],
            if up { "up" } else { "down" },
        ]);
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// A node running on its own thread inside namespace `ns`; stops when dropped.
struct NsNode {
    net: NetHandle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NsNode {
    fn start(
        ns: &str,
        iface: &str,
        tls: NetTls,
        me: &str,
        events: mpsc::Sender<PeerEvent>,
    ) -> NsNode {
        let path = format!("/var/run/netns/{ns}");
        let cfg = MeshConfig {
            enabled: true,
            beacon_interfaces: vec![iface.to_string()],
            beacon_every_ms: 200,
            keepalive_ms: 200,
            dead_after_ms: 1000,
            max_backoff_ms: 1000,
            ..MeshConfig::default()
        };
        let me = Name::new(me).unwrap();
        let (handle_tx, handle_rx) = std_mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let f = std::fs::File::open(path).unwrap();
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let net = start(cfg, tls, me, events).unwrap();
                handle_tx.send(net.clone()).unwrap();
                let _ = stopped.await;
                net.shutdown();
            });
        });
        let net = handle_rx.recv_timeout(Duration::from_secs(20)).unwrap();
        NsNode {
            net,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl NsNode {
    /// Node `me` on side `i` of `lan`, and its events.
    fn on(lan: &Lan, i: usize, ca: &Ca, me: &str) -> (NsNode, mpsc::Receiver<PeerEvent>) {
        let (tx, rx) = mpsc::channel(64);
        let node = NsNode::start(&lan.ns[i], &lan.ifs[i], ca.tls(me, &ca.pem), me, tx);
        (node, rx)
    }
}

impl Drop for NsNode {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn hello(node: &str) -> PeerMessage {
    PeerMessage::Hello(Hello {
        node: Name::new(node).unwrap(),
        hops: 0,
        outbox: 0,
        desired: vec![],
    })
}

/// Sends `m` from `from` to `to` until `rx` (`to`'s events) delivers it, as the link
/// resends: a message queued on a session that is being replaced is lost with it.
async fn deliver(from: &NsNode, to: &str, m: PeerMessage, rx: &mut mpsc::Receiver<PeerEvent>) {
    let to = Name::new(to).unwrap();
    let deadline = tokio::time::Instant::now() + common::DEADLINE;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{m:?} never delivered"
        );
        from.net.send(&to, m.clone());
        let got = tokio::time::timeout(Duration::from_millis(500), async {
            loop {
                match rx.recv().await {
                    Some(e) if e.kind == PeerEventKind::Message(m.clone()) => return,
                    Some(_) => {}
                    None => panic!("events closed"),
                }
            }
        })
        .await;
        if got.is_ok() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_on_a_veth_lan_find_lose_and_find_each_other_again() {
    if !common::can_run_as_root("root (network namespaces)") {
        return;
    }
    let lan = Lan::new();
    let ca = Ca::new("fleet");
    let (a, mut a_rx) = NsNode::on(&lan, 0, &ca, "node-a");
    let (b, mut b_rx) = NsNode::on(&lan, 1, &ca, "node-b");

    // No static peers: beacons on the veth lead to the session.
    until(&mut a_rx, |e| is_up(e, "node-b")).await;
    until(&mut b_rx, |e| is_up(e, "node-a")).await;
    deliver(&b, "node-a", hello("node-b"), &mut a_rx).await;
    let peer = &a.net.peers()[0];
    assert_eq!(peer.addr.ip().to_string(), "10.231.0.2", "{peer:?}");

    // Cut: no FIN reaches the other end, keepalives stop, both drop the session.
    lan.link(false);
    wait_for("both ends dropping the session", || {
        a.net.peers().is_empty() && b.net.peers().is_empty()
    })
    .await;
    assert!(a.net.stats().idle >= 1 && b.net.stats().idle >= 1);
    until(&mut a_rx, |e| is_down(e, "node-b")).await;
    until(&mut b_rx, |e| is_down(e, "node-a")).await;

    // Restored: beacons again, a session again, messages both ways again.
    lan.link(true);
    deliver(&a, "node-b", hello("node-a"), &mut b_rx).await;
    deliver(&b, "node-a", hello("node-b"), &mut a_rx).await;
    assert_eq!((a.net.peers().len(), b.net.peers().len()), (1, 1));

    // Unplugged and plugged back: the interfaces are new ones (their multicast memberships
    // went with the old), found again by name.
    lan.unplug();
    wait_for("both ends dropping the session", || {
        a.net.peers().is_empty() && b.net.peers().is_empty()
    })
    .await;
    lan.veth();
    deliver(&a, "node-b", hello("node-a"), &mut b_rx).await;
    deliver(&b, "node-a", hello("node-b"), &mut a_rx).await;
    drop((a, b));
}
