//! Mesh links in one process over the in-memory transport of `fake`: chains, a ferry,
//! forged input, epidemic states, parameters, fetches. What is tested is the link's
//! logic; `link_loopback.rs` runs links over real sessions with real keys.
#![allow(clippy::unwrap_used, missing_docs)]

mod fake;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use fake::*;
use hedge_mesh::link::Trust;
use hedge_mesh::net::PeerEventKind;
use hedge_uplink::link::ToLink;
use hedge_wire::mesh::{PeerMessage, SignedBatch, NO_PATH};
use hedge_wire::{decode, encode, Message, RecordKind, DEFAULT_MAX_FRAME};
use tokio::sync::mpsc;

#[test]
fn a_chain_of_three_carries_the_far_nodes_records_and_the_acks_come_back() {
    block_on(async {
        let net = Net::default();
        let (a, b, c) = chain3(&net);
        let master = Mutex::new(Master::default());
        c.append(200);
        b.append(30);
        until_with(
            20,
            "c's and b's records at the master and their acks back",
            || drain(&master, &a),
            || {
                let m = master.lock().expect("master");
                m.acked(&c.name, EPOCH) >= 200
                    && m.acked(&b.name, EPOCH) >= 30
                    && c.d().outbox.is_empty()
                    && b.d().outbox.is_empty()
            },
        )
        .await;
        exactly_once(&master, &c.name, 200);
        let m = master.lock().expect("master");
        assert_eq!(m.forged, 0);
        // b's own records arrived, and so did the Relayed records b made.
        for seq in 1..=30 {
            assert!(m.records.contains_key(&(b.name.clone(), EPOCH, seq)));
        }
        assert!(
            c.stats
                .custody_received
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0
        );
        assert!(
            b.stats
                .custody_given
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0
        );
        // Hops: a is 0, b is 1, c is 2 (beacons follow the Hellos).
        let hub = net.hub();
        assert_eq!(hub.beacons.get(&a.name).map(|b| b.0), Some(0));
        assert_eq!(hub.beacons.get(&b.name).map(|b| b.0), Some(1));
        assert_eq!(hub.beacons.get(&c.name).map(|b| b.0), Some(2));
    });
}

fn count(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(std::sync::atomic::Ordering::Relaxed)
}

#[test]
fn a_ferry_carries_custody_and_the_origin_deletes_only_on_the_masters_ack() {
    block_on(async {
        let net = Net::default();
        let (a, b, c) = (spawn(&net, "a"), spawn(&net, "b"), spawn(&net, "c"));
        let master = Mutex::new(Master::default());
        a.tell(ToLink::Direct(true));
        b.tell(ToLink::Direct(false));
        c.tell(ToLink::Direct(false));
        // b has no uplink and no path: c has no route, nothing moves.
        net.up(&b.name, &c.name);
        c.append(50);
        // b and c know no path: b announces NO_PATH, so c does not hand anything over.
        until(5, "c's beacon", || net.hub().beacons.contains_key(&c.name)).await;
        assert_eq!(
            net.hub().beacons.get(&c.name).map(|x| x.0),
            Some(hedge_wire::mesh::NO_PATH)
        );
        assert_eq!(count(&c.stats.batches_sent), 0);
        // b meets a (the ferry reaches the uplink's side) and c hands custody to b.
        net.up(&a.name, &b.name);
        until(10, "b's custody of all of c's batches", || {
            b.relayed() >= 4 && count(&c.stats.custody_received) >= 4
        })
        .await;
        // The origin keeps everything until the master's ack.
        assert_eq!(c.d().outbox.len(), 50);
        // c and b part for good before anything reached the master.
        net.down(&b.name, &c.name);
        until_with(
            10,
            "c's records at the master",
            || drain(&master, &a),
            || master.lock().expect("master").acked(&c.name, EPOCH) >= 50,
        )
        .await;
        exactly_once(&master, &c.name, 50);
        assert_eq!(
            c.d().outbox.len(),
            50,
            "no path: the ack has not reached c yet"
        );
        // c meets a: the ack a holds reaches c, which deletes its copies.
        net.up(&a.name, &c.name);
        until_with(
            10,
            "c's outbox emptied",
            || drain(&master, &a),
            || c.d().outbox.is_empty(),
        )
        .await;
        exactly_once(&master, &c.name, 50);
        assert_eq!(master.lock().expect("master").forged, 0);
    });
}

