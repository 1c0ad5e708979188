//! Partitions: the isolated home of one instance, `<state-dir>/partitions/<name>/`
//! with `etc/ srv/ var/log/ tmp/`.
//!
//! Contract: [`Partitions::ensure`] creates a partition's tree idempotently. When the
//! node runs as root, every partition gets its own uid (== gid) from the configured
//! range: an existing partition keeps the uid that owns its directory, a new one takes
//! the lowest free uid; the whole tree is owned by it, directories are mode 0750
//! (`tmp/` 0700). Without root the layout is the same, owned by the current user.
//! `partitions/` itself is mode 0711: a partition's uid can pass through it to its own
//! partition but cannot list the other tenants' names.
//!
//! A uid is free when no other partition owns it, it is not in [`quarantine`] (a uid
//! freed by [`Partitions::remove`] waits there, [`quarantine::DEFAULT_HOLD`] unless
//! configured, across daemon restarts), no live process has it, and no user or group
//! of the host has it as id: such ids are skipped, never handed out, and
//! [`Partitions::check_range`] logs them. Host ids are asked of NSS by key through
//! `getent` in a child process ([`host_ids`]), never in the daemon, which therefore
//! never loads an NSS module: for a new uid when it is allocated, and for an existing
//! partition's uid at its first start in this process. [`Partitions::prefetch_host_ids`]
//! asks about every existing partition's uid at once and without waiting (a boot
//! overlaps it with opening the store); its answers serve those first starts until
//! [`Partitions::forget_prefetched`] (the daemon calls it once the boot's reconcile is
//! done, so a later first start asks afresh). The caller kills the instance's
//! processes (its cgroup, or [`crate::supervisor::reap`]) before calling
//! [`Partitions::remove`].
//!
//! The partition tree is writable by the instance, so it may hold symlinks planted to
//! point anywhere (`etc -> /`). The node never follows one: directories are walked by
//! descriptor with `O_NOFOLLOW` (see the private `at` module), [`Partitions::write_file`]
//! refuses a path through a symlink, and [`Partitions::remove`] uses
//! [`std::fs::remove_dir_all`], which removes symlinks without following them.
//!
//! Driven by the supervisor (ensure before start, write the rendered config files,
//! remove on destroy). Resource limits live in [`limits`].

pub(crate) mod at;
pub mod cgroup;
pub mod command;
pub mod host_ids;
pub mod limits;
pub mod quarantine;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use hedge_wire::types::Name;
use nix::errno::Errno;

pub use limits::parse_size;

/// Mode of the partition's directories.
const DIR_MODE: u32 = 0o750;
/// Mode of `partitions/`: traversable, not listable, by partition uids.
const ROOT_MODE: u32 = 0o711;
/// Mode of `tmp/`.
const TMP_MODE: u32 = 0o700;
/// Mode of the config files written by [`Partitions::write_file`].
const FILE_MODE: u32 = 0o640;
/// Longest config file path, bytes.
const REL_MAX: usize = 1024;
/// Longest component of a config file path, bytes.
const COMPONENT_MAX: usize = 255;
/// Deepest tree [`Partitions::ensure`] re-owns when a partition changes uid.
const MAX_DEPTH: usize = 64;

/// Why a partition operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    /// A system call failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// The system call (`open`, `write`, `rename`, …).
        op: &'static str,
        /// The path it was made on.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A config file path is not a plain relative path.
    #[error("bad path {path:?} in partition: {reason}")]
    BadPath {
        /// The path (cut to 128 bytes).
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A path component inside the partition is a symlink; it is never followed.
    #[error("{} is a symlink; refusing to follow it out of the partition", .0.display())]
    Symlink(PathBuf),
    /// A path component inside the partition exists and is not a directory.
    #[error("{} exists and is not a directory", .0.display())]
    NotDir(PathBuf),
    /// Every uid of the configured range owns a partition.
    #[error("no free partition uid in {lo}..={hi} (each is in use, quarantined after a destroy, held by a live process, or a host user's or group's id)")]
    UidsExhausted {
        /// First uid of the range (uid 0 is never handed out).
        lo: u32,
        /// Last uid of the range.
        hi: u32,
    },
    /// A tree to re-own is deeper than the node walks.
    #[error("{}: directory tree deeper than {MAX_DEPTH} levels", .0.display())]
    TooDeep(PathBuf),
    /// A size did not parse (see [`parse_size`]).
    #[error("bad size {0:?}: expected a number with an optional K, M, G or T suffix")]
    BadSize(String),
}

