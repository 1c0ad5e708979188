#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use hedge_wire::{ExitStatus, InstanceStatus};

use super::*;

/// An arbitrary origin: `Instant` has no constructor. The core under test is handed
/// every instant (`origin() + offset`); it never reads the clock itself.
#[allow(clippy::disallowed_methods)] // tests only: any instant will do as the origin
fn origin() -> Instant {
    Instant::now()
}

fn policy() -> Policy {
    Policy {
        backoff_base: Duration::from_millis(100),
        backoff_max: Duration::from_secs(5),
        stable_after: Duration::from_secs(10),
        grace: Duration::from_secs(2),
    }
}

/// Starts `lifecycle` and feeds it `Spawned { pid }`.
fn run(lifecycle: &mut Lifecycle, now: Instant, pid: u32) {
    assert_eq!(lifecycle.handle(now, Input::Start), vec![Action::Spawn]);
    assert_eq!(
        lifecycle.handle(now, Input::Spawned { pid }),
        vec![Action::Status(InstanceStatus::Running)]
    );
}

#[test]
fn first_crash_after_a_stable_run_restarts_at_once() {
    let t0 = origin();
    let mut lifecycle = Lifecycle::new(policy(), 1, 0, None);
    run(&mut lifecycle, t0, 10);
    let t1 = t0 + Duration::from_secs(60);
    let acts = lifecycle.handle(
        t1,
        Input::Exited {
            pid: 10,
            status: ExitStatus::Signal(9),
        },
    );
    // The spawn first, then the exit's state: nothing is written before the restart.
    assert_eq!(
        acts,
        vec![Action::Spawn, Action::Status(InstanceStatus::Backoff)]
    );
    assert_eq!(lifecycle.restarts(), 1);
    assert_eq!(lifecycle.last_exit(), Some(ExitStatus::Signal(9)));
    assert_eq!(
        lifecycle.handle(t1, Input::Spawned { pid: 11 }),
        vec![Action::Status(InstanceStatus::Running)]
    );
    assert_eq!(lifecycle.pid(), Some(11));
}

/// An immediate restart whose spawn fails still reports Backoff once for the exit, then
/// Backoff again for the failed start, in that order (the records a driver that spawns
/// first writes).
#[test]
fn an_immediate_restart_that_fails_reports_the_exit_then_the_failure() {
    let t0 = origin();
    let mut lifecycle = Lifecycle::new(policy(), 1, 0, None);
    run(&mut lifecycle, t0, 10);
    let t1 = t0 + Duration::from_secs(60);
    let exit = Input::Exited {
        pid: 10,
        status: ExitStatus::Code(1),
    };
    assert_eq!(
        lifecycle.handle(t1, exit),
        vec![Action::Spawn, Action::Status(InstanceStatus::Backoff)]
    );
    assert_eq!(
        lifecycle.handle(t1, Input::SpawnFailed { waiting: false }),
        vec![Action::Status(InstanceStatus::Backoff)]
    );
    assert_eq!(lifecycle.status(), InstanceStatus::Backoff);
}

/// A quick exit that must wait reports Backoff alone, and spawns nothing yet.
#[test]
fn a_delayed_restart_reports_backoff_without_spawning() {
    let t0 = origin();
    let mut lifecycle = Lifecycle::new(policy(), 1, 0, None);
    run(&mut lifecycle, t0, 10);
    let exit = |pid| Input::Exited {
        pid,
        status: ExitStatus::Code(1),
    };
    // The first quick exit restarts at once, the second waits.
    assert_eq!(lifecycle.handle(t0, exit(10))[0], Action::Spawn);
    lifecycle.handle(t0, Input::Spawned { pid: 11 });
    assert_eq!(
        lifecycle.handle(t0, exit(11)),
        vec![Action::Status(InstanceStatus::Backoff)]
    );
    assert!(lifecycle.deadline().is_some());
}

#[test]
fn quick_exits_back_off_with_growing_capped_delays_and_never_give_up() {
    let mut now = origin();
    let mut lifecycle = Lifecycle::new(policy(), 7, 0, None);
    run(&mut lifecycle, now, 1);
    let mut delays = Vec::new();
    for i in 0..200u32 {
        let pid = i + 1;
        let acts = lifecycle.handle(
            now,
            Input::Exited {
                pid,
                status: ExitStatus::Code(1),
            },
        );
        if acts.contains(&Action::Spawn) {
            delays.push(Duration::ZERO);
        } else {
            assert_eq!(lifecycle.status(), InstanceStatus::Backoff);
            let until = lifecycle.deadline().unwrap();
            delays.push(until - now);
            // An early tick does nothing; a tick at the deadline spawns.
            assert!(lifecycle.handle(now, Input::Tick).is_empty());
            now = until;
            assert_eq!(lifecycle.handle(now, Input::Tick), vec![Action::Spawn]);
        }
        lifecycle.handle(now, Input::Spawned { pid: pid + 1 });
    }
    assert_eq!(delays[0], Duration::ZERO);
    // 100 ms ± 20 %, then doubling: each delay is ~2× the previous until the cap.
    for (i, d) in delays.iter().enumerate().skip(1).take(5) {
        let nominal = 100.0 * f64::from(1u32 << (i - 1));
        let ms = d.as_secs_f64() * 1000.0;
        assert!(
            ms >= nominal * 0.8 - 1.0 && ms <= nominal * 1.2 + 1.0,
            "delay {i}: {ms} ms"
        );
    }
    assert!(delays.iter().all(|d| *d <= Duration::from_secs(5)));
    assert!(delays[150..].iter().all(|d| *d >= Duration::from_secs(4)));
    assert_eq!(lifecycle.restarts(), 200);
    assert_eq!(lifecycle.status(), InstanceStatus::Running);
}

