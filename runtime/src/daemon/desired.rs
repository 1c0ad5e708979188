//! Applying a desired state that arrived from the master (over any link).
//!
//! Contract: [`Daemon::on_desired_frame`] decodes a wire frame, checks it with
//! `crate::desired::check`, and only then stores it (durably) and reconciles. Every
//! outcome is a `Desired` record; a refusal is also counted and logged (rate-limited),
//! and changes nothing else. Local requests whose names the master now owns are
//! superseded: the master's request wins, and the local one is removed and reported.
//! A state of a higher master epoch never destroys by omission: the instances the
//! previous state named and it leaves out are held over (`crate::holdover`), stored
//! with it in one atomic write, and named once in its `Desired` record's reason.
//!
//! Fails closed: when the store cannot say which generation is applied, every state is
//! refused (`StoreUnreadable`). [`Daemon::check_expiry`] judges the applied state's
//! expiry against the trusted time (clock or persisted floor, see `crate::desired`):
//! past it, the node keeps running the state and reports it once per generation (a
//! `DesiredExpired` record, the `desired_expired` counter, a rate-limited warning);
//! `status` shows it under `desired`.

use hedge_wire::codec::decode;
use hedge_wire::{DesiredState, Message, RecordKind};

use super::{now_ms, Daemon};
use crate::desired::{applied_generation, check, floor_to_persist, trusted_now_ms, DesiredError};
use crate::holdover;

impl Daemon {
    /// The generation the node runs (0 before the first desired state); an error when
    /// the store cannot tell, never 0.
    pub(super) fn applied_generation(&self) -> Result<u64, DesiredError> {
        applied_generation(self.outbox.store.desired().as_ref().map(Option::as_ref))
    }

    /// The time the node trusts now: its clock, or the persisted floor when the clock
    /// is behind it. Raises the persisted floor when the clock moved a step past it.
    fn trusted_now(&mut self) -> u64 {
        let clock = now_ms();
        if let Some(floor) = floor_to_persist(clock, self.clock_floor_ms) {
            match self.outbox.store.raise_clock_floor(floor) {
                Ok(()) => self.clock_floor_ms = floor,
                Err(e) => self.store_failed(&e),
            }
        }
        trusted_now_ms(clock, self.clock_floor_ms)
    }

    /// Reads the applied state and the clock floor at boot, then judges the expiry.
    pub(super) fn restore_expiry(&mut self) {
        match self.outbox.store.clock_floor() {
            Ok(f) => self.clock_floor_ms = f,
            Err(e) => self.store_failed(&e),
        }
        match self.outbox.store.desired() {
            Ok(Some(d)) => self.expiry.applied(&d),
            Ok(None) => {}
            Err(e) => self.store_failed(&e),
        }
        self.check_expiry();
    }

    /// Judges the applied state's expiry; reports it (record, counter, rate-limited
    /// log) the first time it is found past it. The state keeps running.
    pub(super) fn check_expiry(&mut self) {
        let now = self.trusted_now();
        let Some(x) = self.expiry.judge(now) else {
            return;
        };
        self.counters.desired_expired += 1;
        if let Some(suppressed) = self.expiry_log.allow(super::monotonic_now()) {
            tracing::warn!(
                generation = x.generation,
                expires_ms = x.expires_ms,
                judged_at_ms = x.judged_at_ms,
                suppressed,
                "desired state expired; still running it until the master sends a newer one"
            );
        }
        self.record(RecordKind::DesiredExpired {
            generation: x.generation,
            expires_ms: x.expires_ms,
            judged_at_ms: x.judged_at_ms,
        });
    }

    /// The `desired` part of `status`.
    pub(super) fn desired_status(&self) -> Option<crate::local_api::DesiredView> {
        let now = trusted_now_ms(now_ms(), self.clock_floor_ms);
        let (generation, expires_ms) = self.expiry.current()?;
        Some(crate::local_api::DesiredView {
            generation,
            expires_ms,
            expired: self.expiry.expired(now),
            trusted_now_ms: now,
        })
    }

    /// The held-over set once `d` is applied (`crate::holdover`); an unreadable
    /// store refuses the state, never takes the set for empty.
    fn held_over_after(&self, d: &DesiredState) -> Result<holdover::Change, DesiredError> {
        let unreadable = |e: crate::store::StoreError| {
            DesiredError::StoreUnreadable(format!("applied state or held-over set: {e}"))
        };
        let previous = self.outbox.store.desired().map_err(unreadable)?;
        let current: holdover::HeldOver = self
            .outbox
            .store
            .held_over()
            .map_err(unreadable)?
            .into_iter()
            .map(|r| (r.name.clone(), r))
            .collect();
        Ok(holdover::next(previous.as_ref(), d, &current))
    }

