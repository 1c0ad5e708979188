//! A backup policy's `command` (e.g. a database dump), run before the snapshot.
//!
//! Contract: [`run`] runs the command as every partition command runs
//! (`crate::partition::command`: the partition's uid, never root, its own process group,
//! `no_new_privs`, a parent-death signal), with the instance's environment (its
//! parameters, `HEDGE_INSTANCE`). It must exit 0 within `timeout`;
//! otherwise its whole group is killed and the reason is returned. Blocking: called on
//! the backup thread.

use std::time::{Duration, Instant};

/// How often the command's exit is polled.
const POLL: Duration = Duration::from_millis(10);

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
    if let Some(why) = crate::partition::command::refusal(as_root, spec.owner) {
        return Err(why.into());
    }
    let mut cmd =
        crate::partition::command::in_partition(program, args, &spec.dir, spec.owner, &spec.env);
    let mut child = cmd.spawn().map_err(|e| format!("{program}: {e}"))?;
    let _group = crate::partition::command::GroupGuard(i32::try_from(child.id()).ok());
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

    fn spec(dir: &std::path::Path, script: &str, timeout: Duration) -> CommandSpec {
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
        if !crate::test_host::can_run_as_root("root (commands run as a partition uid)") {
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
