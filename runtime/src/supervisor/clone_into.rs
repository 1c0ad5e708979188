//! Starting a process with `clone3`, directly inside a cgroup v2 group when one is given
//! (`CLONE_INTO_CGROUP`).
//!
//! Contract: [`spawn_into`] starts `program` like [`super::spawn`] does (working
//! directory, clean environment, stdin `/dev/null`, stdout/stderr into the returned
//! pipes, own process group, rlimits, dropped privileges, parent-death signal); with a
//! cgroup directory the kernel creates the child in that group: there is no
//! migration afterwards. Joining by writing to `cgroup.procs` takes the cgroup
//! threadgroup lock for writing, which waits for an RCU grace period (measured 2-40 ms on
//! a loaded 2-core host): on the crash → restart path that wait was the largest cost.
//! [`Unsupported`] says the kernel (before 5.7, or a seccomp filter) refuses `clone3`
//! or the flag; the caller then falls back to joining by `cgroup.procs`.
//!
//! The child runs, until its `exec`, either on the daemon's own memory (x86_64:
//! `CLONE_VM | CLONE_VFORK`, [`super::clone_shared`], nothing copied, the caller
//! suspended meanwhile) or in a copy of it (elsewhere, like `fork`). Either way it is a
//! multi-threaded process without glibc's `fork` bookkeeping: it makes only raw system
//! calls (credentials through `syscall`, so that glibc's all-threads `setxid` broadcast
//! is never attempted on threads that are not there), on data prepared before the
//! clone, resets every caught signal to its default before unblocking signals, and
//! never returns into Rust code. A failure before `exec` is sent back as an errno
//! through a close-on-exec pipe: the caller learns the outcome from
//! [`ExecReport::wait`] (EOF: the program runs; an errno: it never ran, and the child
//! is reaped). With shared memory [`spawn_into`] returns once the child has exec'd (or
//! failed); in a copy, as soon as the child exists, so many children can be started
//! before the first one has reached `exec`. The exit is learnt through the pidfd
//! `clone3` returns ([`Exit::wait`]), to be awaited only once the exec is confirmed.

use std::ffi::{CString, OsStr};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};

use nix::libc;
use nix::sys::resource::Resource;
use tokio::io::unix::AsyncFd;

/// `clone3` (the same number on x86_64, aarch64 and 32-bit ARM EABI).
pub(super) const SYS_CLONE3: libc::c_long = 435;
/// The credential calls with 32-bit ids: on 32-bit ARM (and x86) the plain numbers are
/// the old 16-bit ones, which would truncate a uid above 65535.
#[cfg(any(target_arch = "arm", target_arch = "x86"))]
mod ids {
    pub(super) use nix::libc::{
        SYS_setgid32 as SETGID, SYS_setgroups32 as SETGROUPS, SYS_setuid32 as SETUID,
    };
}
/// The credential calls (32-bit ids on every 64-bit architecture).
#[cfg(not(any(target_arch = "arm", target_arch = "x86")))]
mod ids {
    pub(super) use nix::libc::{
        SYS_setgid as SETGID, SYS_setgroups as SETGROUPS, SYS_setuid as SETUID,
    };
}
/// Put the pidfd of the child in `clone_args.pidfd`.
const CLONE_PIDFD: u64 = 0x1000;
/// Create the child in the cgroup whose directory fd is `clone_args.cgroup`.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` as of Linux 5.7 (`CLONE_ARGS_SIZE_VER2`).
#[repr(C)]
#[derive(Default)]
pub(super) struct CloneArgs {
    pub(super) flags: u64,
    pub(super) pidfd: u64,
    pub(super) child_tid: u64,
    pub(super) parent_tid: u64,
    pub(super) exit_signal: u64,
    pub(super) stack: u64,
    pub(super) stack_size: u64,
    pub(super) tls: u64,
    pub(super) set_tid: u64,
    pub(super) set_tid_size: u64,
    pub(super) cgroup: u64,
}

/// `clone3(CLONE_INTO_CGROUP)` cannot be used: join by `cgroup.procs` instead.
#[derive(Debug, PartialEq, Eq)]
pub enum Unsupported {
    /// The kernel (or a seccomp filter) refuses `clone3` or the flag: for good.
    Kernel,
    /// The directory is not a cgroup v2 group (e.g. a stand-in in tests): this once.
    NotCgroup2,
}

