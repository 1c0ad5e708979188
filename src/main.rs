//! `hedge`: the node and master binary. Thin: clap → config → run. The design:
//! `docs/architecture.md`.
//!
//! Exit codes: 0 success; 1 failure; 64 bad configuration or usage; 65 bad request
//! input; 69 the node daemon is not reachable.
//!
//! Modules:
//! - `node`: `hedge node ...` (init, run, and the client commands of the local API).
//! - `master`: `hedge master ...` (init, enroll, run, request, the fleet views); only
//!   with the `master` feature.
//! - `sandbox`: `hedge sandbox`, a whole fleet on one machine; only with `master`.
//! - `request_args`: the request flags `hedge node request` and `hedge master request`
//!   share.
//! - `process`: what every long-running command shares (runtime, logging, shutdown).
//! - `escape`: printing text an instance wrote to an operator's terminal safely.

mod escape;
#[cfg(test)]
mod linker_script;
#[cfg(feature = "master")]
mod master;
mod memory;
mod node;
mod process;
mod request_args;
#[cfg(feature = "master")]
mod sandbox;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// hedge: an embedded-first edge runtime.
#[derive(Parser)]
#[command(name = "hedge", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
// Parsed once per process; boxing the larger variants buys nothing.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Run and manage a node: the daemon that supervises instances offline.
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// Run and manage the master: fleet records, allocation, desired state, billing.
    #[cfg(feature = "master")]
    #[command(subcommand)]
    Master(master::MasterCommand),
    /// A whole fleet on this machine: broker, master and nodes in one directory, no root.
    #[cfg(feature = "master")]
    #[command(args_conflicts_with_subcommands = true)]
    Sandbox {
        /// How many nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// The sandbox directory (recreated on each run).
        #[arg(long, default_value = "hedge-sandbox")]
        dir: std::path::PathBuf,
        /// Run this many seconds, print a summary, exit 0 only if nothing was lost.
        #[arg(long)]
        duration: Option<u64>,
        /// A swarm: only node-1 has an uplink, the others reach it through peer links
        /// (`chain`, the default, or `star`).
        #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "chain")]
        mesh: Option<sandbox::Shape>,
        #[command(subcommand)]
        command: Option<sandbox::SandboxCommand>,
    },
    /// Show the board profile detected on this machine (or every profile with --all).
    Board {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// List every embedded profile.
        #[arg(long)]
        all: bool,
    },
}

impl Command {
    /// A daemon or the sandbox, as opposed to a client command that prints and exits.
    fn runs_until_stopped(&self) -> bool {
        match self {
            Command::Node(cmd) => matches!(cmd, node::NodeCommand::Run { .. }),
            #[cfg(feature = "master")]
            Command::Master(cmd) => matches!(cmd, master::MasterCommand::Run { .. }),
            #[cfg(feature = "master")]
            Command::Sandbox { .. } => true,
            Command::Board { .. } => false,
        }
    }
}

/// An error with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl Failure {
    /// Bad configuration or usage (64).
    pub fn usage(error: impl Into<anyhow::Error>) -> Self {
        Failure {
            code: 64,
            error: error.into(),
        }
    }
    /// Bad input data (65).
    pub fn data(error: impl Into<anyhow::Error>) -> Self {
        Failure {
            code: 65,
            error: error.into(),
        }
    }
    /// The daemon cannot be reached (69).
    pub fn unavailable(error: impl Into<anyhow::Error>) -> Self {
        Failure {
            code: 69,
            error: error.into(),
        }
    }
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure {
            code: 1,
            error: e.into(),
        }
    }
}

fn board(json: bool, all: bool) -> Result<(), Failure> {
    let list: Vec<&hedge_boards::BoardProfile> = if all {
        hedge_boards::profiles().iter().collect()
    } else {
        vec![hedge_boards::detect()]
    };
    if json {
        let v = if all {
            serde_json::to_string_pretty(&list)?
        } else {
            serde_json::to_string_pretty(list[0])?
        };
        println!("{v}");
        return Ok(());
    }
    for p in list {
        let d = &p.defaults;
        println!("{} ({})", p.name, p.id);
        println!(
            "  target {}  cores {}  ram {} MB  storage {:?}",
            p.target.as_deref().unwrap_or("-"),
            p.cores.map_or("-".into(), |c| c.to_string()),
            p.ram_mb.map_or("-".into(), |c| c.to_string()),
            p.storage
        );
        println!(
            "  defaults: max_instances {}  outbox_quota_bytes {}  sled_cache_bytes {}  flush_interval_ms {}",
            d.max_instances, d.outbox_quota_bytes, d.sled_cache_bytes, d.flush_interval_ms
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !cli.command.runs_until_stopped() {
        process::die_quietly_on_sigpipe();
    }
    let result = match cli.command {
        Command::Node(cmd) => node::main(cmd),
        #[cfg(feature = "master")]
        Command::Master(cmd) => master::main(cmd),
        Command::Board { json, all } => board(json, all),
        #[cfg(feature = "master")]
        Command::Sandbox {
            nodes,
            dir,
            duration,
            mesh,
            command,
        } => match command {
            Some(cmd) => sandbox::main(cmd),
            None => sandbox::run(sandbox::Options {
                nodes,
                dir,
                duration,
                mesh,
            }),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            // Most messages already name their cause; print each cause only once.
            let mut msg = f.error.to_string();
            for cause in f.error.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg.push_str(": ");
                    msg.push_str(&c);
                }
            }
            eprintln!("hedge: {msg}");
            ExitCode::from(f.code)
        }
    }
}
