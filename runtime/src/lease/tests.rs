#![allow(clippy::unwrap_used)]
// Tests take `Instant::now()` as an arbitrary origin; the cores only compare instants.
#![allow(clippy::disallowed_methods)]

use super::*;
use crate::reconcile::tests::req;

fn name(n: &str) -> Name {
    Name::new(n).unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn set(reqs: &[(&str, RequestedState)]) -> BTreeMap<Name, InstanceRequest> {
    reqs.iter().map(|(n, s)| (name(n), req(n, *s))).collect()
}

fn terms(t: &[(&str, u64, u32)]) -> TermsMap {
    t.iter()
        .map(|(n, fence, lease_ms)| {
            (
                name(n),
                Terms {
                    fence: *fence,
                    lease_ms: *lease_ms,
                },
            )
        })
        .collect()
}

fn states(d: &BTreeMap<Name, InstanceRequest>) -> Vec<(&str, RequestedState)> {
    d.iter().map(|(n, r)| (n.as_str(), r.state)).collect()
}

use RequestedState::{Destroyed, Started, Stopped};

#[test]
fn a_lease_is_held_strictly_before_its_end_and_zero_means_no_lease() {
    let t0 = Instant::now();
    assert!(holds(None, 0, t0), "no lease needed");
    assert!(
        !holds(None, 1000, t0),
        "no contact yet: a restarted daemon waits"
    );
    assert!(holds(Some(t0), 1000, t0 + ms(999)));
    assert!(!holds(Some(t0), 1000, t0 + ms(1000)));
    assert!(!holds(Some(t0), 1000, t0 + ms(5000)));
}

#[test]
fn the_gate_stops_leased_copies_without_a_lease_and_leaves_the_others_alone() {
    let t0 = Instant::now();
    let tm = terms(&[("leased", 1, 3000), ("short", 2, 1000), ("wait", 1, 0)]);
    let all = set(&[
        ("leased", Started),
        ("short", Started),
        ("wait", Started),
        ("local", Started),
        ("parked", Stopped),
    ]);

    // A fresh daemon (no contact): only the leased ones wait.
    let mut d = all.clone();
    let g = gate(&mut d, &tm, None, t0);
    assert_eq!(
        states(&d),
        vec![
            ("leased", Stopped),
            ("local", Started),
            ("parked", Stopped),
            ("short", Stopped),
            ("wait", Started)
        ]
    );
    assert_eq!(g.fenced, BTreeSet::from([name("leased"), name("short")]));
    assert_eq!(g.lapse_at, None);

    // Contact at t0: both run; the gate must look again when the shorter lapses.
    let mut d = all.clone();
    let g = gate(&mut d, &tm, Some(t0), t0 + ms(10));
    assert!(g.fenced.is_empty());
    assert_eq!(d, all, "nothing changed");
    assert_eq!(g.lapse_at, Some(t0 + ms(1000)));

    // Past the shorter lease only: that one is fenced.
    let mut d = all.clone();
    let g = gate(&mut d, &tm, Some(t0), t0 + ms(1000));
    assert_eq!(g.fenced, BTreeSet::from([name("short")]));
    assert_eq!(g.lapse_at, Some(t0 + ms(3000)));

    // Past both: lease_ms = 0 and local requests still run, offline, forever.
    let mut d = all.clone();
    let g = gate(&mut d, &tm, Some(t0), t0 + ms(86_400_000));
    assert_eq!(g.fenced, BTreeSet::from([name("leased"), name("short")]));
    assert_eq!(d[&name("wait")].state, Started);
    assert_eq!(d[&name("local")].state, Started);
    // A destroy is never turned into a stop.
    let mut d = set(&[("leased", Destroyed)]);
    assert!(gate(&mut d, &tm, None, t0).fenced.is_empty());
    assert_eq!(d[&name("leased")].state, Destroyed);
}

#[test]
fn fences_are_reported_once_before_a_start_and_given_up_on_lapse_or_move() {
    let t0 = Instant::now();
    let mut f = Fences::default();
    let tm = terms(&[("web", 1, 1000), ("db", 4, 0)]);
    let desired = set(&[("web", Started), ("db", Started)]);
    let report = |instance: &str, fence, holding| FenceReport {
        instance: name(instance),
        fence,
        holding,
    };

    // Boot without a lease: db (no lease) starts under its fence, web waits.
    let mut d = desired.clone();
    let g = gate(&mut d, &tm, None, t0);
    assert_eq!(f.update(&d, &tm, &g.fenced), vec![report("db", 4, true)]);
    assert_eq!(f.reported(&name("web")), None);
    // The same again: nothing new.
    assert!(f.update(&d, &tm, &g.fenced).is_empty());

    // A lease arrives: web starts under fence 1.
    let mut d = desired.clone();
    let g = gate(&mut d, &tm, Some(t0), t0 + ms(10));
    assert_eq!(f.update(&d, &tm, &g.fenced), vec![report("web", 1, true)]);
    assert!(f.update(&d, &tm, &g.fenced).is_empty());

    // It lapses: web gives its fence up, once.
    let mut d = desired.clone();
    let g = gate(&mut d, &tm, Some(t0), t0 + ms(1000));
    assert_eq!(f.update(&d, &tm, &g.fenced), vec![report("web", 1, false)]);
    assert!(f.update(&d, &tm, &g.fenced).is_empty());
    assert_eq!(f.reported(&name("web")), Some((1, false)));

    // A fresh lease: web holds fence 1 again.
    let mut d = desired.clone();
    let g = gate(&mut d, &tm, Some(t0 + ms(2000)), t0 + ms(2010));
    assert_eq!(f.update(&d, &tm, &g.fenced), vec![report("web", 1, true)]);

    // The master stops db: still placed here, nothing is given up.
    let mut d = set(&[("web", Started), ("db", Stopped)]);
    let g = gate(&mut d, &tm, Some(t0 + ms(2000)), t0 + ms(2010));
    assert!(f.update(&d, &tm, &g.fenced).is_empty());

    // The master moves web away (gone from the desired set) and places it here again
    // later under fence 3: the old fence is given up, the new one held.
    let mut d = set(&[("db", Started)]);
    let g = gate(&mut d, &tm, Some(t0 + ms(2000)), t0 + ms(2010));
    assert_eq!(f.update(&d, &tm, &g.fenced), vec![report("web", 1, false)]);
    assert_eq!(f.reported(&name("web")), None, "forgotten once gone");
    let tm3 = terms(&[("web", 3, 1000), ("db", 4, 0)]);
    let mut d = desired.clone();
    let g = gate(&mut d, &tm3, Some(t0 + ms(2000)), t0 + ms(2010));
    assert_eq!(f.update(&d, &tm3, &g.fenced), vec![report("web", 3, true)]);
    // A newer fence while holding the old one: give up, then hold.
    let tm5 = terms(&[("web", 5, 1000), ("db", 4, 0)]);
    assert_eq!(
        f.update(&d, &tm5, &g.fenced),
        vec![report("web", 3, false), report("web", 5, true)]
    );
    // Destroyed: given up.
    let d = set(&[("web", Destroyed), ("db", Started)]);
    assert_eq!(
        f.update(&d, &tm5, &BTreeSet::new()),
        vec![report("web", 5, false)]
    );
    // Instances without a fence (local requests, an older master) are never reported.
    let d = set(&[("local", Started)]);
    assert!(f
        .update(&d, &terms(&[("local", 0, 0)]), &BTreeSet::new())
        .iter()
        .all(|r| r.instance.as_str() != "local"));
}

#[test]
fn an_idle_node_beats_every_third_of_its_shortest_lease_and_only_with_a_lease() {
    let t0 = Instant::now();
    assert_eq!(
        heartbeat_at(&terms(&[("wait", 1, 0)]), None, None, t0),
        None,
        "no lease, no heartbeat"
    );
    assert_eq!(heartbeat_at(&TermsMap::new(), None, None, t0), None);
    let tm = terms(&[("a", 1, 9000), ("b", 1, 3000), ("c", 1, 0)]);
    // No contact and no beat yet: at once.
    assert_eq!(heartbeat_at(&tm, None, None, t0), Some(t0));
    // A third of the shortest lease after the lease start …
    assert_eq!(heartbeat_at(&tm, Some(t0), None, t0), Some(t0 + ms(1000)));
    // … or after the last beat, whichever is later (a beat not yet acknowledged is
    // not repeated at once).
    assert_eq!(
        heartbeat_at(&tm, Some(t0), Some(t0 + ms(1000)), t0 + ms(1500)),
        Some(t0 + ms(2000))
    );
    assert_eq!(
        heartbeat_at(&tm, Some(t0 + ms(1100)), Some(t0 + ms(1000)), t0 + ms(1500)),
        Some(t0 + ms(2100))
    );
}
