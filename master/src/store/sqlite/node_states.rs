//! Node states in SQLite: what the operator set (table `node_states`).
//!
//! Contract: [`update`] applies one operation ([`NodeState::apply`]) to a known node's
//! state inside the caller's `BEGIN IMMEDIATE` transaction, so concurrent operators
//! serialize and retired stays final; a node without a row is schedulable.

use hedge_wire::Name;
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::super::{Result, StoreError};
use super::sql::clamp_sql;
use crate::node_state::{NodeOp, NodeState};

/// `node`'s state and since when (ms since the epoch; `None`: never set, schedulable).
pub(super) fn load(conn: &Connection, node: &Name) -> Result<(NodeState, Option<u64>)> {
    let row: Option<(String, i64)> = conn
        .query_row(
            "SELECT state, since_ms FROM node_states WHERE node = ?1",
            [node.as_str()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    match row {
        None => Ok((NodeState::Schedulable, None)),
        Some((s, since)) => Ok((s.parse()?, Some(super::sql::from_sql(since)))),
    }
}

/// Applies `op` to `node`'s state; a change records `now_ms` as its start.
pub(super) fn update(
    tx: &Transaction<'_>,
    node: &Name,
    op: NodeOp,
    now_ms: u64,
) -> Result<NodeState> {
    let known: bool = tx
        .query_row(
            "SELECT 1 FROM nodes WHERE node = ?1",
            [node.as_str()],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if !known {
        return Err(StoreError::NoSuchNode(node.clone()));
    }
    let (before, _) = load(tx, node)?;
    let after = before.apply(op, node.as_str())?;
    if after != before {
        tx.execute(
            "INSERT INTO node_states (node, state, since_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (node) DO UPDATE SET state = excluded.state,
                 since_ms = excluded.since_ms",
            params![node.as_str(), after.as_str(), clamp_sql(now_ms)],
        )?;
    }
    Ok(after)
}
