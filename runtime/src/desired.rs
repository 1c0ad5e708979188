//! Accepting the master's desired state: the node's only way to take orders.
//!
//! Contract: everything here is pure (no I/O, no clock; the daemon passes both in).
//! [`check`] accepts a desired state only when it is for this node, its generation is
//! newer than the applied one, it is within the wire bounds, and its ed25519 signature
//! by the master's key verifies over [`DesiredState::signed_bytes`]. Anything else is a
//! [`DesiredError`] naming why; the daemon counts it, logs it, and reports it as a
//! `Desired { accepted: false }` record, and keeps running what it runs.
//!
//! Fails closed: [`applied_generation`] turns a store read error into
//! [`DesiredError::StoreUnreadable`], never into "generation 0" (which would accept any
//! older signed state again).
//!
//! Expiry: the master signs an expiry into every state. A node keeps running a state
//! past it (stopping a fleet because a master went away would be worse) but reports
//! it: [`ExpiryWatch`] says once per generation that the applied state expired. Time is
//! judged by [`trusted_now_ms`]: the newest of the wall clock and a floor the node
//! persisted ([`floor_to_persist`]), because a board without a real-time clock boots in
//! 1970 and would otherwise find every state fresh. A node that never knew the real
//! time (clock and floor both in 1970) cannot tell, and reports nothing.

use ed25519_dalek::{Signature, VerifyingKey};
use hedge_wire::validate::Validate;
use hedge_wire::{DesiredState, Name};

/// Why a desired state was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DesiredError {
    /// The frame did not decode or is not a desired state.
    #[error("malformed desired state: {0}")]
    Malformed(String),
    /// Addressed to another node.
    #[error("desired state is for node {0:?}, not this node")]
    WrongNode(String),
    /// Not newer than what the node has (a replay or a stale retained message).
    #[error("generation {got} is not newer than the applied {have}")]
    Stale {
        /// Offered generation.
        got: u64,
        /// Applied generation.
        have: u64,
    },
    /// Missing, malformed or not the master's signature.
    #[error("signature does not verify with the master's key")]
    BadSignature,
    /// The node has no master key configured.
    #[error("no master public key configured ([uplink] master_public_key)")]
    NoKey,
    /// The applied generation could not be read from the store; nothing is accepted
    /// until it can be.
    #[error("cannot read the applied generation from the store: {0}")]
    StoreUnreadable(String),
}

/// The applied generation, from what the store returned for the applied state: none
/// stored is 0; a read error is [`DesiredError::StoreUnreadable`], never 0.
pub fn applied_generation<E: core::fmt::Display>(
    stored: Result<Option<&DesiredState>, E>,
) -> Result<u64, DesiredError> {
    match stored {
        Ok(d) => Ok(d.map_or(0, |d| d.generation)),
        Err(e) => Err(DesiredError::StoreUnreadable(e.to_string())),
    }
}

/// The time a node trusts, ms since the epoch: the newest of its wall clock and the
/// floor it persisted (the last time it knew). A clock that went back (no RTC, a
/// bad NTP answer) does not make a state fresh again.
pub fn trusted_now_ms(clock_ms: u64, floor_ms: u64) -> u64 {
    clock_ms.max(floor_ms)
}

/// How far the clock must pass the persisted floor before the floor is written again:
/// ten minutes, to spare flash (one small write per ten minutes of uptime at most).
pub const FLOOR_STEP_MS: u64 = 10 * 60 * 1000;

/// The new floor to persist, if the clock moved [`FLOOR_STEP_MS`] past the old one.
pub fn floor_to_persist(clock_ms: u64, floor_ms: u64) -> Option<u64> {
    (clock_ms > floor_ms && clock_ms >= floor_ms.saturating_add(FLOOR_STEP_MS)).then_some(clock_ms)
}

/// Whether a state expiring at `expires_ms` is expired at `trusted_now_ms`.
pub fn is_expired(expires_ms: u64, trusted_now_ms: u64) -> bool {
    trusted_now_ms >= expires_ms
}

