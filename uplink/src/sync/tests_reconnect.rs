//! Reconnecting when a probe finds the path back (also restarting an attempt stalled in
//! TCP's SYN retransmissions), and what a fleet's reconnects look like after an outage
//! (with and without probes).
#![allow(clippy::unwrap_used)]
// Tests take `Instant::now()` as an arbitrary origin; the machine only compares instants.
#![allow(clippy::disallowed_methods)]

use super::*;

fn node() -> Name {
    Name::new("node-1").unwrap()
}

const EPOCH: u64 = 7;

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// A machine down since `t0`, every attempt failed until `until`: it is in a backoff
/// whose deadline is at or after `until`.
fn failing_until(cfg: &Config, seed: u64, t0: Instant, until: Instant) -> SyncMachine {
    let mut s = SyncMachine::new(node(), EPOCH, cfg.clone(), seed);
    assert_eq!(s.handle(t0, Input::Start), vec![Output::Connect]);
    let mut now = t0;
    loop {
        assert!(s.handle(now, Input::ConnectFailed).is_empty());
        let d = s.deadline().unwrap();
        if d >= until {
            return s;
        }
        now = d;
        assert_eq!(s.handle(now, Input::Tick), vec![Output::Connect]);
    }
}

#[test]
fn path_back_triggers_an_attempt_now_once_per_backoff_period() {
    let cfg = Config {
        path_back_spread: Duration::ZERO,
        ..Config::default()
    };
    let t0 = Instant::now();
    // Two minutes down: the backoff is at its cap.
    let t = t0 + Duration::from_secs(120);
    let mut s = failing_until(&cfg, 1, t0, t);
    let regular = s.deadline().unwrap();
    assert!(s.wants_probe());
    // The path comes back 1 s later: attempt now, not at the end of the backoff.
    let back = t + ms(1000);
    assert!(
        regular > back + Duration::from_secs(5),
        "{:?}",
        regular - back
    );
    assert!(s.handle(back, Input::PathBack).is_empty());
    assert_eq!(s.deadline(), Some(back));
    assert_eq!(s.handle(back, Input::Tick), vec![Output::Connect]);
    // The early attempt fails: no more probing, no second early attempt in this period.
    assert!(s.handle(back + ms(50), Input::ConnectFailed).is_empty());
    assert!(!s.wants_probe());
    let next = s.deadline().unwrap();
    assert!(next >= back + cfg.backoff_max.mul_f64(0.8), "{next:?}");
    assert!(s.handle(back + ms(100), Input::PathBack).is_empty());
    assert_eq!(s.deadline(), Some(next));
    // The regular attempt fails too: a probe may bring the next one forward again.
    assert_eq!(s.handle(next, Input::Tick), vec![Output::Connect]);
    assert!(s.handle(next, Input::ConnectFailed).is_empty());
    assert!(s.wants_probe());
    s.handle(next + ms(10), Input::PathBack);
    assert_eq!(s.deadline(), Some(next + ms(10)));
    assert_eq!(s.handle(next + ms(10), Input::Tick), vec![Output::Connect]);
    s.handle(next + ms(20), Input::LinkUp);
    assert!(s.is_connected());
    assert!(!s.wants_probe());
    // A link lost while up is probed for at once.
    s.handle(next + ms(30), Input::LinkDown);
    assert!(s.wants_probe());
}

#[test]
fn path_back_is_ignored_unless_waiting_and_never_delays() {
    let t0 = Instant::now();
    let mut s = SyncMachine::new(node(), EPOCH, Config::default(), 3);
    // Before Start, while connecting and while up, a PathBack does nothing.
    assert!(s.handle(t0, Input::PathBack).is_empty());
    assert_eq!(s.handle(t0, Input::Start), vec![Output::Connect]);
    assert!(!s.wants_probe());
    assert!(s.handle(t0, Input::PathBack).is_empty());
    assert!(s.handle(t0, Input::ConnectFailed).is_empty());
    // A first backoff (~1 s) shorter than the spread's worst case stays as it is or earlier.
    let d = s.deadline().unwrap();
    s.handle(t0, Input::PathBack);
    assert!(s.deadline().unwrap() <= d);
    assert!(s.deadline().unwrap() <= t0 + Config::default().path_back_spread);
}