/// What a failed `clone3` means for the caller.
fn classify(errno: i32) -> Result<Unsupported, std::io::Error> {
    match errno {
        // No clone3 (or a seccomp filter's answer), or no CLONE_INTO_CGROUP.
        libc::ENOSYS | libc::E2BIG | libc::EINVAL | libc::EPERM => Ok(Unsupported::Kernel),
        libc::EBADF => Ok(Unsupported::NotCgroup2),
        e => Err(std::io::Error::from_raw_os_error(e)),
    }
}

/// A process started by [`spawn_into`].
#[derive(Debug)]
pub struct Child {
    /// Its pid, also its process group.
    pub pid: u32,
    /// The read ends of its stdout and stderr.
    pub stdout: OwnedFd,
    /// See `stdout`.
    pub stderr: OwnedFd,
    /// Its exit, through its pidfd.
    pub exit: Exit,
    /// Whether it reached `exec`: read before awaiting `exit`.
    pub exec: ExecReport,
}

/// The read end of a child's close-on-exec report pipe: EOF once the program runs, an
/// errno if the child failed before `exec`.
#[derive(Debug)]
pub struct ExecReport {
    pid: libc::pid_t,
    from: OwnedFd,
}

impl ExecReport {
    /// Blocks until the child has called `exec` (`Ok`) or failed before it (the errno;
    /// the child, which exits at once, is reaped here).
    pub fn wait(self) -> std::io::Result<()> {
        let mut report = [0u8; 4];
        let mut from = std::fs::File::from(self.from);
        let got = loop {
            match from.read(&mut report) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                other => break other,
            }
        };
        if let Ok(4) = got {
            let mut status = 0;
            // SAFETY: reaps the child that failed before exec (it has exited or is
            // exiting); its pidfd's waiter was never started.
            #[allow(unsafe_code)]
            unsafe {
                libc::waitpid(self.pid, &mut status, 0)
            };
            return Err(std::io::Error::from_raw_os_error(i32::from_ne_bytes(
                report,
            )));
        }
        Ok(())
    }
}

/// The exit of a child started by [`spawn_into`].
#[derive(Debug)]
pub struct Exit {
    pid: libc::pid_t,
    pidfd: OwnedFd,
}

impl Exit {
    /// Waits (without blocking the loop) for the child to end and reaps it.
    pub async fn wait(self) -> std::io::Result<std::process::ExitStatus> {
        // SAFETY: an `OwnedFd` keeps its descriptor open and the same until it is dropped.
        #[allow(unsafe_code)]
        let fd =
            unsafe { AsyncFd::register_with_interest(self.pidfd, tokio::io::Interest::READABLE) }?;
        loop {
            let mut ready = fd.readable().await?;
            let mut status: libc::c_int = 0;
            // SAFETY: waitpid on our own child with a valid out-pointer.
            #[allow(unsafe_code)]
            let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
            if r == self.pid {
                return Ok(std::process::ExitStatus::from_raw(status));
            }
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            ready.clear_ready();
        }
    }
}

/// What the child needs, prepared before the clone (it may not allocate).
pub struct Plan {
    /// The program's path as `exec` takes it (looked up in `PATH` when bare).
    pub program: CString,
    /// argv, program first.
    pub argv: Vec<CString>,
    /// `KEY=value` entries.
    pub envp: Vec<CString>,
    /// Working directory.
    pub dir: CString,
    /// uid/gid to drop to.
    pub owner: Option<(u32, u32)>,
    /// rlimits (soft = hard).
    pub rlimits: Vec<(Resource, u64)>,
}

