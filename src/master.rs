//! `hedge master ...`: init, enroll, run, request, and the fleet views.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use hedge_common::clock::now_ms;
use hedge_master::alloc::Placement;
use hedge_master::billing::{self, Period, PriceList};
use hedge_master::config::MasterConfig;
use hedge_master::failover::{self, OnLost};
use hedge_master::node_state::NodeOp;
use hedge_master::pki::{self, InitOptions};
use hedge_master::placement::{self, Line, PlaceError};
use hedge_master::sign::MasterKey;
use hedge_master::store::{FleetStore, MasterStore};

use hedge_wire::{InstanceRequest, Name, RecordKind};

use crate::Failure;

mod backups;
mod nodes;
mod recovery;

#[derive(Args)]
pub struct ConfigArg {
    /// The master's config file.
    #[arg(long, env = "HEDGE_MASTER_CONFIG", default_value = "master.toml")]
    config: PathBuf,
}

#[derive(Subcommand)]
// Parsed once per process; boxing the larger variants buys nothing.
#[allow(clippy::large_enum_variant)]
pub enum MasterCommand {
    /// Create a master: signing key, fleet CA, broker certificate, master.toml, and a
    /// ready mosquitto configuration (`mosquitto -c DIR/mosquitto.conf`).
    Init {
        /// Directory to create the master in.
        #[arg(long)]
        dir: PathBuf,
        /// Host name or address nodes dial to reach the broker (its nodes' listener).
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// The broker's TLS port for nodes (client id = certificate CN).
        #[arg(long, default_value_t = 8883)]
        port: u16,
        /// Address of the broker's masters' listener; keep it on loopback (masters run
        /// beside the broker).
        #[arg(long, default_value = "127.0.0.1")]
        master_host: String,
        /// The broker's TLS port for masters (default: --port + 1).
        #[arg(long)]
        master_port: Option<u16>,
        /// Extra names or addresses for the broker certificate (repeatable).
        #[arg(long = "san")]
        sans: Vec<String>,
    },
    /// Write an enrollment bundle for a node (`hedge node init --enroll FILE` takes it).
    Enroll {
        /// The node id.
        node: String,
        /// Where to write the bundle (mode 0600; never overwritten).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        assign: AssignArgs,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Assign labels, region or an instance cap to a node: the only ones allocation
    /// matches (what a node reports about itself is shown, never trusted).
    Label {
        /// The node id.
        node: String,
        /// Labels k=v to set.
        #[arg(value_name = "K=V")]
        pairs: Vec<String>,
        #[command(flatten)]
        assign: AssignArgs,
        /// Remove this label (repeatable).
        #[arg(long = "unset")]
        unset: Vec<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Revoke a node: its certificates go into the broker's CRL (the broker is made to
    /// reload it), and the master refuses its records, downloads and renewals.
    Revoke {
        /// The node id.
        node: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Drain a node: nothing new is placed on it and its instances are moved away
    /// (each old copy stops once its new one runs).
    Drain {
        /// The node id.
        node: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Make a draining (or retiring) node schedulable again.
    Undrain {
        /// The node id.
        node: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Retire a node: drain it, then revoke it once empty (at once if it is lost).
    /// Final.
    Retire {
        /// The node id.
        node: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Restore an instance on a node from a snapshot in the master's blob store: place
    /// it there (moved, fenced, if it runs elsewhere) with a restore directive; the node
    /// rebuilds its paths, then starts it.
    Restore {
        /// The instance.
        instance: String,
        /// The node to restore it on.
        #[arg(long)]
        to: String,
        /// The snapshot (16 hex digits; default: the newest the master stores).
        #[arg(long)]
        snapshot: Option<String>,
        /// The fleet's recovery secret (default: DIR/recovery.key; it may live offline).
        #[arg(long)]
        recovery_key: Option<PathBuf>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Write a consistent copy of the master's store (SQLite's online backup API; masters
    /// may run meanwhile). It holds the open restores' keys: keep it private.
    Backup {
        /// The file to write.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Install a backup (`hedge master backup --out`) as the master's store, with a new
    /// epoch, so nodes that applied later generations accept the states it signs. Stop
    /// every master using the store first.
    Recover {
        /// The backup file.
        #[arg(long)]
        from: PathBuf,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Run the master: store records once, acknowledge them, publish desired states.
    Run {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Request an instance: allocate a node, sign a new desired state for it.
    Request {
        #[command(flatten)]
        request: crate::request_args::RequestArgs,
        /// Place it on this node.
        #[arg(long)]
        node: Option<String>,
        /// The node must carry this label k=v (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// The node must have this architecture (e.g. aarch64).
        #[arg(long)]
        arch: Option<String>,
        /// The node must be in this region.
        #[arg(long)]
        region: Option<String>,
        /// If its node is lost: `move` it elsewhere (it then runs under a lease, and
        /// stops on a node that cannot reach the master), or `wait` for the node
        /// (default: master.toml's [failover] on_lost).
        #[arg(long, value_name = "move|wait", value_parser = clap::value_parser!(OnLost))]
        on_lost: Option<OnLost>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Supply a software artifact (a .tar.gz for one target): stored by sha256, served to
    /// nodes by `hedge master run`; prints `sha256:HEX`.
    Supply {
        /// The .tar.gz archive.
        file: PathBuf,
        /// The target triple it was built for (e.g. aarch64-unknown-linux-gnu), or `*`.
        #[arg(long)]
        target: String,
        /// Make it the variant for --target of this release (`--software release:NAME`).
        #[arg(long)]
        release: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Supplied artifacts and releases.
    Artifacts(View),
    /// Backups: snapshots stored at the master and those still only on their node, and
    /// each node's blob counters (chunks stored, duplicate puts, refusals).
    Backups {
        /// Only this instance's snapshots.
        instance: Option<String>,
        #[command(flatten)]
        view: View,
    },
    /// The fleet: nodes, their state (schedulable, draining, retiring, lost, retired),
    /// when they were last seen, what the master holds of them.
    Nodes(View),
    /// Instances requested and reported across the fleet.
    Instances(View),
    /// Incidents reported by nodes, with their timelines.
    Incidents(View),
    /// The master's decisions (moves for incidents, drained, retiring and lost nodes,
    /// handovers, refusals): one line each, or JSON.
    Decisions(View),
    /// Usage records (all, or one month with --period).
    Usage {
        /// YYYY-MM.
        #[arg(long)]
        period: Option<String>,
        #[command(flatten)]
        view: View,
    },
    /// An invoice for one month from usage records and a price list.
    Invoice {
        /// YYYY-MM.
        #[arg(long)]
        period: String,
        /// Price list (TOML; default: [billing] price_list, else the built-in example).
        #[arg(long)]
        price_list: Option<PathBuf>,
        /// Print JSON.
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        /// Print CSV.
        #[arg(long)]
        csv: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// Placement facts the operator assigns to a node.
#[derive(Args)]
pub struct AssignArgs {
    /// A label k=v allocation may match (repeatable).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// The node's region (a technical or legal placement criterion).
    #[arg(long)]
    region: Option<String>,
    /// At most this many instances, whatever the node reports.
    #[arg(long)]
    max_instances: Option<u32>,
}

/// `k=v` pairs; the key non-empty.
fn parse_labels(kvs: &[String], flag: &str) -> Result<BTreeMap<String, String>, Failure> {
    let mut out = BTreeMap::new();
    for kv in kvs {
        match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                out.insert(k.to_owned(), v.to_owned());
            }
            _ => {
                return Err(Failure::usage(anyhow::anyhow!(
                    "{flag} {kv:?}: expected k=v"
                )))
            }
        }
    }
    Ok(out)
}

/// Applies `labels`, `unset` and `a` to `node`'s assignment in the store.
fn assign(
    store: &MasterStore,
    node: &Name,
    labels: BTreeMap<String, String>,
    unset: &[String],
    a: &AssignArgs,
) -> Result<hedge_master::store::Assignment, Failure> {
    Ok(store.update_assignment(node, |x| {
        x.labels.extend(labels);
        for k in unset {
            x.labels.remove(k);
        }
        if let Some(r) = &a.region {
            x.region = (!r.is_empty()).then(|| r.clone());
        }
        if let Some(m) = a.max_instances {
            x.max_instances = Some(m);
        }
    })?)
}

#[derive(Args)]
pub struct View {
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    config: ConfigArg,
}

/// A node id from the command line.
fn node_name(node: &str) -> Result<Name, Failure> {
    Name::new(node).map_err(|e| Failure::usage(anyhow::anyhow!("{node:?}: {e}")))
}

fn load(c: &ConfigArg) -> Result<MasterConfig, Failure> {
    MasterConfig::load(&c.config).map_err(Failure::usage)
}

fn open_store(cfg: &MasterConfig) -> Result<MasterStore, Failure> {
    Ok(MasterStore::open(&cfg.base.join(&cfg.master.store))?)
}

pub fn main(cmd: MasterCommand) -> Result<(), Failure> {
    match cmd {
        MasterCommand::Init {
            dir,
            host,
            port,
            master_host,
            master_port,
            sans,
        } => {
            let report = pki::init(
                &dir,
                &InitOptions {
                    broker_host: host,
                    broker_port: port,
                    master_host,
                    master_port,
                    extra_sans: sans,
                },
            )
            .map_err(Failure::usage)?;
            println!("master created in {}", dir.display());
            println!("  config     {}", report.master_toml.display());
            println!(
                "  broker     mosquitto -c {}",
                report.mosquitto_conf.display()
            );
            println!("  signing    {}", report.signing_public);
            println!(
                "  recovery   {} (opens every backup: keep a copy offline)",
                dir.join(hedge_master::blobs::RECOVERY_KEY).display()
            );
            println!(
                "enroll a node: hedge master enroll NODE --out NODE.bundle --config {}",
                report.master_toml.display()
            );
            Ok(())
        }
        MasterCommand::Enroll {
            node,
            out,
            assign: assigned,
            config,
        } => {
            let n =
                Name::new(&node).map_err(|e| Failure::usage(anyhow::anyhow!("{node:?}: {e}")))?;
            let labels = parse_labels(&assigned.labels, "--label")?;
            let dir = config
                .config
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default();
            let dir = if dir.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                dir
            };
            pki::enroll(&dir, &n, &out).map_err(Failure::usage)?;
            let store = open_store(&load(&config)?)?;
            assign(&store, &n, labels, &[], &assigned)?;
            println!(
                "bundle for {node} written to {} (a one-time token, no key: move it to the node, \
                 then delete it)",
                out.display()
            );
            Ok(())
        }
        MasterCommand::Revoke { node, config } => {
            let n =
                Name::new(&node).map_err(|e| Failure::usage(anyhow::anyhow!("{node:?}: {e}")))?;
            let cfg = load(&config)?;
            let r = hedge_master::revocation::revoke(&cfg.base, &n).map_err(Failure::data)?;
            println!(
                "{node} {} ({} certificate(s) in {})",
                if r.already {
                    "was already revoked"
                } else {
                    "revoked"
                },
                r.certificates,
                cfg.base.join(hedge_master::revocation::CRL).display()
            );
            match r.reloaded {
                Some(pid) => println!("broker (pid {pid}) told to reload its CRL"),
                None => println!(
                    "no running broker found in {}: it reads the CRL when it starts \
                     (or send it SIGHUP)",
                    cfg.base
                        .join(hedge_master::revocation::BROKER_PID)
                        .display()
                ),
            }
            Ok(())
        }
        MasterCommand::Run { config } => run(load(&config)?),
        MasterCommand::Restore {
            instance,
            to,
            snapshot,
            recovery_key,
            config,
        } => {
            let cfg = load(&config)?;
            let snapshot = snapshot
                .map(|s| {
                    s.parse::<hedge_wire::backup::SnapshotId>()
                        .map_err(|e| Failure::usage(anyhow::anyhow!("--snapshot {s:?}: {e}")))
                })
                .transpose()?;
            recovery::restore(
                &cfg,
                &open_store(&cfg)?,
                &node_name(&instance)?,
                &node_name(&to)?,
                snapshot,
                recovery_key.as_deref(),
            )
        }
        MasterCommand::Backup { out, config } => {
            recovery::backup(&open_store(&load(&config)?)?, &out)
        }
        MasterCommand::Recover { from, config } => recovery::recover(&load(&config)?, &from),
        MasterCommand::Label {
            node,
            pairs,
            assign: assigned,
            unset,
            config,
        } => {
            let n =
                Name::new(&node).map_err(|e| Failure::usage(anyhow::anyhow!("{node:?}: {e}")))?;
            let mut all = parse_labels(&pairs, "label")?;
            all.extend(parse_labels(&assigned.labels, "--label")?);
            let store = open_store(&load(&config)?)?;
            let a = assign(&store, &n, all, &unset, &assigned)?;
            println!("{}", serde_json::to_string(&a)?);
            Ok(())
        }
        MasterCommand::Supply {
            file,
            target,
            release,
            config,
        } => {
            let cfg = load(&config)?;
            if !hedge_wire::valid_target(&target) {
                return Err(Failure::usage(anyhow::anyhow!(
                    "--target {target:?}: a target triple (a-z 0-9 . _ -, at most 64 bytes) or *"
                )));
            }
            let release = release
                .map(|r| {
                    Name::new(&r)
                        .map_err(|e| Failure::usage(anyhow::anyhow!("--release {r:?}: {e}")))
                })
                .transpose()?;
            let store = open_store(&cfg)?;
            let (sha, size) = hedge_master::artifacts::supply(&cfg.artifacts.dir, &file)
                .map_err(Failure::data)?;
            store.supply_artifact(release.as_ref(), &target, &sha, size, now_ms())?;
            let hex = hedge_master::artifacts::hex(&sha);
            eprintln!(
                "supplied {} ({size} bytes) for {target}{}",
                file.display(),
                release.map_or(String::new(), |r| format!(" as release {r}"))
            );
            println!("sha256:{hex}");
            Ok(())
        }
        MasterCommand::Artifacts(v) => {
            let cfg = load(&v.config)?;
            let list = open_store(&cfg)?.artifacts()?;
            if v.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!("{:<24} {:<32} {:>12}  SHA256", "RELEASE", "TARGET", "BYTES");
                for a in list {
                    println!(
                        "{:<24} {:<32} {:>12}  {}",
                        a.release.as_ref().map_or("-", Name::as_str),
                        a.target,
                        a.size,
                        a.sha256
                    );
                }
            }
            Ok(())
        }
        MasterCommand::Request {
            request,
            node,
            labels,
            arch,
            region,
            on_lost,
            config,
        } => {
            let cfg = load(&config)?;
            let store = open_store(&cfg)?;
            // `release:NAME` becomes every variant supplied for NAME, now, when signed.
            let releases = |n: &Name| -> Result<Vec<hedge_wire::ArtifactVariant>, String> {
                match store.release_variants(n) {
                    Ok(v) if v.is_empty() => Err(format!(
                        "no release {n:?} was supplied (hedge master supply FILE --target T --release {n})"
                    )),
                    Ok(v) => Ok(v),
                    Err(e) => Err(e.to_string()),
                }
            };
            let (request, backup) = request.build_with_backup(&releases)?;
            let mut placement = Placement {
                node: node
                    .map(|n| {
                        Name::new(&n)
                            .map_err(|e| Failure::usage(anyhow::anyhow!("--node {n:?}: {e}")))
                    })
                    .transpose()?,
                labels: BTreeMap::new(),
                arch,
                region,
                lost_after_ms: Some(cfg.failover.lost_after_ms),
                lease_ms: Some(failover::lease_for(
                    on_lost.unwrap_or(cfg.failover.on_lost),
                    &cfg.failover,
                )),
            };
            placement.labels = parse_labels(&labels, "--label")?;
            drop(store);
            request_on_master(&cfg, request, backup, placement)
        }
        MasterCommand::Backups { instance, view } => {
            let instance = instance.map(|i| node_name(&i)).transpose()?;
            let store = open_store(&load(&view.config)?)?;
            backups::show(&store, instance.as_ref(), view.json)
        }
        MasterCommand::Nodes(v) => {
            let cfg = load(&v.config)?;
            nodes::show(&cfg, &open_store(&cfg)?, v.json)
        }
        MasterCommand::Drain { node, config } => {
            let cfg = load(&config)?;
            nodes::change(&cfg, &node_name(&node)?, NodeOp::Drain)
        }
        MasterCommand::Undrain { node, config } => {
            let cfg = load(&config)?;
            nodes::change(&cfg, &node_name(&node)?, NodeOp::Undrain)
        }
        MasterCommand::Retire { node, config } => {
            let cfg = load(&config)?;
            nodes::change(&cfg, &node_name(&node)?, NodeOp::Retire)
        }
        MasterCommand::Instances(v) => print_list(&v, &open_store(&load(&v.config)?)?.instances()?),
        MasterCommand::Incidents(v) => print_list(&v, &open_store(&load(&v.config)?)?.incidents()?),
        MasterCommand::Decisions(v) => {
            let list = open_store(&load(&v.config)?)?.decisions(0)?;
            if v.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for d in list {
                    println!("{} {}", d.time_ms, d.reason);
                }
            }
            Ok(())
        }
        MasterCommand::Usage { period, view } => {
            let cfg = load(&view.config)?;
            let (from, to) = match period {
                Some(p) => {
                    let p = Period::parse(&p).map_err(Failure::usage)?;
                    (p.start_ms(), p.end_ms())
                }
                None => (0, u64::MAX / 2),
            };
            let list = open_store(&cfg)?.usage(from, to)?;
            let rows: Vec<serde_json::Value> = list
                .iter()
                .filter_map(|(node, r)| match &r.kind {
                    RecordKind::Usage { .. } => Some(serde_json::json!({
                        "node": node.as_str(),
                        "seq": r.seq,
                        "usage": serde_json::to_value(&r.kind).ok()?["Usage"].clone(),
                    })),
                    _ => None,
                })
                .collect();
            if view.json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                for r in rows {
                    println!("{r}");
                }
            }
            Ok(())
        }
        MasterCommand::Invoice {
            period,
            price_list,
            json,
            csv,
            config,
        } => {
            let cfg = load(&config)?;
            let period = Period::parse(&period).map_err(Failure::usage)?;
            let prices = match price_list
                .or_else(|| cfg.billing.price_list.as_ref().map(|p| cfg.base.join(p)))
            {
                Some(p) => PriceList::load(&p).map_err(Failure::usage)?,
                None => PriceList::parse(billing::PRICE_LIST_EXAMPLE).map_err(Failure::usage)?,
            };
            let usage = open_store(&cfg)?.usage(period.start_ms(), period.end_ms())?;
            let inv = billing::invoice(period, &usage, &prices);
            if json {
                println!("{}", inv.to_json()?);
            } else if csv {
                print!("{}", inv.to_csv());
            } else {
                print!("{}", inv.to_csv());
                println!(
                    "total {} {}",
                    billing::format_micros(inv.total_micros),
                    inv.currency
                );
            }
            Ok(())
        }
    }
}

/// Prints a list: pretty JSON with --json, else one JSON object a line.
fn print_list<T: serde::Serialize>(v: &View, list: &[T]) -> Result<(), Failure> {
    if v.json {
        println!("{}", serde_json::to_string_pretty(list)?);
    } else {
        for i in list {
            println!("{}", serde_json::to_string(i)?);
        }
    }
    Ok(())
}

/// Places `request` ([`placement::request`]): allocation, a move off another node,
/// pruning and the size check all happen in the transaction that stores the signed
/// state(s). Refusals exit 65.
fn request_on_master(
    cfg: &MasterConfig,
    request: InstanceRequest,
    backup: Option<hedge_wire::backup::BackupPolicy>,
    placement: Placement,
) -> Result<(), Failure> {
    let store = open_store(cfg)?;
    let key = MasterKey::load(&cfg.base.join(&cfg.signing.key)).map_err(Failure::usage)?;
    let name = request.name.clone();
    let placed = placement::request(
        &store,
        &key,
        request,
        backup.as_ref(),
        &placement,
        cfg.allocation.stale_after_ms,
        now_ms,
    )
    .map_err(|e| match e {
        PlaceError::Refused(e) => Failure::data(e),
        PlaceError::Store(e) => Failure::from(e),
    })?;
    for line in placement::report(&name, &placed) {
        match line {
            Line::Out(l) => println!("{l}"),
            Line::Err(l) => eprintln!("{l}"),
        }
    }
    Ok(())
}

/// A node may download an artifact its stored desired state names (in any variant).
fn names_artifact(store: MasterStore) -> hedge_master::artifacts::Authorize {
    std::sync::Arc::new(move |node: &Name, sha: &[u8; 32]| {
        let desired = match store.desired(node) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(node = %node, error = %e, "cannot read the desired state; artifact refused");
                return false;
            }
        };
        desired.is_some_and(|d| {
            d.instances.iter().any(|i| match &i.software {
                hedge_wire::SoftwareRelease::Artifact { variants, .. } => {
                    variants.iter().any(|v| &v.sha256 == sha)
                }
                hedge_wire::SoftwareRelease::Exec(_) => false,
            })
        })
    })
}

/// The blob service `hedge master run` serves (with the recovery key's public half).
fn blob_service(
    cfg: &MasterConfig,
    revoked: std::sync::Arc<hedge_master::revocation::Revoked>,
) -> Result<hedge_master::blobs::Blobs, Failure> {
    use hedge_master::blobs::{recovery, BlobDir, Blobs, RECOVERY_KEY};
    let public = recovery::public(&cfg.base.join(RECOVERY_KEY)).map_err(Failure::usage)?;
    let mut blobs = Blobs::new(
        open_store(cfg)?,
        BlobDir::new(cfg.backup.dir.clone()),
        cfg.backup.quota_bytes_per_node,
        public,
    );
    blobs.revoked = Some(revoked);
    Ok(blobs)
}

fn run(cfg: MasterConfig) -> Result<(), Failure> {
    crate::process::init_logging();
    let store = open_store(&cfg)?;
    let read = |p: &Path| {
        let path = cfg.base.join(p);
        std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))
    };
    let tls = hedge_uplink::tls::client_config(
        &read(&cfg.broker.ca)?,
        &read(&cfg.broker.cert)?,
        &read(&cfg.broker.key)?,
    )
    .map_err(Failure::usage)?;
    let revoked = std::sync::Arc::new(hedge_master::revocation::Revoked::new(&cfg.base));
    let key = std::sync::Arc::new(
        MasterKey::load(&cfg.base.join(&cfg.signing.key)).map_err(Failure::usage)?,
    );
    let act = cfg.act.enabled.then(|| hedge_master::run::Acting {
        key: key.clone(),
        policy: cfg.act_policy(),
        every: std::time::Duration::from_millis(cfg.act.interval_ms),
    });
    let settings = hedge_master::run::Settings {
        host: cfg.broker.host.clone(),
        port: cfg.broker.port,
        tls,
        limits: hedge_master::run::IngestLimits::default(),
        keepalive: std::time::Duration::from_secs(20),
        revoked: revoked.clone(),
        evacuate: Some(std::sync::Arc::new(
            hedge_master::act::evacuate::driver::Standing {
                key: key.clone(),
                dir: cfg.base.clone(),
                lost_after_ms: cfg.failover.lost_after_ms,
                stale_after_ms: cfg.allocation.stale_after_ms,
                every: std::time::Duration::from_millis(cfg.failover.check_every_ms),
            },
        )),
        carry: Some(hedge_master::run::Carrying {
            key: key.clone(),
            origins: std::sync::Arc::new(hedge_master::origin::Origins::new(
                &cfg.base,
                revoked.clone(),
            )),
        }),
        renew: Some(key),
        act,
    };
    let enroller = match cfg.artifacts.listen {
        Some(_) => Some(std::sync::Arc::new(
            hedge_master::enrollment::Enroller::load(
                &cfg.base,
                cfg.enrollment.cert_lifetime_s,
                cfg.enrollment.renew_grace_s,
                revoked.clone(),
            )
            .map_err(Failure::usage)?,
        )),
        None => None,
    };
    let artifacts_tls = match cfg.artifacts.listen {
        Some(_) => Some(
            hedge_master::artifacts::server_config(
                &read(&cfg.broker.ca)?,
                &read(&cfg.artifacts.cert)?,
                &read(&cfg.artifacts.key)?,
            )
            .map_err(Failure::usage)?,
        ),
        None => None,
    };
    // A master made before backups gets its recovery key now.
    let recovery_key = cfg.base.join(hedge_master::blobs::RECOVERY_KEY);
    if hedge_master::blobs::recovery::ensure(&recovery_key).map_err(Failure::usage)? {
        tracing::info!(path = %recovery_key.display(), "recovery key created");
    }
    let blobs = match cfg.artifacts.listen {
        Some(_) => Some(std::sync::Arc::new(blob_service(&cfg, revoked.clone())?)),
        None => None,
    };
    crate::process::runtime()?.block_on(async {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        if let (Some(addr), Some(tls)) = (cfg.artifacts.listen, artifacts_tls) {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => {
                    tracing::info!(%addr, dir = %cfg.artifacts.dir.display(), "artifact endpoint listening (HTTPS, client certificates required)");
                    let mut stop = stop_rx.clone();
                    tokio::spawn(hedge_master::artifacts::serve_with(
                        l,
                        tls,
                        cfg.artifacts.dir.clone(),
                        hedge_master::revocation::guard(
                            revoked.clone(),
                            names_artifact(open_store(&cfg)?),
                        ),
                        Default::default(),
                        enroller,
                        blobs,
                        async move {
                            let _ = stop.wait_for(|s| *s).await;
                        },
                    ));
                }
                // Several masters may share a box: the first one serves.
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "cannot bind the artifact endpoint; running without it")
                }
            }
        }
        let shutdown = crate::process::shutdown_signal();
        let result = hedge_master::run::run(store, settings, shutdown).await;
        let _ = stop_tx.send(true);
        result?;
        Ok::<(), Failure>(())
    })
}
