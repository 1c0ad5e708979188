//! Test harness: real `hedge` processes in temporary directories.
//!
//! No sleeps as synchronisation: [`wait_for`] polls a condition until a deadline.
#![allow(dead_code, clippy::unwrap_used)]

pub mod backup;
pub mod broker;
pub mod fleet;
pub mod netns;
pub mod params;
pub mod ports;
pub mod sandbox_run;
pub mod slow_link;
pub mod sockets;
pub mod swarm;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use hedge_runtime::local_api::{InstanceView, NodeStatus};
use hedge_wire::InstanceStatus;
use serde_json::Value;

/// The binary under test.
pub fn hedge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hedge"))
}

/// Asserts that a finished command succeeded; the panic names `what` and shows its stderr.
pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `cmd` to its end; it must succeed (see [`assert_success`]).
pub fn run_ok(cmd: &mut Command, what: &str) -> Output {
    let out = cmd.output().unwrap();
    assert_success(&out, what);
    out
}

/// Runs `cmd`, a program the test has just written, to its end. Another thread of the
/// test process may fork while the file is still open for writing, and its child holds
/// that descriptor until it execs: until then, exec fails with ETXTBSY ("Text file
/// busy"). That is waited out, with a deadline.
pub fn output_of_fresh_program(cmd: &mut Command) -> Output {
    wait_for(
        "the fresh program to run",
        Duration::from_secs(10),
        || match cmd.output() {
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ETXTBSY as i32) => None,
            other => Some(other.unwrap()),
        },
    )
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
#[allow(clippy::disallowed_methods)] // an end-to-end test: waits for real processes, with a deadline
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a test that needs `what` (root, nft, a network namespace) can run here.
/// `false` means the caller returns early; under `CI` a test that cannot run fails
/// instead, so a green CI never hides a test that did not run.
pub fn can_run(possible: bool, what: &str) -> bool {
    if possible {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "this test needs {what} and CI is set: it must run here"
    );
    eprintln!("skipped: needs {what}");
    false
}

/// [`can_run`] for tests that need to be root.
pub fn can_run_as_root(what: &str) -> bool {
    can_run(nix::unistd::geteuid().is_root(), what)
}

/// A `KiB` field of a live process's `/proc/PID/status` (`VmRSS`, `RssFile`, ...).
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// `pid` as nix takes it (Linux pids are below 2^22, so they fit an i32).
pub fn nix_pid(pid: u32) -> nix::unistd::Pid {
    nix::unistd::Pid::from_raw(i32::try_from(pid).expect("a pid fits an i32"))
}

/// True while a process with this pid exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// A node in a temp dir, and its daemon when running.
pub struct Node {
    pub dir: tempfile::TempDir,
    pub daemon: Option<Child>,
    /// Prefix for the daemon command (e.g. `unshare -n`), empty for none.
    pub wrapper: Vec<String>,
    /// The partition uids this node alone may use, held while it lives.
    uids: UidRange,
}

/// 50 partition uids held by one test node, exclusive across every test process on the
/// host (test binaries and tests run in parallel, each test in a process of its own
/// under nextest), so one node's "kill every process of this uid" never reaches another
/// node's instance. Held by an advisory lock on a file named for the range; the kernel
/// drops it when the process ends, however it ends.
struct UidRange {
    lo: u32,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl UidRange {
    const FIRST: u32 = 30_000;
    const SIZE: u32 = 50;
    const COUNT: u32 = 600;

    /// The first free range, starting from a point that differs between processes.
    fn take() -> UidRange {
        let (n, lock) = ports::lock_first_free("hedge-test-uids", Self::COUNT, std::process::id());
        UidRange {
            lo: Self::FIRST + n * Self::SIZE,
            _lock: lock,
        }
    }
}

impl Node {
    /// `hedge node init` in a fresh temp dir, with fast restart timings for tests.
    pub fn init() -> Node {
        Node::init_with(&["--id", "test-node"])
    }

    /// `hedge node init --enroll BUNDLE` in a fresh temp dir.
    pub fn init_enrolled(bundle: &Path) -> Node {
        Node::init_with(&["--enroll", bundle.to_str().unwrap()])
    }

    fn init_with(args: &[&str]) -> Node {
        let dir = tempfile::tempdir().unwrap();
        // Partition users must traverse the temp dir when the tests run as root.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        run_ok(
            hedge()
                .args(["node", "init"])
                .args(args)
                .arg("--dir")
                .arg(dir.path().join("n")),
            "init: ",
        );
        let node = Node {
            dir,
            daemon: None,
            wrapper: vec![],
            uids: UidRange::take(),
        };
        let lo = node.uids.lo;
        node.edit_config(|c| {
            c.replace("uid_min = 20000", &format!("uid_min = {lo}"))
                .replace(
                    "uid_max = 20999",
                    &format!("uid_max = {}", lo + UidRange::SIZE - 1),
                )
                .replace("backoff_base_ms = 100", "backoff_base_ms = 50")
                .replace("backoff_max_ms = 30000", "backoff_max_ms = 800")
                .replace("grace_ms = 5000", "grace_ms = 1000")
        });
        node
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("n")
    }

