//! Running one promise check: the thin I/O side of promise evaluation.
//!
//! Contract: [`run`] performs a rendered check and always returns a
//! [`CheckResult`] within `timeout` (plus scheduling slack): a failure, a timeout or an
//! unreachable target is `ok: false` with a short message, never an error or a panic.
//! `process` is judged by the supervisor (it knows the pid) and is not run here.
//! `http` is a minimal HTTP/1.0 GET over plain TCP for local health endpoints: status
//! line only, no TLS, no redirects, no body parsing.
//!
//! `command` runs in the partition as the partition's uid. When the daemon is root, a
//! command with no partition uid (or uid 0) is refused, never run (see
//! [`command_refusal`]): the partition is the instance's, so whatever it names there may
//! be the instance's program. The command gets a cleared environment (`PATH`, `HOME` and
//! `HEDGE_PARTITION` only), its own process group (killed whole when the check ends or
//! times out), `PR_SET_PDEATHSIG = SIGKILL` and `PR_SET_NO_NEW_PRIVS` (no setuid program
//! it runs gains privileges).

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::promise::CheckResult;

/// A check with its templates rendered and its paths resolved.
#[derive(Debug, Clone)]
pub enum Check {
    /// TCP connect.
    Tcp {
        /// `host:port`.
        address: String,
    },
    /// HTTP GET.
    Http {
        /// `http://host:port/path`.
        url: String,
        /// Expected status.
        status: u16,
        /// Slowest acceptable answer.
        max_latency_ms: u32,
    },
    /// A command run in the partition.
    Command {
        /// Program and arguments.
        argv: Vec<String>,
        /// Working directory (the partition).
        dir: PathBuf,
        /// uid/gid to run as: required (and not 0) when the daemon is root.
        owner: Option<(u32, u32)>,
    },
    /// A file's modification age.
    File {
        /// Absolute path inside the partition.
        path: PathBuf,
        /// Oldest acceptable modification.
        max_age_s: u32,
    },
}

fn result(started: Instant, ok: bool, message: impl Into<String>) -> CheckResult {
    CheckResult {
        ok,
        latency_ms: u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX),
        message: message.into(),
    }
}

/// Why a command check may not run as asked (see [`crate::partition::command::refusal`]).
pub use crate::partition::command::refusal as command_refusal;

async fn run_command(
    argv: &[String],
    dir: &std::path::Path,
    owner: Option<(u32, u32)>,
    started: Instant,
) -> CheckResult {
    let Some((program, args)) = argv.split_first() else {
        return result(started, false, "empty command");
    };
    if let Some(why) = command_refusal(nix::unistd::geteuid().is_root(), owner) {
        return result(started, false, why);
    }
    let mut cmd = tokio::process::Command::from(crate::partition::command::in_partition(
        program,
        args,
        dir,
        owner,
        &[],
    ));
    cmd.kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return result(started, false, format!("{program}: {e}")),
    };
    let _group =
        crate::partition::command::GroupGuard(child.id().and_then(|p| i32::try_from(p).ok()));
    match child.wait().await {
        Ok(s) if s.success() => result(started, true, ""),
        Ok(s) => result(started, false, format!("{program}: {s}")),
        Err(e) => result(started, false, format!("{program}: {e}")),
    }
}

/// Runs `check`, giving up after `timeout`.
pub async fn run(check: Check, timeout: Duration) -> CheckResult {
    #[allow(clippy::disallowed_methods)] // the check driver times each check
    let started = Instant::now();
    match tokio::time::timeout(timeout, run_inner(&check, started)).await {
        Ok(r) => r,
        Err(_) => result(
            started,
            false,
            format!("timed out after {} ms", timeout.as_millis()),
        ),
    }
}

async fn run_inner(check: &Check, started: Instant) -> CheckResult {
    match check {
        Check::Tcp { address } => match TcpStream::connect(address.as_str()).await {
            Ok(_) => result(started, true, ""),
            Err(e) => result(started, false, format!("connect {address}: {e}")),
        },
        Check::Http {
            url,
            status,
            max_latency_ms,
        } => match http_status(url).await {
            Ok(got) => {
                let r = result(started, true, "");
                if got != *status {
                    result(
                        started,
                        false,
                        format!("GET {url}: status {got}, want {status}"),
                    )
                } else if r.latency_ms > *max_latency_ms {
                    result(
                        started,
                        false,
                        format!("GET {url}: {} ms, over {max_latency_ms} ms", r.latency_ms),
                    )
                } else {
                    r
                }
            }
            Err(e) => result(started, false, format!("GET {url}: {e}")),
        },
        Check::Command { argv, dir, owner } => run_command(argv, dir, *owner, started).await,
        Check::File { path, max_age_s } => {
            #[allow(clippy::disallowed_methods)] // a file's age is read against the wall clock
            let age = modified_no_follow(path).map(|t| {
                SystemTime::now()
                    .duration_since(t)
                    .unwrap_or(Duration::ZERO)
            });
            match age {
                Ok(a) if a <= Duration::from_secs(u64::from(*max_age_s)) => {
                    result(started, true, "")
                }
                Ok(a) => result(
                    started,
                    false,
                    format!(
                        "{} is {} s old, over {max_age_s} s",
                        path.display(),
                        a.as_secs()
                    ),
                ),
                Err(e) => result(started, false, format!("{}: {e}", path.display())),
            }
        }
    }
}

