//! The mesh transport over loopback with real certificates: sessions, identity, refusals,
//! garbage, idle peers, crossed dials, reconnection. Multi-threaded runtimes, as the
//! daemon's, so session tasks race the consumer.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use common::{is_down, is_up, loopback, next, until, wait_for, Ca};
use hedge_mesh::frame::{write_frame, MAX_PEER_FRAME};
use hedge_mesh::tls::server_name;
use hedge_mesh::{start, NetHandle, NetTls, PeerEvent, PeerEventKind};
use hedge_wire::mesh::{encode_peer, Hello, PeerMessage, NO_PATH};
use hedge_wire::Name;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

fn n(s: &str) -> Name {
    Name::new(s).unwrap()
}

fn hello(node: &str, hops: u8) -> PeerMessage {
    PeerMessage::Hello(Hello {
        node: n(node),
        hops,
        outbox: 3,
        desired: vec![],
    })
}

fn node(ca: &Ca, name: &str, peers: Vec<String>) -> (NetHandle, mpsc::Receiver<PeerEvent>) {
    let (tx, rx) = mpsc::channel(64);
    let net = start(loopback(peers), ca.tls(name, &ca.pem), n(name), tx).unwrap();
    (net, rx)
}

/// A raw TLS client holding `tls`'s certificate, connected to `net`.
async fn raw(
    tls: &NetTls,
    net: &NetHandle,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(net.local_addr())
        .await
        .unwrap();
    tokio_rustls::TlsConnector::from(tls.client())
        .connect(server_name(), tcp)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sessions_exchange_messages_and_learn_hops() {
    let ca = Ca::new("fleet");
    let (a, mut a_rx) = node(&ca, "node-a", vec![]);
    let (b, mut b_rx) = node(&ca, "node-b", vec![a.local_addr().to_string()]);
    let up = next(&mut a_rx).await;
    assert!(is_up(&up, "node-b"), "{up:?}");
    let PeerEventKind::Up { cert_der, .. } = &up.kind else {
        unreachable!()
    };
    assert!(!cert_der.is_empty());
    assert!(is_up(&next(&mut b_rx).await, "node-a"));
    assert_eq!(a.peers()[0].hops, NO_PATH, "no hello yet");
    assert_eq!(a.best_hop(), None);

    assert!(b.send(&n("node-a"), hello("node-b", 0)));
    let ev = next(&mut a_rx).await;
    assert_eq!(ev.kind, PeerEventKind::Message(hello("node-b", 0)));
    assert_eq!(a.best_hop(), Some((n("node-b"), 0)));
    assert_eq!(a.own_hops(false), 1);
    assert_eq!(
        a.hello_hops(&n("node-b"), false),
        NO_PATH,
        "poisoned reverse"
    );
    let info = &a.peers()[0];
    assert_eq!(
        (info.node.as_str(), info.hops, info.outbox, info.dialed),
        ("node-b", 0, 3, false)
    );
    assert!(b.peers()[0].dialed);

    assert!(a.send(&n("node-b"), hello("node-a", 1)));
    assert_eq!(
        next(&mut b_rx).await.kind,
        PeerEventKind::Message(hello("node-a", 1))
    );
    assert!(
        !a.send(&n("node-x"), hello("node-a", 1)),
        "no session with node-x"
    );
    assert_eq!(a.stats().send_failed, 1);

    // b goes away: a sees it down and forgets its route.
    b.shutdown();
    assert!(is_down(&next(&mut a_rx).await, "node-b"));
    assert!(a.peers().is_empty());
    assert_eq!(a.own_hops(false), NO_PATH);
    a.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_of_another_ca_is_refused_both_ways() {
    let ca = Ca::new("fleet");
    let rogue = Ca::new("rogue");
    let (a, mut a_rx) = node(&ca, "node-a", vec![]);
    // A foreign certificate dialling in, trusting the fleet CA.
    let (tx, mut c_rx) = mpsc::channel(8);
    let c = start(
        loopback(vec![a.local_addr().to_string()]),
        rogue.tls("node-c", &ca.pem),
        n("node-c"),
        tx,
    )
    .unwrap();
    wait_for("a refusing c", || a.stats().handshake_failed >= 1).await;
    // And a node that trusts only the rogue CA refuses a's certificate when it dials a.
    let (tx, mut d_rx) = mpsc::channel(8);
    let d = start(
        loopback(vec![a.local_addr().to_string()]),
        rogue.tls("node-d", &rogue.pem),
        n("node-d"),
        tx,
    )
    .unwrap();
    wait_for("d refusing a", || d.stats().handshake_failed >= 1).await;
    assert!(a.peers().is_empty() && c.peers().is_empty() && d.peers().is_empty());
    assert!(a_rx.try_recv().is_err() && c_rx.try_recv().is_err() && d_rx.try_recv().is_err());
    assert_eq!(a.stats().sessions_up, 0);
    for x in [a, c, d] {
        x.shutdown();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_naming_another_node_closes_the_session_undelivered() {
    let ca = Ca::new("fleet");
    let (a, mut a_rx) = node(&ca, "node-a", vec![]);
    let (b, mut b_rx) = node(&ca, "node-b", vec![a.local_addr().to_string()]);
    assert!(is_up(&next(&mut a_rx).await, "node-b"));
    assert!(is_up(&next(&mut b_rx).await, "node-a"));
    assert!(b.send(&n("node-a"), hello("node-z", 0)));
    let ev = next(&mut a_rx).await;
    assert!(
        is_down(&ev, "node-b"),
        "the forged hello must not be delivered: {ev:?}"
    );
    assert_eq!(a.stats().refused_hello, 1);
    assert_eq!(a.best_hop(), None);
    a.shutdown();
    b.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_frames_are_dropped_and_an_oversized_one_closes_the_session() {
    let ca = Ca::new("fleet");
    let (a, mut a_rx) = node(&ca, "node-a", vec![]);
    let mut s = raw(&ca.tls("node-b", &ca.pem), &a).await;
    assert!(is_up(&next(&mut a_rx).await, "node-b"));
    write_frame(&mut s, b"\x01\xff\xff\xff\xff\xff garbage")
        .await
        .unwrap();
    write_frame(&mut s, b"\x09 another version").await.unwrap();
    let ok = encode_peer(&hello("node-b", 2), MAX_PEER_FRAME).unwrap();
    write_frame(&mut s, &ok).await.unwrap();
    s.flush().await.unwrap();
    assert_eq!(
        next(&mut a_rx).await.kind,
        PeerEventKind::Message(hello("node-b", 2))
    );
    assert_eq!(a.stats().bad_frames, 2);
    // A length beyond the limit cannot be skipped: the session ends.
    s.write_all(&u32::try_from(MAX_PEER_FRAME + 1).unwrap().to_be_bytes())
        .await
        .unwrap();
    s.flush().await.unwrap();
    assert!(is_down(&next(&mut a_rx).await, "node-b"));
    assert_eq!(a.stats().broken, 1);
    // Not TLS at all: refused at the handshake, no session.
    let mut t = tokio::net::TcpStream::connect(a.local_addr())
        .await
        .unwrap();
    t.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    wait_for("the plain-text client refused", || {
        a.stats().handshake_failed >= 1
    })
    .await;
    assert_eq!(a.stats().sessions_up, 1);
    a.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_is_dropped_after_dead_after() {
    let ca = Ca::new("fleet");
    let (a, mut a_rx) = node(&ca, "node-a", vec![]);
    let _s = raw(&ca.tls("node-b", &ca.pem), &a).await;
    assert!(is_up(&next(&mut a_rx).await, "node-b"));
    // The raw client never writes, not even keepalives.
    assert!(is_down(&next(&mut a_rx).await, "node-b"));
    assert_eq!(a.stats().idle, 1);
    a.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_stays_up_on_keepalives() {
    let ca = Ca::new("fleet");
    let (a, mut a_rx) = node(&ca, "node-a", vec![]);
    let (b, mut b_rx) = node(&ca, "node-b", vec![a.local_addr().to_string()]);
    assert!(is_up(&next(&mut a_rx).await, "node-b"));
    assert!(is_up(&next(&mut b_rx).await, "node-a"));
    // Five times dead_after with no message: keepalives hold the session.
    let quiet = tokio::time::timeout(Duration::from_secs(5), a_rx.recv()).await;
    assert!(quiet.is_err(), "unexpected event: {quiet:?}");
    assert_eq!(a.stats().idle + b.stats().idle, 0);
    assert!(b.send(&n("node-a"), hello("node-b", 4)));
    assert_eq!(
        next(&mut a_rx).await.kind,
        PeerEventKind::Message(hello("node-b", 4))
    );
    a.shutdown();
    b.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crossed_dials_leave_one_session_both_ends_agree_on() {
    let ca = Ca::new("fleet");
    // Bind both first so each can name the other as a static peer.
    let la = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let lb = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (pa, pb) = (la.local_addr().unwrap(), lb.local_addr().unwrap());
    drop((la, lb));
    let (ta, mut a_rx) = mpsc::channel(64);
    let (tb, mut b_rx) = mpsc::channel(64);
    let cfg = |listen: std::net::SocketAddr, peer: std::net::SocketAddr| hedge_mesh::MeshConfig {
        listen,
        ..loopback(vec![peer.to_string()])
    };
    let a = start(cfg(pa, pb), ca.tls("node-a", &ca.pem), n("node-a"), ta).unwrap();
    let b = start(cfg(pb, pa), ca.tls("node-b", &ca.pem), n("node-b"), tb).unwrap();
    // The kept session is the one node-a (the lower name) dialled.
    wait_for("one agreed session", || {
        let (pa, pb) = (a.peers(), b.peers());
        pa.len() == 1 && pb.len() == 1 && pa[0].dialed && !pb[0].dialed
    })
    .await;
    assert!(b.send(&n("node-a"), hello("node-b", 0)));
    until(&mut a_rx, |e| {
        e.kind == PeerEventKind::Message(hello("node-b", 0))
    })
    .await;
    assert!(a.send(&n("node-b"), hello("node-a", 1)));
    until(&mut b_rx, |e| {
        e.kind == PeerEventKind::Message(hello("node-a", 1))
    })
    .await;
    assert_eq!((a.peers().len(), b.peers().len()), (1, 1));
    a.shutdown();
    b.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_peer_is_redialled_after_it_restarts() {
    let ca = Ca::new("fleet");
    let (a, mut a_rx) = node(&ca, "node-a", vec![]);
    let addr = a.local_addr();
    let (b, mut b_rx) = node(&ca, "node-b", vec![addr.to_string()]);
    assert!(is_up(&next(&mut a_rx).await, "node-b"));
    assert!(is_up(&next(&mut b_rx).await, "node-a"));
    a.shutdown();
    drop(a_rx);
    assert!(is_down(&next(&mut b_rx).await, "node-a"));
    // node-a comes back on the same address: node-b finds it again by itself.
    let (tx, mut a_rx) = mpsc::channel(64);
    let cfg = hedge_mesh::MeshConfig {
        listen: addr,
        ..loopback(vec![])
    };
    let a = start(cfg, ca.tls("node-a", &ca.pem), n("node-a"), tx).unwrap();
    assert!(is_up(&next(&mut a_rx).await, "node-b"));
    assert!(is_up(&next(&mut b_rx).await, "node-a"));
    a.shutdown();
    b.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_beyond_max_peers_and_with_oneself_are_refused() {
    let ca = Ca::new("fleet");
    let (tx, mut a_rx) = mpsc::channel(64);
    let cfg = hedge_mesh::MeshConfig {
        max_peers: 1,
        ..loopback(vec![])
    };
    let a = start(cfg, ca.tls("node-a", &ca.pem), n("node-a"), tx).unwrap();
    let (b, _b_rx) = node(&ca, "node-b", vec![a.local_addr().to_string()]);
    assert!(is_up(&next(&mut a_rx).await, "node-b"));
    let (c, _c_rx) = node(&ca, "node-c", vec![a.local_addr().to_string()]);
    wait_for("c refused", || a.stats().refused_full >= 1).await;
    // The refusing end never opened the session, so c has no session with a either.
    wait_for("c told", || c.stats().handshake_failed >= 1).await;
    assert!(c.peers().is_empty());
    assert_eq!(a.peers().len(), 1);
    // A second process with node-a's own name (a copied certificate) is not a peer.
    let (me2, _me_rx) = node(&ca, "node-a", vec![a.local_addr().to_string()]);
    wait_for("myself refused", || me2.stats().refused_identity >= 1).await;
    for x in [a, b, c, me2] {
        x.shutdown();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_refuses_a_certificate_of_another_node_and_bad_config() {
    let ca = Ca::new("fleet");
    let (tx, _rx) = mpsc::channel(1);
    let err = start(
        loopback(vec![]),
        ca.tls("node-a", &ca.pem),
        n("node-b"),
        tx.clone(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("node-a"), "{err}");
    let cfg = hedge_mesh::MeshConfig {
        keepalive_ms: 0,
        ..loopback(vec![])
    };
    assert!(start(cfg, ca.tls("node-a", &ca.pem), n("node-a"), tx).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_that_hear_each_others_beacons_open_a_session() {
    let ca = Ca::new("fleet");
    // A free UDP port for this test's beacons (the group is shared by both nodes).
    let port = std::net::UdpSocket::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = hedge_mesh::MeshConfig {
        beacon_interfaces: vec!["lo".into()],
        beacon_port: port,
        beacon_every_ms: 100,
        ..loopback(vec![])
    };
    let (ta, mut a_rx) = mpsc::channel(64);
    let (tb, mut b_rx) = mpsc::channel(64);
    let a = start(cfg.clone(), ca.tls("node-a", &ca.pem), n("node-a"), ta).unwrap();
    a.set_beacon(0, 42);
    // Not a beacon: counted and ignored.
    let junk = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = start(cfg, ca.tls("node-b", &ca.pem), n("node-b"), tb).unwrap();
    until(&mut a_rx, |e| is_up(e, "node-b")).await;
    until(&mut b_rx, |e| is_up(e, "node-a")).await;
    wait_for("beacons both ways", || {
        a.stats().beacons_in > 0 && b.stats().beacons_in > 0
    })
    .await;
    // Whoever dialled, exactly one session each.
    wait_for("one session each", || {
        a.peers().len() == 1 && b.peers().len() == 1
    })
    .await;
    // The beacon's hops are a hint only: no route until a hello.
    assert_eq!(b.best_hop(), None);
    junk.send_to(b"\x01\xff\xfe", ("127.0.0.1", port)).unwrap();
    wait_for("junk counted", || {
        a.stats().bad_beacons + b.stats().bad_beacons >= 1
    })
    .await;
    a.shutdown();
    b.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_serves_the_next_sessions() {
    let ca = Ca::new("fleet");
    let old_ca = Ca::new("fleet"); // same name, other key: certificates it signs are foreign
    let (tx, mut a_rx) = mpsc::channel(64);
    let a = start(
        loopback(vec![]),
        old_ca.tls("node-a", &ca.pem),
        n("node-a"),
        tx,
    )
    .unwrap();
    let (b, _b_rx) = node(&ca, "node-b", vec![a.local_addr().to_string()]);
    wait_for("b refusing a's foreign certificate", || {
        b.stats().handshake_failed >= 1
    })
    .await;
    assert!(
        a.reload_tls(ca.tls("node-x", &ca.pem)).is_err(),
        "another node's certificate"
    );
    a.reload_tls(ca.tls("node-a", &ca.pem)).unwrap();
    assert!(is_up(
        &until(&mut a_rx, |e| is_up(e, "node-b")).await,
        "node-b"
    ));
    a.shutdown();
    b.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_clock_does_not_refuse_a_fresh_certificate_but_an_expired_one_is_refused() {
    let ca = Ca::new("fleet");
    // Issued "in the future" for this host's clock, as for a node whose clock lags.
    let (ta, mut a_rx) = mpsc::channel(64);
    let a = start(
        loopback(vec![]),
        ca.tls_valid("node-a", &ca.pem, Some((30, 400))),
        n("node-a"),
        ta,
    )
    .unwrap();
    let (tb, mut b_rx) = mpsc::channel(64);
    let b = start(
        loopback(vec![a.local_addr().to_string()]),
        ca.tls_valid("node-b", &ca.pem, Some((60, 400))),
        n("node-b"),
        tb,
    )
    .unwrap();
    assert!(is_up(&next(&mut a_rx).await, "node-b"));
    assert!(is_up(&next(&mut b_rx).await, "node-a"));
    // Expired: refused by a, whatever the dialler's clock.
    let (tc, _c_rx) = mpsc::channel(8);
    let c = start(
        loopback(vec![a.local_addr().to_string()]),
        ca.tls_valid("node-c", &ca.pem, Some((-400, -1))),
        n("node-c"),
        tc,
    )
    .unwrap();
    wait_for("a refusing c's expired certificate", || {
        a.stats().handshake_failed >= 1
    })
    .await;
    assert_eq!(a.peers().len(), 1);
    for x in [a, b, c] {
        x.shutdown();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_handshake_do_not_lock_peers_out() {
    let ca = Ca::new("fleet");
    let (a, mut a_rx) = node(&ca, "node-a", vec![]);
    // One host opens max_peers connections and says nothing.
    let mut idle = Vec::new();
    for _ in 0..hedge_mesh::MeshConfig::default().max_peers {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        idle.push(s.connect(a.local_addr()).await.unwrap());
    }
    // Every idle connection past the two handshakes one address may hold is refused; on
    // a host slow enough that those two time out first, their successors take their
    // slots, so a timed-out handshake counts as dealt with too.
    wait_for("the extra connections refused", || {
        let s = a.stats();
        s.refused_full + s.handshake_failed
            >= u64::try_from(idle.len() - hedge_mesh::net::HANDSHAKES_PER_IP).unwrap()
    })
    .await;
    // A real peer from another address still gets in, long before the idle ones' 10 s
    // handshake timeout frees their slots.
    let (b, _b_rx) = node(&ca, "node-b", vec![a.local_addr().to_string()]);
    let up = tokio::time::timeout(Duration::from_secs(5), a_rx.recv()).await;
    assert!(is_up(&up.unwrap().unwrap(), "node-b"));
    a.shutdown();
    b.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_peer_replaces_its_session_down_before_up() {
    let ca = Ca::new("fleet");
    let (a, mut a_rx) = node(&ca, "node-a", vec![]);
    let b_tls = ca.tls("node-b", &ca.pem);
    let mut s1 = raw(&b_tls, &a).await;
    assert!(is_up(&next(&mut a_rx).await, "node-b"));
    // node-b again (it restarted, the old connection is half-open): the newer wins.
    let mut s2 = raw(&b_tls, &a).await;
    assert!(is_down(&next(&mut a_rx).await, "node-b"));
    assert!(is_up(&next(&mut a_rx).await, "node-b"));
    // The old session is gone: what it sends is not delivered; the new one's is.
    let old = encode_peer(&hello("node-b", 7), MAX_PEER_FRAME).unwrap();
    let _ = write_frame(&mut s1, &old).await;
    let _ = s1.flush().await;
    let new = encode_peer(&hello("node-b", 8), MAX_PEER_FRAME).unwrap();
    write_frame(&mut s2, &new).await.unwrap();
    s2.flush().await.unwrap();
    assert_eq!(
        next(&mut a_rx).await.kind,
        PeerEventKind::Message(hello("node-b", 8))
    );
    assert_eq!(a.peers().len(), 1);
    assert_eq!(a.stats().replaced, 1);
    a.shutdown();
}

#[test]
fn a_restart_on_a_current_thread_runtime_binds_the_same_port_at_once() {
    // The daemon's runtime: shutdown and start again in one synchronous step (as on a
    // certificate renewal), without the old accept task having run since.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ca = Ca::new("fleet");
        let (tx, _rx) = mpsc::channel(8);
        let a = start(loopback(vec![]), ca.tls("node-a", &ca.pem), n("node-a"), tx).unwrap();
        let cfg = hedge_mesh::MeshConfig {
            listen: a.local_addr(),
            ..loopback(vec![])
        };
        a.shutdown();
        let (tx, mut a_rx) = mpsc::channel(8);
        let a = start(cfg, ca.tls("node-a", &ca.pem), n("node-a"), tx).unwrap();
        let (b, _b_rx) = node(&ca, "node-b", vec![a.local_addr().to_string()]);
        assert!(is_up(&next(&mut a_rx).await, "node-b"));
        a.shutdown();
        b.shutdown();
    });
}
