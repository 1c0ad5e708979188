//! Software artifacts end to end, with real processes and real HTTPS (mutual TLS): a
//! release supplied to the master reaches a node, which downloads it (resuming a partial
//! download), checks its hash, extracts it and runs its entry program — and runs it
//! again after an offline reboot from its cache, with no download. Archives with `../`,
//! absolute paths, a link to `/etc` or a device node, and an artifact whose bytes do not
//! match its hash, are refused, and nothing is written outside the cache.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::fleet::Fleet;
use common::{wait_for, Node};
use hedge_runtime::local_api::Counters;
use hedge_wire::InstanceStatus;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// One archive entry: path (written into the header as is, so `..` and `/` pass), type,
/// mode, contents, link target.
type Entry<'a> = (&'a str, tar::EntryType, u32, &'a [u8], &'a str);

/// A `.tar.gz` of `entries`, built byte by byte (tar's own builder refuses bad paths).
fn tar_gz(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, kind, mode, data, link) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_mode(*mode);
        h.set_size(data.len() as u64);
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        if matches!(kind, tar::EntryType::Char) {
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
        }
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&b.into_inner().unwrap()).unwrap();
    gz.finish().unwrap()
}

fn hex(bytes: &[u8]) -> String {
    hedge_common::hex::encode(&Sha256::digest(bytes))
}

/// The good release: `bin/app` notes each start in its partition, then sleeps.
fn good_archive(tag: &str) -> Vec<u8> {
    let script = format!(
        "#!/bin/sh\necho \"{tag} $$ $HEDGE_SOFTWARE\" >> \"$HEDGE_PARTITION/srv/started\"\nexec sleep 100000\n"
    );
    tar_gz(&[
        ("bin/", tar::EntryType::Directory, 0o755, b"", ""),
        (
            "bin/app",
            tar::EntryType::Regular,
            0o4755,
            script.as_bytes(),
            "",
        ),
        ("share/readme", tar::EntryType::Regular, 0o600, b"hello", ""),
        ("bin/run", tar::EntryType::Symlink, 0o777, b"", "app"),
    ])
}