/// The modification time of `path`, found without following a symlink the instance
/// could have planted (see [`crate::partition::at::open_dir_walk`]); the file itself
/// must not be a symlink either.
fn modified_no_follow(path: &std::path::Path) -> std::io::Result<SystemTime> {
    use crate::partition::at;
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"))?;
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let meta = at::lstat_at(&at::open_dir_walk(parent)?, name)?;
    if meta.file_type().is_symlink() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "a symlink; not followed",
        ));
    }
    meta.modified()
}

/// Splits `http://host:port/path` into (`host:port`, `host`, `/path`).
pub fn parse_http_url(url: &str) -> Result<(String, String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| "only http:// URLs are supported".to_string())?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || path.contains(['\r', '\n', ' ']) {
        return Err("malformed URL".into());
    }
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    let addr = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok((addr, host.to_string(), path.to_string()))
}

/// Parses the status code from the first line of an HTTP response.
pub fn parse_status_line(head: &[u8]) -> Result<u16, String> {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let text = std::str::from_utf8(line).map_err(|_| "status line is not text".to_string())?;
    let mut parts = text.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/") => {
            code.parse().map_err(|_| format!("bad status {code:?}"))
        }
        _ => Err(format!(
            "not an HTTP response: {:?}",
            text.chars().take(40).collect::<String>()
        )),
    }
}

