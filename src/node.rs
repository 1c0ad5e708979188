//! `hedge node ...`: init, run, and the client commands that talk to the local API.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use hedge_runtime::config::{self, NodeConfig};
use hedge_runtime::daemon::api::{self, ApiError};
use hedge_runtime::daemon::Daemon;
use hedge_runtime::local_api::{self, Accepted, ApiRequest, NodeStatus, OutboxPage, Requested};
use hedge_runtime::request_file;
use hedge_runtime::store::Store;
use serde::de::DeserializeOwned;

use crate::Failure;

mod backup_probe;

/// Where client commands look for the config unless told.
const DEFAULT_CONFIG: &str = "/var/lib/hedge/node.toml";

#[derive(Args)]
pub struct ConfigArg {
    /// The node's config file.
    #[arg(long, env = "HEDGE_NODE_CONFIG", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
}

#[derive(Subcommand)]
pub enum NodeCommand {
    /// Create a node: a commented DIR/node.toml, the store, and the identity key.
    Init {
        /// Directory to create the node in.
        #[arg(long)]
        dir: PathBuf,
        /// Node id (default: from the host name, or the enrollment bundle's).
        #[arg(long)]
        id: Option<String>,
        /// An enrollment bundle from `hedge master enroll`: joins the node to the fleet.
        #[arg(long)]
        enroll: Option<PathBuf>,
    },
    /// Run the node daemon in the foreground (logs on stderr).
    Run {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Request an instance: from a file (--file) or from flags.
    Request {
        #[command(flatten)]
        request: crate::request_args::RequestArgs,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Start a local instance.
    Start {
        /// Instance name.
        name: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Stop a local instance (its partition stays).
    Stop {
        /// Instance name.
        name: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Destroy a local instance: stop it and remove its partition.
    Destroy {
        /// Instance name.
        name: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Show instances and the outbox.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Print the records waiting in the outbox (not yet acknowledged by the master).
    Outbox {
        /// First sequence number.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// At most this many records (max 1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Take a snapshot of an instance now (its [backup] policy's paths, else srv);
    /// prints the snapshot id.
    Backup {
        /// Instance name.
        name: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List the snapshots in this node's vault, oldest first.
    Backups {
        /// Only this instance's.
        name: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Rebuild an instance's paths from a snapshot in this node's vault: stops it,
    /// restores, starts it again (other instances keep running).
    Restore {
        /// Instance name.
        name: String,
        /// The snapshot id (16 hex digits, from `hedge node backups`).
        #[arg(long)]
        snapshot: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Measure the backup engine on a directory (for scripts/bench; prints JSON).
    #[command(hide = true)]
    BackupProbe(backup_probe::ProbeArgs),
    /// Print an instance's log.
    Logs {
        /// Instance name.
        name: String,
        /// Keep printing as it grows.
        #[arg(long, short)]
        follow: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
}

fn load(c: &ConfigArg) -> Result<NodeConfig, Failure> {
    NodeConfig::load(&c.config).map_err(Failure::usage)
}

fn call<T: DeserializeOwned>(cfg: &NodeConfig, req: &ApiRequest) -> Result<T, Failure> {
    crate::process::runtime()?
        .block_on(api::call(&cfg.socket_path(), req))
        .map_err(|e| match e {
            ApiError::Connect { .. } => Failure::unavailable(e),
            ApiError::Refused(_) => Failure::data(e),
            other => Failure::from(other),
        })
}

pub fn main(cmd: NodeCommand) -> Result<(), Failure> {
    match cmd {
        NodeCommand::Init { dir, id, enroll } => init(&dir, id, enroll.as_deref()),
        NodeCommand::Run { config } => run(load(&config)?),
        NodeCommand::Request { request, config } => {
            let (request, backup) = request.build_with_backup(&request_file::no_releases)?;
            let cfg = load(&config)?;
            let name = request.name.to_string();
            call::<Requested>(
                &cfg,
                &ApiRequest::Request {
                    request: Box::new(request),
                    backup,
                },
            )?;
            println!("requested {name}");
            Ok(())
        }
        NodeCommand::Start { name, config } => {
            simple(&config, ApiRequest::Start { name }, "started")
        }
        NodeCommand::Stop { name, config } => {
            simple(&config, ApiRequest::Stop { name }, "stopping")
        }
        NodeCommand::Destroy { name, config } => {
            simple(&config, ApiRequest::Destroy { name }, "destroying")
        }
        NodeCommand::Status { json, config } => {
            let status: NodeStatus = call(&load(&config)?, &ApiRequest::Status)?;
            if json {
                // As the daemon answered it: `ok` beside the status, keys sorted.
                let v = Accepted::new(&status).to_value()?;
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_status(&status);
            }
            Ok(())
        }
        NodeCommand::Outbox {
            from,
            limit,
            json,
            config,
        } => {
            let page: OutboxPage = call(&load(&config)?, &ApiRequest::Outbox { from, limit })?;
            if json {
                let records = serde_json::to_value(&page.records)?;
                println!("{}", serde_json::to_string_pretty(&records)?);
            } else {
                // Unpadded: the widths this once asked for were ignored (JSON values).
                for r in &page.records {
                    println!("{} {} {}", r.seq, r.time_ms, serde_json::to_value(&r.kind)?);
                }
            }
            Ok(())
        }
        NodeCommand::Backup { name, config } => {
            let taken: local_api::Snapshotted =
                call(&load(&config)?, &ApiRequest::Backup { name })?;
            println!("{}", taken.snapshot.id);
            Ok(())
        }
        NodeCommand::Backups { name, json, config } => {
            let list: local_api::BackupList = call(&load(&config)?, &ApiRequest::Backups { name })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print_backups(&list);
            }
            Ok(())
        }
        NodeCommand::Restore {
            name,
            snapshot,
            config,
        } => {
            let done: local_api::Restored = call(
                &load(&config)?,
                &ApiRequest::Restore {
                    name,
                    snapshot: snapshot.clone(),
                },
            )?;
            println!(
                "restored {} from {} ({} files, {} bytes)",
                done.name, done.snapshot, done.files, done.bytes
            );
            Ok(())
        }
        NodeCommand::BackupProbe(args) => backup_probe::main(args),
        NodeCommand::Logs {
            name,
            follow,
            config,
        } => {
            let log: local_api::LogPath = call(&load(&config)?, &ApiRequest::LogPath { name })?;
            logs(&log.path, follow)
        }
    }
}

fn simple(config: &ConfigArg, req: ApiRequest, done: &str) -> Result<(), Failure> {
    let name = match &req {
        ApiRequest::Start { name } | ApiRequest::Stop { name } | ApiRequest::Destroy { name } => {
            name.clone()
        }
        _ => String::new(),
    };
    call::<Requested>(&load(config)?, &req)?;
    println!("{done} {name}");
    Ok(())
}

fn default_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let id: String = host
        .trim()
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if hedge_wire::Name::new(&id).is_ok() {
        id
    } else {
        "node".into()
    }
}

fn init(dir: &Path, id: Option<String>, enroll: Option<&Path>) -> Result<(), Failure> {
    let bundle = enroll
        .map(hedge_uplink::bundle::Bundle::load)
        .transpose()
        .map_err(Failure::usage)?;
    let id = match (&bundle, id) {
        (Some(b), Some(id)) if id != b.node.as_str() => {
            return Err(Failure::usage(anyhow::anyhow!(
                "--id {id:?} differs from the bundle's node {:?}",
                b.node.as_str()
            )))
        }
        (Some(b), _) => b.node.to_string(),
        (None, id) => id.unwrap_or_else(default_id),
    };
    hedge_wire::Name::new(&id).map_err(|e| Failure::usage(anyhow::anyhow!("--id {id:?}: {e}")))?;
    let file = dir.join("node.toml");
    if file.exists() {
        return Err(Failure::usage(anyhow::anyhow!(
            "{} exists; refusing to overwrite a node",
            file.display()
        )));
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // 0711: partition users must traverse it to reach their partitions; nothing in it
    // is listable by them, and the store and key are private on their own.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))?;
    let enrollment = bundle.as_ref().map(|b| config::Enrollment {
        host: b.broker_host.clone(),
        port: b.broker_port,
        master_key: b.master_public_key.trim().to_string(),
        artifacts: Some(b.url.clone()),
    });
    if let Some(b) = &bundle {
        let up = dir.join("uplink");
        std::fs::create_dir_all(&up)?;
        std::fs::set_permissions(&up, std::fs::Permissions::from_mode(0o700))?;
        std::fs::write(up.join("ca.crt"), &b.ca_cert)?;
        // The node's own key: it never leaves the node. The daemon sends a CSR with the
        // one-time token and receives uplink/node.crt (hedge_runtime::credentials).
        hedge_runtime::credentials::create_key(&up.join("node.key")).map_err(Failure::usage)?;
        write_secret(
            &up.join(hedge_runtime::credentials::TOKEN),
            format!("{}\n", b.token).as_bytes(),
        )?;
    }
    let cfg_text = config::file(&id, enrollment.as_ref());
    std::fs::write(&file, &cfg_text).with_context(|| format!("cannot write {}", file.display()))?;
    let cfg = NodeConfig::load(&file).map_err(Failure::usage)?;
    Store::open(&cfg.store_dir(), cfg.cache_bytes())?;
    hedge_runtime::identity::create(&cfg.key_path())?;
    println!("node {id} created in {}", dir.display());
    println!("  config   {}", file.display());
    println!("  store    {}", cfg.store_dir().display());
    println!("  key      {} (0600)", cfg.key_path().display());
    if let Some(b) = &bundle {
        println!(
            "  uplink   {}:{} (mutual TLS, master key {}…)",
            b.broker_host,
            b.broker_port,
            &b.master_public_key[..8]
        );
        println!(
            "  enroll   {} (key made here; the certificate comes when the daemon runs)",
            b.url
        );
    }
    println!("run it:    hedge node run --config {}", file.display());
    Ok(())
}

/// Writes a secret file with mode 0600 from the start.
fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), Failure> {
    hedge_common::keyfile::write_new(path, bytes, 0o600)
        .with_context(|| format!("cannot create {}", path.display()))?;
    Ok(())
}

fn bind(cfg: &NodeConfig) -> Result<tokio::net::UnixListener, Failure> {
    api::bind(&cfg.socket_path(), cfg.api_gid()).map_err(|e| match e {
        ApiError::AlreadyRunning(_) => Failure::usage(e),
        e => Failure::from(e),
    })
}

fn run(cfg: NodeConfig) -> Result<(), Failure> {
    crate::process::tune_allocator();
    crate::process::init_logging();
    // Fail early on a bad or exposed key rather than later on first sync.
    hedge_runtime::identity::load(&cfg.key_path()).map_err(Failure::usage)?;
    let rt = crate::process::runtime()?;
    rt.block_on(async {
        let daemon = Daemon::boot(cfg.clone())?;
        let listener = bind(&cfg)?;
        let shutdown = crate::process::shutdown_signal();
        tokio::spawn(crate::memory::keep_near_working_set());
        daemon.run(listener, shutdown).await?;
        Ok::<(), Failure>(())
    })
}

fn print_status(v: &NodeStatus) {
    fn or_dash<T: ToString>(v: Option<T>) -> String {
        v.map_or_else(|| "-".to_string(), |v| v.to_string())
    }
    println!("node {}", v.node);
    println!(
        "{:<24} {:<9} {:<9} {:>8} {:>8} {:>6} {:<5}  LAST EXIT",
        "INSTANCE", "STATE", "WANTED", "PID", "RESTARTS", "FENCE", "LEASE"
    );
    for i in &v.instances {
        let lease = match i.lease_held {
            Some(true) => "held",
            Some(false) => "NONE",
            None => "-",
        };
        println!(
            "{:<24} {:<9} {:<9} {:>8} {:>8} {:>6} {:<5}  {}",
            i.name,
            local_api::state_word(i.state),
            local_api::requested_word(i.requested),
            or_dash(i.pid),
            i.restarts,
            or_dash(i.fence),
            lease,
            or_dash(i.last_exit.as_deref())
        );
    }
    for i in &v.instances {
        if i.held_over {
            println!(
                "  held over {}: a new master epoch left it out; kept as last requested until the master names it",
                i.name
            );
        }
    }
    for i in &v.instances {
        if let Some(b) = &i.last_snapshot {
            println!(
                "  backup {}: last snapshot {} at {} ms, {}",
                i.name,
                b.id,
                b.taken_ms,
                if b.uploaded {
                    "uploaded"
                } else {
                    "not uploaded yet"
                }
            );
        }
    }
    for i in &v.instances {
        for p in &i.promises {
            let state = match p.ok {
                Some(true) => "ok",
                Some(false) => "FAILING",
                None => "not checked yet",
            };
            println!("  promise {}/{}: {state}", i.name, p.name);
        }
    }
    if !v.incidents.is_empty() {
        println!(
            "{:>6} {:<24} {:<16} {:<9} {:<9} MESSAGE",
            "ID", "INSTANCE", "PROMISE", "STATE", "SEVERITY"
        );
        for i in &v.incidents {
            println!(
                "{:>6} {:<24} {:<16} {:<9} {:<9} {}",
                i.id,
                i.instance,
                i.promise,
                local_api::word(&i.state),
                local_api::severity_word(i.severity),
                i.message
            );
        }
    }
    println!(
        "outbox: {} records ({} of {} bytes) waiting, next seq {}",
        v.outbox.depth, v.outbox.bytes, v.outbox.quota_bytes, v.outbox.next_seq
    );
    print_mesh(&v.mesh);
}

fn print_backups(list: &local_api::BackupList) {
    println!(
        "{:<24} {:<16} {:>14} {:>12} {:>12} {:<8} {:<8} SOURCE",
        "INSTANCE", "SNAPSHOT", "TAKEN_MS", "BYTES", "NEW_BYTES", "CONSIST", "UPLOADED"
    );
    for s in &list.snapshots {
        println!(
            "{:<24} {:<16} {:>14} {:>12} {:>12} {:<8} {:<8} {}",
            s.instance,
            s.id,
            s.taken_ms,
            s.bytes,
            s.new_bytes,
            local_api::consistency_word(s.consistency),
            if s.uploaded { "yes" } else { "no" },
            s.source.as_deref().unwrap_or("-")
        );
    }
}

/// The mesh lines of `status`: the path to the master, then the PEERS table (custody
/// held here for each origin).
fn print_mesh(m: &local_api::MeshView) {
    if !m.enabled && m.peers.is_empty() {
        return;
    }
    let hops = m
        .hops
        .map_or_else(|| "no path".to_string(), |h| format!("{h} hops"));
    println!(
        "mesh: {hops} to the master, link {}; custody taken {} batches ({} records, {} bytes), refused {}, shed {}",
        if m.connected { "up" } else { "down" },
        m.relay.batches,
        m.relay.records,
        m.relay.bytes,
        m.relay.refused,
        m.relay.shed
    );
    if m.peers.is_empty() {
        return;
    }
    println!(
        "{:<24} {:<22} {:<5} {:>4} {:>8} {:>12} {:>6} {:>7}",
        "PEER", "ADDRESS", "LINK", "HOPS", "CUSTODY", "BYTES", "SHED", "REFUSED"
    );
    for p in &m.peers {
        println!(
            "{:<24} {:<22} {:<5} {:>4} {:>8} {:>12} {:>6} {:>7}",
            p.node,
            p.address.as_deref().unwrap_or("-"),
            p.link,
            p.hops.map_or_else(|| "-".to_string(), |h| h.to_string()),
            p.custody_batches,
            p.custody_bytes,
            p.shed,
            p.refused
        );
    }
}

/// Prints the log at `path` (never following a link an instance planted, never
/// blocking on a FIFO), with terminal control bytes escaped.
fn logs(path: &Path, follow: bool) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    let mut pos = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let mut escaper = crate::escape::Escaper::default();
    let mut printable = Vec::with_capacity(buf.len() * 4);
    loop {
        match hedge_runtime::logfile::open_for_reading(path) {
            Ok(mut f) => {
                let len = f.metadata()?.len();
                if len < pos {
                    pos = 0; // rotated or truncated: start the new file from the top
                }
                f.seek(SeekFrom::Start(pos))?;
                loop {
                    let n = f.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    printable.clear();
                    escaper.feed(&buf[..n], &mut printable);
                    out.write_all(&printable)?;
                    pos += n as u64;
                }
                out.flush()?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(anyhow::anyhow!("{}: {e}", path.display()).into()),
        }
        if !follow {
            printable.clear();
            escaper.finish(&mut printable);
            out.write_all(&printable)?;
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
