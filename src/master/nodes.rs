//! `hedge master nodes`, `drain`, `undrain` and `retire`: node states as the operator
//! sets and sees them.

use hedge_common::clock::now_ms;
use hedge_master::act::evacuate::driver::{pass, Done, Settings};
use hedge_master::config::MasterConfig;
use hedge_master::node_state::{condition, lost, NodeOp, NodeState};
use hedge_master::revocation;
use hedge_master::sign::MasterKey;
use hedge_master::store::{FleetStore, MasterStore, NodeSummary};
use hedge_wire::Name;

use crate::Failure;

/// The condition `hedge master nodes` shows for `n` at `now`.
fn condition_of(
    cfg: &MasterConfig,
    n: &NodeSummary,
    now: u64,
) -> hedge_master::node_state::Condition {
    condition(
        n.state,
        lost(n.last_seen_ms, now, cfg.failover.lost_after_ms, 0),
    )
}

/// Prints the fleet: a table, or JSON with each node's `condition` and `last_seen`.
pub fn show(cfg: &MasterConfig, store: &MasterStore, json: bool) -> Result<(), Failure> {
    let nodes = store.nodes()?;
    let now = now_ms();
    if json {
        let out: Vec<serde_json::Value> = nodes
            .iter()
            .map(|n| {
                let mut j = serde_json::to_value(n).unwrap_or_default();
                j["last_seen"] = serde_json::json!(n.last_seen_ms);
                j["condition"] = serde_json::json!(condition_of(cfg, n, now));
                j
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{:<24} {:<11} {:<10} {:<28} {:>10} {:>5} {:>10} {:>9}  {:<18}  PATH",
        "NODE",
        "STATE",
        "BOARD",
        "ARCH",
        "RECORDS",
        "LIVES",
        "LAST SEQ",
        "INSTANCES",
        "LAST SEEN (ms ago)"
    );
    for n in nodes {
        println!(
            "{:<24} {:<11} {:<10} {:<28} {:>10} {:>5} {:>10} {:>4}/{:<4}  {:<18}  {}",
            n.node.as_str(),
            condition_of(cfg, &n, now).to_string(),
            n.board.as_deref().unwrap_or("-"),
            n.arch.as_deref().unwrap_or("-"),
            n.records,
            n.lives,
            n.last_seq,
            n.allocated_instances,
            n.capacity_instances,
            n.last_seen_ms
                .map_or("never".into(), |t| now.saturating_sub(t).to_string()),
            path_column(&n)
        );
    }
    Ok(())
}

/// The PATH column: how the node's last batch arrived (`direct`, `via c,b,a`, `-`
/// before any), and the relayed batches refused in its own batches, if any.
fn path_column(n: &NodeSummary) -> String {
    let path = n.path.as_deref().unwrap_or("-");
    match n.forged_relayed {
        0 => path.to_owned(),
        f => format!("{path} ({f} relayed refused)"),
    }
}

/// Applies `op` to `node`'s state and prints it; then, unless undrained, moves its
/// instances away and (retiring) revokes it when it is empty or lost, printing each
/// decision. Refusals of the state change exit 65.
pub fn change(cfg: &MasterConfig, node: &Name, op: NodeOp) -> Result<(), Failure> {
    let store = open(cfg)?;
    set(&store, node, op)?;
    if op == NodeOp::Undrain {
        return Ok(());
    }
    let key = MasterKey::load(&cfg.base.join(&cfg.signing.key)).map_err(Failure::usage)?;
    let settings = Settings {
        lost_after_ms: cfg.failover.lost_after_ms,
        stale_after_ms: cfg.allocation.stale_after_ms,
        listening_since_ms: 0,
    };
    let done = pass(&store, &key, now_ms(), &settings, Some(node), &mut |n| {
        revoke(cfg, n)
    })?;
    for d in done {
        match d {
            Done::Refused { line, .. } => eprintln!("{line}"),
            d => println!("{d}"),
        }
    }
    Ok(())
}

/// Revokes `node` ([`revocation::revoke`]) and says what happened to the broker.
fn revoke(cfg: &MasterConfig, node: &Name) -> Result<(), String> {
    let r = revocation::revoke(&cfg.base, node).map_err(|e| e.to_string())?;
    match r.reloaded {
        Some(pid) => eprintln!("broker (pid {pid}) told to reload its CRL"),
        None => eprintln!("no running broker found: it reads the CRL when it starts"),
    }
    Ok(())
}

fn open(cfg: &MasterConfig) -> Result<MasterStore, Failure> {
    Ok(MasterStore::open(&cfg.base.join(&cfg.master.store))?)
}

/// Applies `op` to `node`'s state and prints the outcome; refusals exit 65.
fn set(store: &MasterStore, node: &Name, op: NodeOp) -> Result<NodeState, Failure> {
    use hedge_master::store::StoreError;
    let state = store
        .update_node_state(node, op, now_ms())
        .map_err(|e| match e {
            e @ (StoreError::NoSuchNode(_) | StoreError::NodeState(_)) => Failure::data(e),
            e => Failure::from(e),
        })?;
    println!("{node} is {state}");
    Ok(state)
}
