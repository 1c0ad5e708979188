//! A link that returns after a long outage is used at once: the node's uplink probes
//! the broker while it waits out its reconnect backoff, instead of waiting for its end.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::fleet::{can_cut, Fleet};
use common::wait_for;

/// Reconnect backoffs the node logged so far (ms), in order.
fn backoffs(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("uplink reconnect backoff"))
        .filter_map(|l| {
            l.split("delay_ms=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

#[test]
#[allow(clippy::disallowed_methods)] // an end-to-end test: times real reconnects
fn a_link_back_after_a_long_outage_reconnects_without_waiting_for_the_backoff() {
    if !common::can_run(can_cut(), "root and nft to cut links") {
        return;
    }
    // HEDGE_LINK_BACK_CUTS=10 gives the distribution the bench reports.
    let cuts: usize = std::env::var("HEDGE_LINK_BACK_CUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let mut fleet = Fleet::new();
    fleet.start_master();
    let mut node = fleet.node("back");
    node.start();
    wait_for("node connected", Duration::from_secs(30), || {
        node.status().uplink.connected.then_some(())
    });
    let mut took = Vec::new();
    for _ in 0..cuts {
        fleet.cut_link();
        wait_for("node offline", Duration::from_secs(30), || {
            (!node.status().uplink.connected).then_some(())
        });
        // Long enough that the backoff is at its cap (15 s, -20 % jitter): the link
        // returns right after an attempt failed, so a node that only waited would wait
        // 12 s or more.
        let seen = backoffs(&node.daemon_log()).len();
        wait_for("a backoff at its cap", Duration::from_secs(90), || {
            backoffs(&node.daemon_log())[seen..]
                .iter()
                .any(|&d| d >= 12_000)
                .then_some(())
        });
        fleet.restore_link();
        let t = std::time::Instant::now();
        wait_for("node reconnected", Duration::from_secs(20), || {
            node.status().uplink.connected.then_some(())
        });
        took.push(t.elapsed());
    }
    took.sort();
    eprintln!("link back -> reconnected over {cuts} cuts: {took:?}");
    let median = took[took.len() / 2];
    assert!(median < Duration::from_secs(2), "{took:?}");
    assert!(took.iter().all(|d| *d < Duration::from_secs(5)), "{took:?}");
    // Records still flow after the returns.
    let sent = node.status().outbox.next_seq - 1;
    wait_for("master caught up", Duration::from_secs(30), || {
        (fleet.held("back").1 >= sent).then_some(())
    });
}