/// The applied state was found past its expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    /// The generation of the expired state.
    pub generation: u64,
    /// Its expiry, ms since the epoch.
    pub expires_ms: u64,
    /// The trusted time it was judged at.
    pub judged_at_ms: u64,
}

/// Watches the applied state's expiry and reports it once per generation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExpiryWatch {
    /// `(generation, expires_ms)` of the applied state.
    applied: Option<(u64, u64)>,
    /// The generation already reported as expired.
    reported: Option<u64>,
}

impl ExpiryWatch {
    /// The node now runs this state (at boot, or when a new one was accepted).
    pub fn applied(&mut self, d: &DesiredState) {
        self.applied = Some((d.generation, d.expires_ms));
    }

    /// `(generation, expires_ms)` of the applied state, if any.
    pub fn current(&self) -> Option<(u64, u64)> {
        self.applied
    }

    /// Whether the applied state is expired at `trusted_now_ms`.
    pub fn expired(&self, trusted_now_ms: u64) -> bool {
        self.applied
            .is_some_and(|(_, e)| is_expired(e, trusted_now_ms))
    }

    /// Judges the applied state at `trusted_now_ms`: `Some` the first time it is found
    /// expired, `None` otherwise (fresh, nothing applied, or already reported).
    pub fn judge(&mut self, trusted_now_ms: u64) -> Option<Expired> {
        let (generation, expires_ms) = self.applied?;
        if !is_expired(expires_ms, trusted_now_ms) || self.reported == Some(generation) {
            return None;
        }
        self.reported = Some(generation);
        Some(Expired {
            generation,
            expires_ms,
            judged_at_ms: trusted_now_ms,
        })
    }
}

/// Parses a hex-encoded ed25519 public key.
pub fn parse_public_key(hex: &str) -> Result<VerifyingKey, String> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return Err("want 64 hex digits".into());
    }
    let b: [u8; 32] = hedge_common::hex::decode_array(hex).ok_or("not hex")?;
    VerifyingKey::from_bytes(&b).map_err(|e| e.to_string())
}

