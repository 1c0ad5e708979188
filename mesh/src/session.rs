//! One peer session's I/O: connect or accept, the TLS handshake, then the frame pump.
//!
//! Contract: [`handshake_in`] / [`handshake_out`] give an authenticated stream and the
//! peer's identity (its certificate's CN) within [`HANDSHAKE_TIMEOUT`], or an error;
//! a certificate that does not chain to the fleet CA never gets this far (rustls refuses
//! it during the handshake). [`run`] pumps frames both ways until the peer closes, goes
//! silent past `dead_after`, breaks framing, or its outgoing queue is dropped: received
//! messages go to the hub in order (awaiting it: a slow consumer slows the peer down, it
//! never grows a buffer), undecodable frames are counted and dropped, and a keepalive is
//! written whenever nothing else was for `keepalive`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hedge_wire::Name;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};

use crate::frame::{read_frame, write_frame, Frame, FrameError};
use crate::stats::{Gates, NetStats};
use crate::tls::{peer_name, server_name, NetTls, TlsError};

/// Longest TCP connect plus TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most frames queued for one peer; a full queue refuses sends.
pub const OUT_QUEUE: usize = 16;

/// An authenticated stream and who is at its other end.
pub struct Authenticated {
    /// The stream.
    pub stream: TlsStream<TcpStream>,
    /// The peer's certificate CN.
    pub peer: Name,
    /// Its end-entity certificate (DER).
    pub cert_der: Vec<u8>,
    /// Its address.
    pub addr: SocketAddr,
}

/// Accepts a session on an accepted TCP connection.
pub async fn handshake_in(
    tls: &NetTls,
    tcp: TcpStream,
    addr: SocketAddr,
) -> Result<Authenticated, SessionError> {
    let _ = tcp.set_nodelay(true);
    let acceptor = TlsAcceptor::from(tls.server.clone());
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| SessionError::Timeout)??;
    let der = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or(SessionError::NoCertificate)?;
    let der = der.as_ref().to_vec();
    authenticated(tls, TlsStream::from(stream), der, addr)
}

/// Dials `addr` and opens a session.
pub async fn handshake_out(tls: &NetTls, addr: SocketAddr) -> Result<Authenticated, SessionError> {
    let connector = TlsConnector::from(tls.client.clone());
    let go = async {
        let tcp = TcpStream::connect(addr).await?;
        let _ = tcp.set_nodelay(true);
        let stream = connector.connect(server_name(), tcp).await?;
        let der = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or(SessionError::NoCertificate)?;
        let der = der.as_ref().to_vec();
        let mut auth = authenticated(tls, TlsStream::from(stream), der, addr)?;
        // In TLS 1.3 the client finishes its handshake before the server has checked the
        // client's certificate: the server's first frame (the keepalive `run` opens with,
        // once the server has registered the session) proves it did.
        let mut first = [0u8; 4];
        auth.stream.read_exact(&mut first).await?;
        if first != [0; 4] {
            return Err(SessionError::Protocol);
        }
        Ok(auth)
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, go)
        .await
        .map_err(|_| SessionError::Timeout)?
}

fn authenticated(
    tls: &NetTls,
    stream: TlsStream<TcpStream>,
    cert_der: Vec<u8>,
    addr: SocketAddr,
) -> Result<Authenticated, SessionError> {
    let peer = peer_name(&rustls::pki_types::CertificateDer::from(
        cert_der.as_slice(),
    ))
    .map_err(SessionError::Identity)?;
    if &peer == tls.me() {
        return Err(SessionError::Myself);
    }
    Ok(Authenticated {
        stream,
        peer,
        cert_der,
        addr,
    })
}

/// What a session hands its hub.
#[derive(Debug)]
pub enum FromSession {
    /// A message, in order.
    Message {
        /// Session id.
        id: u64,
        /// The message.
        msg: Box<hedge_wire::mesh::PeerMessage>,
    },
    /// The session ended.
    Ended {
        /// Session id.
        id: u64,
    },
}

/// Timing of a session.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Keepalive interval.
    pub keepalive: Duration,
    /// Silence after which the peer is dead.
    pub dead_after: Duration,
}