/// Builds the [`Plan`]: argv, environment (later keys replace earlier ones), and the
/// program's path, looked up in `path_var` when it has no `/` (as `execvp` would).
pub fn plan(
    program: &str,
    args: &[String],
    env: &[(String, String)],
    dir: &Path,
    path_var: &OsStr,
    owner: Option<(u32, u32)>,
    rlimits: Vec<(Resource, u64)>,
) -> std::io::Result<Plan> {
    let cstr =
        |b: &[u8]| CString::new(b).map_err(|_| std::io::Error::other("NUL byte in argument"));
    let resolved = resolve(program, path_var);
    let mut vars: Vec<(&str, &str)> = Vec::new();
    for (k, v) in env {
        vars.retain(|(key, _)| key != k);
        vars.push((k, v));
    }
    Ok(Plan {
        program: cstr(resolved.as_os_str().as_bytes())?,
        argv: std::iter::once(program)
            .chain(args.iter().map(String::as_str))
            .map(|a| cstr(a.as_bytes()))
            .collect::<Result<_, _>>()?,
        envp: vars
            .iter()
            .map(|(k, v)| cstr(format!("{k}={v}").as_bytes()))
            .collect::<Result<_, _>>()?,
        dir: cstr(dir.as_os_str().as_bytes())?,
        owner,
        rlimits,
    })
}

