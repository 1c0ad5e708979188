#![allow(clippy::unwrap_used)]

use hedge_wire::{Name, RecordKind};

use super::*;

const P1: ProcessIdentity = ProcessIdentity {
    pid: 100,
    start_ticks: 5_000,
};
const P2: ProcessIdentity = ProcessIdentity {
    pid: 200,
    start_ticks: 9_000,
};

fn acct(start: u64) -> Accountant {
    Accountant::new(Name::new("web").unwrap(), 60_000, start, 100).unwrap()
}

fn run(wall_ms: u64, p: ProcessIdentity, ticks: u64, rss: u64) -> Sample {
    Sample {
        wall_ms,
        running: true,
        process: Some(p),
        cpu_ticks_total: ticks,
        rss_bytes: rss,
    }
}

fn stopped(wall_ms: u64) -> Sample {
    Sample {
        wall_ms,
        running: false,
        process: None,
        cpu_ticks_total: 0,
        rss_bytes: 0,
    }
}

/// (from, to, cpu_ms, mem_avg, mem_peak, uptime) of a usage record.
fn fields(r: &RecordKind) -> (u64, u64, u64, u64, u64, u64) {
    match r {
        RecordKind::Usage {
            from_ms,
            to_ms,
            cpu_ms,
            mem_avg_bytes,
            mem_peak_bytes,
            uptime_ms,
            net_rx_bytes,
            net_tx_bytes,
            ..
        } => {
            assert_eq!((*net_rx_bytes, *net_tx_bytes), (None, None));
            (
                *from_ms,
                *to_ms,
                *cpu_ms,
                *mem_avg_bytes,
                *mem_peak_bytes,
                *uptime_ms,
            )
        }
        other => panic!("not usage: {other:?}"),
    }
}

#[test]
fn due_is_aligned_to_the_interval() {
    let mut a = acct(90_000);
    assert_eq!(a.due_ms(), 120_000);
    a.close_interval(a.due_ms(), 0).unwrap();
    assert_eq!(a.due_ms(), 180_000);
}

#[test]
fn refuses_zero_clock_tick_and_interval() {
    let n = Name::new("web").unwrap();
    assert_eq!(
        Accountant::new(n.clone(), 1, 0, 0).unwrap_err(),
        UsageError::ZeroClockTick
    );
    assert_eq!(
        Accountant::new(n, 0, 0, 100).unwrap_err(),
        UsageError::ZeroInterval
    );
}

#[test]
fn counts_cpu_memory_and_uptime_of_one_process() {
    let mut a = acct(0);
    assert_eq!(a.due_ms(), 60_000);
    a.sample(run(5_000, P1, 10, 100)); // new process: its 10 ticks count
    a.sample(run(10_000, P1, 30, 300));
    a.sample(run(15_000, P1, 45, 200));
    let r = a.close_interval(20_000, 4_096).unwrap();
    // 45 ticks at 100 Hz = 450 ms; mem mean 200, peak 300; uptime 5s→20s held.
    assert_eq!(fields(&r), (0, 20_000, 450, 200, 300, 15_000));
    match r {
        RecordKind::Usage {
            disk_bytes,
            instance,
            ..
        } => {
            assert_eq!(disk_bytes, 4_096);
            assert_eq!(instance.as_str(), "web");
        }
        _ => unreachable!(),
    }
    assert_eq!(a.from_ms(), 20_000);
}

#[test]
fn intervals_are_contiguous_and_cpu_spans_them() {
    let mut a = acct(1_000);
    let mut prev_to = 1_000;
    let mut total = 0;
    let mut ticks = 0;
    for i in 1..=50u64 {
        ticks += i; // varying load
        a.sample(run(1_000 + i * 5_000, P1, ticks, 1));
        if i % 7 == 0 {
            let r = a.close_interval(1_000 + i * 5_000, 0).unwrap();
            let (from, to, cpu, ..) = fields(&r);
            assert_eq!(from, prev_to);
            prev_to = to;
            total += cpu;
        }
    }
    total += fields(&a.close_interval(300_000, 0).unwrap()).2;
    assert_eq!(total, ticks * 10);
}

#[test]
fn a_replaced_process_is_counted_from_zero() {
    let mut a = acct(0);
    a.sample(run(1_000, P1, 500, 1));
    a.sample(run(2_000, P1, 600, 1));
    // Restarted between samples: new identity, counter back near 0.
    a.sample(run(3_000, P2, 7, 1));
    a.sample(run(4_000, P2, 20, 1));
    let (_, _, cpu, ..) = fields(&a.close_interval(5_000, 0).unwrap());
    assert_eq!(cpu, (600 + 20) * 10);
}

#[test]
fn a_new_process_with_a_higher_counter_is_counted_whole() {
    let mut a = acct(0);
    a.sample(run(1_000, P1, 5, 1));
    a.sample(run(2_000, P2, 50, 1));
    let (_, _, cpu, ..) = fields(&a.close_interval(3_000, 0).unwrap());
    assert_eq!(cpu, (5 + 50) * 10);
}

#[test]
fn a_decrease_of_unknown_identity_is_a_new_process() {
    let mut a = acct(0);
    let anon = |w, t| Sample {
        wall_ms: w,
        running: true,
        process: None,
        cpu_ticks_total: t,
        rss_bytes: 0,
    };
    a.sample(anon(1_000, 100));
    a.sample(anon(2_000, 150));
    a.sample(anon(3_000, 3)); // replaced: counted from 0
    a.sample(anon(4_000, 8));
    let (_, _, cpu, ..) = fields(&a.close_interval(5_000, 0).unwrap());
    assert_eq!(cpu, (150 + 8) * 10);
}