#[test]
fn a_ferry_without_a_path_takes_custody_and_delivers_once_it_meets_one() {
    block_on(async {
        let net = Net::default();
        let (a, f, c) = (spawn(&net, "a"), spawn(&net, "ferry"), spawn(&net, "c"));
        let master = Mutex::new(Master::default());
        a.tell(ToLink::Direct(true));
        f.tell(ToLink::Direct(false));
        c.tell(ToLink::Direct(false));
        until(5, "the ferry's beacon", || {
            net.hub().beacons.get(&f.name).map(|x| x.0) == Some(hedge_wire::mesh::FERRY)
        })
        .await;
        // Nobody has a path; c hands everything to the ferry anyway.
        net.up(&f.name, &c.name);
        c.append(50);
        until(10, "the ferry's custody of all of c's batches", || {
            f.relayed() >= 4 && count(&c.stats.custody_received) >= 4
        })
        .await;
        assert_eq!(c.d().outbox.len(), 50, "the origin keeps all until the ack");
        assert_eq!(c.relayed(), 0, "a ferry hands nothing to a pathless node");
        let handed = count(&c.stats.batches_sent);
        // The ferry leaves c for good and later meets a, which reaches the master.
        net.down(&f.name, &c.name);
        net.up(&a.name, &f.name);
        until_with(
            10,
            "c's records at the master",
            || drain(&master, &a),
            || master.lock().expect("master").acked(&c.name, EPOCH) >= 50,
        )
        .await;
        exactly_once(&master, &c.name, 50);
        assert_eq!(count(&c.stats.batches_sent), handed, "c sent nothing more");
        // c meets a: the ack reaches it and it deletes its copies.
        net.up(&a.name, &c.name);
        until_with(
            10,
            "c's outbox emptied",
            || drain(&master, &a),
            || c.d().outbox.is_empty(),
        )
        .await;
        exactly_once(&master, &c.name, 50);
    });
}

#[test]
fn forged_foreign_and_altered_batches_are_refused_and_nothing_is_stored() {
    block_on(async {
        let net = Net::default();
        let b = spawn(&net, "b");
        let x = spawn(&net, "x");
        b.tell(ToLink::Direct(true));
        // x is a hostile peer: we speak for it directly.
        net.hub().events.remove(&x.name);
        let (x_tx, mut x_rx) = mpsc::channel(64);
        net.hub().events.insert(x.name.clone(), x_tx);
        net.up(&b.name, &x.name);
        let up = |node: &str| hedge_wire::Up {
            node: name(node),
            records: vec![usage(&name(node), 1)],
            covers: Some((1, 1)),
            epoch: EPOCH,
        };
        let frame =
            |node: &str| encode(&Message::Up(up(node)), DEFAULT_MAX_FRAME).expect("encodes");
        // 1. c's records signed by x: x cannot hand over another node's batch.
        let foreign = FakeTrust { me: name("x") }
            .sign_batch(frame("c"))
            .expect("signs");
        // 2. x's own batch altered after signing.
        let mut altered = FakeTrust { me: name("x") }
            .sign_batch(frame("x"))
            .expect("signs");
        let last = altered.bytes.len() - 1;
        altered.bytes[last] ^= 1;
        // 3. x's batch signed with c's key.
        let stolen = FakeTrust { me: name("c") }
            .sign_batch(frame("x"))
            .expect("signs");
        // 4. garbage.
        let garbage = SignedBatch {
            bytes: vec![9; 30],
            signature: vec![1; 8],
        };
        for batch in [foreign, altered, stolen, garbage] {
            net.inject(&x.name, &b.name, PeerMessage::Batch(batch));
        }
        let mut reasons = Vec::new();
        until(5, "four refusals", || {
            while let Ok(ev) = x_rx.try_recv() {
                if let PeerEventKind::Message(PeerMessage::Refused { reason, .. }) = ev.kind {
                    reasons.push(reason);
                }
            }
            reasons.len() >= 4
        })
        .await;
        use hedge_wire::mesh::CustodyRefusal::*;
        assert_eq!(reasons[0], NotYours);
        assert!(
            matches!(reasons[1], BadSignature | Malformed),
            "{:?}",
            reasons[1]
        );
        assert_eq!(reasons[2], BadSignature);
        assert_eq!(reasons[3], Malformed);
        assert_eq!(count(&b.stats.custody_refused), 4);
        assert!(b.d().outbox.is_empty(), "nothing stored for a forged batch");
        // x's genuine batch is taken.
        let genuine = FakeTrust { me: name("x") }
            .sign_batch(frame("x"))
            .expect("signs");
        net.inject(&x.name, &b.name, PeerMessage::Batch(genuine));
        until(5, "custody of x's genuine batch", || {
            b.d().outbox.len() == 1
        })
        .await;
    });
}

