//! A backup policy's `command` (e.g. a database dump), run before the snapshot.
//!
//! Contract: [`run`] runs the command in the partition as the partition's uid (never
//! as root: refused when the daemon is root and the partition has no uid of its own),
//! with the instance's environment (its parameters, `HEDGE_INSTANCE`) plus `PATH`,
//! `HOME` and `HEDGE_PARTITION`, no stdin, output discarded, in its own process group
//! with `no_new_privs` and a parent-death signal. It must exit 0 within `timeout`;
//! otherwise its whole group is killed and the reason is returned. Blocking: called on
//! the backup thread.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// How often the command's exit is polled.
const POLL: Duration = Duration::from_millis(10);

/// Kills the command's process group when dropped, so no helper it forked outlives it.
struct GroupGuard(i32);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.0 > 1 {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(self.0),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// What the command runs with.
#[derive(Debug, Clone)]
pub(crate) struct CommandSpec {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// The partition: its working directory and `HOME`.
    pub dir: std::path::PathBuf,
    /// The partition's uid and gid when the daemon is root.
    pub owner: Option<(u32, u32)>,
    /// The instance's environment.
    pub env: Vec<(String, String)>,
    /// Longest run.
    pub timeout: Duration,
}

/// Runs `spec` to a successful end, or says why not.
pub(crate) fn run(spec: &CommandSpec, started: Instant) -> Result<(), String> {
    let Some((program, args)) = spec.argv.split_first() else {
        return Err("empty command".into());
    };
    let as_root = nix::unistd::geteuid().is_root();
    if let Some(why) = crate::monitor::checks::command_refusal(as_root, spec.owner) {
        return Err(why.into());
    }
    let dir: &Path = &spec.dir;
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .current_dir(dir)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", dir)
        .env("HEDGE_PARTITION", dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0);
    if let Some((uid, gid)) = spec.owner {
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
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::other("daemon is gone"));
            }
            nix::sys::prctl::set_no_new_privs()?;
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| format!("{program}: {e}"))?;
    let _group = GroupGuard(i32::try_from(child.id()).unwrap_or(0));
    let deadline = started + spec.timeout;
    loop {
        match child.try_wait() {
            Ok(Some(s)) if s.success() => return Ok(()),
            Ok(Some(s)) => return Err(format!("command {program}: {s}")),
            Ok(None) => {}
            Err(e) => return Err(format!("command {program}: {e}")),
        }
        if super::super::monotonic_now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "command {program}: timed out after {} s",
                spec.timeout.as_secs()
            ));
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn spec(dir: &Path, script: &str, timeout: Duration) -> CommandSpec {
        CommandSpec {
            argv: vec!["sh".into(), "-c".into(), script.into()],
            dir: dir.to_owned(),
            owner: None,
            env: vec![("PORT".into(), "8080".into())],
            timeout,
        }
    }

    #[test]
    fn a_command_runs_in_the_partition_with_the_instance_environment() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let mut s = spec(
            tmp.path(),
            "echo \"$PORT $HEDGE_PARTITION $(id -u)\" > out",
            Duration::from_secs(60),
        );
        let mut uid = nix::unistd::geteuid().as_raw();
        if uid == 0 {
            // As root it runs as the partition's uid (here nobody's).
            uid = 65534;
            s.owner = Some((uid, uid));
            std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        run(&s, super::super::super::monotonic_now()).unwrap();
        let out = std::fs::read_to_string(tmp.path().join("out")).unwrap();
        assert_eq!(out, format!("8080 {} {uid}\n", tmp.path().display()));
        let e = run(
            &CommandSpec {
                argv: vec!["sh".into(), "-c".into(), "exit 3".into()],
                ..s.clone()
            },
            super::super::super::monotonic_now(),
        )
        .unwrap_err();
        assert!(e.contains("exit status: 3"), "{e}");
        let e = run(
            &CommandSpec {
                argv: vec!["sleep".into(), "60".into()],
                timeout: Duration::ZERO,
                ..s
            },
            super::super::super::monotonic_now(),
        )
        .unwrap_err();
        assert!(e.contains("timed out"), "{e}");
    }

    #[test]
    fn as_root_a_command_never_runs_without_a_partition_uid() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let e = run(
            &spec(tmp.path(), "touch out", Duration::from_secs(60)),
            super::super::super::monotonic_now(),
        )
        .unwrap_err();
        assert!(e.contains("never runs as root"), "{e}");
        assert!(!tmp.path().join("out").exists());
    }
}
