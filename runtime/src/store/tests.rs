#![allow(clippy::unwrap_used)]

use hedge_wire::{InstanceStatus, Name, RecordKind};

use super::*;

/// A node-health record (droppable under pressure).
pub(crate) fn health(i: u32) -> RecordKind {
    RecordKind::NodeHealth {
        load1_milli: i,
        mem_total: 1 << 30,
        mem_available: 1 << 29,
        disk_free: 1 << 32,
        temp_milli_c: None,
        uplink_up: false,
        outbox_depth: 0,
    }
}

pub(crate) fn state(name: &str) -> RecordKind {
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
    accountant_state_of("web", from_ms)
}

fn accountant_state_of(name: &str, from_ms: u64) -> crate::monitor::usage::AccountantState {
    let mut a =
        crate::monitor::usage::Accountant::new(Name::new(name).unwrap(), 1000, 0, 100).unwrap();
    a.close_interval(from_ms, 0);
    a.state().clone()
}

/// A usage record and its accountant state are one frame: after a reopen both are
/// there, and the state is the one written with the last record.
#[test]
fn a_usage_record_and_its_state_are_durable_together() {
    let dir = tempfile::tempdir().unwrap();
    let web = Name::new("web").unwrap();
    {
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        s.append_usage(2, usage_record(0, 1000, 7), &web, &accountant_state(1000))
            .unwrap();
        s.append_usage(
            3,
            usage_record(1000, 2000, 5),
            &web,
            &accountant_state(2000),
        )
        .unwrap();
        s.flush_records().unwrap();
    }
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    let kinds: Vec<RecordKind> = s
        .outbox_from(0, 10)
        .unwrap()
        .into_iter()
        .map(|r| r.kind)
        .collect();
    assert_eq!(
        kinds,
        vec![usage_record(0, 1000, 7), usage_record(1000, 2000, 5)]
    );
    assert_eq!(s.usage_state(&web).unwrap(), Some(accountant_state(2000)));
    s.remove_usage(&web).unwrap();
    s.flush_records().unwrap();
    drop(s);
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(
        s.usage_state(&web).unwrap(),
        None,
        "a forgotten state stays forgotten"
    );
}

fn old_record(seq: u64) -> Record {
    Record {
        seq,
        time_ms: seq * 10,
        kind: state("a"),
    }
}

/// A store as a hedge before the outbox log left it: records 5..=9 in sled's `outbox`
/// tree (1..=4 acknowledged), the floor at 10, and a crash between a usage state and
/// its record (the record staged in the state, seq 10).
fn legacy_store(dir: &std::path::Path) {
    let db = sled::open(dir).unwrap();
    let meta = db.open_tree("meta").unwrap();
    meta.insert(b"schema", &1u32.to_be_bytes()).unwrap();
    meta.insert(META_NEXT_SEQ, &10u64.to_be_bytes()).unwrap();
    let outbox = db.open_tree("outbox").unwrap();
    for seq in 5..=9u64 {
        outbox
            .insert(
                seq.to_be_bytes(),
                postcard::to_stdvec(&old_record(seq)).unwrap(),
            )
            .unwrap();
    }
    let staged = StoredUsage {
        state: accountant_state(2000),
        staged: Some(Staged {
            seq: 10,
            time_ms: 100,
            kind: usage_record(1000, 2000, 5),
        }),
    };
    let usage = db.open_tree("usage").unwrap();
    usage
        .insert("web", postcard::to_stdvec(&staged).unwrap())
        .unwrap();
    usage
        .insert("db", postcard::to_stdvec(&accountant_state(7000)).unwrap())
        .unwrap();
    db.flush().unwrap();
}

fn seqs(s: &Store) -> Vec<u64> {
    s.outbox_from(0, 1000)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect()
}

#[test]
fn a_store_from_before_the_outbox_log_migrates_with_nothing_lost_or_doubled() {
    let dir = tempfile::tempdir().unwrap();
    legacy_store(dir.path());
    let web = Name::new("web").unwrap();
    for _ in 0..2 {
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        let records = s.outbox_from(0, 100).unwrap();
        let mut want: Vec<Record> = (5..=9).map(old_record).collect();
        want.push(Record {
            seq: 10,
            time_ms: 100,
            kind: usage_record(1000, 2000, 5),
        });
        assert_eq!(records, want);
        assert_eq!(s.next_seq().unwrap(), 11);
        assert!(
            s.t().unwrap().outbox.is_empty(),
            "the sled outbox is emptied"
        );
        assert_eq!(s.usage_state(&web).unwrap(), Some(accountant_state(2000)));
        assert_eq!(
            s.usage_state(&Name::new("db").unwrap()).unwrap(),
            Some(accountant_state(7000))
        );
    }
}