#[test]
fn an_attempt_stalled_past_the_path_back_is_restarted_once() {
    let cfg = Config {
        path_back_spread: Duration::ZERO,
        ..Config::default()
    };
    let t0 = Instant::now();
    let mut s = SyncMachine::new(node(), EPOCH, cfg, 5);
    assert_eq!(s.handle(t0, Input::Start), vec![Output::Connect]);
    // A young attempt: no probe, and a PathBack or an early Tick changes nothing.
    assert!(!s.wants_probe());
    let stalled = t0 + STALLED_AFTER;
    assert_eq!(s.deadline(), Some(stalled));
    assert!(s.handle(t0 + ms(500), Input::PathBack).is_empty());
    assert!(s.handle(t0 + ms(999), Input::Tick).is_empty());
    assert_eq!(s.deadline(), Some(stalled));
    // Stalled: it asks for a probe, and waits for it (no deadline of its own).
    assert!(s.handle(stalled, Input::Tick).is_empty());
    assert!(s.wants_probe());
    assert_eq!(s.deadline(), None);
    // The probe reaches the broker: the attempt starts again.
    let back = stalled + ms(200);
    assert!(s.handle(back, Input::PathBack).is_empty());
    assert_eq!(s.deadline(), Some(back));
    assert_eq!(s.handle(back, Input::Tick), vec![Output::Connect]);
    assert_eq!(s.stats().restarted_attempts, 1);
    // Once per attempt: the new one is neither probed for nor restarted.
    assert!(!s.wants_probe());
    assert_eq!(s.deadline(), None);
    assert!(s
        .handle(back + Duration::from_secs(5), Input::Tick)
        .is_empty());
    assert!(s
        .handle(back + Duration::from_secs(5), Input::PathBack)
        .is_empty());
    assert_eq!(s.stats().restarted_attempts, 1);
    s.handle(back + ms(30), Input::LinkUp);
    assert!(s.is_connected());
    // The next attempt (after a loss) may be restarted again.
    s.handle(back + ms(40), Input::LinkDown);
    let at = s.deadline().unwrap();
    assert_eq!(s.handle(at, Input::Tick), vec![Output::Connect]);
    assert_eq!(s.deadline(), Some(at + STALLED_AFTER));
}

#[test]
fn a_stalled_attempt_restarts_within_the_spread_and_a_failure_still_backs_off() {
    let cfg = Config::default();
    let spread = cfg.path_back_spread;
    let t0 = Instant::now();
    for seed in 0..50 {
        let mut s = SyncMachine::new(node(), EPOCH, cfg.clone(), seed);
        s.handle(t0, Input::Start);
        let stalled = t0 + STALLED_AFTER;
        s.handle(stalled, Input::Tick);
        s.handle(stalled, Input::PathBack);
        let at = s.deadline().unwrap();
        assert!(at >= stalled && at < stalled + spread, "{:?}", at - stalled);
        // The stalled attempt fails before its restart: a normal backoff, probed for.
        let mut f = SyncMachine::new(node(), EPOCH, cfg.clone(), seed);
        f.handle(t0, Input::Start);
        f.handle(stalled, Input::Tick);
        f.handle(stalled, Input::PathBack);
        assert!(f.handle(stalled + ms(1), Input::ConnectFailed).is_empty());
        assert!(f.wants_probe());
        let d = f.deadline().unwrap();
        assert!(d >= stalled + cfg.backoff_base.mul_f64(0.8), "{d:?}");
        assert_eq!(f.stats().restarted_attempts, 0);
    }
}

/// 1,000 nodes lose the broker at the same moment and fail every attempt for ten
/// minutes; then the path returns for all of them at `t`. Returns each node's first
/// attempt after `t`, in ms, with and without a probe reporting the path at `t`.
fn fleet_first_attempts(probe: bool) -> Vec<u64> {
    let cfg = Config::default();
    let t0 = Instant::now();
    let t = t0 + Duration::from_secs(600);
    (0..1000u64)
        .map(|seed| {
            let mut s = failing_until(&cfg, seed.wrapping_mul(0x9e37_79b9_7f4a_7c15), t0, t);
            if probe {
                s.handle(t, Input::PathBack);
            }
            let at = s.deadline().unwrap();
            assert_eq!(s.handle(at, Input::Tick), vec![Output::Connect]);
            u64::try_from((at - t).as_millis()).unwrap()
        })
        .collect()
}

/// Counts of `v` in buckets of `width` ms.
fn histogram(v: &[u64], width: u64) -> BTreeMap<u64, usize> {
    let mut h = BTreeMap::new();
    for x in v {
        *h.entry(x / width * width).or_insert(0) += 1;
    }
    h
}

use std::collections::BTreeMap;

#[test]
fn a_thousand_nodes_spread_their_reconnects_after_an_outage() {
    let spread = u64::try_from(Config::default().path_back_spread.as_millis()).unwrap();
    // With probes: everyone within the spread, none waits for the backoff, and no
    // 20 ms slot takes more than 8 % of the fleet (uniform: 5 %).
    let mut with = fleet_first_attempts(true);
    with.sort_unstable();
    let h = histogram(&with, 20);
    eprintln!("first attempts after the path returns, with probes (ms bucket: nodes): {h:?}");
    assert!(with.iter().all(|&v| v < spread), "{with:?}");
    assert!(h.len() >= 18, "{h:?}");
    assert!(h.values().all(|&n| n <= 80), "{h:?}");
    let median = with[with.len() / 2];
    assert!((100..=300).contains(&median), "median {median} ms");
    // Without probes: the capped, jittered backoff spreads them over seconds, not at t.
    let mut without = fleet_first_attempts(false);
    without.sort_unstable();
    let h = histogram(&without, 1000);
    eprintln!("first attempts after the path returns, backoff only (s bucket: nodes): {h:?}");
    assert!(h.values().all(|&n| n <= 150), "{h:?}");
    assert!(without[without.len() / 2] >= 3000, "{without:?}");
}
