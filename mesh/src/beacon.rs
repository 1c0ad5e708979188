//! Beacons: UDP multicast datagrams that tell the LAN "node X accepts peer sessions on
//! port P, is H hops from the broker, holds N records". A beacon is a hint: it only
//! decides whom to dial; identity and hops come from the authenticated session.
//!
//! Contract: every `beacon_every_ms`, on each configured interface that has an IPv4
//! address (looked up again each time, so an interface that comes up later joins then),
//! the receiver joins the group (again: a removed and re-added interface lost its
//! membership) and one beacon is sent out of that interface (TTL 1).
//! Heard beacons are decoded with [`decode_beacon`]; anything else on the port is counted
//! and dropped, this node's own beacons are ignored, the rest go to the routes core,
//! which says whom to dial. Heard nodes are forgotten after three beacon intervals.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hedge_wire::mesh::{decode_beacon, encode_beacon, Beacon};
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::UdpSocket;

use crate::config::MeshConfig;
use crate::net::{dial_heard, Inner};
use crate::stats::NetStats;

/// Most dials of beacon-heard nodes in flight.
const MAX_DIALS: usize = 4;
/// Largest datagram read on the beacon port.
const MAX_DATAGRAM: usize = 512;

/// The receiving and sending sockets.
pub(crate) struct Sockets {
    rx: UdpSocket,
    tx: UdpSocket,
}

impl Sockets {
    /// Binds the receiver to the beacon port (shared with other processes on the host)
    /// and an ephemeral sender.
    pub(crate) fn bind(cfg: &MeshConfig) -> std::io::Result<Sockets> {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        s.set_nonblocking(true)?;
        s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, cfg.beacon_port)).into())?;
        let rx = UdpSocket::from_std(s.into())?;
        let tx = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        tx.set_nonblocking(true)?;
        let tx = UdpSocket::from_std(tx)?;
        tx.set_multicast_ttl_v4(1)?;
        // Nodes sharing a host (the sandbox) hear each other; a node ignores its own.
        tx.set_multicast_loop_v4(true)?;
        Ok(Sockets { rx, tx })
    }
}

/// The IPv4 address of interface `name`, if it has one.
pub(crate) fn ipv4_of(name: &str) -> Option<Ipv4Addr> {
    nix::ifaddrs::getifaddrs().ok()?.find_map(|a| {
        if a.interface_name != name {
            return None;
        }
        a.address
            .as_ref()
            .and_then(|s| s.as_sockaddr_in())
            .map(|s| s.ip())
    })
}

/// Sends and hears beacons until aborted.
pub(crate) async fn run(inner: Arc<Inner>, sockets: Sockets) {
    let Sockets { rx, tx } = sockets;
    tokio::join!(send(&inner, &rx, &tx), hear(&inner, &rx));
}

async fn send(inner: &Arc<Inner>, rx: &UdpSocket, tx: &UdpSocket) {
    let cfg = &inner.cfg;
    let group = SocketAddrV4::new(cfg.beacon_group, cfg.beacon_port);
    let mut tick = tokio::time::interval(Duration::from_millis(cfg.beacon_every_ms));
    loop {
        tick.tick().await;
        let beacon = Beacon {
            node: inner.me.clone(),
            port: inner.local.port(),
            hops: inner.beacon_hops.load(Ordering::Relaxed),
            outbox: inner.beacon_outbox.load(Ordering::Relaxed),
        };
        let bytes = match encode_beacon(&beacon) {
            Ok(b) => b,
            Err(e) => {
                inner.gates.warn("beacon", &e);
                continue;
            }
        };
        for iface in &cfg.beacon_interfaces {
            let Some(ip) = ipv4_of(iface) else {
                inner
                    .gates
                    .warn("beacon interface without an IPv4 address", iface);
                continue;
            };
            // Joined again every time: an interface that was removed and came back (a USB
            // radio) lost its membership; an existing one answers EADDRINUSE.
            match rx.join_multicast_v4(cfg.beacon_group, ip) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {}
                Err(e) => inner
                    .gates
                    .warn("beacon group", &format_args!("{iface}: {e}")),
            }
            let sent = SockRef::from(tx)
                .set_multicast_if_v4(&ip)
                .and(Ok(()))
                .map(|()| tx.send_to(&bytes, group));
            match sent {
                Ok(fut) => match fut.await {
                    Ok(_) => NetStats::bump(&inner.stats.beacons_out),
                    Err(e) => inner
                        .gates
                        .warn("beacon send", &format_args!("{iface}: {e}")),
                },
                Err(e) => inner
                    .gates
                    .warn("beacon send", &format_args!("{iface}: {e}")),
            }
        }
        let now = inner.now_ms();
        inner
            .lock_state()
            .routes
            .expire(now, cfg.beacon_every_ms.saturating_mul(3));
    }
}

async fn hear(inner: &Arc<Inner>, rx: &UdpSocket) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, from) = match rx.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                inner.gates.warn("beacon receive", &e);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let b = match decode_beacon(&buf[..n]) {
            Ok(b) => b,
            Err(e) => {
                NetStats::bump(&inner.stats.bad_beacons);
                inner
                    .gates
                    .warn("bad beacon", &format_args!("from {from}: {e}"));
                continue;
            }
        };
        if b.node == inner.me || b.port == 0 {
            continue;
        }
        NetStats::bump(&inner.stats.beacons_in);
        let addr = SocketAddr::new(from.ip(), b.port);
        let now = inner.now_ms();
        let due = {
            let mut st = inner.lock_state();
            st.routes.beacon(&b.node, addr, b.hops, b.outbox, now);
            // A LAN full of (possibly forged) beacons gets a few dials at a time, and
            // none once the sessions are full.
            let room = inner.cfg.max_peers.saturating_sub(st.sessions());
            let grace = inner.cfg.beacon_every_ms.saturating_mul(3);
            st.routes
                .to_dial(now, room.min(MAX_DIALS), &inner.me, grace)
        };
        for (node, addr) in due {
            tokio::spawn(dial_heard(inner.clone(), node, addr));
        }
    }
}
