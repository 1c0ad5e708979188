//! The cgroup v2 group of every instance: where its processes are counted, limited and
//! killed as one.
//!
//! Contract: [`Cgroups::detect`] finds a writable cgroup v2 hierarchy (the mount at
//! `/sys/fs/cgroup`, or on a hybrid layout the first other `cgroup2` mount, e.g.
//! `/sys/fs/cgroup/unified`) and makes the node's group `<mount>/hedge/<node-tag>`; the
//! tag is the node id plus a hash of its state directory, so two daemons on one host
//! never share a group. `None` (logged once) means no cgroup v2 here, or it is disabled
//! by `[partitions] cgroups = false`: the caller then kills by uid instead.
//! [`Cgroups::setup`] makes one group per instance, always (limits or not), and writes
//! `memory.max`/`cpu.max` when asked and the controllers are available (otherwise a
//! notice, at `info` once per process then at `debug`: the instance runs without them).
//! It is also how a changed limit reaches a running instance: called again on an
//! existing group it rewrites the limits in place, and a limit no longer asked for is
//! reset to `max` (no limit) where its file exists.
//! The supervisor opens [`Cgroup::procs_path`] before `fork` and the child writes "0"
//! to it before `exec`, so no process of the instance ever runs outside its group.
//! [`Cgroup::kill`] SIGKILLs every member (`cgroup.kill`, or each listed pid on kernels
//! before 5.14); [`Cgroup::signal`] sends one signal to every listed member.
//! [`Cgroup::freeze`] asks the kernel to freeze the group (`cgroup.freeze`, Linux 5.2+)
//! and [`Cgroup::is_frozen`] says whether it is (`frozen 1` in `cgroup.events`); the
//! caller waits for that with its own deadline and always calls [`Cgroup::thaw`].

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use hedge_wire::types::{Limits, Name};
use nix::sys::signal::Signal;
use sha2::{Digest, Sha256};

use super::PartitionError;

/// The group under which hedge makes one group per node.
const HEDGE_GROUP: &str = "hedge";
/// `cpu.max` period, microseconds.
const CPU_PERIOD_US: u64 = 100_000;
/// The kernel refuses a `cpu.max` quota below 1 ms.
const CPU_QUOTA_MIN_US: u64 = 1_000;
/// Rounds of "list and SIGKILL" when `cgroup.kill` is missing (forks race the listing).
const KILL_ROUNDS: usize = 16;

/// The node's cgroup v2 home: `<mount>/hedge/<node-tag>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroups {
    mount: PathBuf,
    base: PathBuf,
}

/// An instance's cgroup v2 group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    dir: PathBuf,
}

/// The cgroup2 mount point named in `/proc/self/mountinfo`'s text: the one at
/// `/sys/fs/cgroup` when there is one, else the first. Pure.
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    let mut found = None;
    for line in mountinfo.lines() {
        // Fields: id parent maj:min root mountpoint options [optional...] - fstype source super
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() != Some("cgroup2") {
            continue;
        }
        let Some(point) = left.split_whitespace().nth(4) else {
            continue;
        };
        // Mount points escape spaces and the like as octal (`\040`): skip those.
        if point.contains('\\') {
            continue;
        }
        if point == "/sys/fs/cgroup" {
            return Some(PathBuf::from(point));
        }
        found.get_or_insert_with(|| PathBuf::from(point));
    }
    found
}

/// The node's group name: `<node-id>-<8 hex digits of sha256(state dir)>`.
pub fn node_tag(node_id: &str, state_dir: &Path) -> String {
    let digest = Sha256::digest(state_dir.as_os_str().as_encoded_bytes());
    format!("{node_id}-{}", hedge_common::hex::encode(&digest[..4]))
}

