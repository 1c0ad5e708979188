//! The backup engine (`hedge_runtime::backup`) on real directories: restores are
//! byte for byte, chunks deduplicate across snapshots and instances, damage is found
//! and named, symlinks are never followed, prune keeps what kept snapshots need, a
//! failed snapshot leaves no entry, another node restores from a grant, and memory
//! stays bounded on a 1 GiB file (measured in a child process).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use hedge_runtime::backup::{BackupError, SnapshotRequest, Vault};
use hedge_wire::backup::{Consistency, RestoreGrant, SnapshotId};
use hedge_wire::Name;

fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

/// Deterministic pseudo-random bytes (xorshift64).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn paths(p: &[&str]) -> Vec<String> {
    p.iter().map(|s| (*s).to_owned()).collect()
}

fn take(
    vault: &Vault,
    instance: &str,
    partition: &Path,
    p: &[&str],
) -> hedge_runtime::backup::LocalSnapshot {
    let inst = name(instance);
    let paths = paths(p);
    vault
        .snapshot(&SnapshotRequest {
            instance: &inst,
            partition,
            paths: &paths,
            consistency: Consistency::Live,
            now_ms: next_ms(),
        })
        .unwrap()
}

fn next_ms() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static T: AtomicU64 = AtomicU64::new(1_000_000);
    T.fetch_add(1000, Ordering::Relaxed)
}

/// What a tree holds, never following a symlink.
#[derive(Debug, PartialEq, Eq)]
enum Node {
    Dir(u32),
    File(u32, Vec<u8>),
    Link(PathBuf),
}

fn tree(root: &Path) -> BTreeMap<PathBuf, Node> {
    fn walk(base: &Path, p: &Path, out: &mut BTreeMap<PathBuf, Node>) {
        let m = std::fs::symlink_metadata(p).unwrap();
        let rel = p.strip_prefix(base).unwrap().to_owned();
        let mode = m.permissions().mode() & 0o777;
        if m.file_type().is_symlink() {
            out.insert(rel, Node::Link(std::fs::read_link(p).unwrap()));
        } else if m.is_dir() {
            out.insert(rel, Node::Dir(mode));
            for e in std::fs::read_dir(p).unwrap() {
                walk(base, &e.unwrap().path(), out);
            }
        } else {
            out.insert(rel, Node::File(mode, std::fs::read(p).unwrap()));
        }
    }
    let mut out = BTreeMap::new();
    if std::fs::symlink_metadata(root).is_ok() {
        walk(root, root, &mut out);
    }
    out
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn chunk_files(backup: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in std::fs::read_dir(backup.join("chunks")).unwrap() {
        for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
            out.push(f.unwrap().path());
        }
    }
    out.sort();
    out
}

fn id_of_file(p: &Path) -> [u8; 32] {
    hedge_common::hex::decode_array(p.file_name().unwrap().to_str().unwrap()).unwrap()
}

fn no_staging_left(partition: &Path) {
    for e in std::fs::read_dir(partition).unwrap() {
        let n = e.unwrap().file_name();
        assert!(!n.as_bytes().starts_with(b".restore-"), "left {n:?}");
    }
}

/// A partition with nested directories, modes, an empty file, a larger file, symlinks
/// (one pointing outside) and a non-UTF-8 name.
fn fill(part: &Path) {
    let srv = part.join("srv");
    std::fs::create_dir_all(srv.join("a/b/c")).unwrap();
    std::fs::write(srv.join("empty"), b"").unwrap();
    std::fs::write(srv.join("a/small.txt"), b"hello\n").unwrap();
    std::fs::write(srv.join("a/b/big.bin"), noise(3 * 1024 * 1024 + 17, 1)).unwrap();
    std::fs::write(srv.join("a/b/c/deep"), noise(70_000, 2)).unwrap();
    std::fs::write(
        srv.join(std::ffi::OsStr::from_bytes(b"caf\xe9")),
        b"latin-1 name",
    )
    .unwrap();
    symlink("../small.txt", srv.join("a/b/rel-link")).unwrap();
    symlink("/etc/passwd", srv.join("abs-link")).unwrap();
    std::fs::create_dir(srv.join("ro")).unwrap();
    std::fs::write(srv.join("ro/inside"), b"read only dir").unwrap();
    chmod(&srv.join("a/small.txt"), 0o640);
    chmod(&srv.join("a/b/big.bin"), 0o600);
    chmod(&srv.join("empty"), 0o751);
    chmod(&srv.join("a/b"), 0o750);
    chmod(&srv.join("ro"), 0o555);
    std::fs::create_dir_all(part.join("etc")).unwrap();
    std::fs::write(part.join("etc/conf"), b"x = 1").unwrap();
}