/// One partition as [`Partitions::ensure`] left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// The instance name, also the directory name.
    pub name: Name,
    /// `<state-dir>/partitions/<name>`.
    pub dir: PathBuf,
    /// `(uid, gid)` owning the tree when the node runs as root; `None` otherwise.
    pub owner: Option<(u32, u32)>,
}

/// All partitions of a node, under `<state-dir>/partitions/`.
#[derive(Debug)]
pub struct Partitions {
    root: PathBuf,
    uid_range: (u32, u32),
    as_root: bool,
    /// `<state_dir>/uid-quarantine`.
    quarantine_file: PathBuf,
    /// How long a freed uid waits.
    hold: Duration,
    /// Serialises uid allocation within this process, and holds the uid this process
    /// checked (free, not a host id) or assigned for each partition: a partition still
    /// owned by it is not checked again at its next start (a restart costs no NSS
    /// lookup and no scan of the other partitions). [`Partitions::remove`] forgets it.
    alloc: Mutex<BTreeMap<String, u32>>,
    /// The owner of each partition directory, scanned once when a start first needs it
    /// and kept up to date by [`Partitions::ensure`]; [`Partitions::remove`] drops it
    /// (scanned again when next needed). A boot that checks every partition's uid scans
    /// the partitions once, not once per partition. Locked only under `alloc`.
    owners: Mutex<Option<BTreeMap<std::ffi::OsString, u32>>>,
    /// Host ids asked about ahead ([`Partitions::prefetch_host_ids`]): the question
    /// while its answer is not needed yet, then the answer (each uid asked about, and
    /// whether it is a host id) until [`Partitions::forget_prefetched`].
    prefetched: Mutex<Prefetched>,
}

/// [`Partitions::prefetch_host_ids`]'s question, then its answer.
#[derive(Debug, Default)]
enum Prefetched {
    /// Nothing asked ahead (or forgotten): every first start asks.
    #[default]
    None,
    /// Asked about these uids; the answer is not collected yet.
    Asked(BTreeSet<u32>, host_ids::Pending),
    /// The uids asked about, and those of them that are host ids.
    Answered(BTreeSet<u32>, BTreeSet<u32>),
}

impl Partitions {
    /// Partitions under `<state_dir>/partitions/`, with uids from `uid_range`
    /// (inclusive; uid 0 is never handed out) when running as root.
    pub fn new(state_dir: &Path, uid_range: (u32, u32)) -> Self {
        Self::with_root(state_dir, uid_range, nix::unistd::geteuid().is_root())
    }

    fn with_root(state_dir: &Path, uid_range: (u32, u32), as_root: bool) -> Self {
        Partitions {
            root: state_dir.join("partitions"),
            uid_range,
            as_root,
            quarantine_file: state_dir.join("uid-quarantine"),
            hold: quarantine::DEFAULT_HOLD,
            alloc: Mutex::new(BTreeMap::new()),
            owners: Mutex::new(None),
            prefetched: Mutex::new(Prefetched::None),
        }
    }

    /// Sets how long a freed uid waits before reuse.
    pub fn with_quarantine(mut self, hold: Duration) -> Self {
        self.hold = hold;
        self
    }

    /// Logs the uids of the range that belong to host users or groups (they are
    /// skipped); returns how many there are. Enumerates both databases through
    /// `getent`: a boot runs it off its path ([`Partitions::range_check`]).
    pub fn check_range(&self) -> usize {
        self.range_check()()
    }

