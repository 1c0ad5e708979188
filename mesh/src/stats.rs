//! Counters of the mesh transport, and the rate-limited log line of each noisy condition.
//!
//! Contract: every refused connection, session, frame or beacon increments exactly one
//! counter here; [`NetStats::snapshot`] reads them all. [`Gates::warn`] logs a line for a
//! kind of refusal at most once per [`LOG_PERIOD`], carrying how many were held back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hedge_common::log_gate::LogGate;

/// At most one log line per kind per period.
pub const LOG_PERIOD: Duration = Duration::from_secs(10);

macro_rules! counters {
    ($($(#[$m:meta])* $name:ident,)*) => {
        /// Live counters (relaxed atomics).
        #[derive(Debug, Default)]
        pub struct NetStats { $($(#[$m])* pub $name: AtomicU64,)* }
        /// The counters at one moment.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct NetCounts { $($(#[$m])* pub $name: u64,)* }
        impl NetStats {
            /// Reads every counter.
            pub fn snapshot(&self) -> NetCounts {
                NetCounts { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counters! {
    /// Sessions that came up.
    sessions_up,
    /// Connections whose TCP connect or TLS handshake failed (foreign CA, no certificate,
    /// not TLS at all, timeout).
    handshake_failed,
    /// Sessions refused: the peer's CN is this node, or not a node name.
    refused_identity,
    /// Sessions closed: a `Hello` named another node than the certificate's CN.
    refused_hello,
    /// Sessions refused: `max_peers` reached.
    refused_full,
    /// Sessions dropped in favour of another session with the same peer.
    replaced,
    /// Frames that did not decode (dropped; the session goes on).
    bad_frames,
    /// Sessions closed on a frame length over the limit, a cut frame or an I/O error.
    broken,
    /// Sessions closed because the peer was silent past `dead_after_ms`.
    idle,
    /// Messages received.
    frames_in,
    /// Bytes of messages received.
    bytes_in,
    /// Messages queued for a peer.
    frames_out,
    /// Bytes of messages queued for a peer.
    bytes_out,
    /// Messages not sent: no session with that peer, its queue full, or unencodable.
    send_failed,
    /// Beacons sent.
    beacons_out,
    /// Beacons heard from other nodes.
    beacons_in,
    /// Datagrams on the beacon port that are not beacons.
    bad_beacons,
}

impl NetStats {
    /// Adds one to a counter.
    pub fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n` to a counter.
    pub fn add(c: &AtomicU64, n: usize) {
        c.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

/// One log gate per kind of noisy condition.
#[derive(Debug, Default)]
pub struct Gates {
    gates: Mutex<std::collections::BTreeMap<&'static str, LogGate<Instant>>>,
}

impl Gates {
    /// Logs `what: detail` at warn level unless a line of the same `what` was logged in
    /// the last [`LOG_PERIOD`].
    pub fn warn(&self, what: &'static str, detail: &dyn std::fmt::Display) {
        #[allow(clippy::disallowed_methods)] // I/O driver: a log rate limit
        let now = Instant::now();
        let allowed = match self.gates.lock() {
            Ok(mut g) => g
                .entry(what)
                .or_default()
                .allow(now, |t| now.duration_since(t) < LOG_PERIOD),
            Err(_) => Some(0),
        };
        if let Some(held) = allowed {
            tracing::warn!(held_back = held, "mesh: {what}: {detail}");
        }
    }
}