    /// Handles one frame from the master's `desired` topic.
    pub(crate) fn on_desired_frame(&mut self, frame: &[u8]) -> Result<u64, DesiredError> {
        // The master republishes its current state on every connect: the very state
        // the node already applied is not news, and not an attack.
        if let (Ok(Message::Desired(d)), Ok(Some(stored))) = (
            decode(frame, hedge_wire::limits::DEFAULT_MAX_FRAME),
            self.outbox.store.desired(),
        ) {
            if d == stored {
                return Ok(d.generation);
            }
        }
        let result = match decode(frame, hedge_wire::limits::DEFAULT_MAX_FRAME) {
            Ok(Message::Desired(d)) => self
                .applied_generation()
                .and_then(|applied| {
                    check(&d, self.cfg.node_id(), applied, self.master_key.as_ref())
                })
                .and_then(|()| self.held_over_after(&d))
                .map(|change| (d, change)),
            Ok(_) => Err(DesiredError::Malformed("not a desired state".into())),
            Err(e) => Err(DesiredError::Malformed(e.to_string())),
        };
        match result {
            Ok((d, change)) => {
                let generation = d.generation;
                let held: Vec<_> = change.held.values().cloned().collect();
                if let Err(e) = self.outbox.store.put_desired_holding(&d, &held) {
                    self.store_failed(&e);
                    return Err(DesiredError::Malformed(format!("cannot store: {e}")));
                }
                for name in &change.added {
                    tracing::warn!(instance = %name, generation, "instance held over: a new master epoch left it out; kept until the master names it");
                }
                for name in &change.released {
                    tracing::info!(instance = %name, generation, "held-over instance named by the master again: its request wins");
                }
                // The master's names win over local requests of the same name.
                for r in &d.instances {
                    if let Ok(Some(_)) = self.outbox.store.local(&r.name) {
                        tracing::warn!(instance = %r.name, "local request superseded by the master's");
                        if let Err(e) = self.outbox.store.remove_local(&r.name) {
                            self.store_failed(&e);
                        }
                    }
                }
                tracing::info!(
                    generation,
                    instances = d.instances.len(),
                    expires_ms = d.expires_ms,
                    "desired state applied"
                );
                self.record(RecordKind::Desired {
                    generation,
                    accepted: true,
                    reason: holdover::reason(&change),
                });
                self.expiry.applied(&d);
                self.check_expiry();
                let imports_changed = self.apply_imports(&d);
                self.load_terms(Some(&d));
                self.reconcile();
                self.restart_importers(&imports_changed);
                Ok(generation)
            }
            Err(e) => {
                self.counters.desired_rejected += 1;
                if let Some(suppressed) = self.desired_log.allow(super::monotonic_now()) {
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

#[cfg(test)]
pub(super) mod tests {
    #![allow(clippy::unwrap_used)]

    use std::path::Path;

    use ed25519_dalek::{Signer, SigningKey};
    use hedge_wire::{codec::encode, DesiredState, Name};

    use super::*;
    use crate::config::NodeConfig;

    const DAY_MS: u64 = 24 * 3600 * 1000;

    pub(in crate::daemon) fn master() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    /// A node `n1` that trusts [`master`]'s key.
    pub(in crate::daemon) fn config(dir: &Path) -> NodeConfig {
        let hex: String = master()
            .verifying_key()
            .to_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let text = crate::config::default_file("n1").replace(
            "master_public_key = \"\"",
            &format!("master_public_key = \"{hex}\""),
        );
        NodeConfig::parse(&text, &dir.join("node.toml")).unwrap()
    }

    fn frame(generation: u64, expires_ms: u64) -> Vec<u8> {
        frame_with(generation, expires_ms, vec![])
    }

    fn frame_with(
        generation: u64,
        expires_ms: u64,
        instances: Vec<hedge_wire::InstanceRequest>,
    ) -> Vec<u8> {
        let mut d = DesiredState {
            node: Name::new("n1").unwrap(),
            generation,
            instances,
            signature: heapless::Vec::new(),
            expires_ms,
            terms: vec![],
            imports: vec![],
            backups: Vec::new(),
            restores: Vec::new(),
        };
        d.signature =
            heapless::Vec::from_slice(&master().sign(&d.signed_bytes()).to_bytes()).unwrap();
        encode(&Message::Desired(d), hedge_wire::DEFAULT_MAX_FRAME).unwrap()
    }

    fn desired_records(d: &Daemon) -> Vec<RecordKind> {
        d.outbox
            .store
            .outbox_from(0, 1000)
            .unwrap()
            .into_iter()
            .map(|r| r.kind)
            .filter(|k| {
                matches!(
                    k,
                    RecordKind::Desired { .. } | RecordKind::DesiredExpired { .. }
                )
            })
            .collect()
    }

    #[test]
    fn a_store_read_error_never_lets_an_older_signed_state_in() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let fresh = now_ms() + DAY_MS;
        {
            let mut d = Daemon::boot(cfg.clone()).unwrap();
            assert_eq!(d.on_desired_frame(&frame(5, fresh)), Ok(5));
        }
        // The stored state no longer reads (a corrupt value on disk).
        crate::store::Store::open(&cfg.store_dir(), 1 << 20)
            .unwrap()
            .put_desired_raw(&[0xff, 0xff, 0xff])
            .unwrap();
        let mut d = Daemon::boot(cfg).unwrap();
        assert!(d.outbox.store.desired().is_err());
        // An older state the master once signed: refused, not taken for "generation 0".
        assert!(matches!(
            d.on_desired_frame(&frame(3, fresh)),
            Err(DesiredError::StoreUnreadable(_))
        ));
        // Fail closed: nothing is accepted while the store cannot tell.
        assert!(matches!(
            d.on_desired_frame(&frame(6, fresh)),
            Err(DesiredError::StoreUnreadable(_))
        ));
        assert_eq!(d.counters.desired_rejected, 2);
        assert!(
            d.outbox.store.desired().is_err(),
            "nothing was stored over it"
        );
        assert!(d.applied_generation().is_err());
        assert!(desired_records(&d).iter().any(|k| matches!(
            k,
            RecordKind::Desired { generation: 3, accepted: false, reason } if reason.contains("cannot read")
        )));
        assert!(d
            .status()
            .uplink
            .progress
            .and_then(|p| p.generation)
            .is_none());
    }

    #[test]
    fn an_expired_state_is_reported_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Daemon::boot(config(dir.path())).unwrap();
        assert_eq!(d.on_desired_frame(&frame(5, 1_000)), Ok(5));
        assert_eq!(d.counters.desired_expired, 1);
        assert_eq!(d.status().desired.map(|x| x.expired), Some(true));
        assert_eq!(d.status().desired.map(|x| x.generation), Some(5));
        d.check_expiry();
        assert_eq!(d.counters.desired_expired, 1, "once per generation");
        // Still the applied state.
        assert_eq!(d.applied_generation(), Ok(5));
        let expired: Vec<_> = desired_records(&d)
            .into_iter()
            .filter(|k| matches!(k, RecordKind::DesiredExpired { .. }))
            .collect();
        assert!(matches!(
            expired.as_slice(),
            [RecordKind::DesiredExpired {
                generation: 5,
                expires_ms: 1_000,
                ..
            }]
        ));
        // A fresh one is not expired.
        assert_eq!(d.on_desired_frame(&frame(6, now_ms() + DAY_MS)), Ok(6));
        assert_eq!(d.status().desired.map(|x| x.expired), Some(false));
        assert_eq!(d.counters.desired_expired, 1);
    }

    #[test]
    fn a_clock_behind_the_persisted_floor_does_not_make_a_state_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        // The node once knew a time far ahead of today's clock (as a board without
        // RTC, rebooted into 1970, is behind the time it knew).
        let known = now_ms() + 400 * DAY_MS;
        {
            let s = crate::store::Store::open(&cfg.store_dir(), 1 << 20).unwrap();
            s.raise_clock_floor(known).unwrap();
        }
        let mut d = Daemon::boot(cfg).unwrap();
        // Fresh by the clock, expired by the floor.
        assert_eq!(d.on_desired_frame(&frame(5, now_ms() + DAY_MS)), Ok(5));
        assert_eq!(d.counters.desired_expired, 1);
        assert_eq!(d.status().desired.map(|x| x.trusted_now_ms), Some(known));
    }

    #[test]
    fn a_new_epoch_holds_over_what_it_omits_across_a_reboot_until_named() {
        use crate::reconcile::tests::req;
        use hedge_wire::RequestedState::{Destroyed, Stopped};
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let fresh = now_ms() + DAY_MS;
        let names = |d: &Daemon| -> Vec<String> {
            d.instances.slots.keys().map(|n| n.to_string()).collect()
        };
        let e2 = 2u64 << 32;
        {
            let mut d = Daemon::boot(cfg.clone()).unwrap();
            let old = vec![req("a", Stopped), req("b", Stopped)];
            assert_eq!(d.on_desired_frame(&frame_with(7, fresh, old)), Ok(7));
            assert_eq!(names(&d), ["a", "b"]);
            // The recovered master's first state names a and c only.
            let new = vec![req("a", Stopped), req("c", Stopped)];
            assert_eq!(
                d.on_desired_frame(&frame_with(e2 | 1, fresh, new)),
                Ok(e2 | 1)
            );
            assert_eq!(names(&d), ["a", "b", "c"], "b is held over, not destroyed");
            assert!(d.status().instance("b").unwrap().held_over);
            assert!(!d.status().instance("a").unwrap().held_over);
            assert!(desired_records(&d).iter().any(|k| matches!(
                k,
                RecordKind::Desired { generation, accepted: true, reason }
                    if *generation == (e2 | 1) && reason.contains("held over") && reason.ends_with(": b")
            )));
        }
        // A reboot keeps it; a later state of the same epoch that omits it keeps it.
        let mut d = Daemon::boot(cfg).unwrap();
        d.reconcile();
        assert_eq!(names(&d), ["a", "b", "c"]);
        let later = vec![req("c", Stopped)];
        assert_eq!(
            d.on_desired_frame(&frame_with(e2 | 2, fresh, later)),
            Ok(e2 | 2)
        );
        assert_eq!(
            names(&d),
            ["b", "c"],
            "a, omitted within the epoch, is destroyed"
        );
        assert!(d.status().instance("b").unwrap().held_over);
        // The master names it destroyed: its request wins.
        let gone = vec![req("b", Destroyed), req("c", Stopped)];
        assert_eq!(
            d.on_desired_frame(&frame_with(e2 | 3, fresh, gone)),
            Ok(e2 | 3)
        );
        assert_eq!(names(&d), ["c"]);
        assert!(d.outbox.store.held_over().unwrap().is_empty());
    }

    /// A daemon whose master named `b` (stopped) and then, in a new epoch, left it out:
    /// `b` is held over.
    fn holding_b_over(dir: &std::path::Path) -> Daemon {
        use crate::reconcile::tests::req;
        use hedge_wire::RequestedState::Stopped;
        let mut d = Daemon::boot(config(dir)).unwrap();
        let fresh = now_ms() + DAY_MS;
        assert_eq!(
            d.on_desired_frame(&frame_with(7, fresh, vec![req("b", Stopped)])),
            Ok(7)
        );
        let g = (3u64 << 32) | 1;
        assert_eq!(d.on_desired_frame(&frame_with(g, fresh, vec![])), Ok(g));
        d
    }

    #[test]
    fn a_local_destroy_removes_a_held_over_instance() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = holding_b_over(dir.path());
        assert!(d.instances.slots.contains_key(&Name::new("b").unwrap()));
        let answer = d.on_call(crate::local_api::ApiRequest::Destroy { name: "b".into() });
        assert!(answer.is_ok(), "{answer:?}");
        assert!(d.instances.slots.is_empty());
        assert!(d.outbox.store.held_over().unwrap().is_empty());
    }

    #[test]
    fn a_local_request_takes_a_held_over_name_over() {
        use crate::reconcile::tests::req;
        use hedge_wire::RequestedState::Stopped;
        let dir = tempfile::tempdir().unwrap();
        let mut d = holding_b_over(dir.path());
        let mut mine = req("b", Stopped);
        mine.args = vec!["5".into()];
        assert!(d.local_request(mine.clone()).is_ok());
        assert!(d.outbox.store.held_over().unwrap().is_empty());
        assert_eq!(
            d.outbox.store.local(&mine.name).unwrap(),
            Some(mine.clone())
        );
        assert_eq!(d.instances.slots[&mine.name].request, mine);
        assert!(!d.status().instance("b").unwrap().held_over);
    }
}
