//! The mesh, end to end (#13): a relay's storage for one origin is bounded. `o` (its own
//! network namespace) hands custody of its records to `r`, which cannot deliver them
//! (its uplink reaches the broker but no master runs, so nothing is acknowledged and
//! everything past `r`'s window waits in its outbox). Twelve instances on `o` publish
//! ~16 KiB of connection parameters about three times a second each (sheddable), and a
//! flapping instance makes a few instance states (kept). Past
//! `[mesh] custody_bytes_per_origin` (1 MiB here), `r` sheds `o`'s sheddable batches,
//! oldest first, never one carrying an instance state, and reports it (`hedge node
//! status`: `mesh.peers`, batches and bytes shed per origin; no record: the origin still
//! holds every record until the master's ack); then `o` goes silent. What `r` holds for
//! `o` stays within the bound and equals what it took less what it shed, and `r`'s
//! resident memory does not grow with what passed through its custody (4 bounds' worth
//! since it was first full, twice the growth allowed).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::swarm::{mesh_setting, Layout, Swarm};
use common::wait_for;
use hedge_wire::mesh::SignedBatch;
use hedge_wire::RecordKind;

/// The relay's bound for one origin.
const BOUND: u64 = 1 << 20;

/// One origin batch held by the relay: (covers, bytes, carries an instance state).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    bytes: u64,
    keep: bool,
}

/// The origin's batches `relay` holds now, by covered range.
fn held(swarm: &Swarm, relay: &str, origin: &str) -> BTreeMap<(u64, u64), Held> {
    let mut out = BTreeMap::new();
    for r in swarm.outbox_records(relay).into_values() {
        let RecordKind::Relayed(b) = r.kind else {
            continue;
        };
        let Ok(up) = b.up(1 << 20) else { continue };
        if up.node.as_str() != origin {
            continue;
        }
        let keep = up.records.iter().any(|r| {
            matches!(
                r.kind,
                RecordKind::InstanceState { .. } | RecordKind::Incident { .. }
            )
        });
        if let Some(c) = up.covers {
            out.insert(
                c,
                Held {
                    bytes: size(&b),
                    keep,
                },
            );
        }
    }
    out
}

fn size(b: &SignedBatch) -> u64 {
    u64::try_from(b.bytes.len() + b.signature.len()).unwrap()
}

/// Resident memory of a process, KiB.
fn rss_kib(pid: u32) -> u64 {
    common::status_kib(pid, "VmRSS").unwrap()
}

/// A publisher of ~16 KiB connection parameters (four values just under the wire's
/// 4 KiB per value), a new set every 300 ms.
const PUBLISHER: &str = "pad=$(head -c 4000 /dev/zero | tr '\\0' x); i=0; while :; do \
    i=$((i+1)); printf '{\"n\":%d,\"a\":\"%s\",\"b\":\"%s\",\"c\":\"%s\",\"d\":\"%s\"}' \
    $i $pad $pad $pad $pad > etc/c.tmp && mv etc/c.tmp etc/connection.json; sleep 0.3; done";

/// Fails four times, 2 s apart, then runs: a few batches with instance states, however
/// long the test runs. (Batches r may not shed must stay well under its bound, or it
/// refuses everything and nothing passes through.)
const FLAP: &str = "n=$(cat etc/n 2>/dev/null || echo 0); echo $((n+1)) > etc/n; \
    [ \"$n\" -ge 4 ] && exec sleep 100000; sleep 2; exit 1";

