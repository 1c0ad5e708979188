//! What peers say to the mesh link: session events, `Hello`s, batches to take into
//! custody, custody answers, and the acks, desired states and parameters that are
//! verified, kept when newer and passed on (the contract: [`super`]).

use std::sync::atomic::Ordering;
use std::time::Instant;

use hedge_uplink::link::ToNode;
use hedge_uplink::Input;
use hedge_wire::mesh::{encode_peer, PeerMessage, SignedAck, SignedBatch, SignedParams};
use hedge_wire::{encode, DesiredState, Message, Name};

use super::{bump, Link, Noise, PeerNet, Trust};
use crate::custody::Verdict;
use crate::net::{PeerEvent, PeerEventKind};
use crate::newest::Kept;

impl<N: PeerNet, T: Trust> Link<N, T> {
    pub(super) fn on_peer(&mut self, now: Instant, ev: PeerEvent) {
        let PeerEvent { peer, kind } = ev;
        match kind {
            PeerEventKind::Up { cert_der, .. } => {
                self.certs.insert(peer.clone(), cert_der);
                self.routes.up(&peer);
                self.announced.remove(&peer);
                for p in self.book.all() {
                    self.net.send(&peer, PeerMessage::Params(p));
                }
                // An origin that was away when the master's ack passed gets it now.
                for (_, _, ack) in self.acks.iter() {
                    self.net.send(&peer, PeerMessage::Ack(ack.clone()));
                }
                if self.carrier.want(&peer) {
                    self.schedule_fetch(now);
                }
                self.reroute(now);
            }
            PeerEventKind::Down => {
                self.certs.remove(&peer);
                self.pushed.remove(&peer);
                self.routes.down(&peer);
                self.announced.remove(&peer);
                self.reroute(now);
            }
            PeerEventKind::Message(m) => self.on_message(now, &peer, m),
        }
    }

    fn on_message(&mut self, now: Instant, peer: &Name, m: PeerMessage) {
        match m {
            PeerMessage::Hello(h) => {
                if &h.node != peer {
                    return;
                }
                self.routes.hello(peer, h.hops, h.outbox);
                for s in self.carrier.newer_than(&h.desired) {
                    self.push_state(peer, s);
                }
                self.reroute(now);
            }
            PeerMessage::Batch(batch) => self.on_batch(now, peer, batch),
            PeerMessage::Custody {
                origin,
                epoch,
                covers,
            } => {
                if origin == self.me && epoch == self.epoch && self.hop.as_ref() == Some(peer) {
                    if let Some((_, upto)) = covers {
                        bump(&self.stats.custody_received);
                        self.feed(now, Input::Custody { upto });
                    }
                }
            }
            PeerMessage::Refused { origin, reason, .. } => {
                if origin == self.me {
                    bump(&self.stats.refused_received);
                    self.noise(now, Noise::RefusedOut, peer, &format!("{reason:?}"));
                }
            }
            PeerMessage::Ack(ack) => self.on_ack(now, ack, Some(peer)),
            PeerMessage::Desired(state) => self.on_desired(now, state, Some(peer)),
            PeerMessage::Params(p) => self.on_params(now, p, peer),
        }
    }

    fn on_batch(&mut self, now: Instant, peer: &Name, batch: SignedBatch) {
        let Some(cert) = self.certs.get(peer) else {
            return;
        };
        let trust = &self.trust;
        let verdict = self
            .desk
            .judge(now, peer, &batch, |b| trust.batch_ok(b, cert));
        match verdict {
            Verdict::Store { id, key } => {
                if self.carrier.want(&key.origin) {
                    self.schedule_fetch(now);
                }
                self.tell(ToNode::Custody { id, batch });
            }
            Verdict::Held(key) => {
                bump(&self.stats.custody_given);
                self.net.send(
                    peer,
                    PeerMessage::Custody {
                        origin: key.origin,
                        epoch: key.epoch,
                        covers: key.covers,
                    },
                );
            }
            Verdict::Waiting => {}
            Verdict::Refuse { key, reason } => {
                bump(&self.stats.custody_refused);
                self.noise(now, Noise::RefusedIn, peer, &format!("{reason:?}"));
                let (origin, epoch, covers) =
                    key.map_or((peer.clone(), 0, None), |k| (k.origin, k.epoch, k.covers));
                self.net.send(
                    peer,
                    PeerMessage::Refused {
                        origin,
                        epoch,
                        covers,
                        reason,
                    },
                );
            }
        }
    }

