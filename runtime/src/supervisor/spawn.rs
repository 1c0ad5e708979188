//! Starting one instance's process: the thin I/O side of the supervisor.
//!
//! Contract: [`spawn`] starts `program` in the partition directory with a clean
//! environment (`PATH`, `HOME` = partition, `HEDGE_PARTITION`, and the rendered
//! parameters), in a new process group (pgid = pid), in the instance's cgroup when it
//! has one, as the partition's user when the daemon is root, with the requested
//! rlimits, and with `PR_SET_PDEATHSIG = SIGKILL`. The child is created by `clone3`
//! (see `clone_into`), inside its cgroup when it has one (`CLONE_INTO_CGROUP`); on a
//! kernel without it, the cgroup's `cgroup.procs` is opened before `fork` and the child
//! writes "0" to it, still as root, before it drops its privileges and calls `exec`.
//! Either way the program's first instruction already runs in its group, so nothing it
//! forks can escape the group's limits or its `cgroup.kill`.
//!
//! [`spawn`] does not wait for the child to reach `exec`: [`Spawned::exec`] tells
//! whether it did ([`ExecPending::wait`]), so a caller starting many instances starts
//! them all, then collects the confirmations. Only a confirmed process is running; a
//! failed `exec` is a failed start, never an exit, so [`Exit::wait`] is awaited only after
//! a confirmation.
//! stdout and stderr go to the partition's rotating log (`var/log/<name>.log`) through
//! two small pump tasks. The returned [`Exit`] must be awaited by the caller to learn
//! the exit.
//!
//! The parent-death signal fires when the *thread* that forked exits; the daemon runs a
//! current-thread tokio runtime, so that thread is the main thread and the signal fires
//! exactly when the daemon dies. Leftovers (e.g. grandchildren, which the signal does
//! not reach) are killed through their process group at the next boot (see `process_identity`).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use nix::sys::resource::{setrlimit, Resource};
use tokio::net::unix::pipe;
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

use super::clone_into;
use crate::logfile::{LogError, RotatingLog};