/// Pumps frames until the session ends, then says so to the hub. The first frame written
/// is a keepalive.
pub async fn run(
    id: u64,
    stream: TlsStream<TcpStream>,
    out: mpsc::Receiver<Vec<u8>>,
    hub: mpsc::Sender<FromSession>,
    timing: Timing,
    stats: Arc<NetStats>,
    gates: Arc<Gates>,
) {
    let (r, w) = tokio::io::split(stream);
    let end = tokio::select! {
        e = reader(id, r, &hub, timing.dead_after, &stats, &gates) => e,
        e = writer(w, out, timing.keepalive) => e,
    };
    match &end {
        FrameError::Closed => {}
        FrameError::Idle => NetStats::bump(&stats.idle),
        e => {
            NetStats::bump(&stats.broken);
            gates.warn("session broken", e);
        }
    }
    let _ = hub.send(FromSession::Ended { id }).await;
}

async fn reader(
    id: u64,
    mut r: ReadHalf<TlsStream<TcpStream>>,
    hub: &mpsc::Sender<FromSession>,
    dead_after: Duration,
    stats: &NetStats,
    gates: &Gates,
) -> FrameError {
    loop {
        match read_frame(&mut r, dead_after).await {
            Ok(Frame::Keepalive) => {}
            Ok(Frame::Message(msg, len)) => {
                NetStats::bump(&stats.frames_in);
                NetStats::add(&stats.bytes_in, len);
                if hub.send(FromSession::Message { id, msg }).await.is_err() {
                    return FrameError::Closed;
                }
            }
            Err(FrameError::Wire(e)) => {
                NetStats::bump(&stats.bad_frames);
                gates.warn("undecodable peer frame", &e);
            }
            Err(e) => return e,
        }
    }
}

async fn writer<W: AsyncWrite + Unpin>(
    mut w: W,
    mut out: mpsc::Receiver<Vec<u8>>,
    keepalive: Duration,
) -> FrameError {
    // The opening keepalive: the dialler waits for it (see `handshake_out`). Written
    // before anything queued: the mesh link answers a session's `Up` with a `Hello` at
    // once, which must not come first.
    if let Err(e) = write_frame(&mut w, &[]).await {
        return e;
    }
    let mut wait = Duration::ZERO;
    loop {
        let first = match tokio::time::timeout(wait, out.recv()).await {
            Ok(Some(body)) => body,
            Ok(None) => {
                let _ = w.shutdown().await;
                return FrameError::Closed;
            }
            Err(_) => Vec::new(),
        };
        wait = keepalive;
        if let Err(e) = write_frame(&mut w, &first).await {
            return e;
        }
        // Whatever else is queued goes in the same flush.
        while let Ok(body) = out.try_recv() {
            if let Err(e) = write_frame(&mut w, &body).await {
                return e;
            }
        }
        if let Err(e) = w.flush().await {
            return e.into();
        }
    }
}

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// TCP or TLS failed (foreign CA, no client certificate, not TLS, reset).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Connect plus handshake took longer than [`HANDSHAKE_TIMEOUT`].
    #[error("handshake timed out")]
    Timeout,
    /// The peer presented no certificate.
    #[error("no peer certificate")]
    NoCertificate,
    /// The peer's certificate names no node.
    #[error("peer identity: {0}")]
    Identity(TlsError),
    /// The accepting end did not open with a keepalive.
    #[error("the peer did not open with a keepalive")]
    Protocol,
    /// The peer is this node.
    #[error("the peer is this node")]
    Myself,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use hedge_wire::mesh::{encode_peer, Hello, PeerMessage};

    use super::*;
    use crate::frame::MAX_PEER_FRAME;

    #[tokio::test]
    async fn the_first_frame_is_the_keepalive_even_with_a_message_queued() {
        let (w, mut r) = tokio::io::duplex(4096);
        let (tx, rx) = mpsc::channel(4);
        let hello = PeerMessage::Hello(Hello {
            node: Name::new("n").unwrap(),
            hops: 0,
            outbox: 0,
            desired: vec![],
        });
        tx.send(encode_peer(&hello, MAX_PEER_FRAME).unwrap())
            .await
            .unwrap();
        drop(tx);
        let end = writer(w, rx, Duration::from_secs(60)).await;
        assert!(matches!(end, FrameError::Closed), "{end:?}");
        let idle = Duration::from_secs(1);
        assert_eq!(read_frame(&mut r, idle).await.unwrap(), Frame::Keepalive);
        assert!(
            matches!(read_frame(&mut r, idle).await.unwrap(), Frame::Message(m, _) if *m == hello)
        );
    }
}