async fn http_status(url: &str) -> Result<u16, String> {
    let (addr, host, path) = parse_http_url(url)?;
    let mut s = TcpStream::connect(addr.as_str())
        .await
        .map_err(|e| e.to_string())?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut head = [0u8; 256];
    let mut n = 0;
    while n < head.len() && !head[..n].contains(&b'\n') {
        match s.read(&mut head[n..]).await.map_err(|e| e.to_string())? {
            0 => break,
            k => n += k,
        }
    }
    parse_status_line(&head[..n])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn urls_and_status_lines() {
        assert_eq!(
            parse_http_url("http://127.0.0.1:8080/health").unwrap(),
            (
                "127.0.0.1:8080".into(),
                "127.0.0.1".into(),
                "/health".into()
            )
        );
        assert_eq!(parse_http_url("http://h").unwrap().0, "h:80");
        assert!(parse_http_url("https://h/").is_err());
        assert!(parse_http_url("http://h/a b").is_err());
        assert_eq!(
            parse_status_line(b"HTTP/1.1 204 No Content\r\n").unwrap(),
            204
        );
        assert!(parse_status_line(b"SSH-2.0-OpenSSH\r\n").is_err());
        assert!(parse_status_line(b"").is_err());
    }

    #[tokio::test]
    async fn tcp_http_file_and_command_checks() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\nok").await;
            }
        });
        let t = Duration::from_secs(2);
        assert!(
            run(
                Check::Tcp {
                    address: addr.to_string()
                },
                t
            )
            .await
            .ok
        );
        let http = |status| Check::Http {
            url: format!("http://{addr}/"),
            status,
            max_latency_ms: 1000,
        };
        assert!(run(http(200), t).await.ok);
        let r = run(http(404), t).await;
        assert!(!r.ok && r.message.contains("status 200"), "{}", r.message);
        // Nothing listens on port 1.
        assert!(
            !run(
                Check::Tcp {
                    address: "127.0.0.1:1".into()
                },
                t
            )
            .await
            .ok
        );

        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("beat");
        std::fs::write(&f, "x").unwrap();
        assert!(
            run(
                Check::File {
                    path: f.clone(),
                    max_age_s: 60
                },
                t
            )
            .await
            .ok
        );
        assert!(
            !run(
                Check::File {
                    path: dir.path().join("nope"),
                    max_age_s: 60
                },
                t
            )
            .await
            .ok
        );
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::Permissions::from_mode(0o755);
            std::fs::set_permissions(dir.path(), mode).unwrap();
        }
        // As root a command runs only as a partition uid.
        let owner = nix::unistd::geteuid().is_root().then_some((60124, 60124));
        let cmd = |argv: &[&str]| Check::Command {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            dir: dir.path().to_path_buf(),
            owner,
        };
        assert!(run(cmd(&["/bin/true"]), t).await.ok);
        assert!(!run(cmd(&["/bin/false"]), t).await.ok);
        let r = run(cmd(&["/bin/sleep", "5"]), Duration::from_millis(100)).await;
        assert!(!r.ok && r.message.contains("timed out"));
    }

    #[test]
    fn as_root_a_command_needs_a_partition_uid() {
        assert!(command_refusal(true, None).is_some());
        assert!(command_refusal(true, Some((0, 0))).is_some());
        assert!(command_refusal(true, Some((60000, 0))).is_some());
        assert!(command_refusal(true, Some((60000, 60000))).is_none());
        assert!(command_refusal(false, None).is_none());
    }

    #[tokio::test]
    async fn as_root_a_command_without_uid_never_runs() {
        if !crate::test_host::can_run_as_root("root (commands run as a partition uid)") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let r = run(
            Check::Command {
                argv: vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    format!("id -u > {}", marker.display()),
                ],
                dir: dir.path().to_path_buf(),
                owner: None,
            },
            Duration::from_secs(5),
        )
        .await;
        assert!(!r.ok && r.message.starts_with("refused"), "{}", r.message);
        assert!(!marker.exists(), "the command ran");
    }

    #[tokio::test]
    async fn command_checks_run_with_a_clean_environment_own_group_and_no_new_privs() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = nix::unistd::geteuid().is_root();
        let owner = root.then_some((60123, 60123));
        if root {
            std::os::unix::fs::chown(dir.path(), Some(60123), Some(60123)).unwrap();
        }
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        // The parent's environment has more than the three names a check gets.
        assert!(std::env::vars_os()
            .any(|(k, _)| !["PATH", "HOME", "HEDGE_PARTITION"].iter().any(|n| k == *n)));
        let script = "env > env.txt; id -u > uid.txt; \
                      grep NoNewPrivs /proc/self/status > nnp.txt; \
                      cut -d' ' -f1,5 /proc/$$/stat > stat.txt";
        let r = run(
            Check::Command {
                argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
                dir: dir.path().to_path_buf(),
                owner,
            },
            Duration::from_secs(5),
        )
        .await;
        assert!(r.ok, "{}", r.message);
        let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
        for line in read("env.txt").lines() {
            let key = line.split('=').next().unwrap();
            assert!(
                [
                    "PATH",
                    "HOME",
                    "HEDGE_PARTITION",
                    "PWD",
                    "SHLVL",
                    "_",
                    "OLDPWD"
                ]
                .contains(&key),
                "inherited {line:?}"
            );
        }
        assert!(read("env.txt").contains(&format!("HOME={}", dir.path().display())));
        if root {
            assert_eq!(read("uid.txt").trim(), "60123");
        }
        assert!(
            read("nnp.txt").split_whitespace().any(|w| w == "1"),
            "{}",
            read("nnp.txt")
        );
        let stat = read("stat.txt");
        let (pid, pgrp) = stat.trim().split_once(' ').unwrap();
        assert_eq!(pid, pgrp, "not its own process group");
    }

    #[tokio::test]
    async fn file_checks_follow_no_planted_link() {
        use std::os::unix::fs::{symlink, PermissionsExt};
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("beat"), b"").unwrap();
        // The instance's partition: writable by it (here, by anyone).
        let part = tmp.path().join("part");
        std::fs::create_dir(&part).unwrap();
        std::fs::set_permissions(&part, std::fs::Permissions::from_mode(0o777)).unwrap();
        symlink(&outside, part.join("var")).unwrap();
        symlink(outside.join("beat"), part.join("beat")).unwrap();
        let t = Duration::from_secs(2);
        for rel in ["var/beat", "beat"] {
            let r = run(
                Check::File {
                    path: part.join(rel),
                    max_age_s: 60,
                },
                t,
            )
            .await;
            assert!(!r.ok, "{rel} was followed");
        }
        std::fs::create_dir(part.join("srv")).unwrap();
        std::fs::write(part.join("srv/beat"), b"").unwrap();
        let r = run(
            Check::File {
                path: part.join("srv/beat"),
                max_age_s: 60,
            },
            t,
        )
        .await;
        assert!(r.ok, "{}", r.message);
    }
}