/// Errors of spawning.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The process could not be started (program missing, not executable, …).
    #[error("cannot start {program}: {source}")]
    Exec {
        /// The program as rendered (absolute, or looked up in `PATH`).
        program: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The instance's cgroup could not be opened.
    #[error("cannot open {path}: {source}")]
    Cgroup {
        /// The instance cgroup's `cgroup.procs` file the child joins before exec.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The log file could not be opened.
    #[error("cannot open log {path}: {source}")]
    Log {
        /// The log path.
        path: PathBuf,
        /// What the log file refused.
        source: LogError,
    },
}

/// Everything needed to start one process.
#[derive(Debug, Clone)]
pub struct SpawnSpec {
    /// Program (absolute, or looked up in the daemon's `PATH`).
    pub program: String,
    /// Arguments after the program name.
    pub args: Vec<String>,
    /// Variables set on top of the daemon's environment.
    pub env: Vec<(String, String)>,
    /// Partition directory: working directory and `HOME`.
    pub dir: PathBuf,
    /// uid/gid to drop to (root only).
    pub owner: Option<(u32, u32)>,
    /// The `cgroup.procs` of the instance's cgroup, joined before exec.
    pub cgroup_procs: Option<PathBuf>,
    /// rlimits applied in the child before exec (soft = hard).
    pub rlimits: Vec<(Resource, u64)>,
    /// Log file path.
    pub log: PathBuf,
    /// Rotate when the log would exceed this many bytes.
    pub log_max_bytes: u64,
    /// Rotated files kept.
    pub log_keep: usize,
}

/// A started process.
#[derive(Debug)]
pub struct Spawned {
    /// Its pid, also its process group id.
    pub pid: u32,
    /// Its exit: await [`Exit::wait`] once [`Spawned::exec`] confirmed the start.
    pub exit: Exit,
    /// Whether the child reached `exec`.
    pub exec: ExecPending,
}

/// Whether a started child reached `exec`, not known yet.
#[derive(Debug)]
pub struct ExecPending(Option<clone_into::ExecReport>);

impl ExecPending {
    /// Blocks until the child called `exec` (`Ok`: the program runs) or failed before it
    /// (the reason; the child has been reaped).
    pub fn wait(self, program: &str) -> Result<(), SpawnError> {
        match self.0 {
            None => Ok(()),
            Some(report) => report.wait().map_err(|source| SpawnError::Exec {
                program: program.to_string(),
                source,
            }),
        }
    }
}

/// How the exit of a started process is learnt.
#[derive(Debug)]
pub enum Exit {
    /// Started by `std`'s spawn (no cgroup, or a kernel without `CLONE_INTO_CGROUP`).
    Child(Child),
    /// Started by `clone3` into its cgroup: its pidfd.
    Pidfd(clone_into::Exit),
}

impl Exit {
    /// Waits for the process to end (and reaps it).
    pub async fn wait(self) -> std::io::Result<std::process::ExitStatus> {
        match self {
            Exit::Child(mut c) => c.wait().await,
            Exit::Pidfd(e) => e.wait().await,
        }
    }
}

/// Starts the process described by `spec`, without waiting for its `exec` (see
/// [`Spawned::exec`]). With a cgroup it is created inside it ([`clone_into`]); where the
/// kernel cannot, it joins it by `cgroup.procs` before exec (and that start is
/// confirmed at once: `std` waits for the exec).
pub fn spawn(spec: &SpawnSpec) -> Result<Spawned, SpawnError> {
    let log = RotatingLog::open(spec.log.clone(), spec.log_max_bytes, spec.log_keep).map_err(
        |source| SpawnError::Log {
            path: spec.log.clone(),
            source,
        },
    )?;
    let log = Arc::new(Mutex::new(log));
    let exec_err = |source| SpawnError::Exec {
        program: spec.program.clone(),
        source,
    };
    let group = spec.cgroup_procs.as_deref().and_then(Path::parent);
    if (spec.cgroup_procs.is_none() || group.is_some()) && CLONE3.load(Ordering::Relaxed) {
        let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
        let plan = clone_into::plan(
            &spec.program,
            &spec.args,
            &environment(spec),
            &spec.dir,
            &path,
            spec.owner,
            spec.rlimits.clone(),
        )
        .map_err(exec_err)?;
        match clone_into::spawn_into(&plan, group) {
            Ok(child) => {
                for fd in [child.stdout, child.stderr] {
                    tokio::spawn(pump(Ok(fd), log.clone(), spec.log.clone()));
                }
                return Ok(Spawned {
                    pid: child.pid,
                    exit: Exit::Pidfd(child.exit),
                    exec: ExecPending(Some(child.exec)),
                });
            }
            Err(Ok(clone_into::Unsupported::Kernel)) => {
                tracing::info!("clone3 (into a cgroup) unsupported here; instances start by fork and join their cgroup by cgroup.procs");
                CLONE3.store(false, Ordering::Relaxed);
            }
            Err(Ok(clone_into::Unsupported::NotCgroup2)) => {}
            Err(Err(e)) => return Err(exec_err(e)),
        }
    }
    spawn_forked(spec, log)
}

/// Whether `clone3` (with `CLONE_INTO_CGROUP` when there is a group) is worth trying
/// (false once the kernel refused).
static CLONE3: AtomicBool = AtomicBool::new(true);

/// The child's environment: `PATH`, `HOME`, `HEDGE_PARTITION`, then the rendered ones.
fn environment(spec: &SpawnSpec) -> Vec<(String, String)> {
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into());
    let dir = spec.dir.to_string_lossy().into_owned();
    [
        ("PATH".to_string(), path),
        ("HOME".to_string(), dir.clone()),
        ("HEDGE_PARTITION".to_string(), dir),
    ]
    .into_iter()
    .chain(spec.env.iter().cloned())
    .collect()
}