/// sled at `dir` right after a `Store` on it was dropped: its flusher thread may hold the
/// directory's lock a moment longer (seconds under qemu-user), so wait for it as
/// `Store::open` does, longer.
fn sled_open_after_drop(dir: &std::path::Path) -> sled::Db {
    open_waiting(
        &sled::Config::new().path(dir),
        std::time::Duration::from_secs(30),
    )
    .unwrap()
}

/// A crash after the records reached the log but before the sled tree was emptied: the
/// next open moves nothing twice.
#[test]
fn an_interrupted_migration_finishes_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    legacy_store(dir.path());
    drop(Store::open(dir.path(), 1 << 20).unwrap());
    {
        // The tree as it was before the migration emptied it, plus one record the log
        // does not hold yet.
        let db = sled_open_after_drop(dir.path());
        let outbox = db.open_tree("outbox").unwrap();
        for seq in [5u64, 6, 7, 11] {
            outbox
                .insert(
                    seq.to_be_bytes(),
                    postcard::to_stdvec(&old_record(seq)).unwrap(),
                )
                .unwrap();
        }
        db.flush().unwrap();
    }
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(seqs(&s), vec![5, 6, 7, 8, 9, 10, 11]);
    assert_eq!(s.next_seq().unwrap(), 12);
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
        backups: Vec::new(),
        restores: Vec::new(),
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
/// the local API's flush; `send`: the uplink's hand-over and flush; `ack`: `send`, then
/// the first half acknowledged after the few more), appends a few more, prints
/// `revealed N` and waits to be killed.
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
    if std::env::var("HEDGE_CRASH_REVEAL").unwrap() == "ack" {
        s.ack(n / 2).unwrap();
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

/// An ack while records wait for their group commit: a kill loses those records (never
/// shown, never sent) and nothing else, and their seqs are issued again: a gap in the
/// seqs a master receives always means a record lost, never a seq skipped.
#[test]
fn an_ack_with_records_not_yet_durable_skips_no_seq_after_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let s = reveal_then_kill(dir.path(), 10, "ack");
    assert_eq!(seqs(&s), (6..=10).collect::<Vec<_>>());
    assert_eq!(s.next_seq().unwrap(), 11, "seqs skipped");
    // Acknowledged seqs are still never issued again: an ack of everything, a reopen.
    s.ack(10).unwrap();
    drop(s);
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(s.next_seq().unwrap(), 11);
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

/// Disk bytes written per record until durable (`/proc/self/io` write_bytes): N
/// instances, one usage record each per 100 ms tick, a flush every K ticks and one at
/// the end. The bench's shape is 200 instances flushed every 5 s (offline: the flush
/// interval); a flush every tick is what a node online does (each group is sent, so
/// synced, at once). Prints the figures; run by hand:
/// `cargo test -p hedge-runtime --lib store::tests::disk_bytes_per_record -- --ignored --nocapture`.
#[test]
#[ignore]
fn disk_bytes_per_record() {
    fn written() -> u64 {
        let io = std::fs::read_to_string("/proc/self/io").unwrap();
        io.lines()
            .find_map(|l| l.strip_prefix("write_bytes: "))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
    for (instances, every) in [(200u64, 50u64), (200, 10), (200, 1), (10, 50), (10, 1)] {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let s = Store::open_tuned(dir.path(), 1 << 20, 3_600_000).unwrap();
        let names: Vec<Name> = (0..instances)
            .map(|i| Name::new(&format!("u{i}")).unwrap())
            .collect();
        let mut a: Vec<_> = names
            .iter()
            .map(|n| {
                crate::monitor::usage::Accountant::new(n.clone(), 100, 1_700_000_000_000, 100)
                    .unwrap()
            })
            .collect();
        s.flush_records().unwrap();
        let w0 = written();
        let ticks = 200u64;
        for t in 0..ticks {
            let to = 1_700_000_000_000 + (t + 1) * 100;
            for (n, acc) in names.iter().zip(a.iter_mut()) {
                let closed = acc.close_interval(to, 12_345);
                let kind = closed.unwrap_or(RecordKind::Usage {
                    instance: n.clone(),
                    from_ms: to - 100,
                    to_ms: to,
                    cpu_ms: 3,
                    mem_avg_bytes: 1_234_567,
                    mem_peak_bytes: 1_300_000,
                    disk_bytes: 0,
                    net_rx_bytes: None,
                    net_tx_bytes: None,
                    uptime_ms: 100,
                });
                s.append_usage(to, kind, n, acc.state()).unwrap();
            }
            if t % every == every - 1 {
                s.flush_records().unwrap();
            }
        }
        s.flush_records().unwrap();
        let records = ticks * instances;
        println!(
            "{instances} instances, a flush every {every} ticks: {} disk bytes per record \
             ({records} records of {} B)",
            (written() - w0) / records,
            s.outbox_bytes() / records
        );
    }
}

fn segment_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join("outbox"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// What a crash can leave at the end of the active segment — part of a frame, a frame
/// with a flipped bit, zeroed pages — is dropped at the next open and cut off, so the
/// records appended after it read back, then and after another open.
#[test]
fn a_torn_or_corrupt_tail_is_dropped_and_never_read_behind_newer_records() {
    use std::io::Write;
    type Tail = dyn Fn(&mut Vec<u8>);
    let tails: [&Tail; 3] = [
        &|f| {
            let n = f.len();
            f.truncate(n - 5); // the last frame torn
        },
        &|f| {
            let n = f.len();
            f[n - 3] ^= 0x10; // a bit flipped in the last frame
        },
        &|f| f.extend_from_slice(&[0; 4096]), // a zeroed page after the last frame
    ];
    for (i, tail) in tails.iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path(), 1 << 20).unwrap();
            for t in 0..4 {
                s.append(t, state("a")).unwrap();
            }
            s.flush_records().unwrap();
            s.append(9, state("torn")).unwrap();
        }
        let seg = segment_files(dir.path()).pop().unwrap();
        let mut bytes = std::fs::read(&seg).unwrap();
        tail(&mut bytes);
        std::fs::File::create(&seg)
            .unwrap()
            .write_all(&bytes)
            .unwrap();
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        let kept = if i == 2 { 5 } else { 4 };
        assert_eq!(seqs(&s), (1..=kept).collect::<Vec<_>>(), "tail {i}");
        let next = s.append(10, state("b")).unwrap();
        assert_eq!(next.seq, kept + 1, "tail {i}");
        s.flush_records().unwrap();
        drop(s);
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(seqs(&s), (1..=kept + 1).collect::<Vec<_>>(), "tail {i}");
        assert_eq!(s.outbox_from(kept + 1, 1).unwrap(), vec![next]);
    }
}