    pub fn config(&self) -> PathBuf {
        self.home().join("node.toml")
    }

    pub fn edit_config(&self, f: impl FnOnce(String) -> String) {
        let text = std::fs::read_to_string(self.config()).unwrap();
        std::fs::write(self.config(), f(text)).unwrap();
    }

    /// Starts the daemon and waits until its API answers.
    pub fn start(&mut self) {
        assert!(self.daemon.is_none());
        let mut cmd = if self.wrapper.is_empty() {
            hedge()
        } else {
            let mut c = Command::new(&self.wrapper[0]);
            c.args(&self.wrapper[1..]).arg(env!("CARGO_BIN_EXE_hedge"));
            c
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .unwrap();
        let child = cmd
            .args(["node", "run", "--config"])
            .arg(self.config())
            .env("HEDGE_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemon = Some(child);
        wait_for("the daemon's API", Duration::from_secs(10), || {
            self.try_status()
        });
    }

    /// SIGKILLs the daemon and reaps it.
    pub fn kill9(&mut self) {
        let mut child = self.daemon.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERMs the daemon and waits for it to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.daemon.take().unwrap();
        nix::sys::signal::kill(nix_pid(child.id()), nix::sys::signal::Signal::SIGTERM).unwrap();
        child.wait().unwrap()
    }

    /// Runs `hedge node ARGS --config <this node>`.
    pub fn cli(&self, args: &[&str]) -> Output {
        hedge()
            .args(["node"])
            .args(args)
            .arg("--config")
            .arg(self.config())
            .output()
            .unwrap()
    }

    /// Requests instance `name` running `/bin/sleep SECS`, `extra` flags after; must succeed.
    pub fn request_sleep(&self, name: &str, secs: &str, extra: &[&str]) -> String {
        self.ok(&[
            &[
                "request",
                name,
                "--software",
                "exec:/bin/sleep",
                "--arg",
                secs,
            ],
            extra,
        ]
        .concat())
    }

    /// Runs a client command that must succeed.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert_success(&out, &format!("hedge node {args:?} failed: "));
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn try_status(&self) -> Option<NodeStatus> {
        let out = self.cli(&["status", "--json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    pub fn status(&self) -> NodeStatus {
        self.try_status().expect("status")
    }

    /// The status entry of instance `name`.
    pub fn instance(&self, name: &str) -> Option<InstanceView> {
        self.status().instance(name).cloned()
    }

    /// Waits until `name` runs with a pid other than `not`; returns the pid.
    pub fn running_pid(&self, name: &str, not: Option<u32>) -> u32 {
        self.running_pid_other_within(name, not, Duration::from_secs(10))
    }

    /// Waits up to `timeout` until `name` runs; returns its pid.
    pub fn running_pid_within(&self, name: &str, timeout: Duration) -> u32 {
        self.running_pid_other_within(name, None, timeout)
    }

    fn running_pid_other_within(&self, name: &str, not: Option<u32>, timeout: Duration) -> u32 {
        wait_for(&format!("{name} running"), timeout, || {
            let i = self.instance(name)?;
            let pid = i.pid?;
            (i.state == InstanceStatus::Running && Some(pid) != not && alive(pid)).then_some(pid)
        })
    }

    /// Every record in the outbox.
    pub fn outbox(&self) -> Vec<Value> {
        let mut all = Vec::new();
        let mut from = 0;
        loop {
            let out = self.ok(&[
                "outbox",
                "--json",
                "--from",
                &from.to_string(),
                "--limit",
                "1000",
            ]);
            let batch: Vec<Value> = serde_json::from_str(&out).unwrap();
            let Some(last) = batch.last() else { break };
            from = last["seq"].as_u64().unwrap() + 1;
            all.extend(batch);
        }
        all
    }

    pub fn partition(&self, name: &str) -> PathBuf {
        self.home().join("partitions").join(name)
    }

    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }
}

impl Drop for Node {
    /// Stops the daemon gracefully (it stops every instance's whole process group, so
    /// no grandchild outlives the test), then kills it if it lingers.
    #[allow(clippy::disallowed_methods)] // an end-to-end test: waits for real processes, with a deadline
    fn drop(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = nix::sys::signal::kill(nix_pid(c.id()), nix::sys::signal::Signal::SIGTERM);
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Lists every path under `dir` with its size, for "nothing changed on disk" checks.
pub fn tree(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            }
            out.push((e.path(), if m.is_dir() { 0 } else { m.len() }));
        }
    }
    out.sort();
    out
}