#[test]
fn forged_acks_and_states_are_dropped_genuine_ones_pass_on() {
    block_on(async {
        let net = Net::default();
        let (a, b, c) = chain3(&net);
        c.append(5);
        until(5, "b's custody of c's records", || !b.d().outbox.is_empty()).await;
        // A forged ack for c (signed by someone other than the master) deletes nothing.
        let mut forged = signed_ack(&c.name, EPOCH, 5);
        forged.signature = sig(b"b", &forged.signed_bytes());
        net.inject(&b.name, &c.name, PeerMessage::Ack(forged));
        // A forged state for c is not applied.
        let mut bad = signed_state(&c.name, 9);
        bad.generation = 10;
        let carry = |m: Message| encode(&m, DEFAULT_MAX_FRAME).expect("encodes");
        a.tell(ToLink::Carried(carry(Message::Desired(bad))));
        until(5, "the forgeries counted", || {
            count(&c.stats.forged) >= 1 && count(&a.stats.forged) >= 1
        })
        .await;
        assert_eq!(c.d().outbox.len(), 5);
        // The genuine state for c, from the carry topic at a, reaches c's daemon.
        a.tell(ToLink::Carried(carry(Message::Desired(signed_state(
            &c.name, 9,
        )))));
        until(5, "c's state at c", || c.d().desired.len() == 1).await;
        let got = decode(&c.d().desired[0], DEFAULT_MAX_FRAME).expect("decodes");
        assert!(matches!(got, Message::Desired(s) if s.generation == 9 && s.node == c.name));
        assert!(
            b.d().desired.is_empty(),
            "b passes c's state on, does not apply it"
        );
        // An older or equal generation is not passed on again.
        a.tell(ToLink::Carried(carry(Message::Desired(signed_state(
            &c.name, 8,
        )))));
        a.tell(ToLink::Carried(carry(Message::Desired(signed_state(
            &c.name, 9,
        )))));
        // The genuine ack from the master's carry topic deletes c's copies.
        a.tell(ToLink::Carried(carry(Message::Carried(signed_ack(
            &c.name, EPOCH, 5,
        )))));
        until(5, "c's outbox emptied by the master's ack", || {
            c.d().outbox.is_empty()
        })
        .await;
        assert_eq!(c.d().desired.len(), 1);
        assert_eq!(count(&c.stats.forged), 1);
    });
}

#[test]
fn a_node_that_comes_later_gets_its_state_from_a_peers_summary() {
    block_on(async {
        let net = Net::default();
        let (a, b) = (spawn(&net, "a"), spawn(&net, "b"));
        a.tell(ToLink::Direct(true));
        b.tell(ToLink::Direct(false));
        net.up(&a.name, &b.name);
        let carry = |m: Message| encode(&m, DEFAULT_MAX_FRAME).expect("encodes");
        // The master's state for d reaches a before d exists in the swarm; b carries it.
        a.tell(ToLink::Carried(carry(Message::Desired(signed_state(
            &name("d"),
            4,
        )))));
        until(5, "b's copy of d's state", || {
            count(&b.stats.desired_held) == 1
        })
        .await;
        let d = spawn(&net, "d");
        d.tell(ToLink::Direct(false));
        net.up(&b.name, &d.name);
        until(5, "d's state at d", || d.d().desired.len() == 1).await;
        // d (or someone in its name) repeats an old summary: b sends nothing twice.
        let passed = count(&b.stats.desired_passed);
        for _ in 0..3 {
            let hello = hedge_wire::mesh::Hello {
                node: d.name.clone(),
                hops: hedge_wire::mesh::NO_PATH,
                outbox: 0,
                desired: Vec::new(),
            };
            net.inject(&d.name, &b.name, PeerMessage::Hello(hello));
        }
        // A marker behind the Hellos on the same session: once it is handled, so are they.
        net.inject(
            &d.name,
            &b.name,
            PeerMessage::Ack(signed_ack(&name("zz"), 1, 1)),
        );
        until(5, "the marker ack passed on", || {
            count(&b.stats.acks_passed) >= 1
        })
        .await;
        assert_eq!(count(&b.stats.desired_passed), passed);
        assert_eq!(d.d().desired.len(), 1);
    });
}

