//! Shared helpers of the backup tests: request files with a `[backup]` policy, an
//! instance that writes continuously (a counter file and an SQLite database), what the
//! master lists (`hedge master backups --json`) and stored (records, blob counters,
//! chunk files), and trees compared byte for byte.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hedge_master::store::{FleetStore, MasterStore};
use hedge_wire::{BackupEvent, Name, RecordKind, SnapshotId};
use serde_json::Value;

use super::fleet::Fleet;
use super::{wait_for, Node};

/// A python3 program for an instance: at each start it copies what it finds in `srv/`
/// to `var/at-start/` (so a test can see the data it started with, before it writes;
/// `var/at-start.done` once the copy is whole),
/// then writes forever: one SQLite row per step (`srv/data.db`, table `t`, row `n`),
/// then `srv/counter` = `n` (replaced atomically), 100 steps a second.
pub const WRITER: &str = r#"
import os, shutil, sqlite3, time
if os.path.exists('var/at-start.done'):
    os.remove('var/at-start.done')
shutil.rmtree('var/at-start', ignore_errors=True)
shutil.copytree('srv', 'var/at-start', symlinks=True)
open('var/at-start.done', 'w').close()
db = sqlite3.connect('srv/data.db')
db.execute('create table if not exists t (n integer primary key, v text)')
db.commit()
n = db.execute('select coalesce(max(n), 0) from t').fetchone()[0]
while True:
    n += 1
    db.execute('insert into t values (?, ?)', (n, 'row %d ' % n + 'x' * 100))
    db.commit()
    with open('srv/counter.tmp', 'w') as f:
        f.write(str(n))
    os.replace('srv/counter.tmp', 'srv/counter')
    time.sleep(0.01)
"#;

/// A python3 program that writes `mib` MiB of random bytes to `srv/blob` once (then
/// `srv/done`), and sleeps.
pub fn bulk_writer(mib: u32) -> String {
    format!(
        r#"
import os, time
if not os.path.exists('srv/done'):
    with open('srv/blob', 'wb') as f:
        for _ in range({mib}):
            f.write(os.urandom(1 << 20))
    open('srv/done', 'w').close()
while True:
    time.sleep(3600)
"#
    )
}

/// Writes a request file for instance `name` running python3 `program`, with the
/// `[backup]` lines `backup` (e.g. `interval = 2`); returns its path.
pub fn request_file(dir: &Path, name: &str, program: &str, backup: &str) -> PathBuf {
    let file = dir.join(format!("{name}.toml"));
    let text = format!(
        "name = \"{name}\"\nsoftware = \"exec:/usr/bin/python3\"\nargs = [\"-c\", '''{program}''']\n\n[backup]\n{backup}\n"
    );
    std::fs::write(&file, text).unwrap();
    file
}

/// Sets `[backup] upload_bytes_per_s` in a node's config.
pub fn set_upload_rate(node: &Node, bytes_per_s: u64) {
    node.edit_config(|c| {
        let mut found = false;
        let text: Vec<String> = c
            .lines()
            .map(|l| {
                if l.starts_with("upload_bytes_per_s") {
                    found = true;
                    format!("upload_bytes_per_s = {bytes_per_s}")
                } else {
                    l.to_owned()
                }
            })
            .collect();
        assert!(found, "node.toml has no [backup] upload_bytes_per_s");
        text.join("\n") + "\n"
    });
}

/// One snapshot as `hedge master backups --json` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub node: String,
    pub instance: String,
    pub id: SnapshotId,
    pub taken_ms: u64,
    pub bytes: u64,
    pub new_bytes: u64,
    /// As listed, lower case (e.g. `"frozen"`).
    pub consistency: String,
    /// `master` or `node`.
    pub stored: String,
}

/// `hedge master backups [INSTANCE] --json`, parsed.
pub fn backups_json(fleet: &Fleet, instance: Option<&str>) -> Value {
    let mut args = vec!["backups"];
    args.extend(instance);
    args.push("--json");
    serde_json::from_str(&fleet.master_ok(&args)).unwrap()
}

