#![allow(clippy::unwrap_used)]

use hedge_wire::{InstanceStatus, Name, RecordKind};

use super::*;

fn state(name: &str) -> RecordKind {
    RecordKind::InstanceState {
        instance: Name::new(name).unwrap(),
        status: InstanceStatus::Running,
        pid: Some(1),
        restarts: 0,
        last_exit: None,
    }
}

#[test]
fn sequence_continues_across_reopen_and_is_never_reused_after_ack() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.append(1, state("a")).unwrap().seq, 1);
        assert_eq!(s.append(2, state("a")).unwrap().seq, 2);
        assert_eq!(s.ack(2).unwrap(), 2);
        assert_eq!(s.outbox_depth(), 0);
    }
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(s.next_seq().unwrap(), 3);
    let r = s.append(3, state("b")).unwrap();
    assert_eq!(r.seq, 3);
    assert_eq!(s.outbox_from(0, 10).unwrap(), vec![r]);
}

#[test]
fn outbox_range_and_partial_ack() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    for i in 0..300u64 {
        s.append(i, state("a")).unwrap();
    }
    // 256 = 0x100: big-endian keys keep numeric order across byte boundaries.
    let got: Vec<u64> = s
        .outbox_from(250, 10)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(got, (250..260).collect::<Vec<_>>());
    s.ack(255).unwrap();
    assert_eq!(s.outbox_depth(), 45);
    assert_eq!(s.outbox_from(0, 1).unwrap()[0].seq, 256);
}

#[test]
fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        let meta = db.open_tree("meta").unwrap();
        meta.insert(b"schema", &99u32.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    match Store::open(dir.path(), 1 << 20) {
        Err(StoreError::TooNew { found: 99, .. }) => {}
        other => panic!("expected TooNew, got {:?}", other.err()),
    }
}

#[test]
fn corrupt_value_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    s.t()
        .unwrap()
        .local
        .insert("web", &b"\xff\xff\xff"[..])
        .unwrap();
    assert!(matches!(
        s.locals(),
        Err(StoreError::Decode { tree: "local", .. })
    ));
}

#[test]
fn the_handed_over_mark_only_rises_and_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.handed_upto(), 0);
        s.hand_over(7).unwrap();
        s.hand_over(5).unwrap();
        assert_eq!(s.handed_upto(), 7);
        s.flush_records().unwrap();
    }
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(s.handed_upto(), 7);
}

#[test]
fn applying_a_plan_folds_shed_reports_into_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    let report = |n: u32, before: u64, after: u64| RecordKind::Shed {
        dropped_promise: n,
        dropped_health: n,
        merged_usage: n,
        bytes_before: before,
        bytes_after: after,
    };
    s.append(1, report(1, 900, 800)).unwrap();
    s.append(2, state("a")).unwrap();
    s.append(3, report(2, 850, 700)).unwrap();
    s.append(4, report(4, 820, 600)).unwrap();
    let plan = shed::plan(&s.outbox_entries().unwrap(), 1 << 20);
    assert_eq!(plan.fold_reports, vec![1, 3, 4]);
    let after = s.apply_shed(&plan).unwrap();
    assert_eq!(after, s.outbox_bytes());
    let left = s.outbox_from(0, 10).unwrap();
    let kinds: Vec<(u64, RecordKind)> = left.into_iter().map(|r| (r.seq, r.kind)).collect();
    assert_eq!(kinds, vec![(1, report(7, 900, 600)), (2, state("a"))]);
}

fn usage_record(from_ms: u64, to_ms: u64, cpu_ms: u64) -> RecordKind {
    RecordKind::Usage {
        instance: Name::new("web").unwrap(),
        from_ms,
        to_ms,
        cpu_ms,
        mem_avg_bytes: 1,
        mem_peak_bytes: 1,
        disk_bytes: 0,
        net_rx_bytes: None,
        net_tx_bytes: None,
        uptime_ms: to_ms - from_ms,
    }
}

fn accountant_state(from_ms: u64) -> crate::monitor::usage::AccountantState {
    let mut a =
        crate::monitor::usage::Accountant::new(Name::new("web").unwrap(), 1000, 0, 100).unwrap();
    a.close_interval(from_ms, 0);
    a.state().clone()
}

