//! The master's ed25519 key and the signature of desired states.
//!
//! Contract: [`MasterKey::create`] writes a new secret key (32 raw bytes, mode 0600,
//! never overwriting) and its public key as hex beside it (`<path>.pub`, what nodes
//! are configured with); [`MasterKey::load`] reads it back and refuses a file that
//! group or others may access (both fail with a [`KeyFileError`]). [`sign`] sets the
//! state's expiry ([`DESIRED_TTL_MS`] after the master's `now`), signs
//! [`DesiredState::signed_bytes`] (which cover the expiry) and writes the 64-byte
//! signature into the state; [`verify`] is the check a node runs and needs only the
//! 32-byte public key (it uses `verify_strict`, which refuses
//! weak keys and malleable signatures). The secret lives in a `SigningKey`, which
//! zeroizes itself on drop; intermediate buffers are zeroized too.

use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use hedge_common::{keyfile, KeyFileError};
use hedge_wire::mesh::SignedAck;
use hedge_wire::DesiredState;
use zeroize::Zeroizing;

/// Errors of signature checks.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The public key is not a valid ed25519 point.
    #[error("not a valid ed25519 public key")]
    BadPublicKey,
    /// The desired state carries no signature.
    #[error("desired state is unsigned")]
    Unsigned,
    /// The signature is not 64 bytes.
    #[error("signature is {0} bytes, want 64")]
    BadLength(usize),
    /// The signature does not match the state and key.
    #[error("signature does not verify")]
    Mismatch,
}

/// The master's signing key.
pub struct MasterKey {
    key: SigningKey,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey")
            .field("public", &self.public_hex())
            .finish_non_exhaustive()
    }
}

impl MasterKey {
    /// A new random key, not saved anywhere (tests, sandboxes).
    pub fn generate() -> Self {
        MasterKey {
            key: SigningKey::generate(&mut rand_core::OsRng),
        }
    }

    /// Creates a new key at `path` and its public key at `path` with extension
    /// `pub`; fails if `path` exists.
    pub fn create(path: &Path) -> Result<Self, KeyFileError> {
        let key = Self::generate();
        let secret = Zeroizing::new(key.key.to_bytes());
        keyfile::create_seed(path, &secret, &key.public())?;
        Ok(key)
    }

    /// Loads the key at `path`.
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        Ok(MasterKey {
            key: SigningKey::from_bytes(&*keyfile::read_seed(path)?),
        })
    }

    /// Loads the key at `path`, creating it first if there is no file.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyFileError> {
        match Self::create(path) {
            Err(KeyFileError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists =>
            {
                Self::load(path)
            }
            other => other,
        }
    }

    /// The public key nodes verify with.
    pub fn public(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// The public key as 64 lower-case hex digits.
    pub fn public_hex(&self) -> String {
        hedge_common::hex::encode(&self.public())
    }
}

/// How long a desired state the master signs stays fresh: 30 days. A node runs a state
/// past it but reports it; `hedge master run` re-signs a node's state (same instances,
/// new generation) once less than half of this is left, so a reachable node never
/// sees its state expire.
pub const DESIRED_TTL_MS: u64 = 30 * 24 * 3600 * 1000;

/// Signs `state` with `key`: sets its expiry to `now_ms` + [`DESIRED_TTL_MS`] and
/// replaces its signature with one over [`DesiredState::signed_bytes`].
pub fn sign(key: &MasterKey, state: &mut DesiredState, now_ms: u64) {
    state.expires_ms = now_ms.saturating_add(DESIRED_TTL_MS);
    let sig = key.key.sign(&state.signed_bytes()).to_bytes();
    // Exactly 64 bytes into a 64-byte `heapless::Vec`: collecting cannot overflow.
    state.signature = sig.into_iter().collect();
}

/// Whether a state expiring at `expires_ms` is due for re-signing at `now_ms`: less than
/// half of [`DESIRED_TTL_MS`] left (or already expired, or never had an expiry).
pub fn needs_renewal(expires_ms: u64, now_ms: u64) -> bool {
    expires_ms.saturating_sub(now_ms) < DESIRED_TTL_MS / 2
}

/// Re-signs every stored desired state due for renewal at `now_ms` ([`needs_renewal`]):
/// same instances, a new generation and expiry. Returns `(node, new generation)` for
/// each; `hedge master run` publishes them like any newer state. A node whose state
/// fails to re-sign is logged and skipped, the others still renew.
pub fn renew_expiring(
    store: &impl crate::store::FleetStore,
    key: &MasterKey,
    now_ms: u64,
) -> Result<Vec<(hedge_wire::Name, u64)>, crate::store::StoreError> {
    let mut renewed = Vec::new();
    for (node, _) in store.desired_generations()? {
        let due = match store.desired(&node) {
            Ok(Some(d)) => needs_renewal(d.expires_ms, now_ms),
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(node = %node, error = %e, "cannot read a desired state to renew");
                false
            }
        };
        if !due {
            continue;
        }
        // Two master processes may both renew the same state: each takes its own
        // generation, both are validly signed, and the node keeps the newer.
        match store.update_desired(&node, |v| v, |d| sign(key, d, now_ms)) {
            Ok(d) => renewed.push((node, d.generation)),
            Err(e) => tracing::warn!(node = %node, error = %e, "cannot renew a desired state"),
        }
    }
    Ok(renewed)
}

