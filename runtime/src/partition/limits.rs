//! Resource limits of a partition: rlimits for the instance's process, and a cgroup v2
//! group for memory and CPU where the node has one.
//!
//! Contract: [`rlimits`] is pure; the supervisor applies its result in the child before
//! `exec`. [`Cgroup::setup`] makes `/sys/fs/cgroup/hedge/<name>` with `memory.max` and
//! `cpu.max` when the request asks for them and cgroup v2 with those controllers is
//! usable; when it is not (no cgroup2 at `/sys/fs/cgroup`, a v1/hybrid layout, no
//! permission), it logs a notice (at `info` once per process, then at `debug`, since
//! a flapping instance calls it on every start) and returns `Ok(None)`: the instance
//! runs without those limits rather than not at all. [`parse_size`] reads sizes such
//! as `64M` for the request-file parser.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use hedge_wire::types::{Limits, Name};
use nix::sys::resource::Resource;

use super::PartitionError;

/// Where cgroup v2 is mounted on a pure-v2 system.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The group under which hedge makes one group per instance.
const HEDGE_GROUP: &str = "hedge";
/// `cpu.max` period, microseconds.
const CPU_PERIOD_US: u64 = 100_000;
/// The kernel refuses a `cpu.max` quota below 1 ms.
const CPU_QUOTA_MIN_US: u64 = 1_000;

/// The rlimits to set in the instance's process: `RLIMIT_NOFILE` and `RLIMIT_NPROC`
/// (soft = hard = the value) for those the request sets. Memory is not an rlimit here;
/// it goes to the cgroup. Note `RLIMIT_NPROC` counts every process of the real uid, so
/// it is per instance only when the node runs as root (one uid per partition).
pub fn rlimits(l: &Limits) -> Vec<(Resource, u64)> {
    let mut out = Vec::new();
    if let Some(n) = l.nofile {
        out.push((Resource::RLIMIT_NOFILE, n));
    }
    if let Some(n) = l.nproc {
        out.push((Resource::RLIMIT_NPROC, n));
    }
    out
}

/// An instance's cgroup v2 group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    dir: PathBuf,
}

impl Cgroup {
    /// Makes the group of `name` with the memory and CPU limits of `l`; `Ok(None)` if
    /// `l` asks for neither or cgroup v2 cannot enforce them here (a notice is logged).
    /// An error means the group was made but a limit could not be written.
    pub fn setup(name: &Name, l: &Limits) -> Result<Option<Cgroup>, PartitionError> {
        Self::setup_at(Path::new(CGROUP_ROOT), name, l)
    }

    /// [`Cgroup::setup`] under another cgroup2 mount point (tests imitate one in a temp dir).
    pub(crate) fn setup_at(
        root: &Path,
        name: &Name,
        l: &Limits,
    ) -> Result<Option<Cgroup>, PartitionError> {
        let mut wanted = Vec::new();
        if l.memory_max.is_some() {
            wanted.push("memory");
        }
        if l.cpu_max_percent.is_some() {
            wanted.push("cpu");
        }
        if wanted.is_empty() {
            return Ok(None);
        }
        let parent = match prepare_parent(root, &wanted) {
            Ok(p) => p,
            Err(why) => {
                notice(name, &wanted, &why);
                return Ok(None);
            }
        };
        let dir = parent.join(name.as_str());
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("create", &dir, e)),
        }
        let group = Cgroup { dir };
        if let Err(e) = group.write_limits(l) {
            let _ = group.remove();
            return Err(e);
        }
        Ok(Some(group))
    }

    fn write_limits(&self, l: &Limits) -> Result<(), PartitionError> {
        if let Some(bytes) = l.memory_max {
            write(&self.dir.join("memory.max"), &format!("{bytes}\n"))?;
        }
        if let Some(percent) = l.cpu_max_percent {
            let quota = (u64::from(percent) * (CPU_PERIOD_US / 100)).max(CPU_QUOTA_MIN_US);
            write(
                &self.dir.join("cpu.max"),
                &format!("{quota} {CPU_PERIOD_US}\n"),
            )?;
        }
        Ok(())
    }

    /// The group's directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Moves process `pid` into the group (its later children follow).
    pub fn add_pid(&self, pid: u32) -> Result<(), PartitionError> {
        write(&self.dir.join("cgroup.procs"), &format!("{pid}\n"))
    }

    /// Removes the group; no error if it is gone. Fails (`EBUSY`) while processes remain.
    pub fn remove(&self) -> Result<(), PartitionError> {
        match std::fs::remove_dir(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", &self.dir, e)),
        }
    }
}