/// Checks `d` against the node's id, its applied generation and the master's key.
pub fn check(
    d: &DesiredState,
    node: &Name,
    applied_generation: u64,
    master: Option<&VerifyingKey>,
) -> Result<(), DesiredError> {
    let key = master.ok_or(DesiredError::NoKey)?;
    d.validate()
        .map_err(|e| DesiredError::Malformed(e.to_string()))?;
    // Signature first: nothing else about an unsigned message is worth believing.
    let sig: [u8; 64] = d
        .signature
        .as_slice()
        .try_into()
        .map_err(|_| DesiredError::BadSignature)?;
    key.verify_strict(&d.signed_bytes(), &Signature::from_bytes(&sig))
        .map_err(|_| DesiredError::BadSignature)?;
    if &d.node != node {
        return Err(DesiredError::WrongNode(d.node.to_string()));
    }
    if d.generation <= applied_generation {
        return Err(DesiredError::Stale {
            got: d.generation,
            have: applied_generation,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use ed25519_dalek::{Signer, SigningKey};

    use super::*;

    fn signed(key: &SigningKey, node: &str, generation: u64) -> DesiredState {
        let mut d = DesiredState {
            node: Name::new(node).unwrap(),
            generation,
            instances: vec![],
            signature: heapless::Vec::new(),
            expires_ms: 1_000_000,
            terms: vec![],
            imports: vec![],
            backups: Vec::new(),
            restores: Vec::new(),
        };
        let sig = key.sign(&d.signed_bytes()).to_bytes();
        d.signature = heapless::Vec::from_slice(&sig).unwrap();
        d
    }

    #[test]
    fn accepts_only_newer_signed_states_for_this_node() {
        let master = SigningKey::from_bytes(&[7; 32]);
        let forger = SigningKey::from_bytes(&[8; 32]);
        let vk = master.verifying_key();
        let me = Name::new("n1").unwrap();
        assert_eq!(check(&signed(&master, "n1", 5), &me, 4, Some(&vk)), Ok(()));
        assert_eq!(
            check(&signed(&master, "n1", 4), &me, 4, Some(&vk)),
            Err(DesiredError::Stale { got: 4, have: 4 })
        );
        assert_eq!(
            check(&signed(&forger, "n1", 9), &me, 4, Some(&vk)),
            Err(DesiredError::BadSignature)
        );
        assert!(matches!(
            check(&signed(&master, "n2", 9), &me, 4, Some(&vk)),
            Err(DesiredError::WrongNode(_))
        ));
        let mut tampered = signed(&master, "n1", 9);
        tampered.generation = 10;
        assert_eq!(
            check(&tampered, &me, 4, Some(&vk)),
            Err(DesiredError::BadSignature)
        );
        let mut extended = signed(&master, "n1", 9);
        extended.expires_ms += 1;
        assert_eq!(
            check(&extended, &me, 4, Some(&vk)),
            Err(DesiredError::BadSignature)
        );
        let mut unsigned = signed(&master, "n1", 9);
        unsigned.signature.clear();
        assert_eq!(
            check(&unsigned, &me, 4, Some(&vk)),
            Err(DesiredError::BadSignature)
        );
        assert_eq!(
            check(&signed(&master, "n1", 9), &me, 4, None),
            Err(DesiredError::NoKey)
        );
    }

    #[test]
    fn public_keys_parse_from_hex() {
        let vk = SigningKey::from_bytes(&[7; 32]).verifying_key();
        let hex = hedge_common::hex::encode(&vk.to_bytes());
        assert_eq!(parse_public_key(&hex).unwrap(), vk);
        assert!(parse_public_key("zz").is_err());
    }

    #[test]
    fn a_store_read_error_is_an_error_never_generation_zero() {
        let d = signed(&SigningKey::from_bytes(&[7; 32]), "n1", 5);
        assert_eq!(applied_generation::<String>(Ok(Some(&d))), Ok(5));
        assert_eq!(applied_generation::<String>(Ok(None)), Ok(0));
        assert_eq!(
            applied_generation(Err("value under desired/current does not decode")),
            Err(DesiredError::StoreUnreadable(
                "value under desired/current does not decode".into()
            ))
        );
    }

    #[test]
    fn expiry_is_judged_against_the_trusted_floor_and_reported_once() {
        let d = signed(&SigningKey::from_bytes(&[7; 32]), "n1", 5);
        let mut w = ExpiryWatch::default();
        assert_eq!(
            w.judge(u64::MAX),
            None,
            "nothing applied, nothing to report"
        );
        w.applied(&d);
        assert_eq!(w.current(), Some((5, 1_000_000)));
        // Fresh by the clock.
        assert!(!w.expired(999_999));
        assert_eq!(w.judge(trusted_now_ms(999_999, 0)), None);
        // A board that booted in 1970 but knew a later time: the floor decides.
        let now = trusted_now_ms(3_000, 1_000_000);
        assert_eq!(now, 1_000_000);
        assert!(w.expired(now));
        assert_eq!(
            w.judge(now),
            Some(Expired {
                generation: 5,
                expires_ms: 1_000_000,
                judged_at_ms: 1_000_000
            })
        );
        // Reported once per generation; still expired.
        assert_eq!(w.judge(now + 1), None);
        assert!(w.expired(now + 1));
        // A newer state starts afresh, and is reported again once it expires.
        let mut newer = d.clone();
        newer.generation = 6;
        newer.expires_ms = 2_000_000;
        w.applied(&newer);
        assert_eq!(w.judge(1_500_000), None);
        assert_eq!(w.judge(2_000_000).map(|e| e.generation), Some(6));
    }

    #[test]
    fn the_floor_is_persisted_only_when_the_clock_moved_a_step_past_it() {
        assert_eq!(floor_to_persist(0, 0), None);
        assert_eq!(floor_to_persist(FLOOR_STEP_MS - 1, 0), None);
        assert_eq!(floor_to_persist(FLOOR_STEP_MS, 0), Some(FLOOR_STEP_MS));
        // A clock back in 1970 never lowers it.
        assert_eq!(floor_to_persist(5, 1_000_000_000), None);
        assert_eq!(floor_to_persist(u64::MAX, u64::MAX), None);
    }
}