/// The child of the crash-mid-append test: appends groups of records without end,
/// flushing each group and printing `revealed N` after it.
#[test]
fn append_forever_child() {
    let Ok(dir) = std::env::var("HEDGE_APPEND_FOREVER_DIR") else {
        return;
    };
    let s = Store::open_tuned(std::path::Path::new(&dir), 1 << 20, 3_600_000).unwrap();
    let web = Name::new("web").unwrap();
    let mut t = 0;
    loop {
        for _ in 0..50 {
            t += 1;
            s.append_usage(
                t,
                usage_record(t * 1000, t * 1000 + 1000, t),
                &web,
                &accountant_state(t * 1000 + 1000),
            )
            .unwrap();
        }
        s.flush_records().unwrap();
        println!("revealed {}", s.next_seq().unwrap() - 1);
    }
}

/// SIGKILL while records are being appended, written and synced as fast as they come:
/// every record revealed before the kill is there, seqs run gap-free from 1, every
/// record decodes, the accountant state is the one of the last record kept, and
/// appends go on after the reopen.
#[test]
fn a_kill_in_the_middle_of_appends_keeps_every_revealed_record_and_misreads_nothing() {
    use std::io::BufRead;
    for kill_after in [3usize, 40, 200] {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "store::tests::append_forever_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("HEDGE_APPEND_FOREVER_DIR", dir.path())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        let revealed: Vec<u64> = out
            .lines()
            .map(Result::unwrap)
            .filter_map(|l| {
                l.split_once("revealed ")
                    .map(|(_, n)| n.trim().parse().unwrap())
            })
            .take(kill_after)
            .collect();
        child.kill().unwrap();
        child.wait().unwrap();
        let last = *revealed.last().expect("the child revealed nothing");
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        let records = s.outbox_from(0, usize::MAX).unwrap();
        let got: Vec<u64> = records.iter().map(|r| r.seq).collect();
        assert!(
            got.len() as u64 >= last,
            "revealed {last}, kept {}",
            got.len()
        );
        assert_eq!(got, (1..=got.len() as u64).collect::<Vec<_>>());
        let t = got.len() as u64;
        assert_eq!(
            records.last().unwrap().kind,
            usage_record(t * 1000, t * 1000 + 1000, t)
        );
        assert_eq!(
            s.usage_state(&Name::new("web").unwrap()).unwrap(),
            Some(accountant_state(t * 1000 + 1000)),
            "the state goes with its record"
        );
        assert_eq!(s.append(0, state("after")).unwrap().seq, t + 1);
    }
}