/// Makes `<root>/hedge` with the `wanted` controllers enabled for its children.
/// `Err` says in words why cgroups cannot be used here.
fn prepare_parent(root: &Path, wanted: &[&str]) -> Result<PathBuf, String> {
    let controllers_file = root.join("cgroup.controllers");
    let available = std::fs::read_to_string(&controllers_file)
        .map_err(|e| format!("no cgroup v2 hierarchy at {} ({e})", root.display()))?;
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|c| !available.split_whitespace().any(|a| a == *c))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "cgroup v2 at {} lacks the {} controller(s) (cgroup v1 or hybrid layout?)",
            root.display(),
            missing.join(", ")
        ));
    }
    enable(root, wanted)?;
    let parent = root.join(HEDGE_GROUP);
    match std::fs::create_dir(&parent) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {} ({e})", parent.display())),
    }
    enable(&parent, wanted)?;
    Ok(parent)
}

/// Enables the `wanted` controllers in `<dir>/cgroup.subtree_control` unless they are.
fn enable(dir: &Path, wanted: &[&str]) -> Result<(), String> {
    let file = dir.join("cgroup.subtree_control");
    let enabled = std::fs::read_to_string(&file).unwrap_or_default();
    let add: Vec<String> = wanted
        .iter()
        .filter(|c| !enabled.split_whitespace().any(|e| e == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if add.is_empty() {
        return Ok(());
    }
    std::fs::write(&file, add.join(" ")).map_err(|e| {
        format!(
            "cannot enable {} in {} ({e})",
            add.join(" "),
            file.display()
        )
    })
}

fn notice(name: &Name, wanted: &[&str], why: &str) {
    static LOGGED: AtomicBool = AtomicBool::new(false);
    let limits = wanted
        .iter()
        .map(|c| {
            if *c == "memory" {
                "memory.max"
            } else {
                "cpu.max"
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    if LOGGED.swap(true, Ordering::Relaxed) {
        tracing::debug!(instance = %name, limits, reason = why, "resource limits not enforced");
    } else {
        tracing::info!(
            instance = %name,
            limits,
            reason = why,
            "resource limits not enforced: instances run without them (further notices at debug level)"
        );
    }
}

fn write(path: &Path, contents: &str) -> Result<(), PartitionError> {
    std::fs::write(path, contents).map_err(|e| io_err("write", path, e))
}

fn io_err(op: &'static str, path: &Path, source: io::Error) -> PartitionError {
    PartitionError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Parses a size in bytes: digits with an optional binary unit `K`, `M`, `G` or `T`
/// (any case, × 1024ⁿ), optionally followed by `i`, `iB` or `B`; a bare `B` means bytes.
/// Examples: `1048576`, `512K`, `64M`, `64MiB`, `1G`. Overflow is an error.
pub fn parse_size(s: &str) -> Result<u64, PartitionError> {
    let bad = || PartitionError::BadSize(s.chars().take(64).collect());
    let t = s.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = t.split_at(digits);
    if num.is_empty() {
        return Err(bad());
    }
    let n: u64 = num.parse().map_err(|_| bad())?;
    let unit = unit.trim_start();
    let (shift, rest) = match unit.as_bytes().first().map(u8::to_ascii_uppercase) {
        None => (0, ""),
        Some(b'K') => (10, &unit[1..]),
        Some(b'M') => (20, &unit[1..]),
        Some(b'G') => (30, &unit[1..]),
        Some(b'T') => (40, &unit[1..]),
        Some(b'B') if unit.len() == 1 => (0, ""),
        Some(_) => return Err(bad()),
    };
    if !matches!(rest, "" | "i" | "iB" | "B" | "b" | "ib") {
        return Err(bad());
    }
    n.checked_mul(1u64 << shift).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn name(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    fn fake_cgroupfs(controllers: &str) -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("cgroup.controllers"), controllers).unwrap();
        std::fs::write(tmp.path().join("cgroup.subtree_control"), "").unwrap();
        tmp
    }

    #[test]
    fn rlimits_from_request() {
        let l = Limits {
            memory_max: Some(1 << 20),
            cpu_max_percent: Some(50),
            nofile: Some(256),
            nproc: Some(32),
        };
        assert_eq!(
            rlimits(&l),
            vec![(Resource::RLIMIT_NOFILE, 256), (Resource::RLIMIT_NPROC, 32)]
        );
        assert!(rlimits(&Limits::default()).is_empty());
    }

    #[test]
    fn cgroup_writes_limits_and_enables_controllers() {
        let fs = fake_cgroupfs("cpuset cpu io memory pids\n");
        let l = Limits {
            memory_max: Some(64 << 20),
            cpu_max_percent: Some(50),
            ..Limits::default()
        };
        let g = Cgroup::setup_at(fs.path(), &name("web"), &l)
            .unwrap()
            .unwrap();
        assert_eq!(g.path(), fs.path().join("hedge/web"));
        let read = |p: &str| std::fs::read_to_string(fs.path().join(p)).unwrap();
        assert_eq!(read("hedge/web/memory.max"), "67108864\n");
        assert_eq!(read("hedge/web/cpu.max"), "50000 100000\n");
        assert_eq!(read("cgroup.subtree_control"), "+memory +cpu");
        assert_eq!(read("hedge/cgroup.subtree_control"), "+memory +cpu");
        g.add_pid(4242).unwrap();
        assert_eq!(read("hedge/web/cgroup.procs"), "4242\n");

        // Idempotent: a second setup reuses the group.
        let l2 = Limits {
            cpu_max_percent: Some(0),
            ..Limits::default()
        };
        Cgroup::setup_at(fs.path(), &name("web"), &l2)
            .unwrap()
            .unwrap();
        assert_eq!(read("hedge/web/cpu.max"), "1000 100000\n");

        for f in ["memory.max", "cpu.max", "cgroup.procs"] {
            std::fs::remove_file(g.path().join(f)).unwrap();
        }
        g.remove().unwrap();
        assert!(!g.path().exists());
        g.remove().unwrap();
    }

    #[test]
    fn cgroup_only_cpu_enables_only_cpu() {
        let fs = fake_cgroupfs("cpu memory");
        std::fs::write(fs.path().join("cgroup.subtree_control"), "cpu memory\n").unwrap();
        let l = Limits {
            cpu_max_percent: Some(250),
            ..Limits::default()
        };
        let g = Cgroup::setup_at(fs.path(), &name("a"), &l)
            .unwrap()
            .unwrap();
        let read = |p: &str| std::fs::read_to_string(fs.path().join(p)).unwrap();
        assert_eq!(read("cgroup.subtree_control"), "cpu memory\n");
        assert_eq!(read("hedge/cgroup.subtree_control"), "+cpu");
        assert_eq!(read("hedge/a/cpu.max"), "250000 100000\n");
        assert!(!g.path().join("memory.max").exists());
    }

    #[test]
    fn cgroup_unavailable_is_a_notice_not_an_error() {
        let l = Limits {
            memory_max: Some(1 << 20),
            ..Limits::default()
        };
        // No cgroup2 at all.
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(
            Cgroup::setup_at(empty.path(), &name("a"), &l).unwrap(),
            None
        );
        assert!(!empty.path().join("hedge").exists());
        // cgroup2 without the memory controller (hybrid layout).
        let fs = fake_cgroupfs("");
        assert_eq!(Cgroup::setup_at(fs.path(), &name("a"), &l).unwrap(), None);
        // No limits asked: nothing to do.
        let fs = fake_cgroupfs("cpu memory");
        assert_eq!(
            Cgroup::setup_at(fs.path(), &name("a"), &Limits::default()).unwrap(),
            None
        );
        assert!(!fs.path().join("hedge").exists());
    }

    #[test]
    fn parse_size_cases() {
        for (s, n) in [
            ("1048576", 1_048_576),
            ("0", 0),
            ("512K", 512 << 10),
            ("512k", 512 << 10),
            ("64M", 64 << 20),
            ("64Mi", 64 << 20),
            ("64MiB", 64 << 20),
            ("64MB", 64 << 20),
            (" 1G ", 1 << 30),
            ("2 G", 2 << 30),
            ("3T", 3 << 40),
            ("100B", 100),
        ] {
            assert_eq!(parse_size(s).unwrap(), n, "{s}");
        }
        for s in [
            "",
            "M",
            "-1",
            "1.5G",
            "12X",
            "64MM",
            "64Mx",
            "99999999999999999999",
            "16777216T",
            "1 2",
        ] {
            assert!(
                matches!(parse_size(s), Err(PartitionError::BadSize(_))),
                "{s}"
            );
        }
    }
}
