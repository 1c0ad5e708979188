//! Schema versions of the store and the hook that upgrades an older one.
//!
//! Contract: `meta/schema` holds a big-endian u32. A store without it is new and gets
//! [`SCHEMA_VERSION`]. An older version is upgraded step by step by [`STEPS`] (each
//! step idempotent, the version bumped after it). A newer version is refused untouched.

use super::StoreError;

/// The schema this build writes.
pub const SCHEMA_VERSION: u32 = 1;

const KEY: &[u8] = b"schema";

/// One upgrade: from version `n` (its index + 1) to `n + 1`.
type Step = fn(&sled::Tree) -> Result<(), StoreError>;

/// Upgrade steps, `STEPS[i]` takes version `i + 1` to `i + 2`. Empty while there is one version.
const STEPS: &[Step] = &[];

pub(super) fn run(meta: &sled::Tree) -> Result<(), StoreError> {
    let found = match meta.get(KEY)? {
        None => {
            meta.insert(KEY, &SCHEMA_VERSION.to_be_bytes())?;
            return Ok(());
        }
        Some(v) => {
            let mut b = [0u8; 4];
            let n = v.len().min(4);
            b[..n].copy_from_slice(&v[..n]);
            u32::from_be_bytes(b)
        }
    };
    if found > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for version in found..SCHEMA_VERSION {
        if let Some(step) = STEPS.get(version as usize - 1) {
            step(meta)?;
        }
        meta.insert(KEY, &(version + 1).to_be_bytes())?;
        tracing::info!(from = version, to = version + 1, "store schema upgraded");
    }
    Ok(())
}