/// [`spawn`] through `std`: `fork`, then the child joins its cgroup by `cgroup.procs`.
fn spawn_forked(spec: &SpawnSpec, log: Arc<Mutex<RotatingLog>>) -> Result<Spawned, SpawnError> {
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .current_dir(&spec.dir)
        .env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        )
        .env("HOME", &spec.dir)
        .env("HEDGE_PARTITION", &spec.dir)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    let cgroup = match &spec.cgroup_procs {
        Some(path) => Some(std::fs::OpenOptions::new().write(true).open(path).map_err(
            |source| SpawnError::Cgroup {
                path: path.clone(),
                source,
            },
        )?),
        None => None,
    };
    let owner = spec
        .owner
        .map(|(u, g)| (nix::unistd::Uid::from_raw(u), nix::unistd::Gid::from_raw(g)));
    let rlimits = spec.rlimits.clone();
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls (prctl, getppid, write, setrlimit, setgroups,
    // setgid, setuid) on data captured by move; it neither allocates nor takes locks.
    // Privileges are dropped here rather than through `Command::uid`, which would drop
    // them before this closure runs, when the child could no longer join its cgroup;
    // the parent-death signal is set after that, since a uid change clears it.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(move || {
            if let Some(procs) = &cgroup {
                // "0" moves the writer itself into the group.
                nix::unistd::write(procs, b"0")?;
            }
            for (res, value) in &rlimits {
                // rlim_t is u32 on 32-bit ARM: a larger limit means no limit there.
                let v = nix::libc::rlim_t::try_from(*value).unwrap_or(nix::libc::RLIM_INFINITY);
                setrlimit(*res, v, v)?;
            }
            if let Some((uid, gid)) = owner {
                nix::unistd::setgroups(&[])?;
                nix::unistd::setgid(gid)?;
                nix::unistd::setuid(uid)?;
            }
            // No exec may raise privileges again (setuid binaries, file capabilities).
            nix::sys::prctl::set_no_new_privs()?;
            // After the uid change, which clears the parent-death signal.
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            // The daemon may have died before prctl: then we must not run.
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::other("supervisor is gone"));
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| SpawnError::Exec {
        program: spec.program.clone(),
        source,
    })?;
    let pid = child.id().unwrap_or(0);
    let out = child.stdout.take().map(ChildStdout::into_owned_fd);
    let err = child.stderr.take().map(ChildStderr::into_owned_fd);
    for fd in [out, err].into_iter().flatten() {
        tokio::spawn(pump(fd, log.clone(), spec.log.clone()));
    }
    Ok(Spawned {
        pid,
        exit: Exit::Child(child),
        exec: ExecPending(None),
    })
}

/// Copies a child's output into its log until EOF. A full disk drops output (with one
/// warning per episode) rather than blocking or killing the child. The task holds no
/// buffer while it waits: the read buffer lives on the stack of [`copy_once`], so an
/// instance that writes nothing costs no buffer memory. A pipe that cannot be taken over
/// by the reactor is dropped like one that fails to read.
async fn pump(fd: std::io::Result<OwnedFd>, log: Arc<Mutex<RotatingLog>>, path: PathBuf) {
    let from = match fd.and_then(pipe::Receiver::from_owned_fd) {
        Ok(from) => from,
        Err(e) => {
            tracing::warn!(log = %path.display(), error = %e, "instance output dropped");
            return;
        }
    };
    let mut failing = false;
    loop {
        if from.readable().await.is_err() {
            return;
        }
        let result = match copy_once(&from, &log) {
            Copied::Wrote(result) => result,
            Copied::NotReady => continue,
            Copied::End => return,
        };
        match result {
            Ok(()) if failing => {
                failing = false;
                tracing::info!(log = %path.display(), "instance log writable again");
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(log = %path.display(), error = %e, "instance output dropped");
            }
            Err(_) => {}
        }
    }
}

/// What one read of a child's pipe gave.
enum Copied {
    /// Bytes were read and handed to the log, with the log's answer.
    Wrote(Result<(), LogError>),
    /// Spurious readiness: nothing to read yet.
    NotReady,
    /// EOF, a read error or a poisoned log: the pump ends.
    End,
}

/// One non-blocking read of up to 8 KiB into a stack buffer, written to the log.
fn copy_once(from: &pipe::Receiver, log: &Mutex<RotatingLog>) -> Copied {
    let mut buf = [0u8; 8192];
    let n = match from.try_read(&mut buf) {
        Ok(0) => return Copied::End,
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Copied::NotReady,
        Err(_) => return Copied::End,
    };
    match log.lock() {
        Ok(mut l) => Copied::Wrote(l.write_all(&buf[..n])),
        Err(_) => Copied::End,
    }
}

/// The log file of instance `name` in partition `dir`.
pub fn log_path(dir: &Path, name: &str) -> PathBuf {
    dir.join("var/log").join(format!("{name}.log"))
}