/// Writes `bytes` to a file in `dir` and supplies it; returns the sha256 hex printed.
fn supply(fleet: &Fleet, name: &str, bytes: &[u8], args: &[&str]) -> String {
    let file = fleet.dir.path().join(name);
    std::fs::write(&file, bytes).unwrap();
    let mut all = vec!["supply", file.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = fleet.master_ok(&all);
    let printed = out.trim().strip_prefix("sha256:").unwrap().to_string();
    assert_eq!(printed, hex(bytes));
    printed
}

fn counter(node: &Node, pick: impl Fn(&Counters) -> u64) -> u64 {
    pick(&node.status().counters)
}

fn software(node: &Node) -> PathBuf {
    node.home().join("software")
}

/// A node enrolled with the artifact endpoint on, registered at the master.
fn fleet_and_node(id: &str) -> (Fleet, Node) {
    let mut fleet = Fleet::new();
    let port = fleet.enable_artifacts();
    fleet.start_master();
    let node = fleet.node(id);
    let cfg = std::fs::read_to_string(node.config()).unwrap();
    assert!(
        cfg.contains(&format!("artifacts = \"https://127.0.0.1:{port}\"")),
        "the bundle's artifact URL is in node.toml:\n{cfg}"
    );
    (fleet, node)
}

#[test]
fn a_supplied_release_runs_on_the_node_and_again_after_an_offline_reboot() {
    let (mut fleet, mut node) = fleet_and_node("soft-1");
    node.start();
    let arch = wait_for("node registered", Duration::from_secs(30), || {
        let v: Value = serde_json::from_str(&fleet.master_ok(&["nodes", "--json"])).ok()?;
        v.as_array()?.iter().find(|n| n["node"] == "soft-1")?["arch"]
            .as_str()
            .map(str::to_owned)
    });
    // Two variants: the node's own target, and a `*` one it must not pick.
    let good = good_archive("v1");
    let sha = supply(
        &fleet,
        "app.tar.gz",
        &good,
        &["--target", &arch, "--release", "app"],
    );
    let other = supply(
        &fleet,
        "other.tar.gz",
        &good_archive("other"),
        &["--target", "*", "--release", "app"],
    );
    let listed: Value = serde_json::from_str(&fleet.master_ok(&["artifacts", "--json"])).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    // Half a download already there: the node resumes it with a Range request.
    let cache = software(&node);
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::write(cache.join(format!("{sha}.part")), &good[..good.len() / 2]).unwrap();

    fleet.master_ok(&[
        "request",
        "app",
        "--software",
        "release:app",
        "--entry",
        "bin/app",
    ]);
    let started = node.partition("app").join("srv/started");
    let first = wait_for(
        "the artifact's program ran",
        Duration::from_secs(60),
        || {
            std::fs::read_to_string(&started)
                .ok()
                .filter(|s| !s.is_empty())
        },
    );
    let dir = cache.join(&sha);
    assert!(
        first.starts_with("v1 "),
        "the node's own variant ran: {first}"
    );
    assert!(
        first.trim_end().ends_with(&format!("/software/{sha}")),
        "HEDGE_SOFTWARE is the cache dir: {first}"
    );
    let pid = node.running_pid("app", None);
    assert!(
        fleet.master_log(0).contains("status=206"),
        "the partial download was resumed:\n{}",
        fleet.master_log(0)
    );
    assert_eq!(counter(&node, |c| c.artifact_installed), 1);
    assert!(
        !cache.join(&other).exists(),
        "the `*` variant was not fetched"
    );
    assert!(!cache.join(format!("{sha}.part")).exists());
    assert!(!cache.join(format!("{sha}.tmp")).exists());
    // Read-only for the partition: root-owned when the node is root, no setuid.
    let app = std::fs::metadata(dir.join("bin/app")).unwrap();
    assert_eq!(app.permissions().mode() & 0o7777, 0o755);
    assert_eq!(
        std::fs::metadata(dir.join("share/readme"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o644
    );
    if nix::unistd::geteuid().is_root() {
        assert_eq!(app.uid(), 0);
    }
    assert_eq!(
        std::fs::read_link(dir.join("bin/run")).unwrap(),
        Path::new("app")
    );

    // Offline reboot: master and broker gone, the daemon killed and started again.
    for m in &mut fleet.masters {
        m.kill().unwrap();
        m.wait().unwrap();
    }
    fleet.masters.clear();
    fleet.broker.kill9();
    node.kill9();
    node.start();
    let again = node.running_pid("app", Some(pid));
    assert_ne!(again, pid);
    wait_for("started twice", Duration::from_secs(10), || {
        let s = std::fs::read_to_string(&started).ok()?;
        (s.lines().count() == 2).then_some(())
    });
    assert_eq!(
        counter(&node, |c| c.artifact_installed),
        0,
        "no download after the reboot"
    );
    assert_eq!(
        counter(&node, |c| c.artifact_fetch_errors),
        0,
        "no download tried"
    );
    assert_eq!(
        node.daemon_log().matches("downloading artifact").count(),
        1,
        "one download in two boots"
    );
}

/// Where a refused archive tried to write, outside the cache; unique per test run.
struct Targets {
    tag: String,
}

impl Targets {
    fn tmp(&self, what: &str) -> PathBuf {
        PathBuf::from(format!("/tmp/evil-{}-{what}", self.tag))
    }
}

impl Drop for Targets {
    fn drop(&mut self) {
        for w in ["dotdot", "abs"] {
            let _ = std::fs::remove_file(self.tmp(w));
        }
        let _ = std::fs::remove_file(format!("/etc/evil-{}", self.tag));
    }
}

#[test]
fn wrong_hashes_and_unsafe_archives_are_refused_and_nothing_is_written_outside_the_cache() {
    let (fleet, mut node) = fleet_and_node("soft-2");
    let targets = Targets {
        tag: format!("{}-{}", std::process::id(), fastrand_tag()),
    };
    let dotdot_rel = format!(
        "../../../../../../../../../..{}",
        targets.tmp("dotdot").display()
    );
    let abs = targets.tmp("abs").display().to_string();
    let etc_file = format!("etc/evil-{}", targets.tag);
    let sibling = format!("../evil-{}", targets.tag);
    let script: &[u8] = b"#!/bin/sh\nexec sleep 100000\n";
    let mut bad: Vec<(&str, Vec<u8>)> = vec![
        (
            "dotdot",
            tar_gz(&[
                ("bin/app", tar::EntryType::Regular, 0o755, script, ""),
                (&dotdot_rel, tar::EntryType::Regular, 0o644, b"x", ""),
            ]),
        ),
        (
            "sibling",
            tar_gz(&[
                ("bin/app", tar::EntryType::Regular, 0o755, script, ""),
                (&sibling, tar::EntryType::Regular, 0o644, b"x", ""),
            ]),
        ),
        (
            "absolute",
            tar_gz(&[
                ("bin/app", tar::EntryType::Regular, 0o755, script, ""),
                (&abs, tar::EntryType::Regular, 0o644, b"x", ""),
            ]),
        ),
        (
            "link-to-etc",
            tar_gz(&[
                ("bin/app", tar::EntryType::Regular, 0o755, script, ""),
                ("etc", tar::EntryType::Symlink, 0o777, b"", "/etc"),
                (&etc_file, tar::EntryType::Regular, 0o644, b"x", ""),
            ]),
        ),
    ];
    if nix::unistd::geteuid().is_root() {
        bad.push((
            "device",
            tar_gz(&[
                ("bin/app", tar::EntryType::Regular, 0o755, script, ""),
                ("dev/null", tar::EntryType::Char, 0o666, b"", ""),
            ]),
        ));
    }
    // A good archive whose copy on the master is then corrupted: the bytes served do not
    // match the hash asked for.
    let wrong = good_archive("wrong");
    let wrong_sha = supply(&fleet, "wrong.tar.gz", &wrong, &["--target", "*"]);
    let stored = fleet.master_dir().join("artifacts").join(&wrong_sha);
    std::fs::write(&stored, good_archive("tampered")).unwrap();

    let mut shas = Vec::new();
    for (what, bytes) in &bad {
        shas.push((
            *what,
            supply(&fleet, &format!("{what}.tar.gz"), bytes, &["--target", "*"]),
        ));
    }
    node.start();
    wait_for("node registered", Duration::from_secs(30), || {
        let v: Value = serde_json::from_str(&fleet.master_ok(&["nodes", "--json"])).ok()?;
        v.as_array()?
            .iter()
            .any(|n| n["node"] == "soft-2")
            .then_some(())
    });
    // Requested through the master: the artifact endpoint serves a node only what its
    // desired state names.
    for (what, sha) in shas.iter().chain([&("wrong", wrong_sha.clone())]) {
        fleet.master_ok(&[
            "request",
            what,
            "--node",
            "soft-2",
            "--software",
            &format!("sha256:{sha}"),
            "--entry",
            "bin/app",
        ]);
    }
    wait_for(
        "every unsafe archive refused",
        Duration::from_secs(60),
        || (counter(&node, |c| c.artifact_refused) == shas.len() as u64).then_some(()),
    );
    wait_for(
        "the wrong hash refused, twice",
        Duration::from_secs(60),
        || (counter(&node, |c| c.artifact_hash_mismatch) >= 2).then_some(()),
    );
    let status = node.status();
    let refused: Vec<&str> = status
        .software
        .refused
        .iter()
        .map(|r| r.sha256.as_str())
        .collect();
    let cache = software(&node);
    for (what, sha) in &shas {
        assert!(
            refused.contains(&sha.as_str()),
            "{what} not listed as refused"
        );
        assert!(!cache.join(sha).exists(), "{what}: extracted tree kept");
        assert!(
            !cache.join(format!("{sha}.tmp")).exists(),
            "{what}: temporary tree kept"
        );
        assert!(
            !cache.join(format!("{sha}.part")).exists(),
            "{what}: download kept"
        );
        assert_eq!(
            node.instance(what).unwrap().state,
            InstanceStatus::Waiting,
            "{what}"
        );
    }
    assert!(
        !cache.join(&wrong_sha).exists(),
        "a wrong hash was extracted"
    );
    assert_eq!(
        node.instance("wrong").unwrap().state,
        InstanceStatus::Waiting
    );
    assert_eq!(counter(&node, |c| c.artifact_installed), 0);
    // The specific places the archives aimed at.
    for p in [
        targets.tmp("dotdot"),
        targets.tmp("abs"),
        PathBuf::from(format!("/etc/evil-{}", targets.tag)),
        node.home().join(format!("evil-{}", targets.tag)),
        cache.join(format!("evil-{}", targets.tag)),
    ] {
        assert!(!p.exists(), "{} was written", p.display());
    }
    // Only hashes (and the wrong one's resumable download) in the cache.
    for e in std::fs::read_dir(&cache).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        assert!(
            name.starts_with(&wrong_sha),
            "unexpected {name} in the cache"
        );
    }
    // Each refusal is logged, and recorded for the master (an `Artifact` record).
    let log = node.daemon_log();
    assert_eq!(
        log.matches("artifact refused: nothing kept").count(),
        shas.len(),
        "{log}"
    );
    let mut reasons = vec!["has a `..` component", "absolute path", "leaves the tree"];
    if nix::unistd::geteuid().is_root() {
        reasons.push("is a character device");
    }
    for reason in reasons {
        assert!(log.contains(reason), "no refusal for {reason:?}:\n{log}");
    }
    assert!(
        log.contains("downloaded artifact has another sha256"),
        "{log}"
    );
}

// The low 64 bits of the nanoseconds make the tag.
#[allow(clippy::cast_possible_truncation)]
fn fastrand_tag() -> u64 {
    #[allow(clippy::disallowed_methods)] // tests only: a tag that differs between runs
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    u64::try_from(nanos % 1_000_000_007).unwrap()
}