impl Cgroups {
    /// The node's home in the host's cgroup v2 hierarchy, made if missing; `None` when
    /// there is none or it is not writable (logged at `info`).
    pub fn detect(tag: &str) -> Option<Cgroups> {
        let mount = std::fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|t| cgroup2_mount(&t));
        let Some(mount) = mount else {
            tracing::info!("no cgroup v2 hierarchy: instances are tracked and killed by uid");
            return None;
        };
        match Cgroups::at(&mount, tag) {
            Ok(c) => {
                tracing::info!(group = %c.base.display(), "instances run in cgroup v2 groups");
                Some(c)
            }
            Err(e) => {
                tracing::info!(mount = %mount.display(), error = %e, "cgroup v2 not writable: instances are tracked and killed by uid");
                None
            }
        }
    }

    /// The node's home under the cgroup2 mount `mount` (tests imitate one in a temp dir).
    pub fn at(mount: &Path, tag: &str) -> Result<Cgroups, PartitionError> {
        let top = mount.join(HEDGE_GROUP);
        let base = top.join(tag);
        for dir in [&top, &base] {
            match std::fs::create_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err("create", dir, e)),
            }
        }
        Ok(Cgroups {
            mount: mount.to_owned(),
            base,
        })
    }

    /// The node's group directory.
    pub fn path(&self) -> &Path {
        &self.base
    }

    /// Makes (or reuses) the group of `name` with the memory and CPU limits of `l` that
    /// can be enforced here. An error means the group could not be made or a limit
    /// could not be written.
    pub fn setup(&self, name: &Name, l: &Limits) -> Result<Cgroup, PartitionError> {
        let mut wanted = Vec::new();
        if l.memory_max.is_some() {
            wanted.push("memory");
        }
        if l.cpu_max_percent.is_some() {
            wanted.push("cpu");
        }
        let enforce = !wanted.is_empty()
            && match self.enable_controllers(&wanted) {
                Ok(()) => true,
                Err(why) => {
                    notice(name, &wanted, &why);
                    false
                }
            };
        let dir = self.base.join(name.as_str());
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("create", &dir, e)),
        }
        let group = Cgroup { dir };
        group.write_limits(l, enforce)?;
        Ok(group)
    }

    /// The groups of instances left under the node's group (by an earlier daemon).
    pub fn existing(&self) -> Vec<(String, Cgroup)> {
        let Ok(rd) = std::fs::read_dir(&self.base) else {
            return Vec::new();
        };
        rd.filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                Some((name, Cgroup { dir: e.path() }))
            })
            .collect()
    }

    /// Removes the empty instance groups and then the node's group if it is empty
    /// (at shutdown; groups are made again at the next start).
    pub fn remove_empty(&self) {
        for (_, g) in self.existing() {
            if g.is_empty() {
                let _ = g.remove();
            }
        }
        let _ = std::fs::remove_dir(&self.base);
    }

    /// Enables `wanted` from the mount down to the node's group.
    fn enable_controllers(&self, wanted: &[&str]) -> Result<(), String> {
        let controllers_file = self.mount.join("cgroup.controllers");
        let available = std::fs::read_to_string(&controllers_file)
            .map_err(|e| format!("cannot read {} ({e})", controllers_file.display()))?;
        let missing: Vec<&str> = wanted
            .iter()
            .copied()
            .filter(|c| !available.split_whitespace().any(|a| a == *c))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "cgroup v2 at {} lacks the {} controller(s) (cgroup v1 or hybrid layout?)",
                self.mount.display(),
                missing.join(", ")
            ));
        }
        let top = self.mount.join(HEDGE_GROUP);
        for dir in [&self.mount, &top, &self.base] {
            enable(dir, wanted)?;
        }
        Ok(())
    }
}

impl Cgroup {
    /// Writes the limits `l` sets (when `enforce`: the controllers are enabled) and
    /// resets to `max` those it does not set whose file exists (a limit removed from a
    /// request of a running instance).
    fn write_limits(&self, l: &Limits, enforce: bool) -> Result<(), PartitionError> {
        let memory = self.dir.join("memory.max");
        match l.memory_max {
            Some(bytes) if enforce => write(&memory, &format!("{bytes}\n"))?,
            None if memory.exists() => write(&memory, "max\n")?,
            _ => {}
        }
        let cpu = self.dir.join("cpu.max");
        match l.cpu_max_percent {
            Some(percent) if enforce => {
                let quota = (u64::from(percent) * (CPU_PERIOD_US / 100)).max(CPU_QUOTA_MIN_US);
                write(&cpu, &format!("{quota} {CPU_PERIOD_US}\n"))?;
            }
            None if cpu.exists() => write(&cpu, &format!("max {CPU_PERIOD_US}\n"))?,
            _ => {}
        }
        Ok(())
    }