#[test]
fn a_restore_rebuilds_every_path_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let part = tmp.path().join("part");
    fill(&part);
    let vault = Vault::open(&tmp.path().join("backup")).unwrap();
    let before = tree(&part);
    let snap = take(&vault, "web", &part, &["srv", "etc/conf", "var/db"]);
    assert_eq!(snap.source, None);
    assert!(!snap.uploaded);
    assert_eq!(snap.bytes, 6 + 3 * 1024 * 1024 + 17 + 70_000 + 12 + 13 + 5);
    assert!(snap.new_bytes > snap.bytes, "{snap:?}");

    // Change everything: edit, delete, add, re-mode, and make the absent path exist.
    std::fs::write(part.join("srv/a/small.txt"), b"changed").unwrap();
    std::fs::remove_file(part.join("srv/a/b/c/deep")).unwrap();
    std::fs::write(part.join("srv/new"), b"new").unwrap();
    chmod(&part.join("srv/a"), 0o700);
    std::fs::write(part.join("etc/conf"), b"x = 2").unwrap();
    std::fs::create_dir_all(part.join("var/db")).unwrap();
    std::fs::write(part.join("var/db/later"), b"after the snapshot").unwrap();
    std::fs::write(part.join("etc/other"), b"not in the policy").unwrap();

    let summary = vault.restore(&name("web"), snap.id, &part, None).unwrap();
    assert_eq!(summary.paths, 3);
    assert_eq!(summary.symlinks, 2);
    assert_eq!(summary.bytes, snap.bytes);
    let mut want = before;
    // Not in the policy: left as it is now; the absent path's parent stays.
    want.insert(
        "etc/other".into(),
        Node::File(0o644 & !umask(), b"not in the policy".to_vec()),
    );
    want.insert("var".into(), Node::Dir(0o777 & !umask()));
    assert_eq!(tree(&part), want);
    no_staging_left(&part);

    // Into an empty partition as well (parents made).
    let fresh = tmp.path().join("fresh");
    std::fs::create_dir(&fresh).unwrap();
    vault.restore(&name("web"), snap.id, &fresh, None).unwrap();
    assert_eq!(tree(&fresh.join("srv")), tree(&part.join("srv")));
    assert_eq!(std::fs::read(fresh.join("etc/conf")).unwrap(), b"x = 1");
    assert!(!fresh.join("var/db").exists());
}

fn umask() -> u32 {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("probe");
    std::fs::write(&p, b"").unwrap();
    0o666 & !(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777)
}

