//! Lost nodes and the placement policy of their instances (`move` or `wait`), the lease a
//! `move` instance carries, and the defaults.
//!
//! Contract (pure, no I/O, no clock):
//! - An instance's policy is its request's (`hedge master request --on-lost move|wait`),
//!   else the fleet's (`[failover] on_lost`). It travels in the instance's signed terms
//!   as `lease_ms` ([`lease_ms`] for `move`, 0 for `wait`), so the node knows it offline.
//! - `wait` (the default): the instance stays on its node however long the node is
//!   silent; the node runs it offline indefinitely. A silent node is usually not a dead
//!   one (a drone out of radio range, a board behind a failed cellular link, a broker
//!   being upgraded), and a data-bearing service moved away starts empty elsewhere while
//!   its data, and what it writes meanwhile, stay on the silent node.
//! - `move`: the node runs its copy only while it holds a lease (an ack for a batch it
//!   first sent less than `lease_ms` ago); once a node is lost (silent for longer than
//!   `lost_after_ms`, [`crate::node_state::lost`]), the master places the instance
//!   elsewhere with the old node fenced. `lease_ms = lost_after_ms - lease_margin_ms`:
//!   the lease counts from the node's sending, which precedes the master's receipt (its
//!   `last_seen`), so a node that stopped hearing acks stops its copy at least
//!   `lease_margin_ms` before the master moves it. The margin covers the node's stop
//!   (SIGTERM, then SIGKILL after the supervisor's grace, 5 s by default), its event
//!   loop's granularity and the drift between the two clocks' rates; the default 60 s
//!   covers them with a wide berth, and [`check`] refuses less than 1 s.
//! - Defaults: `lost_after_ms` 15 min ([`LOST_AFTER_MS`]): three times allocation's
//!   `stale_after_ms` (5 min, when a silent node stops being preferred), longer than
//!   the outages a link or a broker restart usually causes, short enough to bound the
//!   downtime of an instance the operator asked to move. `on_lost = "wait"` (see above:
//!   moving is opt-in, per request, for what can start afresh elsewhere).

use serde::{Deserialize, Serialize};

use crate::config::FailoverSection;

/// Default `[failover] lost_after_ms`: 15 minutes.
pub const LOST_AFTER_MS: u64 = 15 * 60 * 1000;

/// Default `[failover] lease_margin_ms`: 60 s.
pub const LEASE_MARGIN_MS: u64 = 60 * 1000;

/// The smallest `lease_margin_ms` [`check`] accepts.
pub const MIN_LEASE_MARGIN_MS: u64 = 1000;

/// What happens to an instance whose node is lost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnLost {
    /// Stays on its node, which runs it offline indefinitely (no lease).
    #[default]
    Wait,
    /// Runs under a lease and is placed elsewhere once its node is lost.
    Move,
}

impl std::str::FromStr for OnLost {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "wait" => Ok(OnLost::Wait),
            "move" => Ok(OnLost::Move),
            other => Err(format!("{other:?}: expected move or wait")),
        }
    }
}

/// The lease of a `move` instance: `lost_after_ms - lease_margin_ms`, within `u32`.
pub fn lease_ms(lost_after_ms: u64, lease_margin_ms: u64) -> u32 {
    u32::try_from(lost_after_ms.saturating_sub(lease_margin_ms)).unwrap_or(u32::MAX)
}

/// The lease an instance with policy `policy` carries in its terms (0: none).
pub fn lease_for(policy: OnLost, cfg: &FailoverSection) -> u32 {
    match policy {
        OnLost::Wait => 0,
        OnLost::Move => cfg.lease_ms(),
    }
}

/// The policy an instance whose terms carry `lease_ms` has.
pub fn policy_of(lease_ms: u32) -> OnLost {
    if lease_ms == 0 {
        OnLost::Wait
    } else {
        OnLost::Move
    }
}

/// Checks `[failover]`: `lease_margin_ms >= 1 s`, `lost_after_ms >= 2 × lease_margin_ms`
/// (a lease at least as long as its margin), the lease within `u32` ms, and
/// `0 < check_every_ms <= lost_after_ms`.
pub fn check(f: &FailoverSection) -> Result<(), String> {
    if f.lease_margin_ms < MIN_LEASE_MARGIN_MS {
        return Err(format!(
            "failover.lease_margin_ms must be >= {MIN_LEASE_MARGIN_MS}"
        ));
    }
    if f.lost_after_ms < f.lease_margin_ms.saturating_mul(2) {
        return Err("failover.lost_after_ms must be at least twice lease_margin_ms".into());
    }
    if u32::try_from(f.lost_after_ms - f.lease_margin_ms).is_err() {
        return Err("failover.lost_after_ms - lease_margin_ms must be below 2^32 ms".into());
    }
    if f.check_every_ms == 0 || f.check_every_ms > f.lost_after_ms {
        return Err("failover.check_every_ms must be in 1..=lost_after_ms".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_the_lease_ends_a_margin_before_lost() {
        let d = FailoverSection::default();
        assert_eq!(check(&d), Ok(()));
        assert_eq!(d.on_lost, OnLost::Wait);
        assert_eq!(u64::from(d.lease_ms()) + d.lease_margin_ms, d.lost_after_ms);
        assert_eq!(lease_for(OnLost::Wait, &d), 0);
        assert_eq!(lease_for(OnLost::Move, &d), 840_000);
        assert_eq!(policy_of(lease_for(OnLost::Move, &d)), OnLost::Move);
        assert_eq!(policy_of(0), OnLost::Wait);
    }

    #[test]
    fn bad_values_are_refused() {
        let ok = FailoverSection {
            lost_after_ms: 6_000,
            lease_margin_ms: 2_000,
            check_every_ms: 200,
            on_lost: OnLost::Move,
        };
        assert_eq!(check(&ok), Ok(()));
        assert_eq!(ok.lease_ms(), 4_000);
        let bad = [
            FailoverSection {
                lease_margin_ms: 999,
                ..ok.clone()
            },
            FailoverSection {
                lost_after_ms: 3_999,
                ..ok.clone()
            },
            FailoverSection {
                check_every_ms: 0,
                ..ok.clone()
            },
            FailoverSection {
                check_every_ms: 6_001,
                ..ok.clone()
            },
            FailoverSection {
                lost_after_ms: u64::from(u32::MAX) + 3_000,
                ..ok.clone()
            },
        ];
        for b in bad {
            assert!(check(&b).is_err(), "{b:?}");
        }
    }
}
