//! Accepting the master's desired state: the node's only way to take orders.
//!
//! Contract: [`check`] is pure. A desired state is accepted only when it is for this
//! node, its generation is newer than the stored one, it is within the wire bounds, and
//! its ed25519 signature by the master's key verifies over
//! [`DesiredState::signed_bytes`]. Anything else is a [`DesiredError`] naming why; the
//! daemon counts it, logs it, and reports it as a `Desired { accepted: false }` record,
//! and keeps running what it runs.

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
}

/// Parses a hex-encoded ed25519 public key.
pub fn parse_public_key(hex: &str) -> Result<VerifyingKey, String> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return Err("want 64 hex digits".into());
    }
    let mut b = [0u8; 32];
    for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(chunk).map_err(|_| "not hex".to_string())?;
        b[i] = u8::from_str_radix(s, 16).map_err(|_| "not hex".to_string())?;
    }
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
        let hex: String = vk.to_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(parse_public_key(&hex).unwrap(), vk);
        assert!(parse_public_key("zz").is_err());
    }
}
