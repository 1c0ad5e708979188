//! A real mosquitto 2.0 for end-to-end tests, run from a master directory that
//! `hedge master init` (`hedge_master::pki::init`) wrote.
//!
//! [`Broker::start`] copies `DIR/mosquitto.conf` to `DIR/mosquitto.test.conf` with its two
//! `listener` lines moved to loopback: the masters' one to `127.0.0.1:<port>`, the nodes'
//! one (`use_username_as_clientid true`) to `127.0.0.1:<node_port>` (and `user root`
//! added when the tests run as root, so mosquitto keeps the privileges it needs to read
//! the 0600 keys), starts `mosquitto -c` on it, and returns once it logged `mosquitto
//! version ... running` (its listeners bound and its signal handlers set; the generated
//! config logs at level `information`) and both ports accept TCP connections: polled with
//! a deadline, no sleep as synchronisation. The persistence directory stays
//! `DIR/mosquitto-data/`, so [`Broker::restart`] and [`Broker::stop`] + [`Broker::restart`]
//! reuse the same port and the same persistence. Note that mosquitto persistence is a
//! snapshot: [`Broker::kill9`] loses what changed since the last save, [`Broker::stop`]
//! (SIGTERM) saves everything. Output goes to `DIR/mosquitto.log` (appended across
//! restarts) and is printed when a test panics while the broker is alive. Drop kills it.
//!
//! Include it with `pub mod broker;` in `tests/common/mod.rs`. Needs `mosquitto` in `PATH`
//! or `/usr/sbin` (scripts/setup installs it).
#![allow(dead_code, clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the broker may take to listen or to exit.
const DEADLINE: Duration = Duration::from_secs(10);

pub use super::ports::free_port;

/// The mosquitto binary: `PATH`, then `/usr/sbin` (Debian's place, not in every `PATH`).
pub fn mosquitto_bin() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join("mosquitto"))
        .find(|p| p.is_file())
        .expect("mosquitto not found: run scripts/setup (apt-get install mosquitto)")
}

/// A running (or stopped) mosquitto on `127.0.0.1:port` (masters) and
/// `127.0.0.1:node_port` (nodes).
pub struct Broker {
    /// Loopback port of its masters' TLS listener (`[broker] port` of master.toml).
    pub port: u16,
    /// Loopback port of its nodes' TLS listener (client id = certificate CN).
    pub node_port: u16,
    /// The master directory (certificates, ACL, `mosquitto-data/`).
    pub dir: PathBuf,
    /// The config it runs (`DIR/mosquitto.test.conf`).
    pub conf: PathBuf,
    /// Its stderr/stdout (`DIR/mosquitto.log`).
    pub log: PathBuf,
    child: Option<Child>,
}

impl Broker {
    /// Starts mosquitto for the master directory `dir` with its masters' listener on
    /// `127.0.0.1:port` (`0`: a free port) and its nodes' one on a free port, and waits
    /// until it accepts connections.
    pub fn start(dir: &Path, port: u16) -> Broker {
        Broker::start_with_node_port(dir, port, None)
    }

    /// Like [`Broker::start`], with the nodes' listener on `node_port` (`None`: a free
    /// port), so that a test can cut nodes' traffic without touching the masters'.
    pub fn start_with_node_port(dir: &Path, port: u16, node_port: Option<u16>) -> Broker {
        let port = if port == 0 { free_port() } else { port };
        let node_port = node_port.unwrap_or_else(free_port);
        let dir = std::path::absolute(dir).unwrap();
        let generated = dir.join("mosquitto.conf");
        let text = std::fs::read_to_string(&generated).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (a directory made by `hedge master init`?)",
                generated.display()
            )
        });
        let conf = dir.join("mosquitto.test.conf");
        std::fs::write(&conf, test_config(&text, port, node_port)).unwrap();
        std::fs::create_dir_all(dir.join("mosquitto-data")).unwrap();
        let mut broker = Broker {
            port,
            node_port,
            log: dir.join("mosquitto.log"),
            dir,
            conf,
            child: None,
        };
        broker.spawn();
        broker
    }

    /// The broker's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL and reap (no-op when not running). Persistence keeps only the last snapshot.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for the exit: mosquitto saves its persistence file first.
    #[allow(clippy::disallowed_methods)] // an end-to-end test: waits for real processes, with a deadline
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = super::nix_pid(child.id());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + DEADLINE;
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("mosquitto ignored SIGTERM for {DEADLINE:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts it again (SIGKILLing it first if it runs): same port, same persistence.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    #[allow(clippy::disallowed_methods)] // an end-to-end test: waits for real processes, with a deadline
    fn spawn(&mut self) {
        let offset = std::fs::metadata(&self.log).map_or(0, |m| {
            usize::try_from(m.len()).expect("a test broker's log fits in memory")
        });
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("mosquitto exited ({status}):\n{}", self.log_text());
            }
            // "running" is logged after the listener is bound *and* the signal handlers
            // are set: a SIGTERM before that would kill it without saving persistence.
            let running = std::fs::read(&self.log).is_ok_and(|l| {
                String::from_utf8_lossy(l.get(offset..).unwrap_or_default())
                    .lines()
                    .any(|l| l.contains("mosquitto version") && l.ends_with(" running"))
            });
            if running && [self.port, self.node_port].iter().all(|&p| listens(p)) {
                self.child = Some(child);
                return;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "mosquitto did not listen on 127.0.0.1:{} and :{} within {DEADLINE:?}:\n{}",
                    self.port,
                    self.node_port,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if self.child.is_some() && std::thread::panicking() {
            eprintln!(
                "--- mosquitto log ({}):\n{}",
                self.log.display(),
                self.log_text()
            );
        }
        self.kill9();
    }
}

/// The generated config with its listeners on loopback: the nodes' one (the block with
/// `use_username_as_clientid true`) on `node_port`, the masters' one on `port`; plus
/// `user root` when running as root (mosquitto would otherwise drop to user `mosquitto`).
fn test_config(generated: &str, port: u16, node_port: u16) -> String {
    let lines: Vec<&str> = generated.lines().collect();
    let starts: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].trim_start().starts_with("listener "))
        .collect();
    assert_eq!(
        starts.len(),
        2,
        "expected a nodes' and a masters' listener in the generated config"
    );
    let mut out = String::new();
    let mut nodes = 0;
    for (i, line) in lines.iter().enumerate() {
        if let Some(k) = starts.iter().position(|&s| s == i) {
            // A listener's own settings follow its line, up to the next listener.
            let end = starts.get(k + 1).copied().unwrap_or(lines.len());
            let is_nodes = lines[i..end]
                .iter()
                .any(|l| l.trim() == "use_username_as_clientid true");
            nodes += usize::from(is_nodes);
            let p = if is_nodes { node_port } else { port };
            out.push_str(&format!("listener {p} 127.0.0.1\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert_eq!(nodes, 1, "expected exactly one nodes' listener");
    let root = std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false);
    if root && !generated.lines().any(|l| l.trim() == "user root") {
        out.push_str("user root\n");
    }
    out
}

/// Whether something accepts connections on loopback `port` (asked with a short timeout:
/// a SYN dropped by some firewall rule must not stall the caller for minutes).
fn listens(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}