#[test]
fn a_relay_sheds_a_silent_origin_past_its_bound_by_priority_and_its_memory_stays_flat() {
    if !common::swarm::can_run() {
        return;
    }
    let layout = Layout {
        nodes: &["o", "r"],
        gateways: &["r"],
        links: &[("o", "r")],
    };
    let mut swarm = Swarm::with_master(&layout, |name, c| {
        if name == "r" {
            // Small batches: r's window (8 batches awaiting the master) hands few of
            // o's batches to its uplink; the rest wait in its outbox, sheddable.
            mesh_setting(&c, "custody_bytes_per_origin", &BOUND.to_string())
                .replace("max_batch_records = 1024", "max_batch_records = 2")
        } else {
            c
        }
    });
    swarm.stop_masters();
    swarm.start_all();
    let o = swarm.node("o");
    for i in 0..12 {
        o.ok(&[
            "request",
            &format!("pub{i}"),
            "--software",
            "exec:/bin/sh",
            "--arg",
            "-c",
            "--arg",
            PUBLISHER,
        ]);
    }
    // A few instance states (most batches carry none): FLAP fails four times, then runs.
    o.ok(&[
        "request",
        "flap",
        "--software",
        "exec:/bin/sh",
        "--arg",
        "-c",
        "--arg",
        FLAP,
    ]);

    wait_for("r holding o's records", Duration::from_secs(60), || {
        (!held(&swarm, "r", "o").is_empty()).then_some(())
    });
    let r_pid = swarm.node("r").daemon.as_ref().unwrap().id();
    let rss_start = rss_kib(r_pid);
    // Every batch of o that r was seen holding (polls miss some: what passed through is
    // r's own count), and every one with an instance state.
    let mut seen: BTreeMap<(u64, u64), Held> = BTreeMap::new();
    let mut polls = 0u64;
    // RSS and bytes taken once r first holds a bound's worth (it sheds from then on).
    let mut rss_full = None;
    let mut taken_full = 0;
    let (through, shed) = swarm.wait(
        "4 bounds' worth through r since it was full",
        Duration::from_secs(300),
        || {
            let now = held(&swarm, "r", "o");
            for (c, h) in &now {
                seen.entry(*c).or_insert_with(|| h.clone());
            }
            let held_bytes: u64 = now.values().map(|h| h.bytes).sum();
            let s = swarm.status_json("r");
            let custody = relay_counter(&s, "o", "custody_bytes")?;
            // The relay's own count (its records' stored size) stays within the bound at
            // every moment; its outbox is compared once o is silent (below).
            assert!(
                custody <= BOUND,
                "r reports {custody} bytes held for o, bound {BOUND}: {}",
                relay_view(&s, "o")
            );
            let taken = relay_counter(&s, "o", "taken_bytes")?;
            let shed = relay_counter(&s, "o", "shed")?;
            if shed > 0 && rss_full.is_none() {
                rss_full = Some(rss_kib(r_pid));
                taken_full = taken;
            }
            // What passed through r since this test first saw it full.
            let through = taken.saturating_sub(taken_full);
            polls += 1;
            if polls % 10 == 0 {
                eprintln!(
                    "relay bound: {through} bytes taken, {} batches seen, {held_bytes} held, \
                     r reports {}",
                    seen.len(),
                    relay_view(&s, "o")
                );
            }
            (rss_full.is_some() && through >= 4 * BOUND).then_some((through, shed))
        },
    );
    // o goes silent; r settles (nothing more arrives for o).
    swarm.cut("o", "r");
    let last = swarm.wait("r settled", Duration::from_secs(30), || {
        let a = held(&swarm, "r", "o");
        std::thread::sleep(Duration::from_secs(3));
        let b = held(&swarm, "r", "o");
        (a == b).then_some(b)
    });
    let held_bytes: u64 = last.values().map(|h| h.bytes).sum();
    let s = swarm.status_json("r");
    // No master, so no ack: what r holds for o is what it took less what it shed.
    let taken = relay_counter(&s, "o", "taken_bytes").unwrap();
    let shed_bytes = relay_counter(&s, "o", "shed_bytes").unwrap();
    assert!(shed_bytes > 0, "nothing shed: {}", relay_view(&s, "o"));
    assert_eq!(
        relay_counter(&s, "o", "custody_bytes"),
        Some(taken - shed_bytes),
        "r's counts disagree: {}",
        relay_view(&s, "o")
    );
    assert!(
        held_bytes <= BOUND,
        "r's outbox holds {held_bytes} bytes of o's signed batches ({} batches: {:?}), \
         its status says {}; bound {BOUND}",
        last.len(),
        last.keys().collect::<Vec<_>>(),
        relay_view(&s, "o")
    );
    // Batches with an instance state were never shed; batches without were.
    let kept: Vec<_> = seen
        .iter()
        .filter(|(_, h)| h.keep)
        .map(|(c, _)| *c)
        .collect();
    assert!(!kept.is_empty(), "no batch carried an instance state");
    for c in &kept {
        assert!(
            last.contains_key(c),
            "a batch with an instance state {c:?} was shed"
        );
    }
    let dropped = seen.keys().filter(|c| !last.contains_key(c)).count();
    assert!(dropped > 0, "nothing shed");
    // Reported: the relay's status says what it shed for o.
    let rss_end = rss_kib(r_pid);
    eprintln!(
        "relay bound: {through} bytes of o through r's custody, {} batches seen, {dropped} \
         shed ({shed} batches reported), {held_bytes} held at the end (bound {BOUND}), {} \
         kept with instance states; r's RSS {rss_start} KiB at the first custody, {} KiB first \
         full, {rss_end} KiB at the end; relay view: {}",
        seen.len(),
        kept.len(),
        rss_full.unwrap_or(0),
        relay_view(&s, "o")
    );
    assert!(held_bytes <= BOUND);
    // Holding a bound's worth when first full and at the end, with 4 bounds' worth
    // passed through in between: what passed must not stay in memory.
    let rss_full = rss_full.unwrap();
    assert!(
        rss_end <= rss_full + 2048,
        "r's RSS grew from {rss_full} KiB (first full) to {rss_end} KiB while {through} bytes \
         passed through its custody"
    );
}

/// The relay's status entry for `origin` (`mesh.peers`: custody held for it, shed).
fn relay_view(status: &serde_json::Value, origin: &str) -> serde_json::Value {
    status["mesh"]["peers"]
        .as_array()
        .and_then(|a| a.iter().find(|o| o["node"] == origin))
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

fn relay_counter(status: &serde_json::Value, origin: &str, key: &str) -> Option<u64> {
    relay_view(status, origin)[key].as_u64()
}