#[test]
fn connection_parameters_cross_two_peer_links_without_a_master() {
    block_on(async {
        let net = Net::default();
        let (a, b, c) = (spawn(&net, "a"), spawn(&net, "b"), spawn(&net, "c"));
        for n in [&a, &b, &c] {
            n.tell(ToLink::Direct(false));
        }
        net.up(&a.name, &b.name);
        net.up(&b.name, &c.name);
        let params = BTreeMap::from([("port".to_string(), "5432".to_string())]);
        c.tell(ToLink::Params {
            instance: name("db"),
            parameters: params.clone(),
        });
        until(5, "c's parameters at a and b", || {
            a.d().params.len() == 1 && b.d().params.len() == 1
        })
        .await;
        let got = a.d().params[0].clone();
        assert_eq!(
            (got.node, got.instance, got.parameters),
            (c.name.clone(), name("db"), params)
        );
        // A forged publication in c's name is dropped.
        let mut forged = FakeTrust { me: name("b") }
            .sign_params(name("db"), u64::MAX, BTreeMap::new())
            .expect("signs");
        forged.node = c.name.clone();
        net.inject(&b.name, &a.name, PeerMessage::Params(forged));
        until(5, "the forgery counted", || count(&a.stats.forged) == 1).await;
        assert_eq!(a.d().params.len(), 1);
        // A node that joins later gets what is held when its session comes up.
        let d = spawn(&net, "d");
        d.tell(ToLink::Direct(false));
        net.up(&a.name, &d.name);
        until(5, "c's parameters at d", || d.d().params.len() == 1).await;
        // A newer publication replaces the old one everywhere.
        c.tell(ToLink::Params {
            instance: name("db"),
            parameters: BTreeMap::from([("port".to_string(), "6543".to_string())]),
        });
        until(5, "the newer parameters at d", || d.d().params.len() == 2).await;
        assert_eq!(d.d().params[1].parameters["port"], "6543");
    });
}

#[test]
fn a_relay_that_cannot_store_refuses_and_the_origin_keeps_its_records() {
    block_on(async {
        let net = Net::default();
        let (a, b) = (spawn(&net, "a"), spawn(&net, "b"));
        a.tell(ToLink::Direct(true));
        b.tell(ToLink::Direct(false));
        a.d().custody_refusal = Some(hedge_wire::mesh::CustodyRefusal::Full);
        net.up(&a.name, &b.name);
        b.append(20);
        until(5, "a's refusal at b", || {
            count(&b.stats.refused_received) >= 1
        })
        .await;
        assert_eq!(count(&b.stats.custody_received), 0);
        assert_eq!(b.d().outbox.len(), 20);
        assert!(a.d().outbox.is_empty());
        // Room again: the ack timeout sends again and a takes custody.
        a.d().custody_refusal = None;
        until(10, "a's custody after the refusal", || {
            count(&b.stats.custody_received) >= 1
        })
        .await;
    });
}