    /// [`Partitions::check_range`] as a job for another thread.
    pub fn range_check(&self) -> impl FnOnce() -> usize + Send + 'static {
        let (as_root, lo, hi) = (self.as_root, self.uid_range.0.max(1), self.uid_range.1);
        move || {
            if !as_root {
                return 0;
            }
            let taken: Vec<u32> = host_ids::Pending::enumerate()
                .wait()
                .range(lo..=hi)
                .copied()
                .collect();
            if let (Some(first), Some(last)) = (taken.first(), taken.last()) {
                tracing::warn!(
                    count = taken.len(),
                    first,
                    last,
                    "partition uid range overlaps host users or groups; those ids are never handed out"
                );
            }
            taken.len()
        }
    }

    /// Starts asking whether the uids owning the existing partitions (those of the
    /// range) are host ids, without waiting: the first start of each of them in this
    /// process takes its answer. Nothing to do without root.
    pub fn prefetch_host_ids(&self) {
        if !self.as_root {
            return;
        }
        let _alloc = self.alloc.lock().unwrap_or_else(|e| e.into_inner());
        let uids: BTreeSet<u32> = match self.scan_owners() {
            Ok(owners) => {
                let uids = owners
                    .values()
                    .copied()
                    .filter(|u| self.in_range(*u))
                    .collect();
                *self.owners() = Some(owners);
                uids
            }
            Err(_) => return, // `ensure` reports it
        };
        if uids.is_empty() {
            return;
        }
        let pending = host_ids::Pending::lookup(&uids);
        *self.prefetch() = Prefetched::Asked(uids, pending);
    }

    /// Drops what [`Partitions::prefetch_host_ids`] learnt (collecting its processes if
    /// it is still out): from now on a first start asks afresh.
    pub fn forget_prefetched(&self) {
        let old = std::mem::take(&mut *self.prefetch());
        if let Prefetched::Asked(_, pending) = old {
            let _ = pending.wait();
        }
    }

    /// Where the partition of `name` lives (whether or not it exists).
    pub fn path(&self, name: &Name) -> PathBuf {
        self.root.join(name.as_str())
    }

    /// Whether the partition of `name` exists (a symlink in its place does not count).
    pub fn exists(&self, name: &Name) -> bool {
        std::fs::symlink_metadata(self.path(name)).is_ok_and(|m| m.is_dir())
    }

    /// Creates the partition of `name`, or repairs its layout, owner and modes.
    pub fn ensure(&self, name: &Name) -> Result<Partition, PartitionError> {
        let mut checked = self.alloc.lock().unwrap_or_else(|e| e.into_inner());
        std::fs::create_dir_all(&self.root).map_err(io_err("create", &self.root))?;
        let root = at::open_dir(&self.root).map_err(|e| classify(e, "open", &self.root))?;
        root.set_permissions(std::fs::Permissions::from_mode(ROOT_MODE))
            .map_err(io_err("chmod", &self.root))?;
        let dir = self.path(name);
        let (pdir, _) = open_or_create_dir(&root, OsStr::new(name.as_str()), &dir)?;

        let owner = if self.as_root {
            let current = pdir.metadata().map_err(io_err("stat", &dir))?.uid();
            let uid = if checked.get(name.as_str()) == Some(&current) {
                current
            } else {
                let used = self.uids_in_use(name)?;
                if self.in_range(current) && !used.contains(&current) && !self.host_id(current) {
                    current
                } else {
                    self.free_uid(&used)?
                }
            };
            checked.insert(name.as_str().to_owned(), uid);
            if let Some(owners) = self.owners().as_mut() {
                owners.insert(name.as_str().into(), uid);
            }
            if uid != current {
                tracing::info!(instance = %name, uid, previous = current, "partition uid assigned");
                chown_tree(&pdir, &dir, uid, 0)?;
            }
            Some((uid, uid))
        } else {
            None
        };

        apply(&pdir, &dir, DIR_MODE, owner)?;
        for (sub, mode) in [
            ("etc", DIR_MODE),
            ("srv", DIR_MODE),
            ("var", DIR_MODE),
            ("tmp", TMP_MODE),
        ] {
            let path = dir.join(sub);
            let (d, _) = open_or_create_dir(&pdir, OsStr::new(sub), &path)?;
            apply(&d, &path, mode, owner)?;
            if sub == "var" {
                let log = path.join("log");
                let (l, _) = open_or_create_dir(&d, OsStr::new("log"), &log)?;
                apply(&l, &log, DIR_MODE, owner)?;
            }
        }
        Ok(Partition {
            name: name.clone(),
            dir,
            owner,
        })
    }

    /// The uid owning the partition of `name` when the node runs as root and it is one
    /// of the range's (what [`Partitions::remove`] frees).
    pub fn uid_of(&self, name: &Name) -> Option<u32> {
        let m = std::fs::symlink_metadata(self.path(name)).ok()?;
        (self.as_root && m.is_dir() && self.in_range(m.uid())).then(|| m.uid())
    }

    /// Removes the partition of `name`; no error if it does not exist. Symlinks inside
    /// are removed, never followed. Its uid goes into quarantine.
    pub fn remove(&self, name: &Name) -> Result<(), PartitionError> {
        let mut checked = self.alloc.lock().unwrap_or_else(|e| e.into_inner());
        checked.remove(name.as_str());
        *self.owners() = None;
        let freed = self.uid_of(name);
        let result = self.remove_dir(name);
        if let Some(uid) = freed {
            if let Some(clock) = quarantine::now() {
                let mut q = quarantine::load(&self.quarantine_file, &clock, self.hold);
                q.hold(uid, clock.secs);
                quarantine::save(&self.quarantine_file, &q)
                    .map_err(io_err("write", &self.quarantine_file))?;
                tracing::info!(instance = %name, uid, hold_s = self.hold.as_secs(), "partition uid quarantined");
            }
        }
        result
    }

    fn remove_dir(&self, name: &Name) -> Result<(), PartitionError> {
        let dir = self.path(name);
        match std::fs::symlink_metadata(&dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("stat", &dir)(e)),
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&dir).or_else(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(io_err("remove", &dir)(e))
                }
            }),
            // Not a directory (a stray file or symlink): remove the entry itself.
            Ok(_) => std::fs::remove_file(&dir).map_err(io_err("remove", &dir)),
        }
    }

    /// Writes `contents` to `rel` inside the partition, atomically (temporary file in the
    /// same directory, then rename), mode 0640, owned by the partition's owner. Missing
    /// parent directories are created (0750). Refused if `rel` fails [`check_rel_path`]
    /// or if any existing component of it is a symlink.
    pub fn write_file(
        &self,
        part: &Partition,
        rel: &str,
        contents: &[u8],
    ) -> Result<(), PartitionError> {
        check_rel_path(rel)?;
        let comps: Vec<&str> = rel.split('/').collect();
        let Some((file_name, parents)) = comps.split_last() else {
            return Err(bad_path(rel, "empty"));
        };

        // A clear error for a planted symlink before touching anything.
        let mut path = part.dir.clone();
        for (i, c) in comps.iter().enumerate() {
            path.push(c);
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.file_type().is_symlink() => return Err(PartitionError::Symlink(path)),
                Ok(m) if i + 1 < comps.len() && !m.is_dir() => {
                    return Err(PartitionError::NotDir(path))
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) => return Err(io_err("stat", &path)(e)),
            }
        }

        // The race-free walk: by descriptor, never following a symlink.
        let mut path = part.dir.clone();
        let mut dir = at::open_dir(&part.dir).map_err(|e| classify(e, "open", &part.dir))?;
        for c in parents {
            path.push(c);
            let (d, created) = open_or_create_dir(&dir, OsStr::new(c), &path)?;
            if created {
                apply(&d, &path, DIR_MODE, part.owner)?;
            }
            dir = d;
        }
        path.push(file_name);
        write_atomic(&dir, OsStr::new(file_name), &path, contents, part.owner)
    }

    fn in_range(&self, uid: u32) -> bool {
        uid != 0 && uid >= self.uid_range.0 && uid <= self.uid_range.1
    }

    fn owners(&self) -> std::sync::MutexGuard<'_, Option<BTreeMap<std::ffi::OsString, u32>>> {
        self.owners.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn prefetch(&self) -> std::sync::MutexGuard<'_, Prefetched> {
        self.prefetched.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `uid` is the id of a host user or group: from the prefetched answer when
    /// it covers `uid`, else asked now.
    fn host_id(&self, uid: u32) -> bool {
        let mut prefetched = self.prefetch();
        if let Prefetched::Asked(..) = &*prefetched {
            if let Prefetched::Asked(asked, pending) = std::mem::take(&mut *prefetched) {
                *prefetched = Prefetched::Answered(asked, pending.wait());
            }
        }
        if let Prefetched::Answered(asked, host) = &*prefetched {
            if asked.contains(&uid) {
                return host.contains(&uid);
            }
        }
        drop(prefetched);
        !host_ids::Pending::lookup(&BTreeSet::from([uid]))
            .wait()
            .is_empty()
    }

    /// Uids owning the directories of partitions other than `except` (from the scan
    /// kept in `owners`, made now if there is none).
    fn uids_in_use(&self, except: &Name) -> Result<BTreeSet<u32>, PartitionError> {
        let mut owners = self.owners();
        let owners = match owners.as_mut() {
            Some(o) => o,
            None => owners.insert(self.scan_owners()?),
        };
        Ok(owners
            .iter()
            .filter(|(n, _)| n.as_os_str() != OsStr::new(except.as_str()))
            .map(|(_, uid)| *uid)
            .collect())
    }

    /// The owner of every partition directory on disk.
    fn scan_owners(&self) -> Result<BTreeMap<std::ffi::OsString, u32>, PartitionError> {
        let mut owners = BTreeMap::new();
        for entry in std::fs::read_dir(&self.root).map_err(io_err("list", &self.root))? {
            let entry = entry.map_err(io_err("list", &self.root))?;
            match std::fs::symlink_metadata(entry.path()) {
                Ok(m) if m.is_dir() => {
                    owners.insert(entry.file_name(), m.uid());
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("stat", &entry.path())(e)),
            }
        }
        Ok(owners)
    }

    /// The lowest uid of the range not in `used`, not quarantined, not a host user's or
    /// group's and not held by a live process.
    fn free_uid(&self, used: &BTreeSet<u32>) -> Result<u32, PartitionError> {
        let (lo, hi) = (self.uid_range.0.max(1), self.uid_range.1);
        let held: BTreeSet<u32> = match quarantine::now() {
            Some(clock) => {
                let mut q = quarantine::load(&self.quarantine_file, &clock, self.hold);
                if q.expire(clock.secs) {
                    let _ = quarantine::save(&self.quarantine_file, &q);
                }
                q.uids().collect()
            }
            None => BTreeSet::new(),
        };
        let live = crate::supervisor::process_identity::live_uids();
        let mut candidates = (lo..=hi)
            .filter(|u| !used.contains(u) && !held.contains(u) && !live.contains(u))
            .peekable();
        // Host ids are asked about a batch of candidates at a time: one `getent` pair
        // answers for the usual case (the first candidate is free).
        while candidates.peek().is_some() {
            let batch: BTreeSet<u32> = candidates.by_ref().take(HOST_ID_BATCH).collect();
            let host = host_ids::Pending::lookup(&batch).wait();
            if let Some(u) = batch.iter().find(|u| !host.contains(u)) {
                return Ok(*u);
            }
        }
        Err(PartitionError::UidsExhausted { lo, hi })
    }
}

