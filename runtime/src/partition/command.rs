//! Commands the daemon runs inside a partition on an instance's behalf: a promise's
//! `command` check and a backup policy's `command`. One home for how they are started,
//! because each is a way for an instance to make the daemon run something.
//!
//! Contract: [`refusal`] says when such a command may not run at all (the daemon is
//! root and the partition has no uid of its own, or uid/gid 0: it never runs as root).
//! [`in_partition`] builds the command: working directory and `HOME` the partition,
//! a cleared environment with only the given variables plus `PATH`, `HOME` and
//! `HEDGE_PARTITION` (which win), no stdin, output discarded, the partition's uid and
//! gid when given, its own process group, `no_new_privs` (no setuid or file-capability
//! exec raises it again) and a parent-death SIGKILL (it never outlives the daemon; it
//! does not run at all if the daemon died while it was forked). [`GroupGuard`] kills
//! the command's whole process group when dropped, so no helper it forked survives it.

use std::os::unix::process::CommandExt;
use std::path::Path;

/// Why a command may not run as asked: `Some` when the daemon is root (`as_root`) and
/// the command has no partition uid, or uid or gid 0. Pure.
pub fn refusal(as_root: bool, owner: Option<(u32, u32)>) -> Option<&'static str> {
    match owner {
        _ if !as_root => None,
        None => Some("refused: no partition uid to run the command as, and it never runs as root"),
        Some((0, _)) | Some((_, 0)) => Some("refused: the command never runs as root"),
        Some(_) => None,
    }
}

/// `program args` to run in the partition `dir` as `owner`, with `env` (see the module
/// contract). The caller checks [`refusal`] first.
pub fn in_partition(
    program: &str,
    args: &[String],
    dir: &Path,
    owner: Option<(u32, u32)>,
    env: &[(String, String)],
) -> std::process::Command {
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .current_dir(dir)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", dir)
        .env("HEDGE_PARTITION", dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0);
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid);
    }
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls (prctl, getppid) on a value captured by copy; it
    // neither allocates nor takes locks.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            // The daemon may have died between fork and prctl: then we must not run.
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::other("daemon is gone"));
            }
            nix::sys::prctl::set_no_new_privs()?;
            Ok(())
        });
    }
    cmd
}

/// Kills a command's whole process group when dropped (its leader's pid; `None` or a
/// pid ≤ 1 does nothing).
pub struct GroupGuard(pub Option<i32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.filter(|p| *p > 1) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
