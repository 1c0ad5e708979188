//! Per-node ingest admission: how much one enrolled node may make the master process
//! and store.
//!
//! Contract: [`Admission`] is a pure core (no I/O, no clock: time is passed in, in ms).
//! The MQTT driver ([`crate::run`]) asks [`Admission::admit`] for every Up frame before
//! decoding it; a refused frame is counted, logged at most once per
//! [`LOG_PERIOD_MS`] per node ([`Admission::should_log`]), and never stored nor acked
//! (the node keeps it and resends later). The stored-bytes bound is enforced by the store
//! inside the ingest transaction ([`crate::store::FleetStore::ingest_within`]), exact
//! across master processes; the rate bound is per master process.
//!
//! The rate is a token bucket per node: [`IngestLimits::burst`] frames at once, refilled
//! at [`IngestLimits::frames_per_sec`]. Only nodes that publish get an entry, and only
//! enrolled nodes can publish (the broker's ACL), so the map is bounded by the fleet.

use std::collections::HashMap;

use hedge_common::log_gate::LogGate;
use hedge_wire::Name;

/// At most one log line per node and per this period for refused frames.
pub const LOG_PERIOD_MS: u64 = 10_000;

/// Bounds on what one node may make the master ingest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestLimits {
    /// Up frames per second, sustained, per node.
    pub frames_per_sec: u32,
    /// Up frames accepted at once after a quiet period (a node flushing its outbox).
    pub burst: u32,
    /// Bytes of records (encoded) the store keeps per node; further batches are refused.
    pub max_stored_bytes: u64,
}

impl Default for IngestLimits {
    /// 50 frames/s (a frame holds up to 64 KiB of records), bursts of 500, 1 GiB stored.
    fn default() -> Self {
        IngestLimits {
            frames_per_sec: 50,
            burst: 500,
            max_stored_bytes: 1 << 30,
        }
    }
}

/// Why a frame was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The node sends faster than [`IngestLimits::frames_per_sec`].
    #[error("node sends more than {0} frames per second")]
    Rate(u32),
    /// The node already has [`IngestLimits::max_stored_bytes`] stored.
    #[error("node has {stored} bytes stored, limit {limit}")]
    Quota {
        /// Bytes stored for the node.
        stored: u64,
        /// [`IngestLimits::max_stored_bytes`], bytes.
        limit: u64,
    },
}

#[derive(Debug)]
struct Bucket {
    /// Tokens × 1000 (milli-frames), so refill needs no floats.
    milli_tokens: u64,
    last_ms: u64,
    log: LogGate<u64>,
}

/// Per-node admission state. See the module doc.
#[derive(Debug)]
pub struct Admission {
    limits: IngestLimits,
    nodes: HashMap<Name, Bucket>,
}

impl Admission {
    /// Empty state under `limits`.
    pub fn new(limits: IngestLimits) -> Admission {
        Admission {
            limits,
            nodes: HashMap::new(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> IngestLimits {
        self.limits
    }

    fn bucket(&mut self, node: &Name, now_ms: u64) -> &mut Bucket {
        let full = u64::from(self.limits.burst) * 1000;
        let rate = u64::from(self.limits.frames_per_sec);
        let b = self.nodes.entry(node.clone()).or_insert(Bucket {
            milli_tokens: full,
            last_ms: now_ms,
            log: LogGate::default(),
        });
        // ms × frames/s = milli-frames.
        let refill = now_ms.saturating_sub(b.last_ms).saturating_mul(rate);
        b.milli_tokens = b.milli_tokens.saturating_add(refill).min(full);
        b.last_ms = b.last_ms.max(now_ms);
        b
    }

    /// Takes one frame of `node`'s allowance at `now_ms`, or says why not.
    pub fn admit(&mut self, node: &Name, now_ms: u64) -> Result<(), Refusal> {
        let rate = self.limits.frames_per_sec;
        let b = self.bucket(node, now_ms);
        if b.milli_tokens < 1000 {
            return Err(Refusal::Rate(rate));
        }
        b.milli_tokens -= 1000;
        Ok(())
    }

    /// `Some(lines suppressed since the last one)` when a refusal of `node` may be logged
    /// at `now_ms`; `None` to stay quiet (and count it as suppressed).
    pub fn should_log(&mut self, node: &Name, now_ms: u64) -> Option<u64> {
        let b = self.bucket(node, now_ms);
        b.log
            .allow(now_ms, |t| now_ms.saturating_sub(t) < LOG_PERIOD_MS)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn n(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    fn limits() -> IngestLimits {
        IngestLimits {
            frames_per_sec: 10,
            burst: 3,
            max_stored_bytes: 1000,
        }
    }

    #[test]
    fn a_burst_then_the_sustained_rate_per_node() {
        let mut a = Admission::new(limits());
        for _ in 0..3 {
            a.admit(&n("a"), 0).unwrap();
        }
        assert_eq!(a.admit(&n("a"), 0), Err(Refusal::Rate(10)));
        // Another node has its own allowance.
        a.admit(&n("b"), 0).unwrap();
        // 10/s: one frame every 100 ms.
        assert!(a.admit(&n("a"), 99).is_err());
        a.admit(&n("a"), 100).unwrap();
        assert!(a.admit(&n("a"), 150).is_err());
        // A long quiet period refills up to the burst only.
        for _ in 0..3 {
            a.admit(&n("a"), 1_000_000).unwrap();
        }
        assert!(a.admit(&n("a"), 1_000_000).is_err());
        // A clock going backwards takes nothing and gives nothing.
        assert!(a.admit(&n("a"), 5).is_err());
    }

    #[test]
    fn refusals_are_logged_once_per_period_per_node() {
        let mut a = Admission::new(limits());
        assert_eq!(a.should_log(&n("a"), 0), Some(0));
        assert_eq!(a.should_log(&n("a"), 1), None);
        assert_eq!(a.should_log(&n("a"), LOG_PERIOD_MS - 1), None);
        assert_eq!(a.should_log(&n("b"), 1), Some(0));
        assert_eq!(a.should_log(&n("a"), LOG_PERIOD_MS), Some(2));
    }
}
