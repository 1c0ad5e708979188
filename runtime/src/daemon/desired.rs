//! Applying a desired state that arrived from the master (over any link).
//!
//! Contract: [`Daemon::on_desired_frame`] decodes a wire frame, checks it with
//! `crate::desired::check`, and only then stores it (durably) and reconciles. Every
//! outcome is a `Desired` record; a refusal is also counted and logged (rate-limited),
//! and changes nothing else. Local requests whose names the master now owns are
//! superseded: the master's request wins, and the local one is removed and reported.

use std::time::Instant;

use hedge_wire::codec::decode;
use hedge_wire::{Message, RecordKind};

use super::Daemon;
use crate::desired::{check, DesiredError};

impl Daemon {
    /// The generation the node runs (0 before the first desired state).
    pub(super) fn applied_generation(&self) -> u64 {
        self.store
            .desired()
            .ok()
            .flatten()
            .map_or(0, |d| d.generation)
    }

    /// Handles one frame from the master's `desired` topic.
    pub(crate) fn on_desired_frame(&mut self, frame: &[u8]) -> Result<u64, DesiredError> {
        // The master republishes its current state on every connect: the very state
        // the node already applied is not news, and not an attack.
        if let (Ok(Message::Desired(d)), Ok(Some(stored))) = (
            decode(frame, hedge_wire::limits::DEFAULT_MAX_FRAME),
            self.store.desired(),
        ) {
            if d == stored {
                return Ok(d.generation);
            }
        }
        let result = match decode(frame, hedge_wire::limits::DEFAULT_MAX_FRAME) {
            Ok(Message::Desired(d)) => check(
                &d,
                self.cfg.node_id(),
                self.applied_generation(),
                self.master_key.as_ref(),
            )
            .map(|()| d),
            Ok(_) => Err(DesiredError::Malformed("not a desired state".into())),
            Err(e) => Err(DesiredError::Malformed(e.to_string())),
        };
        match result {
            Ok(d) => {
                let generation = d.generation;
                if let Err(e) = self.store.put_desired(&d) {
                    self.store_failed(&e);
                    return Err(DesiredError::Malformed(format!("cannot store: {e}")));
                }
                // The master's names win over local requests of the same name.
                for r in &d.instances {
                    if let Ok(Some(_)) = self.store.local(&r.name) {
                        tracing::warn!(instance = %r.name, "local request superseded by the master's");
                        if let Err(e) = self.store.remove_local(&r.name) {
                            self.store_failed(&e);
                        }
                    }
                }
                tracing::info!(
                    generation,
                    instances = d.instances.len(),
                    "desired state applied"
                );
                self.record(RecordKind::Desired {
                    generation,
                    accepted: true,
                    reason: String::new(),
                });
                self.reconcile();
                Ok(generation)
            }
            Err(e) => {
                self.counters.desired_rejected += 1;
                if let Some(suppressed) = self.desired_log.allow(Instant::now()) {
                    tracing::warn!(error = %e, suppressed, "desired state refused");
                }
                let generation = match decode(frame, hedge_wire::limits::DEFAULT_MAX_FRAME) {
                    Ok(Message::Desired(d)) => d.generation,
                    _ => 0,
                };
                self.record(RecordKind::Desired {
                    generation,
                    accepted: false,
                    reason: e.to_string(),
                });
                Err(e)
            }
        }
    }
}