/// Candidate uids asked about at once when allocating.
const HOST_ID_BATCH: usize = 32;

/// Checks that `rel` is a plain relative path: 1..=1024 bytes, no NUL, not absolute,
/// every `/`-separated component non-empty, not `.` or `..`, at most 255 bytes.
/// Callers use it to refuse a request before anything touches the disk.
pub fn check_rel_path(rel: &str) -> Result<(), PartitionError> {
    if rel.is_empty() {
        return Err(bad_path(rel, "empty"));
    }
    if rel.len() > REL_MAX {
        return Err(bad_path(rel, "longer than 1024 bytes"));
    }
    if rel.contains('\0') {
        return Err(bad_path(rel, "contains a NUL byte"));
    }
    if rel.starts_with('/') {
        return Err(bad_path(rel, "absolute"));
    }
    for c in rel.split('/') {
        match c {
            "" => return Err(bad_path(rel, "empty component")),
            "." | ".." => return Err(bad_path(rel, "`.` or `..` component")),
            c if c.len() > COMPONENT_MAX => {
                return Err(bad_path(rel, "component longer than 255 bytes"))
            }
            _ => {}
        }
    }
    Ok(())
}

fn bad_path(rel: &str, reason: &'static str) -> PartitionError {
    let mut end = rel.len().min(128);
    while !rel.is_char_boundary(end) {
        end -= 1;
    }
    PartitionError::BadPath {
        path: rel[..end].to_owned(),
        reason,
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PartitionError + 'a {
    move |source| PartitionError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Maps an error of opening a directory without following symlinks.
fn classify(e: io::Error, op: &'static str, path: &Path) -> PartitionError {
    if at::is_errno(&e, Errno::ELOOP) {
        return PartitionError::Symlink(path.to_owned());
    }
    if at::is_errno(&e, Errno::ENOTDIR) {
        return match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => PartitionError::Symlink(path.to_owned()),
            _ => PartitionError::NotDir(path.to_owned()),
        };
    }
    io_err(op, path)(e)
}

/// Opens the directory `name` in `parent`, creating it if missing; never follows a
/// symlink. Returns whether it was created.
fn open_or_create_dir(
    parent: &File,
    name: &OsStr,
    path: &Path,
) -> Result<(File, bool), PartitionError> {
    let created = match at::mkdir_at(parent, name, DIR_MODE) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(io_err("create", path)(e)),
    };
    match at::open_dir_at(parent, name) {
        Ok(d) => Ok((d, created)),
        Err(e) if at::is_errno(&e, Errno::ENOTDIR) || at::is_errno(&e, Errno::ELOOP) => {
            match at::lstat_at(parent, name) {
                Ok(m) if m.file_type().is_symlink() => {
                    Err(PartitionError::Symlink(path.to_owned()))
                }
                _ => Err(PartitionError::NotDir(path.to_owned())),
            }
        }
        Err(e) => Err(io_err("open", path)(e)),
    }
}