#[test]
fn a_direct_node_fetches_the_states_of_the_nodes_it_carries_for() {
    block_on(async {
        let net = Net::default();
        let (a, b, c) = (spawn(&net, "a"), spawn(&net, "b"), spawn(&net, "c"));
        a.tell(ToLink::Direct(true));
        b.tell(ToLink::Direct(false));
        c.tell(ToLink::Direct(false));
        net.up(&a.name, &b.name);
        until(5, "a fetch for its peer b", || {
            a.d().fetched.iter().any(|f| f.contains(&b.name))
        })
        .await;
        assert!(
            b.d().fetched.is_empty(),
            "b has no direct uplink: it does not fetch"
        );
        net.up(&b.name, &c.name);
        c.append(3);
        // c's records reach a wrapped in b's: a takes custody from b only (its peer).
        until(5, "c's records at a, wrapped in b's", || {
            !a.d().outbox.is_empty()
        })
        .await;
        assert!(
            !a.d().fetched.iter().any(|f| f.contains(&c.name)),
            "a has not heard of c yet"
        );
        // The master's ack for c (two hops away) on a's carry topic: a fetches c's too.
        let master = Mutex::new(Master::default());
        until_with(
            5,
            "a fetch for c",
            || drain(&master, &a),
            || a.d().fetched.iter().any(|f| f.contains(&c.name)),
        )
        .await;
        // b goes direct: it fetches for a and c.
        b.tell(ToLink::Direct(true));
        until(5, "b's fetch for c", || {
            b.d()
                .fetched
                .iter()
                .any(|f| f.contains(&c.name) && f.contains(&a.name))
        })
        .await;
    });
}

#[test]
fn a_chain_of_four_loses_and_doubles_nothing_through_cuts_and_relay_restarts() {
    block_on(async {
        let net = Net::default();
        let names = ["a", "b", "c", "d"];
        let mut nodes: Vec<Node> = names.iter().map(|n| spawn(&net, n)).collect();
        let master = Mutex::new(Master::default());
        for (i, n) in nodes.iter().enumerate() {
            n.tell(ToLink::Direct(i == 0));
        }
        for w in names.windows(2) {
            net.up(&name(w[0]), &name(w[1]));
        }
        let mut rng = fastrand::Rng::with_seed(13);
        let total = 2_000;
        for round in 0..20u64 {
            nodes[3].append(total / 20);
            // Cut one link of the chain, let some traffic pass elsewhere, restore it.
            let k = rng.usize(0..3);
            net.down(&name(names[k]), &name(names[k + 1]));
            drain(&master, &nodes[0]);
            tokio::task::yield_now().await;
            net.up(&name(names[k]), &name(names[k + 1]));
            // Every relay restarts at least three times.
            if round % 2 == 1 {
                let r = 1 + usize::try_from(round / 2 % 2).expect("small");
                let old = nodes.remove(r);
                nodes.insert(r, restart(&net, old, false));
            }
            if round % 3 == 0 {
                // c is destroyed: it comes back with no relayed batch at all. The
                // origins still hold theirs (custody never deletes), so nothing is lost.
                let old = nodes.remove(2);
                old.d()
                    .outbox
                    .retain(|_, r| !matches!(r.kind, RecordKind::Relayed(_)));
                nodes.insert(2, restart(&net, old, false));
            }
            drain(&master, &nodes[0]);
            tokio::time::sleep(Duration::from_millis(rng.u64(0..20))).await;
        }
        let d = name("d");
        until_with(
            60,
            "every record of d at the master and d's outbox empty",
            || drain(&master, &nodes[0]),
            || {
                master.lock().expect("master").acked(&d, EPOCH) >= total
                    && nodes[3].d().outbox.is_empty()
            },
        )
        .await;
        exactly_once(&master, &d, total);
        assert_eq!(master.lock().expect("master").forged, 0);
    });
}

#[test]
fn a_relay_that_silently_loses_what_it_holds_does_not_stall_the_origin() {
    block_on(async {
        let net = Net::default();
        let (a, b, c) = chain3(&net);
        let master = Mutex::new(Master::default());
        c.append(40);
        until(5, "all of c's records in b's batches held by a", || {
            let mut m = Master::default();
            for r in a.d().outbox.values() {
                if let RecordKind::Relayed(batch) = &r.kind {
                    m.ingest(&b.name, batch, 1);
                }
            }
            m.acked(&c.name, EPOCH) >= 40 && count(&b.stats.custody_received) >= 1
        })
        .await;
        // a loses everything it held (its disk, its shedding), its sessions stay up.
        a.d().outbox.clear();
        until_with(
            10,
            "c's records at the master all the same",
            || drain(&master, &a),
            || master.lock().unwrap().acked(&c.name, EPOCH) >= 40 && c.d().outbox.is_empty(),
        )
        .await;
        exactly_once(&master, &c.name, 40);
    });
}

