//! The mesh tests' harness itself (`tests/common/netns.rs`): a listener in a network
//! namespace is reachable over its veth link, not once the link is set down, again once
//! it is up; the test's loopback (where the broker listens) is out of the namespace's
//! reach; a daemon started through [`Netns::wrapper`] runs in the namespace.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use common::netns::{Netns, Veth};
use common::wait_for;

fn reachable(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

/// Runs `f` on a thread of its own that entered `ns`'s network namespace (`setns`
/// changes only the calling thread's).
fn in_netns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{}", ns.name);
    std::thread::spawn(move || {
        let file = std::fs::File::open(path).unwrap();
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

#[test]
fn a_veth_link_carries_tcp_until_it_is_set_down_and_again_once_up() {
    if !common::swarm::can_run() {
        return;
    }
    let ns = Netns::new();
    let mut veth = Veth::new(Some(&ns), None);
    // A listener on every address of the namespace, accepting on a thread of its own.
    let listener = in_netns(&ns, || TcpListener::bind("0.0.0.0:0").unwrap());
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in listener.incoming() {
            drop(c);
        }
    });
    let far = SocketAddr::from((veth.a.addr, port));
    // A new veth pair carries traffic once both ends have carrier, which the kernel
    // reports a moment after `ip link set up` returns (longer on a loaded host).
    wait_for(
        "reachable over the new veth link",
        Duration::from_secs(10),
        || reachable(far).then_some(()),
    );
    assert!(
        !reachable(SocketAddr::from(([127, 0, 0, 1], port))),
        "the namespace's listener is on the test's loopback"
    );
    veth.set(false);
    assert!(!veth.is_up());
    assert!(!reachable(far), "reachable over a link set down");
    veth.set(true);
    wait_for("reachable again", Duration::from_secs(10), || {
        reachable(far).then_some(())
    });

    // The test's loopback (the broker's) is not there from inside.
    let outside = TcpListener::bind("127.0.0.1:0").unwrap();
    let outside = SocketAddr::from(([127, 0, 0, 1], outside.local_addr().unwrap().port()));
    assert!(reachable(outside));
    assert!(!in_netns(&ns, move || reachable(outside)));

    // A program started through the wrapper sees only the namespace's interfaces.
    let out = std::process::Command::new(&ns.wrapper()[0])
        .args(&ns.wrapper()[1..])
        .args(["ip", "-o", "-4", "addr", "show"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&veth.a.addr.to_string()), "{text}");
    assert!(!text.contains(&veth.b.addr.to_string()), "{text}");
}
