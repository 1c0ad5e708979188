//! Values as every backend stores them: postcard blobs and node names as text.
//!
//! Contract: [`encode`] and [`decode`] are the only way a stored value is written and
//! read back; a blob that does not decode is [`StoreError::Corrupt`], a stored name
//! that is not a valid [`Name`] is [`StoreError::BadName`]. [`decode_desired`] also
//! reads a desired state stored before wire version 2 (no expiry: it reads with
//! expiry 0, so the next update re-signs it with one).

use hedge_wire::{DesiredState, InstanceRequest, Name, RequestedState};
use serde::{Deserialize, Serialize};

use super::{Result, StoreError};

/// A stored node or instance name.
pub(super) fn name(s: String) -> Result<Name> {
    Name::new(&s).map_err(|_| StoreError::BadName(s))
}

pub(super) fn encode<T: Serialize>(what: &'static str, v: &T) -> Result<Vec<u8>> {
    postcard::to_allocvec(v).map_err(|source| StoreError::Encode { what, source })
}

pub(super) fn decode<'a, T: Deserialize<'a>>(
    what: &'static str,
    node: &str,
    bytes: &'a [u8],
) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|source| StoreError::Corrupt {
        what,
        node: node.to_owned(),
        source,
    })
}

/// A stored desired state, of any wire version ([`DesiredState::from_stored`]).
pub(super) fn decode_desired(node: &str, blob: &[u8]) -> Result<DesiredState> {
    DesiredState::from_stored(blob).map_err(|source| StoreError::Corrupt {
        what: "desired state",
        node: node.to_owned(),
        source,
    })
}

/// Instances of a desired state that are not destroyed (what counts against capacity).
pub(super) fn allocated(instances: &[InstanceRequest]) -> u32 {
    let n = instances
        .iter()
        .filter(|i| i.state != RequestedState::Destroyed)
        .count();
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::store::conformance::{n, request};

    #[test]
    fn a_blob_that_does_not_decode_is_corrupt_and_names_its_node() {
        let blob = encode("record", &7u8).unwrap();
        assert_eq!(decode::<u8>("record", "pi", &blob).unwrap(), 7);
        match decode::<DesiredState>("desired state", "pi", &[0xff]) {
            Err(StoreError::Corrupt { what, node, .. }) => {
                assert_eq!((what, node.as_str()), ("desired state", "pi"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(name("../x".into()), Err(StoreError::BadName(_))));
        assert_eq!(name("pi".into()).unwrap(), n("pi"));
    }

    #[test]
    fn destroyed_instances_are_not_allocated() {
        let v = vec![
            request("a", RequestedState::Started),
            request("b", RequestedState::Destroyed),
            request("c", RequestedState::Stopped),
        ];
        assert_eq!(allocated(&v), 2);
        assert_eq!(allocated(&[]), 0);
    }
}