#[test]
fn a_stable_run_resets_the_backoff() {
    let mut now = origin();
    let mut lifecycle = Lifecycle::new(policy(), 3, 0, None);
    run(&mut lifecycle, now, 1);
    for pid in 1..5 {
        lifecycle.handle(
            now,
            Input::Exited {
                pid,
                status: ExitStatus::Code(1),
            },
        );
        if let Some(at) = lifecycle.deadline() {
            now = at;
            lifecycle.handle(now, Input::Tick);
        }
        lifecycle.handle(now, Input::Spawned { pid: pid + 1 });
    }
    now += Duration::from_secs(11);
    let acts = lifecycle.handle(
        now,
        Input::Exited {
            pid: 5,
            status: ExitStatus::Code(1),
        },
    );
    assert!(acts.contains(&Action::Spawn), "{acts:?}");
}

#[test]
fn stop_sends_term_then_kill_after_grace() {
    let t0 = origin();
    let mut lifecycle = Lifecycle::new(policy(), 1, 0, None);
    run(&mut lifecycle, t0, 42);
    let acts = lifecycle.handle(t0, Input::Stop);
    assert_eq!(
        acts,
        vec![
            Action::Signal {
                pgid: 42,
                sig: Sig::Term
            },
            Action::Status(InstanceStatus::Stopping)
        ]
    );
    assert_eq!(lifecycle.deadline(), Some(t0 + Duration::from_secs(2)));
    assert!(lifecycle
        .handle(t0 + Duration::from_secs(1), Input::Tick)
        .is_empty());
    assert_eq!(
        lifecycle.handle(t0 + Duration::from_secs(2), Input::Tick),
        vec![Action::Signal {
            pgid: 42,
            sig: Sig::Kill
        }]
    );
    assert_eq!(lifecycle.deadline(), None);
    let acts = lifecycle.handle(
        t0 + Duration::from_secs(3),
        Input::Exited {
            pid: 42,
            status: ExitStatus::Signal(9),
        },
    );
    assert_eq!(acts, vec![Action::Status(InstanceStatus::Stopped)]);
    assert!(lifecycle.is_idle());
    // A stopped instance is not restarted by a late tick.
    assert!(lifecycle
        .handle(t0 + Duration::from_secs(60), Input::Tick)
        .is_empty());
}

#[test]
fn restart_stops_then_starts_again() {
    let t0 = origin();
    let mut lifecycle = Lifecycle::new(policy(), 1, 0, None);
    run(&mut lifecycle, t0, 5);
    let acts = lifecycle.handle(t0, Input::Restart);
    assert_eq!(
        acts[0],
        Action::Signal {
            pgid: 5,
            sig: Sig::Term
        }
    );
    let acts = lifecycle.handle(
        t0,
        Input::Exited {
            pid: 5,
            status: ExitStatus::Signal(15),
        },
    );
    assert_eq!(acts, vec![Action::Spawn]);
    assert_eq!(lifecycle.restarts(), 1);
}

#[test]
fn stale_exit_of_an_old_pid_is_ignored() {
    let t0 = origin();
    let mut lifecycle = Lifecycle::new(policy(), 1, 0, None);
    run(&mut lifecycle, t0, 5);
    assert!(lifecycle
        .handle(
            t0,
            Input::Exited {
                pid: 4,
                status: ExitStatus::Code(0)
            }
        )
        .is_empty());
    assert_eq!(lifecycle.pid(), Some(5));
}

#[test]
fn missing_dependency_waits_and_retries() {
    let t0 = origin();
    let mut lifecycle = Lifecycle::new(policy(), 1, 0, None);
    assert_eq!(lifecycle.handle(t0, Input::Start), vec![Action::Spawn]);
    let acts = lifecycle.handle(t0, Input::SpawnFailed { waiting: true });
    assert_eq!(acts, vec![Action::Status(InstanceStatus::Waiting)]);
    let at = lifecycle.deadline().unwrap();
    assert!(at >= t0 + WAIT_RETRY);
    assert_eq!(lifecycle.handle(at, Input::Tick), vec![Action::Spawn]);
}

#[test]
fn stop_during_backoff_cancels_the_restart() {
    let t0 = origin();
    let mut lifecycle = Lifecycle::new(policy(), 1, 0, None);
    run(&mut lifecycle, t0, 1);
    lifecycle.handle(
        t0,
        Input::Exited {
            pid: 1,
            status: ExitStatus::Code(1),
        },
    );
    lifecycle.handle(t0, Input::Spawned { pid: 2 });
    lifecycle.handle(
        t0,
        Input::Exited {
            pid: 2,
            status: ExitStatus::Code(1),
        },
    );
    assert_eq!(lifecycle.status(), InstanceStatus::Backoff);
    assert_eq!(
        lifecycle.handle(t0, Input::Stop),
        vec![Action::Status(InstanceStatus::Stopped)]
    );
    assert!(lifecycle.is_idle());
    assert_eq!(lifecycle.deadline(), None);
}