/// A crash between the accountant state and its usage record: the record staged in the
/// state is appended at the next open, once; with no crash, nothing is appended twice.
#[test]
fn a_crash_between_a_usage_state_and_its_record_loses_nothing_and_counts_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let web = Name::new("web").unwrap();
    {
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        s.append(1, state("a")).unwrap();
        s.append_usage(2, usage_record(0, 1000, 7), &web, &accountant_state(1000))
            .unwrap();
        // The crash: the state after [1000, 2000) is stored, its record is not.
        s.stage_usage(
            3,
            &usage_record(1000, 2000, 5),
            &web,
            &accountant_state(2000),
        )
        .unwrap();
        s.flush_records().unwrap();
    }
    let usage = |s: &Store| -> Vec<(u64, RecordKind)> {
        s.outbox_from(0, 100)
            .unwrap()
            .into_iter()
            .filter(|r| matches!(r.kind, RecordKind::Usage { .. }))
            .map(|r| (r.seq, r.kind))
            .collect()
    };
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(
        usage(&s),
        vec![
            (2, usage_record(0, 1000, 7)),
            (3, usage_record(1000, 2000, 5))
        ]
    );
    assert_eq!(s.usage_state(&web).unwrap(), Some(accountant_state(2000)));
    drop(s);
    // Opened again: the staging was cleared, nothing is appended twice.
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(usage(&s).len(), 2);
    assert_eq!(s.next_seq().unwrap(), 4);
}

/// A state stored before staging existed (a bare `AccountantState`) still reads.
#[test]
fn a_bare_accountant_state_from_an_older_store_still_reads() {
    let dir = tempfile::tempdir().unwrap();
    let web = Name::new("web").unwrap();
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    let old = postcard::to_stdvec(&accountant_state(5000)).unwrap();
    s.t().unwrap().usage.insert("web", old).unwrap();
    assert_eq!(s.usage_state(&web).unwrap(), Some(accountant_state(5000)));
}

/// An observed record written before records carried a boot id still reads, as
/// "unknown boot"; a current one keeps its boot id.
#[test]
fn observed_records_without_a_boot_id_read_as_unknown_boot() {
    #[derive(Serialize)]
    struct Old {
        pgid: Option<u32>,
        start_ticks: Option<u64>,
        restarts: u32,
        last_exit: Option<ExitStatus>,
    }
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    let old = Old {
        pgid: Some(4242),
        start_ticks: Some(77),
        restarts: 3,
        last_exit: Some(ExitStatus::Code(1)),
    };
    s.t()
        .unwrap()
        .observed
        .insert("old", postcard::to_stdvec(&old).unwrap())
        .unwrap();
    let new = ObservedInstance {
        pgid: Some(5),
        start_ticks: Some(6),
        restarts: 0,
        last_exit: None,
        boot_id: Some("0b0b0b0b-0000-4000-8000-000000000000".into()),
    };
    s.put_observed(&Name::new("new").unwrap(), &new).unwrap();
    let all = s.observed().unwrap();
    assert_eq!(
        all["old"],
        ObservedInstance {
            pgid: Some(4242),
            start_ticks: Some(77),
            restarts: 3,
            last_exit: Some(ExitStatus::Code(1)),
            boot_id: None,
        }
    );
    assert_eq!(all["new"], new);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

#[test]
fn epoch_is_kept_across_reopens_and_new_for_a_wiped_store() {
    let dir = tempfile::tempdir().unwrap();
    let first = {
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        s.append(1, state("a")).unwrap();
        assert_ne!(s.epoch(), 0);
        s.epoch()
    };
    let mut s = Store::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(s.epoch(), first, "a reopened store keeps its life");
    s.reopen().unwrap();
    assert_eq!(s.epoch(), first);
    drop(s);
    // Wiped (new SD card, reflashed board): a new life, seqs from 1 again.
    std::fs::remove_dir_all(dir.path()).unwrap();
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    assert_ne!(s.epoch(), first);
    assert_ne!(s.epoch(), 0);
    assert_eq!(s.append(2, state("a")).unwrap().seq, 1);
}

#[test]
fn a_store_without_an_epoch_gets_one_once() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        s.append(1, state("a")).unwrap();
        // As a store written before epochs existed: no epoch, no home.
        let meta = &s.t().unwrap().meta;
        meta.remove(b"epoch").unwrap();
        meta.remove(b"home").unwrap();
        s.flush().unwrap();
    }
    let migrated = Store::open(dir.path(), 1 << 20).unwrap();
    let epoch = migrated.epoch();
    assert_ne!(epoch, 0);
    assert_eq!(migrated.next_seq().unwrap(), 2, "records and seqs are kept");
    drop(migrated);
    assert_eq!(Store::open(dir.path(), 1 << 20).unwrap().epoch(), epoch);
}