/// `program` itself when it names a path, else the first executable `dir/program` of
/// `path_var`, else `program` (its `exec` then fails with ENOENT).
fn resolve(program: &str, path_var: &OsStr) -> PathBuf {
    if program.contains('/') {
        return PathBuf::from(program);
    }
    std::env::split_paths(path_var)
        .map(|d| d.join(program))
        .find(|p| nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_ok() && p.is_file())
        .unwrap_or_else(|| PathBuf::from(program))
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

/// Starts the process of `plan`, inside the cgroup whose directory is `cgroup_dir` when
/// one is given, and returns once it exists (its exec is confirmed by
/// [`Child::exec`]). `Err(Ok(Unsupported))` when the kernel cannot; `Err(Err(e))` when
/// it could not start.
pub fn spawn_into(
    plan: &Plan,
    cgroup_dir: Option<&Path>,
) -> Result<Child, Result<Unsupported, std::io::Error>> {
    let cgroup = match cgroup_dir {
        Some(dir) => Some(std::fs::File::open(dir).map_err(Err)?),
        None => None,
    };
    let devnull = std::fs::File::open("/dev/null").map_err(Err)?;
    let (out_r, out_w) = pipe().map_err(Err)?;
    let (err_r, err_w) = pipe().map_err(Err)?;
    let (report_r, report_w) = pipe().map_err(Err)?;
    let mut argv: Vec<*const libc::c_char> = plan.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = plan.envp.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    let rlimits: Vec<(libc::c_int, libc::rlim_t)> = plan
        .rlimits
        .iter()
        .map(|(r, v)| {
            // rlim_t is u32 on 32-bit ARM: a larger limit means no limit there.
            (
                *r as libc::c_int,
                libc::rlim_t::try_from(*v).unwrap_or(libc::RLIM_INFINITY),
            )
        })
        .collect();
    let parent = nix::unistd::getpid().as_raw();
    let mut pidfd: RawFd = -1;
    #[allow(clippy::cast_sign_loss)] // fds and pointers as the kernel's u64 fields
    let mut args = CloneArgs {
        flags: CLONE_PIDFD | cgroup.as_ref().map_or(0, |_| CLONE_INTO_CGROUP),
        pidfd: std::ptr::addr_of_mut!(pidfd) as u64,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup.as_ref().map_or(0, |c| c.as_raw_fd() as u64),
        ..CloneArgs::default()
    };
    let fds = ChildFds {
        stdin: devnull.as_raw_fd(),
        stdout: out_w.as_raw_fd(),
        stderr: err_w.as_raw_fd(),
        report: report_w.as_raw_fd(),
    };
    let child = ChildCtx {
        plan,
        argv: &argv,
        envp: &envp,
        rlimits: &rlimits,
        fds: &fds,
        parent,
    };
    // Signals stay blocked across the clone, so no handler of the daemon runs in the
    // child before it resets them; the parent's mask is restored at once.
    let mut old = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: the sigset calls get valid pointers; `clone` runs `child_main` in the
    // child on data this frame keeps alive until it returns.
    #[allow(unsafe_code)]
    let pid = unsafe {
        let mut all = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigfillset(all.as_mut_ptr());
        libc::pthread_sigmask(libc::SIG_SETMASK, all.as_ptr(), old.as_mut_ptr());
        let pid = clone(&mut args, &child);
        libc::pthread_sigmask(libc::SIG_SETMASK, old.as_ptr(), std::ptr::null_mut());
        pid
    };
    let pid = match pid {
        Ok(pid) => pid,
        Err(errno) => return Err(classify(errno)),
    };
    #[allow(clippy::cast_possible_truncation)] // a pid fits its type
    let pid = pid as libc::pid_t;
    // SAFETY: the kernel wrote a fresh pidfd that nothing else owns.
    #[allow(unsafe_code)]
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    drop((out_w, err_w, report_w, devnull, cgroup));
    #[allow(clippy::cast_sign_loss)] // a pid is positive
    Ok(Child {
        pid: pid as u32,
        stdout: out_r,
        stderr: err_r,
        exit: Exit { pid, pidfd },
        exec: ExecReport {
            pid,
            from: report_r,
        },
    })
}

/// `clone3(args)`: with shared memory where [`super::clone_shared`] is built (returning
/// once the child has exec'd or exited), else like `fork` (returning at once). The
/// child's pid, or the errno.
///
/// SAFETY (caller): all signals blocked; `child` outlives the call.
#[allow(unsafe_code)]
unsafe fn clone(args: &mut CloneArgs, child: &ChildCtx<'_>) -> Result<libc::c_long, i32> {
    #[cfg(target_arch = "x86_64")]
    let ret = {
        let stack = super::clone_shared::Stack::new()
            .map_err(|e| e.raw_os_error().unwrap_or(libc::ENOMEM))?;
        let arg = std::ptr::from_ref(child).cast_mut().cast::<libc::c_void>();
        super::clone_shared::clone3(args, &stack, child_entry, arg)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let ret = {
        // A NULL stack: the child gets a copy of the address space, as with fork, and
        // returns here in it.
        let pid = libc::syscall(
            SYS_CLONE3,
            std::ptr::from_mut(args),
            std::mem::size_of::<CloneArgs>(),
        );
        if pid == 0 {
            child_entry(std::ptr::from_ref(child).cast_mut().cast());
        }
        if pid < 0 {
            -libc::c_long::from(*libc::__errno_location())
        } else {
            pid
        }
    };
    if ret < 0 {
        return Err(i32::try_from(-ret).unwrap_or(libc::EINVAL));
    }
    Ok(ret)
}

/// What [`child_main`] gets, through one pointer.
struct ChildCtx<'a> {
    plan: &'a Plan,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    rlimits: &'a [(libc::c_int, libc::rlim_t)],
    fds: &'a ChildFds,
    parent: libc::pid_t,
}

/// The child's entry: [`child_main`] on the [`ChildCtx`] `arg` points to.
///
/// SAFETY (caller): `arg` points to a live `ChildCtx`; see [`child_main`].
#[allow(unsafe_code)]
unsafe extern "C" fn child_entry(arg: *mut libc::c_void) -> ! {
    let c = &*arg.cast::<ChildCtx<'_>>();
    child_main(c.plan, c.argv, c.envp, c.rlimits, c.fds, c.parent)
}

struct ChildFds {
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
    report: RawFd,
}

/// The child between clone and exec. Raw system calls only; never returns.
///
/// SAFETY (caller): runs in a freshly cloned child with all signals blocked.
#[allow(unsafe_code)]
unsafe fn child_main(
    plan: &Plan,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    rlimits: &[(libc::c_int, libc::rlim_t)],
    fds: &ChildFds,
    parent: libc::pid_t,
) -> ! {
    let fail = |report: RawFd| -> ! {
        let errno = *libc::__errno_location();
        let bytes = errno.to_ne_bytes();
        libc::write(report, bytes.as_ptr().cast(), bytes.len());
        libc::_exit(127)
    };
    for (from, to) in [(fds.stdin, 0), (fds.stdout, 1), (fds.stderr, 2)] {
        if libc::dup2(from, to) < 0 {
            fail(fds.report);
        }
    }
    if libc::chdir(plan.dir.as_ptr()) < 0 || libc::setpgid(0, 0) < 0 {
        fail(fds.report);
    }
    for (res, v) in rlimits {
        let lim = libc::rlimit {
            rlim_cur: *v,
            rlim_max: *v,
        };
        #[allow(clippy::cast_sign_loss)] // a resource number from nix's enum
        if libc::setrlimit(*res as _, &lim) < 0 {
            fail(fds.report);
        }
    }
    if let Some((uid, gid)) = plan.owner {
        let none: *const libc::gid_t = std::ptr::null();
        if libc::syscall(ids::SETGROUPS, 0, none) < 0
            || libc::syscall(ids::SETGID, gid) < 0
            || libc::syscall(ids::SETUID, uid) < 0
        {
            fail(fds.report);
        }
    }
    // No exec may raise privileges again (setuid binaries, file capabilities); after
    // the uid change, which clears the parent-death signal.
    if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0
        || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0
    {
        fail(fds.report);
    }
    // The daemon may have died before prctl: then we must not run.
    if libc::getppid() != parent {
        *libc::__errno_location() = libc::ESRCH;
        fail(fds.report);
    }
    // No handler of the daemon may run here once signals are unblocked (the child's
    // copy of the handler table still names them, and may share the daemon's memory):
    // every caught signal goes back to its default, as exec would do. The daemon
    // ignores SIGPIPE; the program gets the default, and no blocked signal.
    for sig in 1..libc::SIGRTMAX() + 1 {
        let mut now = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
        if libc::sigaction(sig, std::ptr::null(), now.as_mut_ptr()) == 0 {
            let handler = now.assume_init().sa_sigaction;
            if handler != libc::SIG_DFL && handler != libc::SIG_IGN {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
    }
    libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    let mut none = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    libc::sigemptyset(none.as_mut_ptr());
    libc::sigprocmask(libc::SIG_SETMASK, none.as_ptr(), std::ptr::null_mut());
    libc::execve(plan.program.as_ptr(), argv.as_ptr(), envp.as_ptr());
    fail(fds.report)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_kernel_without_clone3_falls_back_for_good_a_stand_in_group_once() {
        for e in [libc::ENOSYS, libc::E2BIG, libc::EINVAL, libc::EPERM] {
            assert_eq!(classify(e).unwrap(), Unsupported::Kernel);
        }
        assert_eq!(classify(libc::EBADF).unwrap(), Unsupported::NotCgroup2);
        assert_eq!(
            classify(libc::ENODEV).unwrap_err().raw_os_error(),
            Some(libc::ENODEV)
        );
    }

    /// As root on a host with cgroup v2: the child is born in the group (its very first
    /// view of `/proc/self/cgroup` names it), runs as the given uid in its own process
    /// group, and its exit comes through the pidfd; a missing program is an error.
    #[tokio::test]
    async fn a_child_is_born_in_its_cgroup_as_its_uid() {
        let mount = std::fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|t| crate::partition::cgroup::cgroup2_mount(&t));
        let (true, Some(mount)) = (nix::unistd::geteuid().is_root(), mount) else {
            crate::test_host::can_run(false, "root and cgroup v2");
            return;
        };
        let rel = format!("hedge-clone-test-{}", std::process::id());
        let group = mount.join(&rel);
        std::fs::create_dir(&group).unwrap();
        let p = plan(
            "sh",
            &[
                "-c".into(),
                "cat /proc/self/cgroup; grep NoNewPrivs /proc/self/status; id -u; exit 3".into(),
            ],
            &[],
            Path::new("/"),
            OsStr::new("/bin:/usr/bin"),
            Some((65534, 65534)),
            vec![],
        )
        .unwrap();
        let child = spawn_into(&p, Some(&group)).unwrap();
        child.exec.wait().unwrap();
        let status = child.exit.wait().await.unwrap();
        let mut out = String::new();
        std::fs::File::from(child.stdout)
            .read_to_string(&mut out)
            .unwrap();
        let _ = std::fs::remove_dir(&group);
        assert_eq!(status.code(), Some(3), "{out}");
        assert!(out.contains(&format!("0::/{rel}\n")), "{out}");
        assert!(out.contains("NoNewPrivs:\t1\n"), "{out}");
        assert!(out.ends_with("65534\n"), "{out}");
        let missing = plan(
            "/no/such/program",
            &[],
            &[],
            Path::new("/"),
            OsStr::new(""),
            None,
            vec![],
        )
        .unwrap();
        let group = mount.join(format!("{rel}-b"));
        std::fs::create_dir(&group).unwrap();
        let err = spawn_into(&missing, Some(&group))
            .unwrap()
            .exec
            .wait()
            .unwrap_err();
        let _ = std::fs::remove_dir(&group);
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    }

    /// Without a cgroup (any user): twenty children are started before any exec is
    /// waited for; the one whose program is missing reports ENOENT (and is reaped),
    /// every other one ran, and its exit comes through its pidfd.
    #[tokio::test]
    async fn many_children_start_and_a_failure_before_exec_is_reported() {
        let missing = 7;
        let children: Vec<_> = (0..20)
            .map(|i| {
                let program = if i == missing {
                    "/no/such/program"
                } else {
                    "/bin/sh"
                };
                let p = plan(
                    program,
                    &["-c".into(), format!("exit {i}")],
                    &[],
                    Path::new("/"),
                    OsStr::new("/bin:/usr/bin"),
                    None,
                    vec![],
                )
                .unwrap();
                spawn_into(&p, None).unwrap()
            })
            .collect();
        for (i, child) in children.into_iter().enumerate() {
            let confirmed = child.exec.wait();
            if i == missing {
                assert_eq!(confirmed.unwrap_err().raw_os_error(), Some(libc::ENOENT));
                // Reaped by the report: nothing is left to wait for.
                let mut status = 0;
                // SAFETY: waitpid on a pid of ours with a valid out-pointer.
                #[allow(unsafe_code)]
                let r = unsafe { libc::waitpid(child.exit.pid, &mut status, libc::WNOHANG) };
                assert_eq!(r, -1, "the failed child was not reaped");
                continue;
            }
            confirmed.unwrap();
            let status = child.exit.wait().await.unwrap();
            assert_eq!(status.code(), Some(i32::try_from(i).unwrap()));
        }
    }

    /// With shared memory the caller is suspended until the child's exec: each of
    /// twenty children is already the program when `spawn_into` returns (a fork-like
    /// clone returns before the child has made its first system call, and some of them
    /// would still be a copy of this test).
    #[cfg(target_arch = "x86_64")]
    #[tokio::test]
    async fn with_shared_memory_spawn_returns_once_the_child_is_the_program() {
        let sleep = std::fs::canonicalize(resolve("sleep", OsStr::new("/bin:/usr/bin"))).unwrap();
        let p = plan(
            "sleep",
            &["30".into()],
            &[],
            Path::new("/"),
            OsStr::new("/bin:/usr/bin"),
            None,
            vec![],
        )
        .unwrap();
        for _ in 0..20 {
            let child = spawn_into(&p, None).unwrap();
            let exe = std::fs::read_link(format!("/proc/{}/exe", child.pid)).unwrap();
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(child.pid).unwrap()),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
            child.exec.wait().unwrap();
            child.exit.wait().await.unwrap();
            assert_eq!(exe, sleep, "spawn_into returned before the exec");
        }
    }

    #[test]
    fn a_bare_program_is_looked_up_in_path_and_a_path_is_kept() {
        let path = OsStr::new("/nonexistent:/bin:/usr/bin");
        let sh = resolve("sh", path);
        assert!(sh.ends_with("sh") && sh.is_absolute(), "{sh:?}");
        assert_eq!(resolve("./x", path), PathBuf::from("./x"));
        assert_eq!(
            resolve("no-such-program-here", path),
            PathBuf::from("no-such-program-here")
        );
    }

    #[test]
    fn the_plan_keeps_argv_order_and_lets_later_variables_win() {
        let p = plan(
            "sh",
            &["-c".into(), "true".into()],
            &[
                ("A".into(), "1".into()),
                ("B".into(), "2".into()),
                ("A".into(), "3".into()),
            ],
            Path::new("/tmp"),
            OsStr::new("/bin:/usr/bin"),
            None,
            vec![],
        )
        .unwrap();
        let argv: Vec<_> = p.argv.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(argv, ["sh", "-c", "true"]);
        let envp: Vec<_> = p.envp.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(envp, ["B=2", "A=3"]);
        assert!(plan(
            "a\0b",
            &[],
            &[],
            Path::new("/"),
            OsStr::new(""),
            None,
            vec![]
        )
        .is_err());
    }
}