#[test]
fn an_origin_with_two_relays_moves_to_the_other_when_its_hop_goes() {
    block_on(async {
        let net = Net::default();
        let (a, b1, b2, c) = (
            spawn(&net, "a"),
            spawn(&net, "b1"),
            spawn(&net, "b2"),
            spawn(&net, "c"),
        );
        let master = Mutex::new(Master::default());
        a.tell(ToLink::Direct(true));
        for n in [&b1, &b2, &c] {
            n.tell(ToLink::Direct(false));
        }
        for (x, y) in [(&a, &b1), (&a, &b2), (&b1, &c), (&b2, &c)] {
            net.up(&x.name, &y.name);
        }
        c.append(100);
        // Equal hops: the tie goes to b1 (by name), the same on every run.
        until(5, "b1's custody of c's first batch", || {
            count(&b1.stats.custody_given) >= 1
        })
        .await;
        assert_eq!(count(&b2.stats.custody_given), 0);
        net.down(&b1.name, &c.name);
        c.append(100);
        until_with(
            10,
            "every record of c at the master, through b2",
            || drain(&master, &a),
            || master.lock().unwrap().acked(&c.name, EPOCH) >= 200 && c.d().outbox.is_empty(),
        )
        .await;
        assert!(count(&b2.stats.custody_given) >= 1);
        exactly_once(&master, &c.name, 200);
    });
}

#[test]
fn nodes_cut_off_together_announce_no_path_and_hand_nothing_to_each_other() {
    block_on(async {
        let net = Net::default();
        let (a, b, c) = chain3(&net);
        until(5, "hops 0, 1, 2", || {
            let hub = net.hub();
            [(&a, 0), (&b, 1), (&c, 2)]
                .iter()
                .all(|(n, h)| hub.beacons.get(&n.name).map(|x| x.0) == Some(*h))
        })
        .await;
        net.down(&a.name, &b.name);
        // Poisoned reverse: c tells b it has no path (b is c's next hop), so neither
        // counts up through the other.
        until(5, "b and c without a path", || {
            let hub = net.hub();
            [&b, &c]
                .iter()
                .all(|n| hub.beacons.get(&n.name).map(|x| x.0) == Some(NO_PATH))
        })
        .await;
        let (given_b, given_c) = (count(&b.stats.custody_given), count(&c.stats.custody_given));
        let sent_c = count(&c.stats.batches_sent);
        b.append(20);
        c.append(20);
        // A marker behind the appends: once c holds it, c handled what came before.
        let carry = encode(
            &Message::Desired(signed_state(&name("zz"), 1)),
            DEFAULT_MAX_FRAME,
        )
        .unwrap();
        c.tell(ToLink::Carried(carry));
        until(5, "the marker at c", || count(&c.stats.desired_held) == 1).await;
        assert_eq!(count(&b.stats.custody_given), given_b);
        assert_eq!(count(&c.stats.custody_given), given_c);
        assert_eq!(count(&c.stats.batches_sent), sent_c);
        assert_eq!(c.d().outbox.len(), 20);
        assert_eq!(b.d().outbox.len(), 20);
        // The path returns: b's records and c's flow again.
        let master = Mutex::new(Master::default());
        net.up(&a.name, &b.name);
        until_with(
            10,
            "b's and c's records at the master",
            || drain(&master, &a),
            || {
                let m = master.lock().unwrap();
                m.acked(&c.name, EPOCH) >= 20 && m.acked(&b.name, EPOCH) >= 20
            },
        )
        .await;
        exactly_once(&master, &c.name, 20);
    });
}