#[test]
fn a_store_restored_from_a_backup_starts_a_new_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("store");
    let backup = dir.path().join("backup");
    let s = Store::open(&live, 1 << 20).unwrap();
    for t in 1..=3 {
        s.append(t, state("a")).unwrap();
    }
    s.flush_records().unwrap();
    let old = s.epoch();
    drop(s);
    copy_dir(&live, &backup);
    // The original life goes on: its seqs 4.. may reach the master.
    let s = Store::open(&live, 1 << 20).unwrap();
    assert_eq!(s.epoch(), old);
    assert_eq!(s.append(4, state("b")).unwrap().seq, 4);
    drop(s);
    // The card dies; the backup is copied back in its place.
    std::fs::remove_dir_all(&live).unwrap();
    copy_dir(&backup, &live);
    let s = Store::open(&live, 1 << 20).unwrap();
    assert_ne!(
        s.epoch(),
        old,
        "a restored store cannot prove it is the latest"
    );
    assert_ne!(s.epoch(), 0);
    // Its next record reuses seq 4, which only a new epoch keeps apart at the master.
    assert_eq!(s.append(5, state("c")).unwrap().seq, 4);
    assert_eq!(s.outbox_depth(), 4);
    let restored = s.epoch();
    drop(s);
    assert_eq!(Store::open(&live, 1 << 20).unwrap().epoch(), restored);
}

fn desired_state(generation: u64, expires_ms: u64) -> DesiredState {
    DesiredState {
        node: Name::new("n1").unwrap(),
        generation,
        instances: vec![],
        signature: heapless::Vec::new(),
        expires_ms,
        terms: vec![],
        imports: vec![],
    }
}

#[test]
fn a_desired_state_that_does_not_decode_is_an_error_not_none() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    assert!(s.desired().unwrap().is_none());
    s.put_desired(&desired_state(5, 9)).unwrap();
    assert_eq!(s.desired().unwrap(), Some(desired_state(5, 9)));
    s.t()
        .unwrap()
        .desired
        .insert(b"current", &[0xff; 3])
        .unwrap();
    assert!(matches!(s.desired(), Err(StoreError::Decode { .. })));
}

#[test]
fn a_desired_state_stored_by_wire_version_1_reads_with_expiry_zero() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    let v1 = hedge_wire::DesiredStateV1 {
        node: Name::new("n1").unwrap(),
        generation: 4,
        instances: vec![],
        signature: heapless::Vec::new(),
    };
    s.t()
        .unwrap()
        .desired
        .insert(b"current", postcard::to_stdvec(&v1).unwrap())
        .unwrap();
    assert_eq!(s.desired().unwrap(), Some(desired_state(4, 0)));
}

#[test]
fn the_clock_floor_only_rises_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.clock_floor().unwrap(), 0);
        s.raise_clock_floor(1_000).unwrap();
        s.raise_clock_floor(10).unwrap();
        assert_eq!(s.clock_floor().unwrap(), 1_000);
    }
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(s.clock_floor().unwrap(), 1_000);
}

/// Deferred observed writes stay in call order and are there after the flush and a
/// reopen: the last one wins.
#[test]
fn deferred_observed_writes_are_durable_after_the_flush_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let name = Name::new("a").unwrap();
    let obs = |pgid, restarts| ObservedInstance {
        pgid,
        start_ticks: pgid.map(u64::from),
        restarts,
        last_exit: None,
        boot_id: None,
    };
    {
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        s.put_observed_deferred(&name, &obs(None, 1)).unwrap();
        s.put_observed_deferred(&name, &obs(Some(42), 1)).unwrap();
        s.flush_records().unwrap();
    }
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(s.observed().unwrap()["a"], obs(Some(42), 1));
}