/// A [`SignedAck`] of `node`'s life `epoch` up to `upto`: the acknowledgement the master
/// sends for records carried by relays, which the node checks with the same public key
/// as its desired states (over [`SignedAck::signed_bytes`]).
pub fn sign_ack(key: &MasterKey, node: &hedge_wire::Name, epoch: u64, upto: u64) -> SignedAck {
    hedge_uplink::origin::sign_ack(&key.key, node.clone(), epoch, upto)
}

/// Checks that `state` is signed by the holder of `public`.
pub fn verify(public: &[u8; 32], state: &DesiredState) -> Result<(), SignError> {
    let key = VerifyingKey::from_bytes(public).map_err(|_| SignError::BadPublicKey)?;
    if state.signature.is_empty() {
        return Err(SignError::Unsigned);
    }
    let bytes: [u8; 64] = state
        .signature
        .as_slice()
        .try_into()
        .map_err(|_| SignError::BadLength(state.signature.len()))?;
    key.verify_strict(&state.signed_bytes(), &Signature::from_bytes(&bytes))
        .map_err(|_| SignError::Mismatch)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::fs::PermissionsExt;

    use hedge_wire::Name;

    use super::*;

    #[test]
    fn a_signed_ack_verifies_with_the_public_key_nodes_hold_and_any_change_breaks_it() {
        use hedge_uplink::origin::verify_ack;
        let key = MasterKey::generate();
        let public = VerifyingKey::from_bytes(&key.public()).unwrap();
        let ack = sign_ack(&key, &Name::new("c").unwrap(), 7, 42);
        assert_eq!((ack.epoch, ack.upto, ack.signature.len()), (7, 42, 64));
        verify_ack(&public, &ack).unwrap();
        let other = VerifyingKey::from_bytes(&MasterKey::generate().public()).unwrap();
        assert!(verify_ack(&other, &ack).is_err());
        for changed in [
            SignedAck {
                upto: 43,
                ..ack.clone()
            },
            SignedAck {
                epoch: 8,
                ..ack.clone()
            },
            SignedAck {
                node: Name::new("d").unwrap(),
                ..ack.clone()
            },
        ] {
            assert!(verify_ack(&public, &changed).is_err());
        }
    }

    fn state(generation: u64) -> DesiredState {
        DesiredState {
            node: Name::new("pi-1").unwrap(),
            generation,
            instances: Vec::new(),
            signature: heapless::Vec::new(),
            expires_ms: 0,
            terms: vec![],
            imports: vec![],
            backups: Vec::new(),
            restores: Vec::new(),
        }
    }

    #[test]
    fn sign_then_verify() {
        let k = MasterKey::generate();
        let mut d = state(3);
        assert!(matches!(verify(&k.public(), &d), Err(SignError::Unsigned)));
        sign(&k, &mut d, 1_000);
        assert_eq!(d.signature.len(), 64);
        verify(&k.public(), &d).unwrap();
        // Re-signing replaces, never appends.
        sign(&k, &mut d, 1_000);
        verify(&k.public(), &d).unwrap();
    }

    #[test]
    fn tampering_or_another_key_fails() {
        let k = MasterKey::generate();
        let mut d = state(3);
        sign(&k, &mut d, 1_000);
        let mut bumped = d.clone();
        bumped.generation = 4;
        assert!(matches!(
            verify(&k.public(), &bumped),
            Err(SignError::Mismatch)
        ));
        let other = MasterKey::generate();
        assert!(matches!(
            verify(&other.public(), &d),
            Err(SignError::Mismatch)
        ));
        // The expiry is signed: moving it breaks the signature.
        assert_eq!(d.expires_ms, 1_000 + DESIRED_TTL_MS);
        let mut later = d.clone();
        later.expires_ms += 1;
        assert!(matches!(
            verify(&k.public(), &later),
            Err(SignError::Mismatch)
        ));
        let mut short = d.clone();
        short.signature.truncate(10);
        assert!(matches!(
            verify(&k.public(), &short),
            Err(SignError::BadLength(10))
        ));
    }

    #[test]
    fn create_then_load_round_trips_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("master.key");
        let k = MasterKey::create(&p).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(MasterKey::load(&p).unwrap().public(), k.public());
        assert_eq!(
            std::fs::read_to_string(p.with_extension("pub")).unwrap(),
            format!("{}\n", k.public_hex())
        );
        assert!(MasterKey::create(&p).is_err(), "must not overwrite a key");
        assert_eq!(MasterKey::load_or_create(&p).unwrap().public(), k.public());
        let q = dir.path().join("other.key");
        let made = MasterKey::load_or_create(&q).unwrap();
        assert_eq!(MasterKey::load(&q).unwrap().public(), made.public());
    }

    #[test]
    fn exposed_or_malformed_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("master.key");
        MasterKey::create(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(MasterKey::load(&p), Err(KeyFileError::Exposed(_))));
        std::fs::write(&p, b"short").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            MasterKey::load(&p),
            Err(KeyFileError::Malformed(_))
        ));
    }
}