/// Acknowledged records go, and with them whole segments once nothing else in them is
/// waiting; accountant states that lived only in those segments survive in the
/// checkpoint, and seqs are never reused.
#[test]
fn acks_delete_whole_segments_and_keep_the_states_they_held() {
    let dir = tempfile::tempdir().unwrap();
    let web = Name::new("web").unwrap();
    let other = Name::new("other").unwrap();
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    s.append_usage(
        1,
        usage_record(0, 1000, 1),
        &other,
        &accountant_state_of("other", 1000),
    )
    .unwrap();
    s.put_usage(&web, &accountant_state(3000)).unwrap();
    let big = state(&"x".repeat(60));
    let mut last = 0;
    while segment_files(dir.path()).len() < 4 {
        last = s.append(2, big.clone()).unwrap().seq;
    }
    s.flush_records().unwrap();
    let files = segment_files(dir.path()).len();
    assert_eq!(s.ack(last - 2).unwrap() as u64, last - 2);
    assert!(
        segment_files(dir.path()).len() < files,
        "no segment deleted"
    );
    assert_eq!(seqs(&s), vec![last - 1, last]);
    drop(s);
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(seqs(&s), vec![last - 1, last]);
    assert_eq!(s.usage_state(&web).unwrap(), Some(accountant_state(3000)));
    assert_eq!(
        s.usage_state(&other).unwrap(),
        Some(accountant_state_of("other", 1000))
    );
    // Everything acknowledged: the log shrinks to its (new) active segment.
    s.ack(last).unwrap();
    assert_eq!(segment_files(dir.path()).len(), 1);
    assert_eq!(s.outbox_depth(), 0);
    drop(s);
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(s.outbox_depth(), 0);
    assert_eq!(s.append(3, state("a")).unwrap().seq, last + 1);
    assert_eq!(s.usage_state(&web).unwrap(), Some(accountant_state(3000)));
}

/// A shedding pass survives a reopen as it was applied: merged records in place of
/// their inputs, dropped ones gone, the rest untouched.
#[test]
fn a_shedding_pass_reads_back_the_same_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let before;
    let after;
    {
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        for i in 0..6u64 {
            s.append(i, usage_record(i * 1000, i * 1000 + 1000, i))
                .unwrap();
            s.append(i, health(u32::try_from(i).unwrap())).unwrap();
        }
        s.append(7, state("kept")).unwrap();
        before = s.outbox_bytes();
        let plan = shed::plan(&s.outbox_entries().unwrap(), before / 3);
        assert!(!plan.merge.is_empty() && !plan.drop.is_empty(), "{plan:?}");
        after = s.apply_shed(&plan).unwrap();
        assert!(after < before);
        assert_eq!(after, s.outbox_bytes());
        let left = s.outbox_from(0, 100).unwrap();
        drop(s);
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.outbox_from(0, 100).unwrap(), left);
        assert_eq!(s.outbox_bytes(), after);
        // Usage totals are kept exactly: cpu 0+1+…+5.
        let cpu: u64 = left
            .iter()
            .filter_map(|r| match r.kind {
                RecordKind::Usage { cpu_ms, .. } => Some(cpu_ms),
                _ => None,
            })
            .sum();
        assert_eq!(cpu, 15);
        assert_eq!(s.next_seq().unwrap(), 14, "seqs dropped are not reissued");
    }
}