/// Sets the mode of an open directory and, when given, its owner.
fn apply(
    dir: &File,
    path: &Path,
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<(), PartitionError> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(dir, Some(uid), Some(gid)).map_err(io_err("chown", path))?;
    }
    dir.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io_err("chmod", path))
}

/// Gives every entry below `dir` to `uid:uid`, symlinks themselves, never their targets.
fn chown_tree(dir: &File, path: &Path, uid: u32, depth: usize) -> Result<(), PartitionError> {
    if depth >= MAX_DEPTH {
        return Err(PartitionError::TooDeep(path.to_owned()));
    }
    for entry in at::read_dir(dir).map_err(io_err("list", path))? {
        let entry = entry.map_err(io_err("list", path))?;
        let name = entry.file_name();
        let child = path.join(&name);
        match at::lchown_at(dir, &name, uid, uid) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err("chown", &child)(e)),
        }
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            match at::open_dir_at(dir, &name) {
                Ok(sub) => chown_tree(&sub, &child, uid, depth + 1)?,
                // Swapped for something else meanwhile: not followed.
                Err(e)
                    if at::is_errno(&e, Errno::ENOTDIR) || e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("open", &child)(e)),
            }
        }
    }
    Ok(())
}

/// Writes `name` in `dir` through a temporary file and a rename.
fn write_atomic(
    dir: &File,
    name: &OsStr,
    path: &Path,
    contents: &[u8],
    owner: Option<(u32, u32)>,
) -> Result<(), PartitionError> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let tmp = format!(
        ".hedge-tmp-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let tmp = OsStr::new(&tmp);
    let file = at::open_file_at(
        dir,
        tmp,
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE),
    )
    .map_err(io_err("create", path))?;
    let result = fill(&file, path, contents, owner)
        .and_then(|()| at::rename_at(dir, tmp, name).map_err(io_err("rename", path)));
    if result.is_err() {
        let _ = at::unlink_at(dir, tmp);
    }
    result
}

