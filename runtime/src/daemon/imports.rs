//! Imported connection parameters: what instances on other nodes published, delivered
//! by the master in the signed desired state (`DesiredState::imports`).
//!
//! Contract: the imports of the applied desired state are what `{{other.key}}`
//! resolves to when `other` published nothing on this node (a local publication wins,
//! see `Instances::published_param`). They come only from a state that passed
//! `crate::desired::check` (signed by the master) and are read back from the stored
//! state at boot ([`Daemon::restore_imports`]), so a node that reboots offline renders
//! its consumers with the values it last received. When a newly applied state changes
//! the values of an import (added, changed or removed), every consumer of it is
//! re-rendered and restarted if its result changed ([`Daemon::apply_imports`]), as a
//! local publication does.

use std::collections::BTreeSet;

use hedge_wire::{DesiredState, Name};

use super::instances::Published;
use super::Daemon;

/// The imports of `d`, by instance then key.
pub(crate) fn imports_of(d: &DesiredState) -> Published {
    d.imports
        .iter()
        .map(|i| (i.instance.as_str().to_owned(), i.parameters.clone()))
        .collect()
}

/// The instances whose imported values differ between `old` and `new`.
pub(crate) fn changed(old: &Published, new: &Published) -> BTreeSet<String> {
    old.keys()
        .chain(new.keys())
        .filter(|k| old.get(*k) != new.get(*k))
        .cloned()
        .collect()
}

impl Daemon {
    /// Takes the imports of the stored desired state (at boot, before any instance
    /// starts).
    pub(super) fn restore_imports(&mut self) {
        match self.outbox.store.desired() {
            Ok(Some(d)) => self.instances.imports = imports_of(&d),
            Ok(None) => {}
            Err(e) => self.store_failed(&e),
        }
    }

    /// Takes the imports of the newly applied `d`; returns the instances whose imported
    /// values changed (their consumers are restarted by [`Daemon::restart_importers`]
    /// once the state is reconciled).
    pub(super) fn apply_imports(&mut self, d: &DesiredState) -> BTreeSet<String> {
        let new = imports_of(d);
        let changed = changed(&self.instances.imports, &new);
        self.instances.imports = new;
        changed
    }

    /// Re-renders every consumer of the instances in `changed` and restarts it if its
    /// result changed.
    pub(super) fn restart_importers(&mut self, changed: &BTreeSet<String>) {
        let mut consumers = BTreeSet::new();
        for other in changed {
            tracing::info!(
                instance = other.as_str(),
                "imported connection parameters changed"
            );
            if let Ok(name) = Name::new(other) {
                consumers.extend(self.instances.consumers_of(&name));
            }
        }
        for c in consumers {
            self.restart_if_changed(&c);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use hedge_wire::Import;

    use super::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn changes_are_additions_removals_and_other_values() {
        let d = DesiredState {
            node: Name::new("a").unwrap(),
            generation: 1,
            instances: vec![],
            signature: heapless::Vec::new(),
            expires_ms: 0,
            terms: vec![],
            imports: vec![
                Import {
                    instance: Name::new("db").unwrap(),
                    parameters: params(&[("port", "5432")]),
                },
                Import {
                    instance: Name::new("cache").unwrap(),
                    parameters: params(&[("host", "h")]),
                },
            ],
            backups: Vec::new(),
            restores: Vec::new(),
        };
        let old = imports_of(&d);
        assert_eq!(old["db"]["port"], "5432");
        assert!(changed(&old, &old).is_empty());
        let mut new = old.clone();
        new.insert("db".into(), params(&[("port", "6000")]));
        new.remove("cache");
        new.insert("queue".into(), params(&[]));
        assert_eq!(
            changed(&old, &new),
            BTreeSet::from(["cache".to_owned(), "db".to_owned(), "queue".to_owned()])
        );
    }
}