    pub(super) fn on_ack(&mut self, now: Instant, ack: SignedAck, from: Option<&Name>) {
        // Nothing new (checked before the signature: a replayed flood costs no crypto).
        let stale = if ack.node == self.me {
            ack.epoch == self.epoch && ack.upto <= self.sync.stats().acked_upto
        } else {
            let key = (ack.node.clone(), ack.epoch);
            self.acks
                .get(&key)
                .is_some_and(|(upto, _)| upto >= ack.upto)
        };
        if stale {
            return;
        }
        if !self.trust.ack_ok(&ack) {
            self.forged(now, from, "ack");
            return;
        }
        if ack.node == self.me {
            self.feed(
                now,
                Input::Acked {
                    upto: ack.upto,
                    epoch: ack.epoch,
                },
            );
            return;
        }
        // An ack from the master's carry topic names a node whose records this node
        // delivered, however deep they were nested: fetch its desired states too.
        if from.is_none() && self.carrier.want(&ack.node) {
            self.schedule_fetch(now);
        }
        let key = (ack.node.clone(), ack.epoch);
        if self.acks.offer(key, ack.upto, ack.clone(), 0, |_| false) == Kept::Newer {
            let n = self.to_all_but(from, &PeerMessage::Ack(ack));
            self.stats.acks_passed.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub(super) fn on_desired(&mut self, now: Instant, state: DesiredState, from: Option<&Name>) {
        if self
            .carrier
            .get(&state.node)
            .is_some_and(|s| s.generation >= state.generation)
        {
            return;
        }
        let Ok(frame) = encode(&Message::Desired(state.clone()), self.max_frame) else {
            self.noise(now, Noise::Garbled, &self.me.clone(), "desired state");
            return;
        };
        if !self.trust.desired_ok(&state) {
            self.forged(now, from, "desired state");
            return;
        }
        let mine = state.node == self.me;
        let kept = self.carrier.offer(state.clone(), frame.len());
        let held = u64::try_from(self.carrier.held().0).unwrap_or(u64::MAX);
        self.stats.desired_held.store(held, Ordering::Relaxed);
        if kept == Kept::Newer {
            if mine {
                self.tell(ToNode::Desired(frame));
            }
            let peers: Vec<Name> = self.routes.peers().map(|(p, _)| p.clone()).collect();
            for peer in peers.iter().filter(|p| Some(*p) != from) {
                self.push_state(peer, state.clone());
            }
        }
    }

    fn on_params(&mut self, now: Instant, p: SignedParams, from: &Name) {
        let stale = self
            .book
            .get(&p.node, &p.instance)
            .is_some_and(|q| q.generation >= p.generation);
        if stale {
            return;
        }
        let Ok(bytes) = encode_peer(&PeerMessage::Params(p.clone()), self.max_frame) else {
            self.noise(now, Noise::Garbled, from, "parameters");
            return;
        };
        if !self.trust.params_ok(&p) {
            self.forged(now, Some(from), "parameters");
            return;
        }
        if p.node == self.me {
            // This node's own publication, newer than what it holds: from before a
            // restart, or from a clock since set back (a board without an RTC). Publish
            // what it holds again, past that generation, so its current values win.
            if self.book.own_seen(&p) {
                if let Some(mine) = self.book.get(&p.node, &p.instance) {
                    let parameters = mine.parameters.clone();
                    self.publish(p.instance, parameters);
                }
            }
            return;
        }
        if self.book.offer(p.clone(), bytes.len()) == Kept::Newer {
            bump(&self.stats.params_received);
            self.tell(ToNode::PeerParams(p.clone()));
            self.to_all_but(Some(from), &PeerMessage::Params(p));
        }
    }

    /// Sends `state` to `peer` unless a generation as new was sent to it already (a
    /// peer repeating an old summary gets nothing twice).
    fn push_state(&mut self, peer: &Name, state: DesiredState) {
        let sent = self.pushed.entry(peer.clone()).or_default();
        if sent
            .get(&state.node)
            .is_some_and(|g| *g >= state.generation)
        {
            return;
        }
        if sent.len() >= 2 * hedge_wire::mesh::MAX_CARRIED {
            sent.clear();
        }
        let (node, generation) = (state.node.clone(), state.generation);
        if self.net.send(peer, PeerMessage::Desired(state)) {
            sent.insert(node, generation);
            bump(&self.stats.desired_passed);
        }
    }

    /// Sends `m` to every up peer but `except`; how many took it.
    pub(super) fn to_all_but(&self, except: Option<&Name>, m: &PeerMessage) -> u64 {
        let mut n = 0;
        for (peer, _) in self.routes.peers() {
            if Some(peer) != except && self.net.send(peer, m.clone()) {
                n += 1;
            }
        }
        n
    }
}