fn fill(
    mut file: &File,
    path: &Path,
    contents: &[u8],
    owner: Option<(u32, u32)>,
) -> Result<(), PartitionError> {
    file.write_all(contents).map_err(io_err("write", path))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(file, Some(uid), Some(gid)).map_err(io_err("chown", path))?;
    }
    file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))
        .map_err(io_err("chmod", path))?;
    file.sync_all().map_err(io_err("sync", path))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::fs::symlink;
    use std::os::unix::process::CommandExt;

    use super::*;

    fn name(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    fn uid(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().uid()
    }

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    /// For the tests that need root: skipped without it, failed under `CI`.
    fn can_run_as_root() -> bool {
        crate::test_host::can_run_as_root("root (partitions get their own uids as root)")
    }

    #[test]
    fn ensure_creates_layout_idempotently_without_root() {
        let tmp = tempfile::tempdir().unwrap();
        let parts = Partitions::with_root(tmp.path(), (60000, 60009), false);
        let n = name("web");
        assert!(!parts.exists(&n));
        let p = parts.ensure(&n).unwrap();
        assert_eq!(p.dir, tmp.path().join("partitions/web"));
        assert_eq!(p.owner, None);
        for sub in ["etc", "srv", "var", "var/log"] {
            assert_eq!(mode(&p.dir.join(sub)), 0o750, "{sub}");
        }
        assert_eq!(mode(&p.dir.join("tmp")), 0o700);
        assert_eq!(mode(&p.dir), 0o750);
        assert_eq!(mode(&tmp.path().join("partitions")), 0o711);
        std::fs::write(p.dir.join("srv/data"), b"keep").unwrap();
        let again = parts.ensure(&n).unwrap();
        assert_eq!(again, p);
        assert_eq!(std::fs::read(p.dir.join("srv/data")).unwrap(), b"keep");
        assert!(parts.exists(&n));
    }

    #[test]
    fn ensure_as_root_allocates_distinct_stable_uids() {
        if !can_run_as_root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let parts = Partitions::new(tmp.path(), (60000, 60002));
        let a = parts.ensure(&name("a")).unwrap();
        let b = parts.ensure(&name("b")).unwrap();
        assert_eq!(a.owner, Some((60000, 60000)));
        assert_eq!(b.owner, Some((60001, 60001)));
        for sub in ["", "etc", "srv", "var", "var/log", "tmp"] {
            let m = std::fs::metadata(b.dir.join(sub)).unwrap();
            assert_eq!((m.uid(), m.gid()), (60001, 60001), "{sub}");
        }
        // Stable across calls and across a new `Partitions` (it is read from disk).
        let parts2 = Partitions::new(tmp.path(), (60000, 60002));
        assert_eq!(
            parts2.ensure(&name("b")).unwrap().owner,
            Some((60001, 60001))
        );
        // A freed uid is quarantined: the next new partition gets another one…
        parts.remove(&name("a")).unwrap();
        assert_eq!(
            parts.ensure(&name("c")).unwrap().owner,
            Some((60002, 60002))
        );
        // …and, with the range used up, none, also after a daemon restart.
        assert!(matches!(
            parts.ensure(&name("d")),
            Err(PartitionError::UidsExhausted {
                lo: 60000,
                hi: 60002
            })
        ));
        let restarted = Partitions::new(tmp.path(), (60000, 60002));
        assert!(matches!(
            restarted.ensure(&name("d")),
            Err(PartitionError::UidsExhausted { .. })
        ));
        // Once the quarantine is over, the uid is handed out again.
        let short = Partitions::new(tmp.path(), (60000, 60002)).with_quarantine(Duration::ZERO);
        assert_eq!(
            short.ensure(&name("d")).unwrap().owner,
            Some((60000, 60000))
        );
    }

    /// Whether the test process (which may load NSS) knows `id` as a user or group.
    fn host_id(id: u32) -> bool {
        matches!(
            nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(id)),
            Ok(Some(_))
        ) || matches!(
            nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(id)),
            Ok(Some(_))
        )
    }

    #[test]
    fn ids_of_host_users_groups_and_live_processes_are_never_allocated() {
        if !can_run_as_root() {
            return;
        }
        // uid 0 is excluded by the range check; the first host user or group id above
        // it (e.g. `daemon`, 1) must be skipped.
        let host = (1..1000).find(|u| host_id(*u)).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let parts = Partitions::new(tmp.path(), (host, host));
        assert_eq!(parts.check_range(), 1);
        // The enumeration finds what the lookups find.
        let all = host_ids::Pending::enumerate().wait();
        assert!(all.contains(&host) && !all.contains(&64_321));
        assert!(matches!(
            parts.ensure(&name("a")),
            Err(PartitionError::UidsExhausted { .. })
        ));
        // A uid that a live process holds (here a child running as it).
        let busy = 64_321;
        assert!(!host_id(busy));
        let mut child = std::process::Command::new("sleep")
            .arg("1000")
            .uid(busy)
            .spawn()
            .unwrap();
        let parts = Partitions::new(tmp.path(), (busy, busy + 1));
        assert_eq!(parts.check_range(), 0);
        assert_eq!(
            parts.ensure(&name("b")).unwrap().owner,
            Some((busy + 1, busy + 1))
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn an_existing_partition_owned_by_a_host_id_is_refused_prefetched_or_not() {
        if !can_run_as_root() {
            return;
        }
        let host = (1..1000).find(|u| host_id(*u)).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        // A partition left owned by `host` (made while the range was another, or before
        // the host user existed): its first start must not keep that uid, and with
        // only that uid in the range there is none to give it.
        let dir = tmp.path().join("partitions/p");
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(host), Some(host)).unwrap();
        let fresh = Partitions::new(tmp.path(), (host, host));
        assert!(matches!(
            fresh.ensure(&name("p")),
            Err(PartitionError::UidsExhausted { .. })
        ));
        let prefetched = Partitions::new(tmp.path(), (host, host));
        prefetched.prefetch_host_ids();
        assert!(matches!(
            prefetched.ensure(&name("p")),
            Err(PartitionError::UidsExhausted { .. })
        ));
        prefetched.forget_prefetched();
        assert!(matches!(
            prefetched.ensure(&name("p")),
            Err(PartitionError::UidsExhausted { .. })
        ));
        // A uid of the range that no host user or group has is kept, prefetched too.
        let free = 64_331;
        assert!(!host_id(free));
        std::os::unix::fs::chown(&dir, Some(free), Some(free)).unwrap();
        let parts = Partitions::new(tmp.path(), (free, free));
        parts.prefetch_host_ids();
        assert_eq!(parts.ensure(&name("p")).unwrap().owner, Some((free, free)));
        parts.forget_prefetched();
    }

    #[test]
    fn ensure_as_root_reowns_a_tree_made_without_root() {
        if !can_run_as_root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let user = Partitions::with_root(tmp.path(), (0, 0), false);
        let p = user.ensure(&name("old")).unwrap();
        std::fs::create_dir_all(p.dir.join("srv/deep/er")).unwrap();
        std::fs::write(p.dir.join("srv/deep/er/f"), b"x").unwrap();
        let outside = tmp.path().join("outside");
        std::fs::write(&outside, b"not mine").unwrap();
        symlink(&outside, p.dir.join("srv/link")).unwrap();

        let parts = Partitions::with_root(tmp.path(), (61000, 61010), true);
        let p = parts.ensure(&name("old")).unwrap();
        assert_eq!(p.owner, Some((61000, 61000)));
        assert_eq!(uid(&p.dir.join("srv/deep/er/f")), 61000);
        assert_eq!(uid(&p.dir.join("srv/link")), 61000);
        // The symlink's target was not re-owned.
        assert_eq!(uid(&outside), 0);
    }

    #[test]
    fn ensure_refuses_planted_symlink_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let parts = Partitions::with_root(tmp.path(), (62000, 62010), is_root());
        let p = parts.ensure(&name("evil")).unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let before = mode(&outside);
        std::fs::remove_dir(p.dir.join("etc")).unwrap();
        symlink(&outside, p.dir.join("etc")).unwrap();
        assert!(matches!(
            parts.ensure(&name("evil")),
            Err(PartitionError::Symlink(_))
        ));
        assert_eq!(mode(&outside), before);
        assert_eq!(uid(&outside), nix::unistd::geteuid().as_raw());
    }

    #[test]
    fn remove_does_not_follow_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let parts = Partitions::with_root(tmp.path(), (62000, 62010), false);
        let p = parts.ensure(&name("gone")).unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("precious"), b"x").unwrap();
        symlink(&outside, p.dir.join("srv/escape")).unwrap();
        parts.remove(&name("gone")).unwrap();
        assert!(!parts.exists(&name("gone")));
        assert!(outside.join("precious").exists());
        parts.remove(&name("gone")).unwrap();
        parts.remove(&name("never")).unwrap();
    }

    #[test]
    fn check_rel_path_cases() {
        for ok in ["etc/app.conf", "a", "etc/.hidden", "a/b/c/d", "x..y"] {
            check_rel_path(ok).unwrap();
        }
        let long_comp = "a".repeat(256);
        let long_total = ["abcdefgh"; 120].join("/");
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "etc/../../x",
            "./x",
            "etc/.",
            "etc//x",
            "etc/",
            "a\0b",
            long_comp.as_str(),
            long_total.as_str(),
        ] {
            assert!(
                matches!(check_rel_path(bad), Err(PartitionError::BadPath { .. })),
                "{bad:?}"
            );
        }
        check_rel_path(&"a".repeat(255)).unwrap();
    }

    #[test]
    fn write_file_atomic_mode_and_parents() {
        let tmp = tempfile::tempdir().unwrap();
        let parts = Partitions::with_root(tmp.path(), (63000, 63010), is_root());
        let p = parts.ensure(&name("cfg")).unwrap();
        parts.write_file(&p, "etc/app.conf", b"port=1").unwrap();
        parts.write_file(&p, "etc/app.conf", b"port=2").unwrap();
        parts
            .write_file(&p, "etc/nginx/conf.d/site.conf", b"x")
            .unwrap();
        let f = p.dir.join("etc/app.conf");
        assert_eq!(std::fs::read(&f).unwrap(), b"port=2");
        assert_eq!(mode(&f), 0o640);
        assert_eq!(mode(&p.dir.join("etc/nginx/conf.d")), 0o750);
        if let Some((u, _)) = p.owner {
            assert_eq!(uid(&f), u);
            assert_eq!(uid(&p.dir.join("etc/nginx")), u);
        }
        // No temporary file left behind.
        let names: Vec<_> = std::fs::read_dir(p.dir.join("etc"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn write_file_refuses_symlinks_and_bad_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let parts = Partitions::with_root(tmp.path(), (63000, 63010), is_root());
        let p = parts.ensure(&name("evil")).unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();

        // Planted directory symlink (`etc -> outside`).
        std::fs::remove_dir(p.dir.join("etc")).unwrap();
        symlink(&outside, p.dir.join("etc")).unwrap();
        assert!(matches!(
            parts.write_file(&p, "etc/x", b"pwn"),
            Err(PartitionError::Symlink(_))
        ));
        assert!(!outside.join("x").exists());

        // Planted file symlink at the last component.
        symlink(outside.join("target"), p.dir.join("srv/x")).unwrap();
        assert!(matches!(
            parts.write_file(&p, "srv/x", b"pwn"),
            Err(PartitionError::Symlink(_))
        ));
        assert!(!outside.join("target").exists());

        // A file where a directory is expected.
        std::fs::write(p.dir.join("srv/f"), b"").unwrap();
        assert!(matches!(
            parts.write_file(&p, "srv/f/x", b""),
            Err(PartitionError::NotDir(_))
        ));

        assert!(matches!(
            parts.write_file(&p, "../x", b""),
            Err(PartitionError::BadPath { .. })
        ));
        assert!(matches!(
            parts.write_file(&p, "/tmp/x", b""),
            Err(PartitionError::BadPath { .. })
        ));
    }
}
