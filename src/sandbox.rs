//! `hedge sandbox`: a whole fleet on one machine, in one directory, without root.
//!
//! Contract: `hedge sandbox [--nodes N] [--dir DIR] [--duration S]` creates (afresh) a
//! master, a mosquitto broker with the generated TLS and ACL, and N nodes on small-board
//! profiles, each enrolled and dialling the broker through its own relay (a TCP proxy
//! in this process), so that `hedge sandbox link NODE down|up` can cut and restore one
//! node's uplink without root. Each node runs a sample workload requested through the
//! master: a web server with an HTTP promise, a flaky one that stops answering now and
//! then (so incidents open, self-repair restarts it, incidents resolve), and a ticker
//! with a file-freshness promise. A status table is printed every second. At the end
//! (after `--duration`, or on Ctrl-C) every link is restored, the nodes drain, and a
//! summary compares what each node produced with what the master stored; the exit
//! status is 0 only if nothing was lost or stored twice. "Duplicated" counts what can
//! really be stored twice ([`integrity`]): the same event under two seqs or two epochs
//! (the master's `repeats`), two contents for one `(node, epoch, seq)` (`conflicts`),
//! and usage intervals of one instance that overlap (CPU accounted twice, e.g. across
//! a daemon crash).
//!
//! The workloads are this binary itself (`hedge sandbox serve`), so nothing else is
//! needed but mosquitto.
//!
//! With `--mesh chain|star` ([`mesh`]) only node-1 has an uplink; the others reach the
//! master through their peers, over peer links `hedge sandbox link A B down|up` cuts.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Subcommand;
use hedge_master::pki::{self, InitOptions};
use hedge_master::store::{FleetStore, MasterStore, NodeSummary};
use hedge_runtime::local_api::{IncidentStatus, NodeStatus, PromiseView};
use hedge_wire::{InstanceStatus, Name, Record, RecordKind};

use crate::Failure;

mod mesh;
pub use mesh::Shape;

/// Board profiles the sandbox's nodes run on, in turn: embedded defaults.
const BOARDS: [&str; 4] = ["rpizero2w", "rpi3b", "olimex-a20-lime2", "rpi4b"];
/// Marks a directory as a sandbox (so a rerun may wipe it, and nothing else).
const MARKER: &str = "hedge-sandbox.marker";

#[derive(Subcommand)]
pub enum SandboxCommand {
    /// Cut or restore one node's uplink (`NODE down|up`), or the peer link between two
    /// nodes of a `--mesh` sandbox (`A B down|up`).
    Link {
        /// NODE [PEER] down|up (node-1, node-2, ...).
        #[arg(num_args = 2..=3, required = true, value_name = "NODE [PEER] down|up")]
        args: Vec<String>,
        /// The sandbox directory.
        #[arg(long, default_value = "hedge-sandbox")]
        dir: PathBuf,
    },
    /// (internal) A sample workload: a tiny HTTP server; --flaky stops answering after a while.
    #[command(hide = true)]
    Serve {
        /// Port to listen on (127.0.0.1).
        #[arg(long)]
        port: u16,
        /// Stop answering after this many seconds (the process stays alive).
        #[arg(long)]
        flaky_after: Option<u64>,
    },
}

/// Options of the sandbox run.
pub struct Options {
    pub nodes: usize,
    pub dir: PathBuf,
    pub duration: Option<u64>,
    /// A swarm: only node-1 has an uplink ([`mesh`]).
    pub mesh: Option<Shape>,
}

fn exe() -> Result<PathBuf, Failure> {
    Ok(std::env::current_exe().context("cannot find the hedge binary")?)
}

fn mosquitto() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join("mosquitto"))
        .find(|p| p.is_file())
}