/// The snapshots of `instance` the master lists, oldest first.
pub fn listed(fleet: &Fleet, instance: &str) -> Vec<Listed> {
    let v = backups_json(fleet, Some(instance));
    let mut out: Vec<Listed> = v["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| Listed {
            node: s["node"].as_str().unwrap().to_owned(),
            instance: s["instance"].as_str().unwrap().to_owned(),
            id: s["id"].as_str().unwrap().parse().unwrap(),
            taken_ms: s["taken_ms"].as_u64().unwrap(),
            bytes: s["bytes"].as_u64().unwrap(),
            new_bytes: s["new_bytes"].as_u64().unwrap(),
            consistency: s["consistency"].to_string().to_lowercase(),
            stored: s["stored"].as_str().unwrap().to_owned(),
        })
        .collect();
    out.sort_by_key(|s| s.taken_ms);
    out
}

/// The snapshots of `instance` stored at the master, oldest first.
pub fn at_master(fleet: &Fleet, instance: &str) -> Vec<Listed> {
    listed(fleet, instance)
        .into_iter()
        .filter(|s| s.stored == "master")
        .collect()
}

/// Waits until at least `n` snapshots of `instance` are stored at the master.
pub fn wait_at_master(fleet: &Fleet, instance: &str, n: usize, timeout: Duration) -> Vec<Listed> {
    wait_for(
        &format!("{n} snapshot(s) of {instance} at the master"),
        timeout,
        || {
            let s = at_master(fleet, instance);
            (s.len() >= n).then_some(s)
        },
    )
}

/// `node`'s blob counters at the master: (bytes, chunk_puts, duplicate_puts, refused).
pub fn blob_counters(fleet: &Fleet, node: &str) -> (u64, u64, u64, u64) {
    let v = backups_json(fleet, None);
    v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == node)
        .map_or((0, 0, 0, 0), |n| {
            let f = |k: &str| n[k].as_u64().unwrap();
            (
                f("bytes"),
                f("chunk_puts"),
                f("duplicate_puts"),
                f("refused"),
            )
        })
}

/// The chunk files the master keeps for `node` (`blobs/<node>/<2 hex>/<64 hex>`).
pub fn chunk_files(fleet: &Fleet, node: &str) -> Vec<PathBuf> {
    let root = fleet.master_dir().join("blobs").join(node);
    let mut out = Vec::new();
    let Ok(dirs) = std::fs::read_dir(&root) else {
        return out;
    };
    for d in dirs {
        let d = d.unwrap().path();
        if d.is_dir() {
            for f in std::fs::read_dir(&d).unwrap() {
                let f = f.unwrap().path();
                let name = f.file_name().unwrap().to_string_lossy().into_owned();
                if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                    out.push(f);
                }
            }
        }
    }
    out.sort();
    out
}

/// `node`'s records the master stored: (seq, time_ms, kind).
pub fn records(fleet: &Fleet, node: &str) -> Vec<(u64, u64, RecordKind)> {
    MasterStore::open(&fleet.master_dir().join("master.db"))
        .unwrap()
        .records(&Name::new(node).unwrap(), 0, 1_000_000)
        .unwrap()
        .into_iter()
        .map(|r| (r.seq, r.time_ms, r.kind))
        .collect()
}

/// `node`'s backup records at the master: (seq, instance, snapshot, event, message).
pub fn backup_records(
    fleet: &Fleet,
    node: &str,
) -> Vec<(u64, String, SnapshotId, BackupEvent, String)> {
    records(fleet, node)
        .into_iter()
        .filter_map(|(seq, _, k)| match k {
            RecordKind::Backup {
                instance,
                snapshot,
                event,
                message,
            } => Some((seq, instance.to_string(), snapshot, event, message)),
            _ => None,
        })
        .collect()
}