/// The child half of the crash tests below: opens the store in `HEDGE_CRASH_DIR`,
/// appends `HEDGE_CRASH_N` records, reveals them as `HEDGE_CRASH_REVEAL` says (`show`:
/// the local API's flush; `send`: the uplink's hand-over and flush), appends a few more,
/// prints `revealed N` and waits to be killed.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var("HEDGE_CRASH_DIR") else {
        return; // run as a test of its own: nothing to do
    };
    let n: u64 = std::env::var("HEDGE_CRASH_N").unwrap().parse().unwrap();
    // No background flush in the window: only the group commit makes records durable.
    let s = Store::open_tuned(std::path::Path::new(&dir), 1 << 20, 3_600_000).unwrap();
    for i in 0..n {
        s.append(i, state("a")).unwrap();
    }
    match std::env::var("HEDGE_CRASH_REVEAL").unwrap().as_str() {
        "show" => s.flush_records().unwrap(),
        _ => {
            let last = s.outbox_from(0, 1000).unwrap().last().unwrap().seq;
            s.hand_over(last).unwrap();
            s.flush_to_send(last).unwrap();
        }
    }
    // More records after the reveal, never flushed: the crash may lose them.
    for i in 0..5 {
        s.append(n + i, state("b")).unwrap();
    }
    println!("revealed {n}");
    std::thread::sleep(std::time::Duration::from_secs(3600));
}

/// Runs `crash_child` in a process of its own, SIGKILLs it once it revealed its
/// records, and returns the reopened store.
fn reveal_then_kill(dir: &std::path::Path, n: u64, reveal: &str) -> Store {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "store::tests::crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("HEDGE_CRASH_DIR", dir)
        .env("HEDGE_CRASH_N", n.to_string())
        .env("HEDGE_CRASH_REVEAL", reveal)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = std::io::BufReader::new(child.stdout.take().unwrap());
    // libtest prints the test's name on the same line.
    let said = out
        .lines()
        .map(Result::unwrap)
        .find_map(|l| l.split_once("revealed ").map(|(_, n)| n.to_string()));
    child.kill().unwrap(); // SIGKILL: no destructor, no flush of sled's own
    child.wait().unwrap();
    assert_eq!(said, Some(n.to_string()), "the child did not get there");
    Store::open(dir, 1 << 20).unwrap()
}

/// The reopened store holds records 1..=n, the ones revealed before the kill.
fn assert_kept(s: &Store, n: u64) {
    let seqs: Vec<u64> = s
        .outbox_from(0, 100)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    let kept: Vec<u64> = seqs.iter().copied().take_while(|q| *q <= n).collect();
    assert_eq!(
        kept,
        (1..=n).collect::<Vec<_>>(),
        "revealed records lost: {seqs:?}"
    );
}

#[test]
fn records_shown_are_on_disk_when_the_process_is_killed_right_after() {
    let dir = tempfile::tempdir().unwrap();
    assert_kept(&reveal_then_kill(dir.path(), 10, "show"), 10);
}

#[test]
fn records_sent_and_their_hand_over_mark_are_on_disk_when_the_process_is_killed_right_after() {
    let dir = tempfile::tempdir().unwrap();
    let s = reveal_then_kill(dir.path(), 10, "send");
    assert_kept(&s, 10);
    assert_eq!(s.handed_upto(), 10);
}

#[test]
fn a_flush_owed_once_covers_the_group_and_the_next_reveal_owes_none() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    for i in 0..3 {
        s.append(i, state("a")).unwrap();
    }
    assert!(s.pending().owed(Reveal::Show));
    s.flush_records().unwrap();
    assert!(!s.pending().owed(Reveal::Show));
    assert!(!s.pending().owed(Reveal::Send { upto: 3 }));
    s.hand_over(3).unwrap();
    assert!(s.pending().owed(Reveal::Send { upto: 3 }));
    s.flush_to_send(3).unwrap();
    assert!(!s.pending().owed(Reveal::Send { upto: 3 }));
    // Any other flush (an ack, an incident) also carries pending records.
    s.append(9, state("a")).unwrap();
    s.raise_clock_floor(5).unwrap();
    assert!(!s.pending().owed(Reveal::Show));
}