#[test]
fn a_restore_as_root_gives_every_entry_to_the_instance() {
    if !nix::unistd::geteuid().is_root() {
        // Under CI a test that cannot run fails instead of skipping.
        assert!(
            std::env::var_os("CI").is_none(),
            "this test needs root and CI is set: it must run here"
        );
        println!("skipped: needs root (the daemon's case)");
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let part = tmp.path().join("part");
    fill(&part);
    let vault = Vault::open(&tmp.path().join("backup")).unwrap();
    let snap = take(&vault, "web", &part, &["srv", "var/lib/db"]);
    std::fs::create_dir_all(part.join("var/lib/db")).unwrap();
    let fresh = tmp.path().join("fresh");
    std::fs::create_dir(&fresh).unwrap();
    vault
        .restore(&name("web"), snap.id, &fresh, Some((4321, 4322)))
        .unwrap();
    let restored = tree(&fresh.join("srv"));
    assert_eq!(restored, tree(&part.join("srv")));
    for p in restored.keys() {
        let m = std::fs::symlink_metadata(fresh.join("srv").join(p)).unwrap();
        assert_eq!((m.uid(), m.gid()), (4321, 4322), "{p:?}");
    }
    // An absent path's missing parents are not made.
    assert!(!fresh.join("var").exists());
    let snap = take(&vault, "web", &part, &["var/lib/db"]);
    vault
        .restore(&name("web"), snap.id, &fresh, Some((4321, 4322)))
        .unwrap();
    for p in ["var", "var/lib", "var/lib/db"] {
        let m = std::fs::symlink_metadata(fresh.join(p)).unwrap();
        assert_eq!((m.uid(), m.gid()), (4321, 4322), "{p}");
    }
}

#[test]
fn one_percent_changed_makes_about_one_percent_plus_chunk_overhead_new() {
    const FILES: usize = 64;
    const SIZE: usize = 1024 * 1024;
    const REGIONS: usize = 10;
    const REGION: usize = 64 * 1024;
    let tmp = tempfile::tempdir().unwrap();
    let part = tmp.path().join("part");
    std::fs::create_dir_all(part.join("srv")).unwrap();
    for i in 0..FILES {
        std::fs::write(
            part.join(format!("srv/f{i:02}")),
            noise(SIZE, i as u64 + 10),
        )
        .unwrap();
    }
    let vault = Vault::open(&tmp.path().join("backup")).unwrap();
    let first = take(&vault, "db", &part, &["srv"]);
    let total = (FILES * SIZE) as u64;
    assert_eq!(first.bytes, total);
    assert!(first.new_bytes >= total, "{first:?}");

    // 1%: ten 64 KiB regions rewritten in place, in ten files, at odd offsets.
    for r in 0..REGIONS {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(part.join(format!("srv/f{:02}", r * 6)))
            .unwrap();
        f.seek(SeekFrom::Start((r * 77_777) as u64 + 100_000))
            .unwrap();
        f.write_all(&noise(REGION, 1000 + r as u64)).unwrap();
    }
    let changed = (REGIONS * REGION) as u64;
    let pct = |n: u64| n as f64 * 100.0 / total as f64;
    let scattered = take(&vault, "db", &part, &["srv"]);
    println!(
        "dedup, 1% in 10 scattered 64 KiB edits: {} MiB tree, {changed} bytes changed ({:.2}%), new_bytes {} ({:.2}%), chunks {}",
        total >> 20,
        pct(changed),
        scattered.new_bytes,
        pct(scattered.new_bytes),
        scattered.chunks
    );
    assert!(scattered.new_bytes >= changed, "{scattered:?}");
    // An edit costs itself plus the chunks it touches and those until the cut points
    // realign (about two to three average chunks here); the manifest's changed chunks
    // (one ChunkRef per chunk: ~70 KiB for this tree) at most two of the largest.
    let manifest = 2 * 256 * 1024;
    let bound = changed + (REGIONS as u64) * 4 * 64 * 1024 + manifest;
    assert!(
        scattered.new_bytes <= bound,
        "new {} > bound {bound}",
        scattered.new_bytes
    );

    // 1% contiguous: one region of the same size in one file.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(part.join("srv/f63"))
        .unwrap();
    f.seek(SeekFrom::Start(100_000)).unwrap();
    f.write_all(&noise(REGIONS * REGION, 77)).unwrap();
    drop(f);
    let contiguous = take(&vault, "db", &part, &["srv"]);
    println!(
        "dedup, 1% in one contiguous edit: new_bytes {} ({:.2}%)",
        contiguous.new_bytes,
        pct(contiguous.new_bytes)
    );
    let bound = changed + 4 * 64 * 1024 + manifest;
    assert!(
        contiguous.new_bytes <= bound,
        "new {} > bound {bound}",
        contiguous.new_bytes
    );

    // Unchanged: nothing new but, at most, the manifest's.
    let again = take(&vault, "db", &part, &["srv"]);
    assert!(again.new_bytes <= manifest, "{again:?}");
}

#[test]
fn the_same_content_in_two_instances_is_stored_once() {
    let tmp = tempfile::tempdir().unwrap();
    let data = noise(4 * 1024 * 1024, 5);
    let (pa, pb) = (tmp.path().join("a"), tmp.path().join("b"));
    for p in [&pa, &pb] {
        std::fs::create_dir_all(p.join("srv")).unwrap();
        std::fs::write(p.join("srv/data"), &data).unwrap();
    }
    std::fs::write(pb.join("srv/own"), b"b only").unwrap();
    let vault = Vault::open(&tmp.path().join("backup")).unwrap();
    let a = take(&vault, "a", &pa, &["srv"]);
    let b = take(&vault, "b", &pb, &["srv"]);
    println!(
        "two instances: a new_bytes {}, b new_bytes {}",
        a.new_bytes, b.new_bytes
    );
    assert!(a.new_bytes > data.len() as u64);
    // b adds its own small file and its manifest's chunk, nothing of the 4 MiB.
    assert!(b.new_bytes < 256 * 1024, "{b:?}");
    assert_eq!(vault.snapshots(None).unwrap().len(), 2);
    assert_eq!(vault.snapshots(Some(&name("b"))).unwrap(), vec![b.clone()]);
}

#[test]
fn a_damaged_chunk_fails_the_restore_and_leaves_the_partition_as_it_was() {
    let tmp = tempfile::tempdir().unwrap();
    let part = tmp.path().join("part");
    fill(&part);
    let backup = tmp.path().join("backup");
    let vault = Vault::open(&backup).unwrap();
    let snap = take(&vault, "web", &part, &["srv", "etc"]);
    std::fs::write(part.join("srv/a/small.txt"), b"since then").unwrap();
    std::fs::remove_dir_all(part.join("etc")).unwrap();
    let now = tree(&part);

    // The largest chunk is file data (the manifest here is a few KiB).
    let victim = chunk_files(&backup)
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[1000] ^= 0x40;
    std::fs::write(&victim, &bytes).unwrap();
    let err = vault
        .restore(&name("web"), snap.id, &part, None)
        .unwrap_err();
    let chunk = id_of_file(&victim);
    assert!(
        matches!(&err, BackupError::Damaged { snapshot: Some(s), chunk: c } if *s == snap.id && *c == chunk),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains(&snap.id.to_string()), "{text}");
    assert!(text.contains(&hedge_common::hex::encode(&chunk)), "{text}");
    assert_eq!(tree(&part), now);
    no_staging_left(&part);

    // A chunk gone is named too.
    std::fs::remove_file(&victim).unwrap();
    let err = vault
        .restore(&name("web"), snap.id, &part, None)
        .unwrap_err();
    assert!(
        matches!(err, BackupError::Missing { snapshot, chunk: c } if snapshot == snap.id && c == chunk),
        "{err:?}"
    );
    assert_eq!(tree(&part), now);
    assert_eq!(
        vault.missing_chunks(&name("web"), snap.id).unwrap(),
        vec![chunk]
    );
}

#[test]
fn a_damaged_manifest_chunk_is_named_too() {
    let tmp = tempfile::tempdir().unwrap();
    let part = tmp.path().join("part");
    std::fs::create_dir_all(part.join("srv")).unwrap();
    std::fs::write(part.join("srv/f"), b"tiny").unwrap();
    let backup = tmp.path().join("backup");
    let vault = Vault::open(&backup).unwrap();
    let snap = take(&vault, "web", &part, &["srv"]);
    // Two chunks: the file's and the manifest's; damage both, the manifest is read first.
    let files = chunk_files(&backup);
    assert_eq!(files.len(), 2);
    for f in &files {
        let mut b = std::fs::read(f).unwrap();
        b[0] ^= 1;
        std::fs::write(f, b).unwrap();
    }
    std::fs::write(part.join("srv/f"), b"now").unwrap();
    let err = vault
        .restore(&name("web"), snap.id, &part, None)
        .unwrap_err();
    assert!(
        matches!(err, BackupError::Damaged { snapshot: Some(s), .. } if s == snap.id),
        "{err:?}"
    );
    assert_eq!(std::fs::read(part.join("srv/f")).unwrap(), b"now");
}

#[test]
fn symlinks_are_stored_and_never_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"SECRET").unwrap();
    let part = tmp.path().join("part");
    std::fs::create_dir_all(part.join("var")).unwrap();
    // The policy path itself, a directory inside it, and a parent of another policy path.
    symlink(&outside, part.join("srv")).unwrap();
    std::fs::create_dir(part.join("data")).unwrap();
    symlink(&outside, part.join("data/sub")).unwrap();
    symlink(&outside, part.join("var/lib")).unwrap();
    let backup = tmp.path().join("backup");
    let vault = Vault::open(&backup).unwrap();
    let snap = take(&vault, "web", &part, &["srv", "data", "var/lib/db"]);
    assert_eq!(snap.bytes, 0, "{snap:?}");
    let fresh = tmp.path().join("fresh");
    std::fs::create_dir(&fresh).unwrap();
    vault.restore(&name("web"), snap.id, &fresh, None).unwrap();
    assert_eq!(std::fs::read_link(fresh.join("srv")).unwrap(), outside);
    assert_eq!(std::fs::read_link(fresh.join("data/sub")).unwrap(), outside);
    assert!(!fresh.join("var/lib").exists());

    // Restored over itself: the links are replaced, not followed.
    vault.restore(&name("web"), snap.id, &part, None).unwrap();
    assert_eq!(std::fs::read_link(part.join("srv")).unwrap(), outside);
    assert_eq!(std::fs::read_link(part.join("var/lib")).unwrap(), outside);

    // A restore never writes through a parent an instance replaced by a symlink.
    std::fs::remove_file(part.join("var/lib")).unwrap();
    std::fs::create_dir_all(part.join("var/lib/db")).unwrap();
    std::fs::write(part.join("var/lib/db/x"), b"db").unwrap();
    let db = take(&vault, "web", &part, &["var/lib/db"]);
    std::fs::remove_dir_all(part.join("var/lib")).unwrap();
    symlink(&outside, part.join("var/lib")).unwrap();
    let err = vault.restore(&name("web"), db.id, &part, None).unwrap_err();
    assert!(
        matches!(err, BackupError::NotADirectory(ref p) if p == "var/lib"),
        "{err:?}"
    );
    assert_eq!(std::fs::read(outside.join("secret")).unwrap(), b"SECRET");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
    no_staging_left(&part);
}