/// A valid record whose batch alone is larger than a mesh origin plans batches (the
/// frame minus every wrapping) but within the master's frame.
fn big_record(seq: u64) -> hedge_wire::Record {
    let labels: BTreeMap<String, String> = (0..15)
        .map(|i| (format!("l{i:02}"), "x".repeat(4096)))
        .chain([("tail".to_string(), "y".repeat(2400))])
        .collect();
    hedge_wire::Record {
        seq,
        time_ms: 1,
        kind: RecordKind::NodeInfo {
            board: "b".into(),
            arch: "a".into(),
            cores: 1,
            mem_total: 1,
            max_instances: 1,
            labels,
            region: "r".into(),
        },
    }
}

#[test]
fn a_record_larger_than_the_planned_batch_still_crosses_two_relays() {
    let up = hedge_wire::Up {
        node: name("c"),
        records: vec![big_record(1)],
        covers: Some((1, 1)),
        epoch: EPOCH,
    };
    let len = encode(&Message::Up(up), DEFAULT_MAX_FRAME).unwrap().len();
    let planned =
        DEFAULT_MAX_FRAME - hedge_wire::mesh::MAX_RELAY_DEPTH * hedge_wire::mesh::RELAY_OVERHEAD;
    assert!(len > planned && len + 1024 < DEFAULT_MAX_FRAME, "{len}");
    block_on(async {
        let net = Net::default();
        let (a, b, c) = chain3(&net);
        let master = Mutex::new(Master::default());
        {
            let mut d = c.d();
            d.next_seq = 1;
            d.outbox.insert(1, big_record(1));
        }
        c.append(5);
        until_with(
            10,
            "c's big record at the master",
            || drain(&master, &a),
            || master.lock().unwrap().acked(&c.name, EPOCH) >= 6 && c.d().outbox.is_empty(),
        )
        .await;
        let m = master.lock().unwrap();
        assert_eq!(
            m.records.get(&(c.name.clone(), EPOCH, 1)),
            Some(&big_record(1))
        );
        for seq in 2..=6 {
            assert_eq!(
                m.records.get(&(c.name.clone(), EPOCH, seq)),
                Some(&usage(&c.name, seq))
            );
        }
        assert!(b.d().outbox.is_empty());
    });
}

#[test]
fn a_peer_link_sends_no_express_batches_even_with_a_metered_uplinks_budget() {
    block_on(async {
        let net = Net::default();
        let (a, _b, c) = chain3(&net);
        let master = Mutex::new(Master::default());
        {
            let mut d = c.d();
            for seq in 1..=300 {
                d.outbox.insert(seq, state_record(&c.name, seq));
            }
            d.next_seq = 300;
        }
        c.append(0);
        until_with(
            10,
            "c's instance states at the master",
            || drain(&master, &a),
            || master.lock().unwrap().acked(&c.name, EPOCH) >= 300 && c.d().outbox.is_empty(),
        )
        .await;
        assert_eq!(master.lock().unwrap().express, 0);
    });
}

#[test]
fn a_publisher_whose_clock_went_back_still_supersedes_what_it_published_before() {
    block_on(async {
        let net = Net::default();
        let (b, c, x) = (spawn(&net, "b"), spawn(&net, "c"), spawn(&net, "x"));
        for n in [&b, &c, &x] {
            n.tell(ToLink::Direct(false));
        }
        net.up(&b.name, &c.name);
        net.up(&b.name, &x.name);
        c.tell(ToLink::Params {
            instance: name("db"),
            parameters: BTreeMap::from([("port".to_string(), "5432".to_string())]),
        });
        until(5, "c's parameters at b", || b.d().params.len() == 1).await;
        let now = b.d().params[0].generation;
        // What c published before a restart, when its clock was a day ahead: genuine
        // (c's key), newer than c's current publication. It reaches b from elsewhere.
        let old = FakeTrust { me: name("c") }
            .sign_params(
                name("db"),
                now + 86_400_000,
                BTreeMap::from([("port".to_string(), "1111".to_string())]),
            )
            .unwrap();
        net.inject(&x.name, &b.name, PeerMessage::Params(old));
        until(
            5,
            "c's current values back at b, past the old generation",
            || {
                b.d().params.last().is_some_and(|p| {
                    p.parameters["port"] == "5432" && p.generation > now + 86_400_000
                })
            },
        )
        .await;
        assert!(x
            .d()
            .params
            .last()
            .is_some_and(|p| p.parameters["port"] == "5432"));
    });
}
