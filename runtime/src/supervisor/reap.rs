//! Killing every process of a partition uid, for nodes without cgroup v2.
//!
//! Contract: [`kill_uid`] forks a short-lived helper that drops to `uid` and calls
//! `kill(-1, SIGKILL)`: the kernel then signals, in one pass under its task-list lock,
//! every process that uid may signal (all whose real or saved uid is `uid`), so a fork
//! loop cannot outrun it the way a `/proc` scan followed by kills could. [`kill_uid_and_wait`]
//! repeats that until a `/proc` scan finds no live process of the uid, for at most the
//! given time. Root only; uid 0 is refused.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{ForkResult, Gid, Pid, Uid};

use super::process_identity;

/// Errors of killing by uid.
#[derive(Debug, thiserror::Error)]
pub enum ReapError {
    /// uid 0 is never killed wholesale.
    #[error("refusing to kill every process of uid 0")]
    Root,
    /// The helper could not be forked or waited for.
    #[error("kill helper: {0}")]
    Helper(#[from] nix::errno::Errno),
    /// The helper could not drop to the uid.
    #[error("kill helper could not become uid {0}")]
    Setuid(u32),
    /// Processes of the uid were still alive when time ran out.
    #[error("{left} process(es) of uid {uid} still alive")]
    Survivors {
        /// The partition's uid.
        uid: u32,
        /// Processes of it still alive.
        left: usize,
    },
}

/// Sends SIGKILL to every process `uid` may signal, from a helper running as `uid`.
pub fn kill_uid(uid: u32) -> Result<(), ReapError> {
    if uid == 0 {
        return Err(ReapError::Root);
    }
    // SAFETY: the daemon may have other threads; after fork the child only makes
    // async-signal-safe calls (setgroups, setgid, setuid, kill, _exit) on values on its
    // stack, and never returns into Rust code that could allocate or take a lock.
    #[allow(unsafe_code)]
    let fork = unsafe { nix::unistd::fork() }?;
    match fork {
        ForkResult::Child => {
            let ok = nix::unistd::setgroups(&[]).is_ok()
                && nix::unistd::setgid(Gid::from_raw(uid)).is_ok()
                && nix::unistd::setuid(Uid::from_raw(uid)).is_ok();
            let code = if ok {
                // ESRCH (nothing to kill) is fine.
                let _ = nix::sys::signal::kill(Pid::from_raw(-1), Signal::SIGKILL);
                0
            } else {
                1
            };
            // SAFETY: `_exit` is async-signal-safe and ends the forked child at once.
            #[allow(unsafe_code)]
            unsafe {
                nix::libc::_exit(code)
            }
        }
        ForkResult::Parent { child } => loop {
            match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, 0)) => return Ok(()),
                Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) => {
                    return Err(ReapError::Setuid(uid))
                }
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        },
    }
}

/// [`kill_uid`] until no live process of `uid` is left, for at most `within`.
#[allow(clippy::disallowed_methods)] // an I/O driver: waits for real processes to exit
pub fn kill_uid_and_wait(uid: u32, within: Duration) -> Result<(), ReapError> {
    let deadline = Instant::now() + within;
    let mut pause = Duration::from_millis(1);
    loop {
        kill_uid(uid)?;
        let left = process_identity::pids_of_uid(uid).len();
        if left == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(ReapError::Survivors { uid, left });
        }
        // SIGKILLed processes need a moment to exit; poll with a growing pause.
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::process::CommandExt;

    use super::*;

    #[test]
    fn uid_zero_is_refused() {
        assert!(matches!(kill_uid(0), Err(ReapError::Root)));
    }

    /// Processes of a uid, including a `setsid` grandchild that left the group, die.
    #[test]
    #[allow(clippy::disallowed_methods)] // waits for a real process, with a deadline
    fn kills_every_process_of_the_uid_including_setsid_children() {
        if !crate::test_host::can_run_as_root("root, to run a process as another uid") {
            return;
        }
        let uid = 64_123;
        let tmp = tempfile::tempdir().unwrap();
        let pidfile = tmp.path().join("child.pid");
        std::fs::set_permissions(
            tmp.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        let mut parent = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!(
                "setsid sh -c 'echo $$ > {}; while :; do sleep 1; done' & exec sleep 1000",
                pidfile.display()
            ))
            .uid(uid)
            .gid(uid)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let child: u32 = loop {
            if let Some(p) = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|t| t.trim().parse().ok())
            {
                break p;
            }
            assert!(Instant::now() < deadline, "no child pid");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(process_identity::pids_of_uid(uid).contains(&child));
        kill_uid_and_wait(uid, Duration::from_secs(5)).unwrap();
        assert!(process_identity::pids_of_uid(uid).is_empty());
        parent.wait().unwrap();
    }
}