#[test]
fn a_directory_swapped_for_a_symlink_during_the_walk_is_not_followed() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    for i in 0..50 {
        std::fs::write(outside.join(format!("f{i}")), b"SECRET").unwrap();
    }
    let part = tmp.path().join("part");
    let srv = part.join("srv");
    std::fs::create_dir_all(srv.join("d")).unwrap();
    for i in 0..50 {
        std::fs::write(srv.join(format!("d/f{i}")), b"inside").unwrap();
        std::fs::write(srv.join(format!("e{i}")), b"inside").unwrap();
    }
    symlink(&outside, srv.join("alt")).unwrap();
    // An instance swapping srv/d and a symlink to outside, atomically, as fast as it can.
    let stop = Arc::new(AtomicBool::new(false));
    let flipper = {
        let stop = stop.clone();
        let srv = srv.clone();
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                nix::fcntl::renameat2(
                    None,
                    &srv.join("d"),
                    None,
                    &srv.join("alt"),
                    nix::fcntl::RenameFlags::RENAME_EXCHANGE,
                )
                .unwrap();
                swaps += 1;
            }
            swaps
        })
    };
    let vault = Vault::open(&tmp.path().join("backup")).unwrap();
    let (mut as_dir, mut as_link) = (0, 0);
    for i in 0..40 {
        let snap = take(&vault, "web", &part, &["srv"]);
        let fresh = tmp.path().join(format!("fresh{i}"));
        std::fs::create_dir(&fresh).unwrap();
        vault.restore(&name("web"), snap.id, &fresh, None).unwrap();
        for (p, node) in tree(&fresh) {
            if let Node::File(_, bytes) = node {
                assert_ne!(bytes, b"SECRET", "{p:?} was read through a symlink");
            }
        }
        for n in ["d", "alt"] {
            match std::fs::symlink_metadata(fresh.join("srv").join(n)) {
                Ok(m) if m.file_type().is_symlink() => as_link += 1,
                Ok(_) => as_dir += 1,
                Err(_) => {}
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = flipper.join().unwrap();
    println!("swap race: {swaps} swaps; d/alt stored as directory {as_dir}, as symlink {as_link}");
    assert!(swaps > 0);
}

#[test]
fn prune_keeps_everything_kept_snapshots_need() {
    let tmp = tempfile::tempdir().unwrap();
    let backup = tmp.path().join("backup");
    let vault = Vault::open(&backup).unwrap();
    let pa = tmp.path().join("a");
    let pb = tmp.path().join("b");
    std::fs::create_dir_all(pa.join("srv")).unwrap();
    std::fs::create_dir_all(pb.join("srv")).unwrap();
    let shared = noise(512 * 1024, 7);
    std::fs::write(pa.join("srv/shared"), &shared).unwrap();
    std::fs::write(pb.join("srv/shared"), &shared).unwrap();
    let b = take(&vault, "b", &pb, &["srv"]);
    let mut snaps = Vec::new();
    let mut trees = Vec::new();
    for i in 0..4u64 {
        // Each snapshot has content no other has.
        std::fs::write(pa.join("srv/own"), noise(300 * 1024, 100 + i)).unwrap();
        snaps.push(take(&vault, "a", &pa, &["srv"]));
        trees.push(tree(&pa.join("srv")));
    }
    // A crash mid-snapshot leaves chunks no entry lists: an orphan.
    let orphan = noise(1000, 9);
    let orphan_id: [u8; 32] = {
        use sha2::Digest;
        sha2::Sha256::digest(&orphan).into()
    };
    vault.put_chunk(&orphan_id, &orphan).unwrap();

    let a = name("a");
    let summary = vault.prune(&a, 2, &[snaps[0].id]).unwrap();
    assert_eq!(summary.deleted, vec![snaps[1].id]);
    assert_eq!(summary.kept, 3);
    assert!(summary.chunks_removed >= 3, "{summary:?}"); // snapshot 1's own data, its manifest, the orphan
    assert!(vault.read_chunk(&orphan_id).is_err());
    let left: Vec<SnapshotId> = vault
        .snapshots(Some(&a))
        .unwrap()
        .iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(left, vec![snaps[0].id, snaps[2].id, snaps[3].id]);
    // Every chunk still stored is needed by someone, and every kept snapshot restores.
    let mut needed = std::collections::BTreeSet::new();
    for s in vault.snapshots(None).unwrap() {
        for id in vault.chunk_ids(&s.instance, s.id).unwrap() {
            needed.insert(id.unwrap());
        }
        assert!(vault.missing_chunks(&s.instance, s.id).unwrap().is_empty());
    }
    let stored: std::collections::BTreeSet<[u8; 32]> =
        chunk_files(&backup).iter().map(|p| id_of_file(p)).collect();
    assert_eq!(stored, needed);
    for (i, s) in snaps.iter().enumerate() {
        if i == 1 {
            continue;
        }
        vault.restore(&a, s.id, &pa, None).unwrap();
        assert_eq!(tree(&pa.join("srv")), trees[i], "snapshot {i}");
    }
    // Dropping all of a's keeps b's shared chunks.
    let summary = vault.prune(&a, 0, &[]).unwrap();
    assert_eq!(summary.kept, 0);
    let fresh = tmp.path().join("fresh");
    std::fs::create_dir(&fresh).unwrap();
    vault.restore(&name("b"), b.id, &fresh, None).unwrap();
    assert_eq!(std::fs::read(fresh.join("srv/shared")).unwrap(), shared);
    assert_eq!(chunk_files(&backup).len() as u64, b.chunks);
}

#[test]
fn a_failed_snapshot_lists_nothing_and_its_chunks_are_swept() {
    let tmp = tempfile::tempdir().unwrap();
    let part = tmp.path().join("part");
    std::fs::create_dir_all(part.join("srv")).unwrap();
    std::fs::write(part.join("srv/first"), noise(200_000, 3)).unwrap();
    let mut deep = part.join("srv/z");
    for _ in 0..70 {
        deep = deep.join("d");
    }
    std::fs::create_dir_all(&deep).unwrap();
    let backup = tmp.path().join("backup");
    let vault = Vault::open(&backup).unwrap();
    let inst = name("web");
    let p = paths(&["srv"]);
    let err = vault
        .snapshot(&SnapshotRequest {
            instance: &inst,
            partition: &part,
            paths: &p,
            consistency: Consistency::Frozen,
            now_ms: 1,
        })
        .unwrap_err();
    assert!(matches!(err, BackupError::TooDeep(_)), "{err:?}");
    assert!(vault.snapshots(None).unwrap().is_empty());
    assert!(vault.pending_uploads().unwrap().is_empty());
    let summary = vault.prune(&inst, 5, &[]).unwrap();
    assert!(chunk_files(&backup).is_empty(), "{summary:?}");
    // Bad paths are refused before anything is read.
    for bad in ["/srv", "../x", "srv/../../x", ".", ""] {
        let p = paths(&[bad]);
        let err = vault
            .snapshot(&SnapshotRequest {
                instance: &inst,
                partition: &part,
                paths: &p,
                consistency: Consistency::Live,
                now_ms: 1,
            })
            .unwrap_err();
        assert!(matches!(err, BackupError::BadPath(_)), "{bad}: {err:?}");
    }
}

#[test]
fn another_node_restores_from_a_grant_and_uploads_survive_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let part = tmp.path().join("part");
    fill(&part);
    let want = tree(&part.join("srv"));
    let dir_a = tmp.path().join("backup-a");
    let recovery = hedge_common::seal::RecoveryKey::generate();
    let (inst, snap, header) = {
        let a = Vault::open(&dir_a).unwrap();
        let snap = take(&a, "web", &part, &["srv"]);
        let inst = name("web");
        assert!(matches!(
            a.header(&inst, snap.id, &recovery.public()),
            Err(BackupError::NoNode)
        ));
        let a = Vault::open_as(&dir_a, &name("node-a")).unwrap();
        assert_eq!(a.recovery_key().unwrap(), None);
        a.set_recovery_key(recovery.public()).unwrap();
        assert_eq!(a.recovery_key().unwrap(), Some(recovery.public()));
        let header = a.header(&inst, snap.id, &recovery.public()).unwrap();
        // Asked again (an upload retried), the same header.
        assert_eq!(
            a.header(&inst, snap.id, &recovery.public()).unwrap(),
            header
        );
        assert_eq!(header.node, name("node-a"));
        assert_eq!(header.chunks, snap.chunks);
        assert_eq!(
            a.chunk_ids(&inst, snap.id).unwrap().count() as u64,
            snap.chunks
        );
        assert_eq!(a.pending_uploads().unwrap(), vec![(inst.clone(), snap.id)]);
        (inst, snap, header)
    };
    // The secret is the node's alone, and kept across restarts (same chunk ids).
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir_a.join("secret")), 0o600);
    assert_eq!(mode(&dir_a), 0o700);
    // After a restart: the name, the key and the pending upload are still there.
    let a = Vault::open(&dir_a).unwrap();
    assert_eq!(
        a.header(&inst, snap.id, &recovery.public()).unwrap(),
        header
    );
    assert_eq!(a.pending_uploads().unwrap(), vec![(inst.clone(), snap.id)]);
    a.mark_uploaded(&inst, snap.id).unwrap();
    let a = Vault::open(&dir_a).unwrap();
    assert!(a.pending_uploads().unwrap().is_empty());
    assert!(a.snapshots(None).unwrap()[0].uploaded);
    let again = take(&a, "web", &part, &["srv"]);
    assert_eq!(again.new_bytes, 0, "same secret, same chunks: {again:?}");

    // The master unseals the key with the recovery key; node b imports and fetches.
    let key = hedge_common::seal::unseal(&header.sealed_key, &recovery).unwrap();
    let b = Vault::open_as(&tmp.path().join("backup-b"), &name("node-b")).unwrap();
    let bad = RestoreGrant {
        header: header.clone(),
        key: [0; 32],
    };
    assert!(matches!(b.import(&bad), Err(BackupError::BadGrant { .. })));
    let grant = RestoreGrant {
        header: header.clone(),
        key: *key,
    };
    b.import(&grant).unwrap();
    b.import(&grant).unwrap();
    // Granted back to the node that took it: it has it already.
    a.import(&grant).unwrap();
    assert_eq!(a.snapshots(None).unwrap()[0].source, None);
    assert!(matches!(
        b.chunk_ids(&inst, snap.id),
        Err(BackupError::Incomplete { .. })
    ));
    let listed = b.snapshots(None).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].source, Some(name("node-a")));
    assert!(b.pending_uploads().unwrap().is_empty());
    let mut rounds = 0;
    loop {
        let missing = b.missing_chunks(&inst, snap.id).unwrap();
        if missing.is_empty() {
            break;
        }
        rounds += 1;
        for id in missing {
            let c = a.read_chunk(&id).unwrap();
            // An altered chunk is refused on the way in, and can be named.
            let mut bad = c.clone();
            bad[0] ^= 1;
            let err = b.put_chunk(&id, &bad).unwrap_err().in_snapshot(snap.id);
            assert!(
                matches!(err, BackupError::Damaged { snapshot: Some(s), chunk } if s == snap.id && chunk == id)
            );
            b.put_chunk(&id, &c).unwrap();
        }
    }
    assert_eq!(rounds, 2, "the manifest first, then the files");
    assert_eq!(
        b.chunk_ids(&inst, snap.id).unwrap().count() as u64,
        snap.chunks
    );
    // A header of an imported snapshot is the one it came with.
    assert_eq!(b.header(&inst, snap.id, &[9; 32]).unwrap(), header);
    let fresh = tmp.path().join("fresh");
    std::fs::create_dir(&fresh).unwrap();
    b.restore(&inst, snap.id, &fresh, None).unwrap();
    assert_eq!(tree(&fresh.join("srv")), want);
}