/// Every regular file under `dir`, by path relative to it, with its bytes (symlinks
/// as `-> target`).
pub fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(dir).unwrap().to_path_buf();
            if m.is_dir() {
                stack.push(p);
            } else if m.file_type().is_symlink() {
                let t = std::fs::read_link(&p).unwrap();
                out.insert(rel, format!("-> {}", t.display()).into_bytes());
            } else {
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// Copies the tree `src` to `dst` (regular files and directories).
pub fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let m = std::fs::symlink_metadata(e.path()).unwrap();
        let to = dst.join(e.file_name());
        if m.is_dir() {
            copy_tree(&e.path(), &to);
        } else if m.is_file() {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// The paths of snapshot `id` of `instance` as a copy of a node's backup directory
/// (`vault`) holds them, rebuilt by the engine into a scratch partition: what the
/// snapshot captured, to compare a restore elsewhere with.
pub fn snapshot_contents(vault: &Path, instance: &str, id: SnapshotId) -> tempfile::TempDir {
    let v = hedge_runtime::backup::Vault::open(vault).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    v.restore(&Name::new(instance).unwrap(), id, scratch.path(), None)
        .unwrap();
    scratch
}

/// `(integrity_check, max(n), row count)` of the SQLite database at `db` (read from a
/// copy, so the file itself is untouched).
pub fn sqlite_facts(db: &Path) -> (String, u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    for suffix in ["", "-journal", "-wal"] {
        let from = PathBuf::from(format!("{}{suffix}", db.display()));
        if from.exists() {
            std::fs::copy(&from, dir.path().join(format!("data.db{suffix}"))).unwrap();
        }
    }
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3, sys\n\
             db = sqlite3.connect(sys.argv[1])\n\
             ok = db.execute('pragma integrity_check').fetchone()[0]\n\
             mx, cnt = db.execute('select coalesce(max(n), 0), count(*) from t').fetchone()\n\
             print(ok, mx, cnt)",
        )
        .arg(dir.path().join("data.db"))
        .output()
        .unwrap();
    super::assert_success(&out, "python3 sqlite3: ");
    let text = String::from_utf8(out.stdout).unwrap();
    let mut w = text.split_whitespace();
    (
        w.next().unwrap().to_owned(),
        w.next().unwrap().parse().unwrap(),
        w.next().unwrap().parse().unwrap(),
    )
}

/// Flips one byte in the middle of `file` (same length: altered at rest).
pub fn flip_a_byte(file: &Path) {
    let mut bytes = std::fs::read(file).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x5a;
    std::fs::write(file, bytes).unwrap();
}

/// Wall-clock ms since the Unix epoch.
#[allow(clippy::disallowed_methods)] // an end-to-end test: compares with the node's wall-clock records
pub fn wall_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

// ---- tests/backup_dedup.rs and tests/backup_memory.rs (bench) ----

/// A fast, seeded pseudo-random byte stream (xorshift64*): data that neither compresses
/// nor dedupes within itself, written at disk speed.
pub struct Prng(u64);

impl Prng {
    pub fn new(seed: u64) -> Prng {
        Prng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Writes `files` files of `each` pseudo-random bytes (`data<i>.bin`, seeded) into `dir`
/// (created); returns the bytes written.
pub fn fill_random(dir: &std::path::Path, files: u64, each: u64, seed: u64) -> u64 {
    use std::io::Write;
    std::fs::create_dir_all(dir).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    for i in 0..files {
        let mut rng = Prng::new(seed * 1000 + i);
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(dir.join(format!("data{i}.bin"))).unwrap(),
        );
        let mut left = each;
        while left > 0 {
            let n = usize::try_from(left.min(1 << 20)).unwrap();
            rng.fill(&mut buf[..n]);
            f.write_all(&buf[..n]).unwrap();
            left -= n as u64;
        }
        f.into_inner().unwrap().sync_all().unwrap();
    }
    files * each
}

/// Writes `files` files of `each` bytes into `dir` (created): one seeded pseudo-random
/// block of `period` bytes repeated. Every byte is still read, chunked, keyed, encrypted
/// and hashed by a backup, but the content-defined cut points repeat with the block, so
/// only about `period` bytes of distinct chunks are written: a big partition at the cost
/// of a small one's disk writes. Returns the bytes written.
pub fn fill_periodic(
    dir: &std::path::Path,
    files: u64,
    each: u64,
    period: usize,
    seed: u64,
) -> u64 {
    use std::io::Write;
    std::fs::create_dir_all(dir).unwrap();
    let mut block = vec![0u8; period];
    Prng::new(seed).fill(&mut block);
    for i in 0..files {
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(dir.join(format!("data{i}.bin"))).unwrap(),
        );
        let mut left = each;
        while left > 0 {
            let n = usize::try_from(left.min(period as u64)).unwrap();
            f.write_all(&block[..n]).unwrap();
            left -= n as u64;
        }
        f.into_inner().unwrap().sync_all().unwrap();
    }
    files * each
}

/// Overwrites `bytes` bytes of the files in `dir` with new pseudo-random data, in
/// `places` runs at seeded offsets spread over the files; returns the bytes changed.
pub fn scatter_changes(dir: &std::path::Path, bytes: u64, places: u64, seed: u64) -> u64 {
    use std::io::{Seek, SeekFrom, Write};
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let run = bytes / places;
    let mut rng = Prng::new(seed);
    let mut buf = vec![0u8; usize::try_from(run).unwrap()];
    for k in 0..places {
        let f = &files[usize::try_from(k).unwrap() % files.len()];
        let len = std::fs::metadata(f).unwrap().len();
        let mut r = [0u8; 8];
        rng.fill(&mut r);
        let at = u64::from_le_bytes(r) % (len - run);
        rng.fill(&mut buf);
        let mut fh = std::fs::OpenOptions::new().write(true).open(f).unwrap();
        fh.seek(SeekFrom::Start(at)).unwrap();
        fh.write_all(&buf).unwrap();
        fh.sync_all().unwrap();
    }
    run * places
}

/// `hedge node backup NAME`: the new snapshot's id (the 16-hex word it prints).
pub fn take_backup(node: &super::Node, name: &str) -> String {
    let out = node.ok(&["backup", name]);
    out.split(|c: char| !c.is_ascii_hexdigit())
        .find(|w| w.len() == 16)
        .unwrap_or_else(|| panic!("no snapshot id in {out:?}"))
        .to_string()
}

/// `hedge node backups NAME --json`: the node's snapshots of `name`.
pub fn local_snapshots(node: &super::Node, name: &str) -> Vec<serde_json::Value> {
    let out = node.ok(&["backups", name, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    match v {
        serde_json::Value::Array(a) => a,
        serde_json::Value::Object(mut o) => match o.remove("snapshots") {
            Some(serde_json::Value::Array(a)) => a,
            _ => panic!("no snapshot list in {out}"),
        },
        _ => panic!("no snapshot list in {out}"),
    }
}

/// The entry of snapshot `id` in a `backups --json` list.
pub fn snapshot_in<'a>(list: &'a [serde_json::Value], id: &str) -> &'a serde_json::Value {
    list.iter()
        .find(|s| s["id"].as_str() == Some(id) || s["snapshot"].as_str() == Some(id))
        .unwrap_or_else(|| panic!("snapshot {id} not in {list:?}"))
}

/// A number field of a JSON object.
pub fn field(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no number {key:?} in {v}"))
}

/// VmRSS of a live process, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    super::status_kib(pid, "VmRSS")
}

/// Samples a process's VmRSS on a thread until dropped: the highest reading.
pub struct RssSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<(u64, u64)>>,
}

impl RssSampler {
    /// Starts sampling `pid` every `every`.
    pub fn start(pid: u32, every: std::time::Duration) -> RssSampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut peak, mut samples) = (0, 0);
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(kib) = rss_kib(pid) {
                    peak = peak.max(kib);
                    samples += 1;
                }
                // A sampling period, not a synchronisation: the caller stops us.
                std::thread::sleep(every);
            }
            (peak, samples)
        });
        RssSampler {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sampling: (peak VmRSS KiB, samples taken).
    pub fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// Waits until the node lists snapshot `id` of `name` as uploaded; returns its entry.
pub fn wait_uploaded(
    node: &super::Node,
    name: &str,
    id: &str,
    timeout: std::time::Duration,
) -> serde_json::Value {
    super::wait_for(&format!("snapshot {id} uploaded"), timeout, || {
        let list = local_snapshots(node, name);
        let s = snapshot_in(&list, id).clone();
        (s["uploaded"].as_bool() == Some(true)).then_some(s)
    })
}