#[test]
fn a_tree_member_exiting_does_not_double_count_the_root() {
    let mut a = acct(0);
    a.sample(run(1_000, P1, 100, 1));
    // A child with 40 ticks exited; the root (same identity) keeps going.
    a.sample(run(2_000, P1, 70, 1));
    a.sample(run(3_000, P1, 75, 1));
    let (_, _, cpu, ..) = fields(&a.close_interval(4_000, 0).unwrap());
    assert_eq!(cpu, (100 + 5) * 10);
}

#[test]
fn a_stop_forgets_the_counter_and_uptime_holds_state() {
    let mut a = acct(0);
    a.sample(run(10_000, P1, 10, 100));
    a.sample(stopped(20_000)); // ran 10s→20s (held)
    a.sample(stopped(30_000));
    a.sample(run(40_000, P1, 4, 100)); // same identity reused: counter was forgotten
    let r = a.close_interval(50_000, 0).unwrap();
    let (_, _, cpu, avg, peak, up) = fields(&r);
    assert_eq!(cpu, (10 + 4) * 10);
    assert_eq!((avg, peak), (50, 100));
    assert_eq!(up, 10_000 + 10_000);
}

#[test]
fn sub_ms_cpu_carries_to_the_next_interval() {
    // 300 Hz: one tick is 3.33 ms.
    let mut a = Accountant::new(Name::new("web").unwrap(), 1_000, 0, 300).unwrap();
    let mut cpu = Vec::new();
    for i in 1..=3u64 {
        a.sample(run(i * 1_000 - 1, P1, i, 0));
        cpu.push(fields(&a.close_interval(i * 1_000, 0).unwrap()).2);
    }
    assert_eq!(cpu, vec![3, 3, 4]);
}

#[test]
fn uptime_is_clipped_to_the_interval() {
    let mut a = acct(0);
    a.sample(run(1_000, P1, 0, 0));
    let (.., up) = fields(&a.close_interval(10_000, 0).unwrap());
    assert_eq!(up, 9_000);
    // The held tail up to 10 000 was credited to the first interval, not again here.
    a.sample(run(12_000, P1, 0, 0));
    let (from, to, .., up) = fields(&a.close_interval(15_000, 0).unwrap());
    assert_eq!((from, to, up), (10_000, 15_000, 5_000));
}

#[test]
fn an_empty_interval_reports_zeros() {
    let mut a = acct(0);
    let r = a.close_interval(60_000, 123).unwrap();
    assert_eq!(fields(&r), (0, 60_000, 0, 0, 0, 0));
}

#[test]
fn a_close_not_after_the_start_keeps_accumulating() {
    let mut a = acct(10_000);
    a.sample(run(11_000, P1, 10, 8));
    assert_eq!(a.close_interval(10_000, 0), None);
    assert_eq!(a.close_interval(5_000, 0), None);
    let (from, to, cpu, ..) = fields(&a.close_interval(20_000, 0).unwrap());
    assert_eq!((from, to, cpu), (10_000, 20_000, 100));
}

fn store_and_restore(a: &Accountant) -> Accountant {
    let bytes = postcard::to_allocvec(a.state()).unwrap();
    let st: AccountantState = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(&st, a.state());
    Accountant::restore(st, 100).unwrap()
}

#[test]
fn daemon_restart_with_the_same_process_continues_the_count() {
    let mut a = acct(0);
    a.sample(run(5_000, P1, 100, 10));
    a.sample(run(10_000, P1, 150, 10));
    let mut b = store_and_restore(&a);
    // Daemon down 10 s; the process kept running and used 30 more ticks.
    b.sample(run(20_000, P1, 180, 10));
    let (from, _, cpu, _, _, up) = fields(&b.close_interval(30_000, 0).unwrap());
    assert_eq!(from, 0);
    assert_eq!(cpu, 1_800, "neither double counted nor lost");
    assert_eq!(up, 25_000, "still running: the downtime gap is uptime");
}

#[test]
fn daemon_restart_with_a_new_process_counts_it_whole() {
    let mut a = acct(0);
    a.sample(run(5_000, P1, 100, 10));
    let r1 = a.close_interval(6_000, 0).unwrap();
    a.sample(run(8_000, P1, 120, 10));
    let mut b = store_and_restore(&a);
    // The old process died with the daemon; a new one was started.
    b.sample(run(30_000, P2, 40, 10));
    b.sample(run(35_000, P2, 45, 10));
    let r2 = b.close_interval(40_000, 0).unwrap();
    let (f1, t1, c1, ..) = fields(&r1);
    let (f2, t2, c2, _, _, up2) = fields(&r2);
    assert_eq!((f1, t1, f2, t2), (0, 6_000, 6_000, 40_000));
    assert_eq!(c1 + c2, 1_000 + 200 + 450);
    // 6→8 s held, 8→30 s not credited (unknown across the restart), 30→40 s.
    assert_eq!(up2, 2_000 + 10_000);
}

#[test]
fn restored_accountant_does_not_hold_the_tail_before_a_sample() {
    let mut a = acct(0);
    a.sample(run(5_000, P1, 0, 0));
    let mut b = store_and_restore(&a);
    let (.., up) = fields(&b.close_interval(60_000, 0).unwrap());
    assert_eq!(up, 0);
}