const MEMORY_CHILD: &str = "HEDGE_BACKUP_ENGINE_MEMORY_CHILD";

fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Runs only as the child of the test below: backs up a 1 GiB file and prints how much
/// the peak RSS rose.
#[test]
fn memory_child() {
    let Ok(dir) = std::env::var(MEMORY_CHILD) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let part = dir.join("part");
    std::fs::create_dir_all(part.join("srv")).unwrap();
    // 1 GiB, sparse: every MiB starts with the same 64 KiB of data, the rest is a hole
    // that reads as zeros. Thousands of chunk references, few distinct chunks (the disk
    // is spared; the memory bound is about references and buffers, not the store).
    let mut f = std::fs::File::create(part.join("srv/big")).unwrap();
    let block = noise(64 * 1024, 1);
    for i in 0..1024u64 {
        f.seek(SeekFrom::Start(i << 20)).unwrap();
        f.write_all(&block).unwrap();
    }
    f.set_len(1 << 30).unwrap();
    drop(f);
    let vault = Vault::open(&dir.join("backup")).unwrap();
    // Reset the peak to now (Linux: writing 5 to clear_refs resets VmHWM).
    std::fs::write("/proc/self/clear_refs", b"5").unwrap();
    let base = status_kib("VmHWM:");
    let snap = take(&vault, "big", &part, &["srv"]);
    let peak = status_kib("VmHWM:");
    assert_eq!(snap.bytes, 1 << 30);
    println!(
        "rss_growth_kib={} base_kib={base} peak_kib={peak} chunks={} new_bytes={}",
        peak - base,
        snap.chunks,
        snap.new_bytes
    );
}

#[test]
fn backing_up_1_gib_raises_peak_rss_by_at_most_16_mib() {
    let tmp = tempfile::tempdir().unwrap();
    #[allow(clippy::disallowed_methods)] // a figure for the report, never asserted
    let started = std::time::Instant::now();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "memory_child", "--nocapture", "--test-threads=1"])
        .env(MEMORY_CHILD, tmp.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.find("rss_growth_kib=").map(|i| &l[i..]))
        .unwrap_or_else(|| panic!("no figure in {stdout}"));
    println!(
        "1 GiB backup: {line} ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    let growth: u64 = line["rss_growth_kib=".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(growth <= 16 * 1024, "peak RSS rose by {growth} KiB");
}