fn free_port() -> Result<u16, Failure> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn hedge(args: &[&str]) -> Result<String, Failure> {
    let out = Command::new(exe()?).args(args).output()?;
    if !out.status.success() {
        return Err(anyhow!(
            "hedge {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn main(cmd: SandboxCommand) -> Result<(), Failure> {
    match cmd {
        SandboxCommand::Link { args, dir } => {
            let (target, down) = mesh::parse_link(&args).map_err(Failure::usage)?;
            let nodes = match &target {
                mesh::LinkTarget::Uplink(n) => vec![n.clone()],
                mesh::LinkTarget::Peer(a, b) => vec![a.clone(), b.clone()],
            };
            for node in &nodes {
                if !dir.join(MARKER).exists() || !dir.join("nodes").join(node).exists() {
                    return Err(Failure::usage(anyhow!(
                        "no node {node:?} in a sandbox at {}",
                        dir.display()
                    )));
                }
            }
            let (flag, what) = match &target {
                mesh::LinkTarget::Uplink(n) => {
                    (dir.join("nodes").join(n).join("LINK_DOWN"), n.clone())
                }
                mesh::LinkTarget::Peer(a, b) => {
                    let flag = mesh::link_flag(&dir, a, b);
                    if !flag.with_extension("link").exists() {
                        return Err(Failure::usage(anyhow!(
                            "no peer link between {a} and {b} in the sandbox at {}",
                            dir.display()
                        )));
                    }
                    (flag, format!("{a} ~ {b}"))
                }
            };
            if down {
                std::fs::write(&flag, b"")?;
            } else if flag.exists() {
                std::fs::remove_file(&flag)?;
            }
            println!("{what}: link {}", if down { "down" } else { "up" });
            Ok(())
        }
        SandboxCommand::Serve { port, flaky_after } => serve(port, flaky_after),
    }
}

/// The sample workload: answers every request `200 OK`; with `flaky_after`, stops
/// answering then (closes its socket) but stays alive, as a hung service would.
#[allow(clippy::disallowed_methods)] // a driver: goes flaky after a real delay
fn serve(port: u16, flaky_after: Option<u64>) -> Result<(), Failure> {
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    listener.set_nonblocking(true)?;
    let started = Instant::now();
    loop {
        if flaky_after.is_some_and(|s| started.elapsed() >= Duration::from_secs(s)) {
            drop(listener);
            println!("no longer answering (a restart repairs it)");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        match listener.accept() {
            Ok((mut s, _)) => {
                let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let _ =
                    s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 14\r\n\r\nhedge sandbox\n");
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// A TCP relay from `listen` to `127.0.0.1:broker` that refuses and cuts connections
/// while `flag` exists: one node's uplink (or, with `--mesh`, one peer link), cut
/// without root.
fn relay(listen: TcpListener, broker: u16, flag: PathBuf, stop: Arc<AtomicBool>) {
    let _ = listen.set_nonblocking(true);
    let mut conns: Vec<(TcpStream, TcpStream)> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let down = flag.exists();
        if down {
            for (a, b) in conns.drain(..) {
                let _ = a.shutdown(std::net::Shutdown::Both);
                let _ = b.shutdown(std::net::Shutdown::Both);
            }
        }
        match listen.accept() {
            Ok((client, _)) if !down => {
                if let Ok(upstream) = TcpStream::connect(("127.0.0.1", broker)) {
                    let pipe = |mut from: TcpStream, mut to: TcpStream| {
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut from, &mut to);
                            let _ = to.shutdown(std::net::Shutdown::Both);
                        });
                    };
                    let _ = client.set_nonblocking(false);
                    if let (Ok(c2), Ok(u2), Ok(c3), Ok(u3)) = (
                        client.try_clone(),
                        upstream.try_clone(),
                        client.try_clone(),
                        upstream.try_clone(),
                    ) {
                        pipe(c2, u2);
                        pipe(u3, c3);
                        conns.push((client, upstream));
                    }
                }
            }
            Ok((client, _)) => drop(client),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
        conns.retain(|(a, _)| a.peer_addr().is_ok());
    }
}

struct Fleet {
    dir: PathBuf,
    broker: Option<Child>,
    master: Option<Child>,
    nodes: Vec<(String, PathBuf, Option<Child>)>,
    stop: Arc<AtomicBool>,
    /// `--mesh`: the layout; nodes but node-1 have no uplink of their own.
    mesh: Option<Shape>,
}

impl Fleet {
    fn stop_all(&mut self) {
        let term = |c: &mut Option<Child>| {
            // A child's pid always fits an i32 (the kernel's pid_max is below 2^22).
            if let Some(pid) = c.as_mut().and_then(|child| i32::try_from(child.id()).ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        };
        for (_, _, c) in &mut self.nodes {
            term(c);
        }
        term(&mut self.master);
        for (_, _, c) in &mut self.nodes {
            if let Some(mut child) = c.take() {
                let _ = child.wait();
            }
        }
        if let Some(mut m) = self.master.take() {
            let _ = m.wait();
        }
        term(&mut self.broker);
        if let Some(mut b) = self.broker.take() {
            let _ = b.wait();
        }
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop_all();
    }
}

fn log_file(p: &Path) -> Result<std::fs::File, Failure> {
    Ok(std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)?)
}

/// Runs the sandbox.
#[allow(clippy::disallowed_methods)] // a driver: runs for real seconds, prints every few
pub fn run(opts: Options) -> Result<(), Failure> {
    if opts.nodes == 0 || opts.nodes > 32 {
        return Err(Failure::usage(anyhow!("--nodes must be 1..=32")));
    }
    let mosquitto = mosquitto().ok_or_else(|| {
        Failure::usage(anyhow!(
            "mosquitto is not installed: `apt-get install mosquitto` (scripts/setup does it)"
        ))
    })?;
    let dir = std::path::absolute(&opts.dir)?;
    if dir.exists() {
        if !dir.join(MARKER).exists() {
            return Err(Failure::usage(anyhow!(
                "{} exists and is not a sandbox; choose another --dir",
                dir.display()
            )));
        }
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir.join("nodes"))?;
    std::fs::create_dir_all(dir.join("requests"))?;
    std::fs::create_dir_all(dir.join("links"))?;
    std::fs::write(
        dir.join(MARKER),
        "a hedge sandbox; `hedge sandbox` wipes and recreates it\n",
    )?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))?;

    // The master and its broker.
    // Nodes dial broker_port (through their relays); the master the masters' listener.
    let broker_port = free_port()?;
    let master_port = free_port()?;
    let mdir = dir.join("master");
    pki::init(
        &mdir,
        &InitOptions {
            broker_host: "127.0.0.1".into(),
            broker_port,
            master_host: "127.0.0.1".into(),
            master_port: Some(master_port),
            extra_sans: vec![],
        },
    )
    .map_err(Failure::usage)?;
    let master_toml = mdir.join("master.toml");
    // Nodes enroll (their own key, a CSR and the bundle's one-time token) and renew at
    // the master's HTTPS endpoint.
    let https_port = free_port()?;
    let text = std::fs::read_to_string(&master_toml)?;
    std::fs::write(
        &master_toml,
        text.replace(
            "# listen = \"127.0.0.1:8443\"",
            &format!("listen = \"127.0.0.1:{https_port}\""),
        ),
    )?;
    let m = master_toml.to_str().context("non-UTF-8 path")?.to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let mut fleet = Fleet {
        dir: dir.clone(),
        broker: None,
        master: None,
        nodes: Vec::new(),
        stop: stop.clone(),
        mesh: opts.mesh,
    };
    fleet.broker = Some(
        Command::new(&mosquitto)
            .arg("-c")
            .arg(mdir.join("mosquitto.conf"))
            .stdout(log_file(&mdir.join("mosquitto.log"))?)
            .stderr(log_file(&mdir.join("mosquitto.log"))?)
            .spawn()
            .context("cannot start mosquitto")?,
    );
    wait_until(Duration::from_secs(10), || {
        [broker_port, master_port]
            .iter()
            .all(|&p| TcpStream::connect(("127.0.0.1", p)).is_ok())
    })
    .context("mosquitto did not start; see master/mosquitto.log")?;
    fleet.master = Some(
        Command::new(exe()?)
            .args(["master", "run", "--config", &m])
            .stdout(Stdio::null())
            .stderr(log_file(&mdir.join("master.log"))?)
            .spawn()?,
    );

    // `--mesh`: each node's peer listener.
    let mesh_ports = match opts.mesh {
        Some(_) => (0..opts.nodes)
            .map(|_| free_port())
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };

    // The nodes, each behind its own relay.
    for i in 1..=opts.nodes {
        let name = format!("node-{i}");
        let ndir = dir.join("nodes").join(&name);
        let bundle = dir.join(format!("{name}.bundle"));
        hedge(&[
            "master",
            "enroll",
            &name,
            "--out",
            bundle.to_str().context("path")?,
            "--config",
            &m,
        ])?;
        hedge(&[
            "node",
            "init",
            "--dir",
            ndir.to_str().context("path")?,
            "--enroll",
            bundle.to_str().context("path")?,
        ])?;
        std::fs::remove_file(&bundle)?;
        let relay_listener = TcpListener::bind("127.0.0.1:0")?;
        let relay_port = relay_listener.local_addr()?.port();
        let flag = ndir.join("LINK_DOWN");
        let s = stop.clone();
        std::thread::spawn(move || relay(relay_listener, broker_port, flag, s));
        let board = BOARDS[(i - 1) % BOARDS.len()];
        let cfg = ndir.join("node.toml");
        let text = std::fs::read_to_string(&cfg)?
            .replace("# board = \"rpi4b\"", &format!("board = \"{board}\""))
            .replace(
                &format!("port = {broker_port}"),
                &format!("port = {relay_port}"),
            )
            .replace("usage_interval_ms = 60000", "usage_interval_ms = 5000")
            .replace("health_interval_ms = 60000", "health_interval_ms = 5000")
            .replace(
                "summary_interval_ms = 300000",
                "summary_interval_ms = 10000",
            )
            .replace("sample_interval_ms = 10000", "sample_interval_ms = 1000")
            .replace("ack_timeout_ms = 10000", "ack_timeout_ms = 3000")
            .replace("keepalive_s = 20", "keepalive_s = 3");
        std::fs::write(&cfg, text)?;
        if let Some(shape) = opts.mesh {
            mesh_node(
                &dir,
                shape,
                i,
                &mesh_ports,
                &cfg,
                &ndir.join("LINK_DOWN"),
                &stop,
            )?;
        }
        let child = Command::new(exe()?)
            .args(["node", "run", "--config", cfg.to_str().context("path")?])
            .stdout(Stdio::null())
            .stderr(log_file(&ndir.join("node.log"))?)
            .spawn()?;
        fleet.nodes.push((name, cfg, Some(child)));
    }

    // The master learns of each node from its first records, then places its workload.
    for (name, cfg, _) in &fleet.nodes {
        // Through a chain, a node's first records cross every hop before it.
        wait_until(Duration::from_secs(60), || {
            MasterStore::open(&mdir.join("master.db"))
                .and_then(|s| s.nodes())
                .is_ok_and(|n| n.iter().any(|n| n.node.as_str() == name))
        })
        .with_context(|| {
            format!(
                "{name} never reached the master; see {}",
                cfg.with_file_name("node.log").display()
            )
        })?;
        request_workload(&m, name, &exe()?, &dir.join("requests"))?;
    }

    println!(
        "sandbox in {}: master, broker on 127.0.0.1:{broker_port}, {} nodes. `hedge sandbox link node-1 down` cuts a link.",
        dir.display(),
        opts.nodes
    );
    if let Some(shape) = opts.mesh {
        println!(
            "{} (only node-1 has an uplink; `hedge sandbox link node-2 node-1 down` cuts a peer link)",
            mesh::describe(shape, opts.nodes)
        );
    }
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        let _ = ctrlc_flag(flag);
    }
    let started = Instant::now();
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut last_print = Instant::now() - Duration::from_secs(10);
    loop {
        let done = opts
            .duration
            .is_some_and(|d| started.elapsed() >= Duration::from_secs(d));
        if done || interrupted.load(Ordering::Relaxed) {
            break;
        }
        // Every second on a terminal; every five seconds into a pipe or a log.
        let every = if tty {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(5)
        };
        if last_print.elapsed() >= every {
            last_print = Instant::now();
            let table = status_table(&fleet, &mdir)?;
            if tty {
                print!("\x1b[2J\x1b[H");
            }
            println!(
                "hedge sandbox — {} s (Ctrl-C to stop)\n{table}",
                started.elapsed().as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    summary(&mut fleet, &mdir)
}

/// Makes node `i` (1-based) a peer of a `--mesh` sandbox: its `[mesh]` section, one
/// relay per peer link it dials (cut while the link's flag exists), and, but for
/// node-1, its uplink cut from the start (`uplink_flag`).
fn mesh_node(
    dir: &Path,
    shape: Shape,
    i: usize,
    ports: &[u16],
    cfg: &Path,
    uplink_flag: &Path,
    stop: &Arc<AtomicBool>,
) -> Result<(), Failure> {
    if i > 1 {
        std::fs::write(uplink_flag, b"")?;
    }
    let mut dialled = Vec::new();
    for (a, b) in mesh::edges(shape, ports.len()) {
        if a != i {
            continue;
        }
        let listener = TcpListener::bind("127.0.0.1:0")?;
        dialled.push(listener.local_addr()?.port());
        let flag = mesh::link_flag(dir, &format!("node-{a}"), &format!("node-{b}"));
        std::fs::write(flag.with_extension("link"), b"")?;
        let s = stop.clone();
        let to = ports[b - 1];
        std::thread::spawn(move || relay(listener, to, flag, s));
    }
    let text = std::fs::read_to_string(cfg)?;
    std::fs::write(
        cfg,
        mesh::with_section(&text, &mesh::section(ports[i - 1], &dialled)),
    )?;
    Ok(())
}

/// Stops on SIGINT/SIGTERM by setting `flag` (the children get the same SIGINT from the
/// terminal and stop themselves).
fn ctrlc_flag(flag: Arc<AtomicBool>) -> std::io::Result<()> {
    std::thread::spawn(move || {
        if let Ok(rt) = crate::process::runtime() {
            rt.block_on(crate::process::shutdown_signal());
            flag.store(true, Ordering::Relaxed);
        }
    });
    Ok(())
}

#[allow(clippy::disallowed_methods)] // a driver: waits for real processes, with a deadline
fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> anyhow::Result<()> {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("timed out after {timeout:?}")
}

/// Asks the master for the sample workload of one node (request files: promises
/// checked every second, so the show fits in a short run).
fn request_workload(master: &str, node: &str, exe: &Path, dir: &Path) -> Result<(), Failure> {
    let exe = exe.to_str().context("non-UTF-8 binary path")?;
    let id = node.trim_start_matches("node-");
    let files = [
        format!(
            r#"name = "web-{id}"
software = "exec:{exe}"
args = ["sandbox", "serve", "--port", "{{{{port}}}}"]
[parameters]
port = "{port}"
[[promises]]
name = "http"
kind = "http"
url = "http://127.0.0.1:{{{{port}}}}/"
interval_ms = 1000
timeout_ms = 1000
"#,
            port = free_port()?
        ),
        format!(
            r#"name = "flaky-{id}"
software = "exec:{exe}"
# Stops answering after 12 s; the promise notices, an incident opens, the node
# restarts it (self-repair), the incident resolves.
args = ["sandbox", "serve", "--port", "{{{{port}}}}", "--flaky-after", "12"]
[parameters]
port = "{port}"
[[promises]]
name = "port"
kind = "tcp"
address = "127.0.0.1:{{{{port}}}}"
interval_ms = 1000
timeout_ms = 1000
threshold = 3
"#,
            port = free_port()?
        ),
        format!(
            r#"name = "ticker-{id}"
software = "exec:/bin/sh"
args = ["-c", "while :; do touch srv/beat; sleep 1; done"]
[[promises]]
name = "beat"
kind = "file"
path = "srv/beat"
max_age_s = 5
interval_ms = 1000
timeout_ms = 1000
[[promises]]
name = "alive"
kind = "process"
interval_ms = 1000
timeout_ms = 1000
"#
        ),
    ];
    for (k, text) in files.iter().enumerate() {
        let f = dir.join(format!("{node}-{k}.toml"));
        std::fs::write(&f, text)?;
        hedge(&[
            "master",
            "request",
            "--file",
            f.to_str().context("path")?,
            "--node",
            node,
            "--config",
            master,
        ])?;
    }
    Ok(())
}

fn node_status(cfg: &Path) -> Option<NodeStatus> {
    serde_json::from_value(node_status_json(cfg)?).ok()
}

/// `hedge node status --json` as JSON (the mesh view read by key).
fn node_status_json(cfg: &Path) -> Option<serde_json::Value> {
    let out = Command::new(exe().ok()?)
        .args(["node", "status", "--json", "--config"])
        .arg(cfg)
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

fn held(mdir: &Path) -> BTreeMap<String, (u64, u64)> {
    MasterStore::open(&mdir.join("master.db"))
        .and_then(|s| s.nodes())
        .map(|ns| {
            ns.into_iter()
                .map(|n| (n.node.to_string(), (n.records, n.last_seq)))
                .collect()
        })
        .unwrap_or_default()
}

/// What could be stored twice at the master, per node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Doubles {
    /// Lives (epochs) of the node the master holds.
    pub lives: u32,
    /// Events stored under two seqs or two epochs.
    pub repeats: u64,
    /// `(epoch, seq)`s delivered with two contents.
    pub conflicts: u64,
    /// Usage records whose interval overlaps an earlier one of the same instance.
    pub overlapping_usage: u64,
}

impl Doubles {
    /// Everything stored twice.
    pub fn total(&self) -> u64 {
        self.repeats + self.conflicts + self.overlapping_usage
    }
}

/// Usage records, per node, whose `[from, to)` overlaps another record of the same
/// instance (sorted by start: one that starts before the latest end seen so far).
pub fn overlapping_usage(usage: &[(Name, Record)]) -> BTreeMap<String, u64> {
    let mut spans: BTreeMap<(&str, &str), Vec<(u64, u64)>> = BTreeMap::new();
    for (node, r) in usage {
        if let RecordKind::Usage {
            instance,
            from_ms,
            to_ms,
            ..
        } = &r.kind
        {
            spans
                .entry((node.as_str(), instance.as_str()))
                .or_default()
                .push((*from_ms, *to_ms));
        }
    }
    let mut out = BTreeMap::new();
    for ((node, _), mut v) in spans {
        v.sort_unstable();
        let mut end = 0u64;
        let mut n = 0u64;
        for (i, (from, to)) in v.into_iter().enumerate() {
            if i > 0 && from < end {
                n += 1;
            }
            end = end.max(to);
        }
        *out.entry(node.to_string()).or_insert(0) += n;
    }
    out
}

/// The master's integrity counters and the usage overlaps, per node.
pub fn integrity(store: &MasterStore) -> anyhow::Result<BTreeMap<String, Doubles>> {
    let overlaps = overlapping_usage(&store.usage(0, u64::MAX)?);
    Ok(store
        .nodes()?
        .into_iter()
        .map(|n: NodeSummary| {
            let d = Doubles {
                lives: n.lives,
                repeats: n.repeats,
                conflicts: n.conflicts,
                overlapping_usage: overlaps.get(n.node.as_str()).copied().unwrap_or(0),
            };
            (n.node.to_string(), d)
        })
        .collect())
}

fn status_table(fleet: &Fleet, mdir: &Path) -> Result<String, Failure> {
    let held = held(mdir);
    // With `--mesh`: each node's hops to the master (its own view) and the path by
    // which the master last received its records.
    let paths = fleet.mesh.map(|_| paths(mdir));
    let mut out = format!(
        "{:<8} {:<16} {:<5} {:>9} {:>9} {:>9} {:>7} {:>10}{}\n",
        "NODE",
        "BOARD",
        "LINK",
        "RUNNING",
        "PROMISES",
        "INCIDENTS",
        "OUTBOX",
        "AT MASTER",
        if paths.is_some() { "  HOPS  PATH" } else { "" }
    );
    for (name, cfg, _) in &fleet.nodes {
        let Some(json) = node_status_json(cfg) else {
            out.push_str(&format!("{name:<8} (not answering)\n"));
            continue;
        };
        let Ok(s) = serde_json::from_value::<NodeStatus>(json.clone()) else {
            out.push_str(&format!("{name:<8} (unreadable status)\n"));
            continue;
        };
        let instances = &s.instances;
        let running = instances
            .iter()
            .filter(|i| i.state == InstanceStatus::Running)
            .count();
        let promises: Vec<&PromiseView> = instances.iter().flat_map(|i| &i.promises).collect();
        let ok = promises.iter().filter(|p| p.ok == Some(true)).count();
        let open = s
            .incidents
            .iter()
            .filter(|i| i.state == IncidentStatus::Open)
            .count();
        let link = if fleet
            .dir
            .join("nodes")
            .join(name)
            .join("LINK_DOWN")
            .exists()
        {
            "cut"
        } else if s.uplink.connected {
            "up"
        } else {
            "down"
        };
        out.push_str(&format!(
            // The outbox depth unpadded, as it always printed (a JSON value ignored `{:>7}`).
            "{:<8} {:<16} {:<5} {:>5}/{:<3} {:>5}/{:<3} {:>9} {} {:>10}",
            name,
            s.board,
            link,
            running,
            instances.len(),
            ok,
            promises.len(),
            open,
            s.outbox.depth,
            held.get(name).map_or(0, |h| h.0)
        ));
        if let Some(paths) = &paths {
            // `mesh.hops`: 0 with its own uplink, a peer's + 1, null without a path.
            let hops = json["mesh"]["hops"]
                .as_u64()
                .map_or("-".to_string(), |h| h.to_string());
            let path = paths.get(name).map_or("-", String::as_str);
            out.push_str(&format!("  {hops:>4}  {path}"));
        }
        out.push('\n');
    }
    Ok(out)
}

/// The path by which the master last received each node's records (`direct`,
/// `via node-1,node-2`).
fn paths(mdir: &Path) -> BTreeMap<String, String> {
    MasterStore::open(&mdir.join("master.db"))
        .and_then(|s| s.nodes())
        .map(|ns| {
            ns.into_iter()
                .filter_map(|n| Some((n.node.to_string(), n.path?)))
                .collect()
        })
        .unwrap_or_default()
}

/// Restores links, lets nodes drain, compares, stops everything.
fn summary(fleet: &mut Fleet, mdir: &Path) -> Result<(), Failure> {
    // Every link as it began: every uplink up, or with `--mesh` node-1's alone, and
    // every peer link up.
    for (k, (name, _, _)) in fleet.nodes.iter().enumerate() {
        let flag = fleet.dir.join("nodes").join(name).join("LINK_DOWN");
        if fleet.mesh.is_some() && k > 0 {
            std::fs::write(&flag, b"")?;
        } else {
            let _ = std::fs::remove_file(flag);
        }
    }
    if let Ok(links) = std::fs::read_dir(fleet.dir.join("links")) {
        for l in links.flatten() {
            if l.path().extension().is_some_and(|e| e == "down") {
                let _ = std::fs::remove_file(l.path());
            }
        }
    }
    println!("stopping: draining every node's outbox to the master…");
    // A node keeps producing records; it is drained when the master holds every seq
    // it had produced when we looked (then it is stopped, and its last records drain).
    let mut lost_total = 0u64;
    let mut dup_total = 0u64;
    let mut lines = Vec::new();
    let mut incidents = (0u64, 0u64);
    for i in 0..fleet.nodes.len() {
        let (name, cfg) = (fleet.nodes[i].0.clone(), fleet.nodes[i].1.clone());
        let status = node_status(&cfg);
        if let Some(s) = &status {
            for inc in &s.incidents {
                incidents.0 += 1;
                if inc.state == IncidentStatus::Resolved {
                    incidents.1 += 1;
                }
            }
        }
        let produced = status
            .as_ref()
            .map(|s| s.outbox.next_seq)
            .map_or(0, |n| n.saturating_sub(1));
        let caught_up = wait_until(Duration::from_secs(30), || {
            held(mdir).get(&name).is_some_and(|h| h.1 >= produced)
        })
        .is_ok();
        let (records, last_seq) = held(mdir).get(&name).copied().unwrap_or((0, 0));
        // A sandbox node has one life (its store is new), so its records at the master
        // are unique by seq: seqs below the last stored one that the master lacks are
        // lost (nothing is shed in a sandbox run this short).
        let lost = if caught_up {
            last_seq.saturating_sub(records)
        } else {
            produced.saturating_sub(records)
        };
        let doubles = MasterStore::open(&mdir.join("master.db"))
            .map_err(anyhow::Error::from)
            .and_then(|s| integrity(&s))
            .map(|m| m.get(&name).copied().unwrap_or_default())
            .with_context(|| format!("reading the master's integrity counters of {name}"))?;
        let dup = doubles.total();
        lost_total += lost;
        dup_total += dup;
        lines.push(format!(
            "{name:<8} produced {produced:>6} (seq 1..={produced})  stored at master {records:>6} (last seq {last_seq}, lives {})  lost {lost}  duplicated {dup} (repeats {}, conflicts {}, overlapping usage {})",
            doubles.lives, doubles.repeats, doubles.conflicts, doubles.overlapping_usage
        ));
    }
    fleet.stop_all();
    println!("\nsummary");
    for l in &lines {
        println!("  {l}");
    }
    println!(
        "  incidents seen {}, resolved {} (self-repair)",
        incidents.0, incidents.1
    );
    println!("  records lost {lost_total}, duplicated {dup_total}");
    if lost_total == 0 && dup_total == 0 {
        println!("  clean: every record reached the master exactly once");
        Ok(())
    } else {
        Err(anyhow!("records were lost or duplicated").into())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use hedge_wire::{InstanceStatus, Up};

    use super::*;

    fn n(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    fn usage(seq: u64, from_ms: u64, to_ms: u64, cpu_ms: u64) -> Record {
        Record {
            seq,
            time_ms: to_ms,
            kind: RecordKind::Usage {
                instance: n("web"),
                from_ms,
                to_ms,
                cpu_ms,
                mem_avg_bytes: 1,
                mem_peak_bytes: 1,
                disk_bytes: 0,
                net_rx_bytes: None,
                net_tx_bytes: None,
                uptime_ms: to_ms - from_ms,
            },
        }
    }

    fn state(seq: u64) -> Record {
        Record {
            seq,
            time_ms: 500 + seq,
            kind: RecordKind::InstanceState {
                instance: n("web"),
                status: InstanceStatus::Running,
                pid: Some(7),
                restarts: 0,
                last_exit: None,
            },
        }
    }

    fn up(epoch: u64, records: Vec<Record>) -> Up {
        let covers = Some((1, records.last().map_or(1, |r| r.seq)));
        Up {
            node: n("node-1"),
            records,
            covers,
            epoch,
        }
    }

    #[test]
    fn a_clean_run_counts_nothing_twice() {
        let dir = tempfile::tempdir().unwrap();
        let s = MasterStore::open(&dir.path().join("m.db")).unwrap();
        let b = up(
            1,
            vec![state(1), usage(2, 0, 1000, 5), usage(3, 1000, 2000, 5)],
        );
        s.ingest(&n("node-1"), &b, 1).unwrap();
        // A resend (the master's ack was lost) stores nothing twice.
        s.ingest(&n("node-1"), &b, 2).unwrap();
        let d = integrity(&s).unwrap()["node-1"];
        assert_eq!(
            d,
            Doubles {
                lives: 1,
                ..Doubles::default()
            }
        );
        assert_eq!(d.total(), 0);
    }

    #[test]
    fn events_stored_twice_and_cpu_accounted_twice_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let s = MasterStore::open(&dir.path().join("m.db")).unwrap();
        let node = n("node-1");
        s.ingest(&node, &up(1, vec![state(1), usage(2, 0, 1000, 5)]), 1)
            .unwrap();
        // A restored store sends seq 1's event again under its new epoch (a repeat);
        // a daemon that lost its accounting state bills [500, 1500) again (an overlap).
        s.ingest(&node, &up(2, vec![state(1), usage(2, 500, 1500, 5)]), 2)
            .unwrap();
        // A clone of the first life delivers seq 1 with other content (a conflict).
        s.ingest(&node, &up(1, vec![usage(1, 3000, 4000, 9)]), 3)
            .unwrap();
        let d = integrity(&s).unwrap()["node-1"];
        assert_eq!(
            d,
            Doubles {
                lives: 2,
                repeats: 1,
                conflicts: 1,
                overlapping_usage: 1
            }
        );
        assert_eq!(d.total(), 3);
    }
}