/// A pass too large for one entry is written as several, each merge whole: after a
/// reopen the usage totals are exact and nothing merged is left beside its result.
#[test]
fn a_large_shedding_pass_spans_several_entries_and_keeps_totals_exact() {
    let dir = tempfile::tempdir().unwrap();
    let n = 12_000u64;
    let cpu = |s: &Store| -> (u64, u64) {
        let records = s.outbox_from(0, usize::MAX).unwrap();
        let mut covered = 0;
        let mut total = 0;
        for r in &records {
            if let RecordKind::Usage {
                cpu_ms,
                from_ms,
                to_ms,
                ..
            } = r.kind
            {
                total += cpu_ms;
                covered += to_ms - from_ms;
            }
        }
        (total, covered)
    };
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    for i in 0..n {
        s.append(i, usage_record(i * 1000, i * 1000 + 1000, i % 7))
            .unwrap();
    }
    let want = cpu(&s);
    let plan = shed::plan(&s.outbox_entries().unwrap(), s.outbox_bytes() / 2);
    // Over 4,000 merged records of ~30 B: more than one 64 KiB entry.
    assert!(plan.merge.len() > 4_000, "{}", plan.merge.len());
    let after = s.apply_shed(&plan).unwrap();
    assert_eq!(cpu(&s), want);
    let depth = s.outbox_depth();
    assert!(depth < usize::try_from(n).unwrap());
    drop(s);
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(cpu(&s), want);
    assert_eq!((s.outbox_depth(), s.outbox_bytes()), (depth, after));
}

/// Records nobody revealed are flushed once the flush interval after the first of them
/// has passed, not before.
#[test]
fn unrevealed_records_are_due_on_disk_one_flush_interval_after_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open_tuned(dir.path(), 1 << 20, 5_000).unwrap();
    assert_eq!(s.flush_deadline(), None, "nothing waits");
    s.append(1, state("a")).unwrap();
    let due = s.flush_deadline().unwrap();
    s.append(2, state("a")).unwrap();
    assert_eq!(
        s.flush_deadline(),
        Some(due),
        "the first record sets the deadline"
    );
    s.flush_if_due(due - std::time::Duration::from_millis(1))
        .unwrap();
    assert!(s.pending().owed(Reveal::Show), "not due yet");
    s.flush_if_due(due).unwrap();
    assert_eq!(s.flush_deadline(), None);
    assert!(!s.pending().owed(Reveal::Show));
    // A closed store has nothing due and fails nothing.
    s.append(3, state("a")).unwrap();
    let mut s = s;
    s.close();
    assert_eq!(s.flush_deadline(), None);
    s.flush_if_due(due + std::time::Duration::from_secs(60))
        .unwrap();
}

#[test]
fn peer_parameters_keep_the_newest_generation_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (node, db) = (Name::new("node-2").unwrap(), Name::new("db").unwrap());
    let p = |v: &str| BTreeMap::from([("port".to_owned(), v.to_owned())]);
    {
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        assert!(s.put_peer_params(&node, &db, 5, &p("1")).unwrap());
        assert!(
            !s.put_peer_params(&node, &db, 5, &p("2")).unwrap(),
            "same generation"
        );
        assert!(!s.put_peer_params(&node, &db, 4, &p("3")).unwrap(), "older");
        assert!(s.put_peer_params(&node, &db, 6, &p("4")).unwrap());
    }
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    let all = s.peer_params().unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all["node-2/db"], (6, p("4")));
}

#[test]
fn local_backup_policies_survive_a_reopen_and_can_be_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let policy = |name: &str, interval_s| hedge_wire::BackupPolicy {
        instance: Name::new(name).unwrap(),
        interval_s,
        retain: 4,
        paths: vec!["srv".into()],
        command: vec!["sh".into(), "-c".into(), "true".into()],
    };
    {
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        s.put_local_backup(&policy("a", 60)).unwrap();
        s.put_local_backup(&policy("b", 10)).unwrap();
        s.put_local_backup(&policy("a", 30)).unwrap();
    }
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(
        s.local_backups().unwrap(),
        vec![policy("a", 30), policy("b", 10)]
    );
    s.remove_local_backup(&Name::new("a").unwrap()).unwrap();
    assert_eq!(s.local_backups().unwrap(), vec![policy("b", 10)]);
}

#[test]
fn whether_the_outbox_may_hold_a_relayed_batch_is_known_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        assert!(!s.may_hold_relayed());
        s.append(1, state("a")).unwrap();
        assert!(!s.may_hold_relayed());
    }
    {
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        assert!(!s.may_hold_relayed(), "nothing relayed was replayed");
        let batch = hedge_wire::mesh::SignedBatch {
            bytes: vec![1, 2, 3],
            signature: vec![4; 64],
        };
        s.append(2, RecordKind::Relayed(batch)).unwrap();
        assert!(s.may_hold_relayed(), "a relayed batch was put");
    }
    let s = Store::open(dir.path(), 1 << 20).unwrap();
    assert!(s.may_hold_relayed(), "a relayed batch was replayed");
}