    /// The group's directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Its `cgroup.procs`: a process that writes "0" to it moves itself in.
    pub fn procs_path(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// Moves process `pid` into the group (its later children follow).
    pub fn add_pid(&self, pid: u32) -> Result<(), PartitionError> {
        write(&self.procs_path(), &format!("{pid}\n"))
    }

    /// The pids in the group now (empty when the group is gone).
    pub fn pids(&self) -> Vec<u32> {
        std::fs::read_to_string(self.procs_path())
            .map(|t| parse_pids(&t))
            .unwrap_or_default()
    }

    /// Whether no process is in the group (or it is gone).
    pub fn is_empty(&self) -> bool {
        self.pids().is_empty()
    }

    /// Sends `sig` to every process listed in the group.
    pub fn signal(&self, sig: Signal) {
        for pid in self.pids().into_iter().filter_map(to_pid) {
            let _ = nix::sys::signal::kill(pid, sig);
        }
    }

    /// SIGKILLs every process in the group, including those it forks meanwhile.
    pub fn kill(&self) -> Result<(), PartitionError> {
        let file = self.dir.join("cgroup.kill");
        match std::fs::write(&file, "1") {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound && !self.dir.exists() => return Ok(()),
            // No cgroup.kill before Linux 5.14: list and kill until empty.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("write", &file, e)),
        }
        for _ in 0..KILL_ROUNDS {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            for pid in pids.into_iter().filter_map(to_pid) {
                let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            }
        }
        Ok(())
    }

    /// Asks the kernel to freeze every process of the group (and those it forks). It is
    /// frozen once [`Cgroup::is_frozen`] says so; a missing `cgroup.freeze` (a kernel
    /// before 5.2, or the group is gone) is an error.
    pub fn freeze(&self) -> Result<(), PartitionError> {
        write(&self.dir.join("cgroup.freeze"), "1\n")
    }

    /// Lets the group's processes run again.
    pub fn thaw(&self) -> Result<(), PartitionError> {
        write(&self.dir.join("cgroup.freeze"), "0\n")
    }

    /// Whether the kernel reports the group frozen (`frozen 1` in `cgroup.events`).
    pub fn is_frozen(&self) -> Result<bool, PartitionError> {
        let file = self.dir.join("cgroup.events");
        std::fs::read_to_string(&file)
            .map(|t| parse_frozen(&t) == Some(true))
            .map_err(|e| io_err("read", &file, e))
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

/// The pids of a `cgroup.procs` text. Pure. Never 0: a real group never lists it, and
/// `kill(0, …)` would signal the daemon's own process group.
pub fn parse_pids(text: &str) -> Vec<u32> {
    text.split_whitespace()
        .filter_map(|w| w.parse().ok())
        .filter(|&p| p != 0)
        .collect()
}

/// The `frozen` field of a `cgroup.events` text. Pure.
pub fn parse_frozen(events: &str) -> Option<bool> {
    events.lines().find_map(|l| match l.split_once(' ')? {
        ("frozen", v) => Some(v.trim() == "1"),
        _ => None,
    })
}

/// A listed pid as nix's `Pid`; `None` for one past `i32::MAX`, which the kernel never
/// lists (and which `as` would turn negative: a process group).
fn to_pid(raw: u32) -> Option<nix::unistd::Pid> {
    i32::try_from(raw).ok().map(nix::unistd::Pid::from_raw)
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
    fn mount_is_found_in_mountinfo() {
        let hybrid = "25 1 0:22 / /sys rw - sysfs sysfs rw\n\
                      31 25 0:27 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755\n\
                      33 31 0:29 / /sys/fs/cgroup/memory rw,relatime shared:9 - cgroup cgroup rw,memory\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let pure = "5 1 0:40 / /other rw - cgroup2 cgroup2 rw\n\
                    6 1 0:41 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(cgroup2_mount(pure), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(
            cgroup2_mount("33 31 0:29 / /x rw - cgroup cgroup rw\n"),
            None
        );
        assert_eq!(cgroup2_mount("garbage\n\n - \n"), None);
    }

    #[test]
    fn node_tags_differ_by_state_dir() {
        let a = node_tag("n1", Path::new("/var/lib/hedge"));
        let b = node_tag("n1", Path::new("/tmp/x/n"));
        assert!(a.starts_with("n1-") && a.len() == 11, "{a}");
        assert_ne!(a, b);
        assert_eq!(a, node_tag("n1", Path::new("/var/lib/hedge")));
    }

    #[test]
    fn every_instance_gets_a_group_even_without_limits() {
        let fs = fake_cgroupfs("cpu memory");
        let cg = Cgroups::at(fs.path(), "node-1").unwrap();
        let g = cg.setup(&name("plain"), &Limits::default()).unwrap();
        assert_eq!(g.path(), fs.path().join("hedge/node-1/plain"));
        assert!(g.path().is_dir());
        // No controller was enabled for an instance that asks for no limit.
        let read = |p: &str| std::fs::read_to_string(fs.path().join(p)).unwrap();
        assert_eq!(read("cgroup.subtree_control"), "");
        assert_eq!(
            g.procs_path(),
            fs.path().join("hedge/node-1/plain/cgroup.procs")
        );
        assert_eq!(cg.existing(), vec![("plain".to_string(), g)]);
    }

    #[test]
    fn cgroup_writes_limits_and_enables_controllers() {
        let fs = fake_cgroupfs("cpuset cpu io memory pids\n");
        let cg = Cgroups::at(fs.path(), "n").unwrap();
        let l = Limits {
            memory_max: Some(64 << 20),
            cpu_max_percent: Some(50),
            ..Limits::default()
        };
        let g = cg.setup(&name("web"), &l).unwrap();
        assert_eq!(g.path(), fs.path().join("hedge/n/web"));
        let read = |p: &str| std::fs::read_to_string(fs.path().join(p)).unwrap();
        assert_eq!(read("hedge/n/web/memory.max"), "67108864\n");
        assert_eq!(read("hedge/n/web/cpu.max"), "50000 100000\n");
        assert_eq!(read("cgroup.subtree_control"), "+memory +cpu");
        assert_eq!(read("hedge/cgroup.subtree_control"), "+memory +cpu");
        assert_eq!(read("hedge/n/cgroup.subtree_control"), "+memory +cpu");
        g.add_pid(4242).unwrap();
        assert_eq!(read("hedge/n/web/cgroup.procs"), "4242\n");
        assert_eq!(g.pids(), vec![4242]);

        // Idempotent: a second setup reuses the group.
        let l2 = Limits {
            cpu_max_percent: Some(0),
            ..Limits::default()
        };
        cg.setup(&name("web"), &l2).unwrap();
        assert_eq!(read("hedge/n/web/cpu.max"), "1000 100000\n");
        // A limit no longer asked for is lifted, not left in place.
        assert_eq!(read("hedge/n/web/memory.max"), "max\n");
        // A changed limit is rewritten in the existing group.
        let l3 = Limits {
            memory_max: Some(32 << 20),
            ..Limits::default()
        };
        cg.setup(&name("web"), &l3).unwrap();
        assert_eq!(read("hedge/n/web/memory.max"), "33554432\n");
        assert_eq!(read("hedge/n/web/cpu.max"), "max 100000\n");

        for f in ["memory.max", "cpu.max", "cgroup.procs"] {
            std::fs::remove_file(g.path().join(f)).unwrap();
        }
        assert!(g.is_empty());
        g.remove().unwrap();
        assert!(!g.path().exists());
        g.remove().unwrap();
        // Killing a group that is gone is not an error.
        g.kill().unwrap();
    }

    #[test]
    fn unavailable_controllers_are_a_notice_not_an_error() {
        let l = Limits {
            memory_max: Some(1 << 20),
            ..Limits::default()
        };
        // cgroup2 without the memory controller (hybrid layout): the group is still made.
        let fs = fake_cgroupfs("");
        let cg = Cgroups::at(fs.path(), "n").unwrap();
        let g = cg.setup(&name("a"), &l).unwrap();
        assert!(g.path().is_dir());
        assert!(!g.path().join("memory.max").exists());
    }

    #[test]
    fn frozen_is_read_from_cgroup_events() {
        assert_eq!(parse_frozen("populated 1\nfrozen 1\n"), Some(true));
        assert_eq!(parse_frozen("populated 0\nfrozen 0\n"), Some(false));
        assert_eq!(parse_frozen("populated 1\n"), None);
        assert_eq!(parse_frozen("frozenx 1\n"), None);
        let fs = fake_cgroupfs("");
        let cg = Cgroups::at(fs.path(), "n").unwrap();
        let g = cg.setup(&name("db"), &Limits::default()).unwrap();
        // No cgroup.events: an error, never "frozen".
        assert!(g.is_frozen().is_err());
        g.freeze().unwrap();
        let read = |p: &str| std::fs::read_to_string(g.path().join(p)).unwrap();
        assert_eq!(read("cgroup.freeze"), "1\n");
        std::fs::write(g.path().join("cgroup.events"), "populated 1\nfrozen 1\n").unwrap();
        assert!(g.is_frozen().unwrap());
        g.thaw().unwrap();
        assert_eq!(read("cgroup.freeze"), "0\n");
    }

    #[test]
    fn pids_parse() {
        assert_eq!(parse_pids("12\n345\n"), vec![12, 345]);
        assert_eq!(parse_pids(""), Vec::<u32>::new());
        assert_eq!(parse_pids("x\n7"), vec![7]);
        assert_eq!(parse_pids("0\n8\n"), vec![8]);
    }

    #[test]
    fn pids_past_i32_max_are_never_signalled() {
        assert_eq!(to_pid(4242), Some(nix::unistd::Pid::from_raw(4242)));
        assert_eq!(
            to_pid(0x7fff_ffff),
            Some(nix::unistd::Pid::from_raw(i32::MAX))
        );
        assert_eq!(to_pid(u32::MAX), None);
        assert_eq!(to_pid(1 << 31), None);
    }
}
