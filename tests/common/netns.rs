//! Network namespaces and veth links for end-to-end tests of the mesh: each peer in its
//! own namespace, peers joined by veth pairs that a test cuts with `ip link set down`.
//!
//! [`Netns::new`] adds a namespace (`ip netns add`) with its loopback up; [`Veth::new`]
//! joins two namespaces (`None` = the test's own, where the broker listens on loopback)
//! by a veth pair on a /30 of its own, both ends up; [`Veth::set`] takes both ends down
//! or up. A process runs in a namespace through [`Netns::wrapper`] (`nsenter --net=…`:
//! only the network namespace changes, so the daemon keeps the host's `/sys` and its
//! cgroups, and `nsenter` execs it, so its pid is the child's). Drop deletes the veth
//! and the namespace. Everything needs root: [`can_use_netns`] says whether this host
//! can ([`super::can_run`] makes a test that cannot fail under `CI`).
//!
//! Names and addresses are unique per test process (pid) and per object (a counter):
//! interfaces `hv<pid><n>a|b` (at most 15 bytes), subnets in `10.64.0.0/10`, so tests
//! running side by side in one process or in several never collide.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use super::assert_success;

/// Objects made by this test process so far (namespaces and links share it).
static NEXT: AtomicU32 = AtomicU32::new(0);

fn next() -> u32 {
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// `ip ARGS`, which must succeed.
pub fn ip(args: &[&str]) {
    let bin = if Path::new("/usr/sbin/ip").exists() {
        "/usr/sbin/ip"
    } else {
        "ip"
    };
    let out = Command::new(bin)
        .args(args)
        .output()
        .expect("ip (iproute2; scripts/setup installs it)");
    assert_success(&out, &format!("ip {args:?}: "));
}

/// `ip ARGS` whose failure is ignored (cleanup of what may already be gone).
fn ip_quiet(args: &[&str]) {
    let _ = Command::new("ip").args(args).output();
}

/// Whether this host can run netns tests: root, `ip` and `nsenter`.
pub fn can_use_netns() -> bool {
    nix::unistd::geteuid().is_root()
        && Command::new("ip").arg("-V").output().is_ok()
        && Command::new("nsenter").arg("--version").output().is_ok()
}

/// A network namespace with its loopback up; deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Netns {
        let name = format!("hedge-{}-{}", std::process::id(), next());
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    /// The command prefix that runs a program in this namespace.
    pub fn wrapper(&self) -> Vec<String> {
        vec![
            "nsenter".into(),
            format!("--net=/run/netns/{}", self.name),
            "--".into(),
        ]
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        ip_quiet(&["netns", "del", &self.name]);
    }
}

/// One end of a veth link.
#[derive(Debug, Clone)]
pub struct End {
    /// Its namespace; `None`: the test's own.
    pub ns: Option<String>,
    pub ifname: String,
    pub addr: Ipv4Addr,
}

impl End {
    fn ip(&self, args: &[&str]) {
        match &self.ns {
            Some(ns) => {
                let mut all = vec!["-n", ns.as_str()];
                all.extend_from_slice(args);
                ip(&all);
            }
            None => ip(args),
        }
    }
}

/// A veth pair between two namespaces on a /30 of its own; deleted on drop.
pub struct Veth {
    pub a: End,
    pub b: End,
    up: bool,
}

impl Veth {
    /// Joins `a` and `b` (`None`: the test's own namespace); both ends up.
    pub fn new(a: Option<&Netns>, b: Option<&Netns>) -> Veth {
        let k = next();
        // A /30 in 10.64.0.0/10 (2^20 of them) from this process and this link.
        let index = (std::process::id().wrapping_mul(64).wrapping_add(k)) & ((1 << 20) - 1);
        let base = u32::from(Ipv4Addr::new(10, 64, 0, 0)) + index * 4;
        let tag = format!("hv{}{}", std::process::id(), k);
        assert!(tag.len() < 15, "interface name {tag} too long");
        let (ia, ib) = (format!("{tag}a"), format!("{tag}b"));
        ip(&["link", "add", &ia, "type", "veth", "peer", "name", &ib]);
        let end = |ns: Option<&Netns>, ifname: String, addr: u32| {
            if let Some(ns) = ns {
                ip(&["link", "set", &ifname, "netns", &ns.name]);
            }
            End {
                ns: ns.map(|n| n.name.clone()),
                ifname,
                addr: Ipv4Addr::from(addr),
            }
        };
        let veth = Veth {
            a: end(a, ia, base + 1),
            b: end(b, ib, base + 2),
            up: false,
        };
        for e in [&veth.a, &veth.b] {
            e.ip(&["addr", "add", &format!("{}/30", e.addr), "dev", &e.ifname]);
        }
        let mut veth = veth;
        veth.set(true);
        veth
    }

    /// Takes both ends down (`ip link set down`: packets vanish, no reset) or up.
    pub fn set(&mut self, up: bool) {
        let state = if up { "up" } else { "down" };
        for e in [&self.a, &self.b] {
            e.ip(&["link", "set", &e.ifname, state]);
        }
        self.up = up;
    }

    pub fn is_up(&self) -> bool {
        self.up
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        // Deleting one end deletes the pair; the namespace's deletion would too, later.
        let e = &self.a;
        match &e.ns {
            Some(ns) => ip_quiet(&["-n", ns, "link", "del", &e.ifname]),
            None => ip_quiet(&["link", "del", &e.ifname]),
        }
    }
}
