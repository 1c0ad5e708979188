//! A fleet for end-to-end tests: a master directory (`hedge master init`), its broker
//! with one listener for masters and one for nodes (so a test can cut the nodes' link
//! alone), master processes, and enrolled nodes.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use super::broker::{free_port, Broker};
use super::{assert_success, hedge, run_ok, Node};

/// A master directory, its broker (one listener for masters, one for nodes) and
/// master processes.
pub struct Fleet {
    pub dir: tempfile::TempDir,
    pub broker: Broker,
    pub node_port: u16,
    pub masters: Vec<Child>,
    cut: Option<String>,
    /// The artifact endpoint's port, once enabled.
    pub artifacts_port: Option<u16>,
}

impl Fleet {
    pub fn new() -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let m = dir.path().join("m");
        let (master_port, node_port) = (free_port(), free_port());
        run_ok(
            hedge()
                .args([
                    "master",
                    "init",
                    "--port",
                    &node_port.to_string(),
                    "--master-port",
                    &master_port.to_string(),
                    "--dir",
                ])
                .arg(&m),
            "",
        );
        let broker = Broker::start_with_node_port(&m, master_port, Some(node_port));
        let mut fleet = Fleet {
            dir,
            broker,
            node_port,
            masters: Vec::new(),
            cut: None,
            artifacts_port: None,
        };
        // Nodes enroll (token + CSR) and renew through the master's HTTPS endpoint.
        fleet.enable_artifacts();
        fleet
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("m/master.toml")
    }

    pub fn master(&self, args: &[&str]) -> std::process::Output {
        master_command(&self.config(), args).output().unwrap()
    }

    pub fn master_ok(&self, args: &[&str]) -> String {
        master_ok_at(&self.config(), args)
    }

    /// `hedge master run` on this fleet's config, its log on stderr into `log`.
    fn spawn_master(&self, log: std::fs::File) -> Child {
        hedge()
            .args(["master", "run", "--config"])
            .arg(self.config())
            .env("HEDGE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    pub fn start_master(&mut self) {
        let i = self.masters.len();
        let log = std::fs::File::create(self.dir.path().join(format!("master{i}.log"))).unwrap();
        self.masters.push(self.spawn_master(log));
    }

    pub fn kill_master(&mut self, i: usize) {
        self.masters[i].kill().unwrap();
        self.masters[i].wait().unwrap();
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join(format!("master{i}.log")))
            .unwrap();
        self.masters[i] = self.spawn_master(log);
    }

    /// An enrolled node whose uplink dials the nodes' listener, with fast intervals.
    pub fn node(&self, id: &str) -> Node {
        let bundle = self.dir.path().join(format!("{id}.bundle"));
        self.master_ok(&["enroll", id, "--out", bundle.to_str().unwrap()]);
        let node = Node::init_enrolled(&bundle);
        let port = self.node_port;
        node.edit_config(move |c| {
            c.lines()
                .map(|l| {
                    if l.starts_with("port = ") {
                        format!("port = {port}")
                    } else if l.starts_with("ack_timeout_ms = ") {
                        "ack_timeout_ms = 2000".into()
                    } else if l.starts_with("keepalive_s = ") {
                        "keepalive_s = 2".into()
                    } else {
                        l.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n")
                + "\n"
        });
        node
    }

    /// A started node, known to the master (its first records stored).
    pub fn started_node(&self, id: &str) -> Node {
        self.started_node_with(id, |c| c)
    }

    /// [`Fleet::started_node`] with its `node.toml` edited by `edit` first.
    pub fn started_node_with(&self, id: &str, edit: impl FnOnce(String) -> String) -> Node {
        let mut node = self.node(id);
        node.edit_config(edit);
        node.start();
        super::wait_for(
            &format!("{id} registered"),
            std::time::Duration::from_secs(30),
            || (self.held(id).0 > 0).then_some(()),
        );
        node
    }

    /// What the master holds of `node`: (records, last_seq).
    pub fn held(&self, node: &str) -> (u64, u64) {
        let v: Value = serde_json::from_str(&self.master_ok(&["nodes", "--json"])).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .find(|n| n["node"] == node)
            .map_or((0, 0), |n| {
                (
                    n["records"].as_u64().unwrap(),
                    n["last_seq"].as_u64().unwrap(),
                )
            })
    }

    /// Cuts the nodes' link to the broker: TCP resets both ways on the nodes' port.
    pub fn cut_link(&mut self) {
        self.cut_with(&["reject", "with", "tcp", "reset"]);
    }

    /// Cuts the nodes' link silently: packets both ways on the nodes' port vanish, so
    /// neither end notices until a keepalive or an acknowledgement times out.
    pub fn cut_link_silently(&mut self) {
        self.cut_with(&["drop"]);
    }

    fn cut_with(&mut self, verdict: &[&str]) {
        assert!(self.cut.is_none());
        self.cut = Some(cut_port(self.node_port, verdict));
    }

    pub fn restore_link(&mut self) {
        if let Some(t) = self.cut.take() {
            nft(&["delete", "table", "inet", &t]);
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.restore_link();
        for m in &mut self.masters {
            let _ = m.kill();
            let _ = m.wait();
        }
    }
}

/// `hedge master ARGS --config CONFIG`, not yet run.
pub fn master_command(config: &Path, args: &[&str]) -> Command {
    let mut cmd = hedge();
    cmd.arg("master").args(args).arg("--config").arg(config);
    cmd
}

/// Runs `hedge master ARGS --config CONFIG`, which must succeed; its stdout.
pub fn master_ok_at(config: &Path, args: &[&str]) -> String {
    let out = run_ok(
        &mut master_command(config, args),
        &format!("hedge master {args:?}: "),
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn nft(args: &[&str]) {
    let bin = if Path::new("/usr/sbin/nft").exists() {
        "/usr/sbin/nft"
    } else {
        "nft"
    };
    let out = Command::new(bin)
        .args(args)
        .output()
        .expect("nft (scripts/setup installs nftables)");
    assert_success(&out, &format!("nft {args:?}: "));
}

/// Applies `verdict` (`drop`, `reject ...`) to TCP packets to and from loopback `port`,
/// in an nftables table of its own; returns the table's name (delete it to restore).
pub fn cut_port(port: u16, verdict: &[&str]) -> String {
    let table = format!("hedge_test_{port}");
    let port = port.to_string();
    nft(&["add", "table", "inet", &table]);
    nft(&[
        "add",
        "chain",
        "inet",
        &table,
        "out",
        "{ type filter hook output priority 0; }",
    ]);
    for dir in ["dport", "sport"] {
        let mut rule = vec!["add", "rule", "inet", &table, "out", "tcp", dir, &port];
        rule.extend_from_slice(verdict);
        nft(&rule);
    }
    table
}

pub fn can_cut() -> bool {
    nix::unistd::geteuid().is_root()
        && (Path::new("/usr/sbin/nft").exists()
            || Command::new("nft").arg("--version").output().is_ok())
}

impl Fleet {
    /// Turns on the master's artifact endpoint (`[artifacts] listen`) on a free port
    /// (done by [`Fleet::new`]: nodes enroll there); returns its port.
    pub fn enable_artifacts(&mut self) -> u16 {
        if let Some(port) = self.artifacts_port {
            return port;
        }
        let port = free_port();
        let path = self.config();
        let text = std::fs::read_to_string(&path).unwrap();
        let line = "# listen = \"127.0.0.1:8443\"";
        assert!(text.contains(line), "master.toml template changed");
        std::fs::write(
            &path,
            text.replace(line, &format!("listen = \"127.0.0.1:{port}\"")),
        )
        .unwrap();
        self.artifacts_port = Some(port);
        port
    }

    /// The master directory.
    pub fn master_dir(&self) -> PathBuf {
        self.dir.path().join("m")
    }

    /// Everything master `i` logged so far.
    pub fn master_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("master{i}.log"))).unwrap_or_default()
    }
}
