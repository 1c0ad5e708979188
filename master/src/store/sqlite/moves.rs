//! Moves in SQLite: fences, criteria, the move primitive, handovers and the decision
//! log, each inside the caller's `BEGIN IMMEDIATE` transaction.
//!
//! Contract: keeps the rules of [`crate::moves`]; this file reads what they need and
//! writes their outcome. Tables: `fences` (per node and instance: the fence of the
//! copy its desired state holds, and `since`, the first generation of that state that
//! carried it, 0 until written), `fence_high` (per instance: the highest fence ever
//! given, so fences only grow), `criteria` (per instance: the placement it was
//! allocated with, postcard) and `decisions` (the log; a unique index keeps one move
//! per incident). [`fill_terms`] runs in every desired-state write, before signing:
//! it drops the rows of instances the state no longer holds, gives a fence to a copy
//! without one (the instance's current highest, 1 if none), and sets the state's
//! signed `terms` (each instance's fence, and its lease: [`lease_ms`]).

use hedge_wire::{DesiredState, InstanceStatus, InstanceTerms, Name, RequestedState};
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::super::blob::{self, decode, encode};
use super::super::{Result, StoreError};
use super::desired::stored_desired;
use super::fleet::load_nodes;
use super::place::{accepted, destroy_on, reported_after, write_desired};
use super::sql::{from_sql, seq_sql};
use crate::alloc::{self, AllocError, Placement, Rejection};
use crate::moves::{
    self as rules, Decision, DecisionKind, Handover, Holder, IncidentRef, InstancePlacement,
    MoveError, MoveRequest, Moved,
};
use crate::placement::applied_at;

/// The tables of this file (created at every open: see `schema`).
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS fences (
    node     TEXT    NOT NULL,
    instance TEXT    NOT NULL,
    fence    INTEGER NOT NULL,
    since    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (node, instance)
);
CREATE INDEX IF NOT EXISTS fences_by_instance ON fences (instance);
CREATE TABLE IF NOT EXISTS fence_high (
    instance TEXT PRIMARY KEY,
    last     INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS criteria (
    instance  TEXT PRIMARY KEY,
    placement BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS decisions (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    time_ms       INTEGER NOT NULL,
    kind          TEXT    NOT NULL,
    instance      TEXT    NOT NULL,
    from_node     TEXT    NOT NULL,
    to_node       TEXT,
    fence         INTEGER,
    reason        TEXT    NOT NULL,
    incident_node TEXT,
    incident_life INTEGER,
    incident_id   INTEGER,
    incident_seq  INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS decisions_one_move_per_incident
    ON decisions (incident_node, incident_life, incident_id) WHERE kind = 'move';
CREATE INDEX IF NOT EXISTS decisions_by_time ON decisions (time_ms);
";

fn high(tx: &Connection, instance: &Name) -> Result<u64> {
    let h: Option<i64> = tx
        .query_row(
            "SELECT last FROM fence_high WHERE instance = ?1",
            [instance.as_str()],
            |r| r.get(0),
        )
        .optional()?;
    Ok(h.map_or(0, from_sql))
}

fn set_high(tx: &Transaction<'_>, instance: &Name, fence: u64) -> Result<()> {
    tx.execute(
        "INSERT INTO fence_high (instance, last) VALUES (?1, ?2)
         ON CONFLICT (instance) DO UPDATE SET last = MAX(last, excluded.last)",
        params![instance.as_str(), seq_sql(fence)?],
    )?;
    Ok(())
}

/// Gives `instance`'s copy on `node` the next fence (placed there anew); the state
/// write that follows sets its `since`. Returns the fence.
pub(super) fn bump_fence(tx: &Transaction<'_>, node: &Name, instance: &Name) -> Result<u64> {
    let fence = high(tx, instance)?
        .checked_add(1)
        .filter(|f| i64::try_from(*f).is_ok())
        .ok_or(StoreError::SeqOutOfRange(u64::MAX))?;
    set_high(tx, instance, fence)?;
    tx.execute(
        "INSERT INTO fences (node, instance, fence, since) VALUES (?1, ?2, ?3, 0)
         ON CONFLICT (node, instance) DO UPDATE SET fence = excluded.fence, since = 0",
        params![node.as_str(), instance.as_str(), seq_sql(fence)?],
    )?;
    Ok(fence)
}

/// Keeps `fences` in step with the state `d` about to be signed and stored; returns
/// each instance's fence, in `d`'s order.
fn sync_fences(tx: &Transaction<'_>, d: &DesiredState) -> Result<Vec<(Name, u64)>> {
    let node = d.node.as_str();
    let generation = seq_sql(d.generation)?;
    let held = fences_of(tx, &d.node)?;
    for (instance, _) in &held {
        if !d.instances.iter().any(|r| &r.name == instance) {
            tx.execute(
                "DELETE FROM fences WHERE node = ?1 AND instance = ?2",
                params![node, instance.as_str()],
            )?;
        }
    }
    let mut out = Vec::with_capacity(d.instances.len());
    for r in &d.instances {
        let fence = match held.iter().find(|(i, _)| i == &r.name) {
            Some((_, f)) => *f,
            None => {
                // A copy no placement fenced (written before fences): not placed anew.
                let f = high(tx, &r.name)?.max(1);
                set_high(tx, &r.name, f)?;
                tx.execute(
                    "INSERT INTO fences (node, instance, fence, since) VALUES (?1, ?2, ?3, 0)",
                    params![node, r.name.as_str(), seq_sql(f)?],
                )?;
                f
            }
        };
        out.push((r.name.clone(), fence));
    }
    tx.execute(
        "UPDATE fences SET since = ?2 WHERE node = ?1 AND since = 0",
        params![node, generation],
    )?;
    Ok(out)
}

/// Keeps `fences` in step with `d` ([`sync_fences`]) and sets `d.terms`: one per
/// instance, in `d`'s order, with its copy's fence and lease ([`lease_ms`]).
pub(super) fn fill_terms(tx: &Transaction<'_>, d: &mut DesiredState) -> Result<()> {
    let fences = sync_fences(tx, d)?;
    let terms = fences
        .into_iter()
        .map(|(instance, fence)| {
            let carried = d.terms_of(&instance).map(|t| t.lease_ms);
            Ok(InstanceTerms {
                lease_ms: lease_ms(tx, &d.node, &instance, carried)?,
                instance,
                fence,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    d.terms = terms;
    Ok(())
}

/// The lease `node`'s copy of `instance` runs under, ms: the instance's placement
/// policy (`move`: a lease; `wait`: 0, none), as its last request set it
/// (`leases`); `carried`, what the state carried so far, is not kept.
fn lease_ms(
    tx: &Transaction<'_>,
    _node: &Name,
    instance: &Name,
    _carried: Option<u32>,
) -> Result<u32> {
    super::leases::of(tx, instance)
}

/// `(instance, fence)` of every row of `node`.
fn fences_of(tx: &Connection, node: &Name) -> Result<Vec<(Name, u64)>> {
    let rows = tx
        .prepare_cached("SELECT instance, fence FROM fences WHERE node = ?1")?
        .query_map([node.as_str()], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter()
        .map(|(i, f)| Ok((blob::name(i)?, from_sql(f))))
        .collect()
}

/// The fence and `since` of `instance`'s copy on `node`.
fn fence_row(tx: &Connection, node: &Name, instance: &Name) -> Result<Option<(u64, u64)>> {
    Ok(tx
        .query_row(
            "SELECT fence, since FROM fences WHERE node = ?1 AND instance = ?2",
            params![node.as_str(), instance.as_str()],
            |r| Ok((from_sql(r.get(0)?), from_sql(r.get(1)?))),
        )
        .optional()?)
}

/// Every node whose desired state holds `instance`, with its copy's fence, by node.
pub(super) fn holders(tx: &Connection, instance: &Name) -> Result<Vec<Holder>> {
    Ok(all_holders(tx, Some(instance))?
        .into_iter()
        .next()
        .map(|(_, h)| h)
        .unwrap_or_default())
}

/// Holders of every instance (or only of `only`), by instance then node.
fn all_holders(conn: &Connection, only: Option<&Name>) -> Result<Vec<(Name, Vec<Holder>)>> {
    let nodes = conn
        .prepare_cached("SELECT node FROM desired ORDER BY node")?
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut out: std::collections::BTreeMap<Name, Vec<Holder>> = Default::default();
    for node in nodes {
        let node = blob::name(node)?;
        let Some(d) = stored_desired(conn, &node)? else {
            continue;
        };
        let fences = fences_of(conn, &node)?;
        for r in d
            .instances
            .iter()
            .filter(|r| only.is_none_or(|o| &r.name == o))
        {
            let fence = fences
                .iter()
                .find(|(i, _)| i == &r.name)
                .map_or(0, |(_, f)| *f);
            out.entry(r.name.clone()).or_default().push(Holder {
                node: node.clone(),
                fence,
                live: r.state != RequestedState::Destroyed,
            });
        }
    }
    Ok(out.into_iter().collect())
}

/// Records the placement `instance` was allocated with (its node dropped).
pub(super) fn set_criteria(tx: &Transaction<'_>, instance: &Name, p: &Placement) -> Result<()> {
    let mut p = p.clone();
    p.node = None;
    tx.execute(
        "INSERT INTO criteria (instance, placement) VALUES (?1, ?2)
         ON CONFLICT (instance) DO UPDATE SET placement = excluded.placement",
        params![instance.as_str(), encode("placement", &p)?],
    )?;
    Ok(())
}

fn criteria(conn: &Connection, instance: &Name) -> Result<Option<Placement>> {
    let blob: Option<Vec<u8>> = conn
        .query_row(
            "SELECT placement FROM criteria WHERE instance = ?1",
            [instance.as_str()],
            |r| r.get(0),
        )
        .optional()?;
    blob.map(|b| decode("placement", instance.as_str(), &b))
        .transpose()
}

/// Every instance some desired state holds, with its holders and criteria.
pub(super) fn placements(conn: &Connection) -> Result<Vec<InstancePlacement>> {
    all_holders(conn, None)?
        .into_iter()
        .map(|(instance, holders)| {
            Ok(InstancePlacement {
                criteria: criteria(conn, &instance)?,
                instance,
                holders,
            })
        })
        .collect()
}

/// The body of [`super::super::FleetStore::move_instance`].
pub(super) fn move_instance(
    tx: &Transaction<'_>,
    mv: &MoveRequest,
    now_ms: u64,
    stale_after_ms: u64,
    sign: &dyn Fn(&mut DesiredState),
) -> Result<Moved> {
    let name = &mv.instance;
    // Another master's move for the incident first: that one is not a refusal.
    if let Some(i) = &mv.incident {
        if let Some(decision) = move_for(tx, i)? {
            return Err(MoveError::AlreadyDecided {
                incident: i.clone(),
                decision,
            }
            .into());
        }
    }
    let holders = holders(tx, name)?;
    rules::check_move(name, &holders, &mv.from, mv.to.as_ref())?;
    if mv.incident.is_some() {
        if let Some(budget) = &mv.budget {
            let log = decisions_since(tx, now_ms.saturating_sub(budget.window_ms))?;
            if let Some(line) = rules::over_budget(&log, &[], name, now_ms, budget) {
                return Err(MoveError::OverBudget(line).into());
            }
        }
    }
    let nodes = load_nodes(tx)?;
    let want = rules::criteria(
        criteria(tx, name)?.as_ref(),
        nodes.iter().find(|n| n.node == mv.from),
    );
    let to = match &mv.to {
        Some(to) => {
            let node = nodes
                .iter()
                .find(|n| &n.node == to)
                .ok_or_else(|| AllocError::NoSuchNode(to.clone()))?;
            let mismatches = alloc::mismatches(node, &want);
            if !mismatches.is_empty() {
                return Err(AllocError::NoCandidate {
                    reasons: vec![Rejection {
                        node: to.clone(),
                        mismatches,
                    }],
                }
                .into());
            }
            to.clone()
        }
        None => {
            let candidates: Vec<_> = nodes
                .into_iter()
                .filter(|n| !holders.iter().any(|h| h.live && h.node == n.node))
                .collect();
            alloc::pick(&candidates, &want, now_ms, stale_after_ms)?
        }
    };
    let request = stored_desired(tx, &mv.from)?
        .and_then(|d| d.instances.into_iter().find(|r| &r.name == name))
        .ok_or_else(|| MoveError::NotOnNode {
            instance: name.clone(),
            from: mv.from.clone(),
        })?;
    let fence = bump_fence(tx, &to, name)?;
    let (state, _) = write_desired(
        tx,
        &to,
        |mut v| {
            v.retain(|r| &r.name != name);
            v.push(request);
            v
        },
        sign,
    )?;
    let destroyed_on = if mv.fenced {
        let (d, _) = destroy_on(tx, &mv.from, name, sign)?;
        Some((mv.from.clone(), d.generation))
    } else {
        None
    };
    let decision = insert_decision(
        tx,
        &Decision {
            id: 0,
            time_ms: now_ms,
            kind: DecisionKind::Move,
            instance: name.clone(),
            from: mv.from.clone(),
            to: Some(to),
            fence: Some(fence),
            reason: mv.reason.clone(),
            incident: mv.incident.clone(),
        },
    )?;
    Ok(Moved {
        state,
        fence,
        destroyed_on,
        decision,
    })
}

/// The body of [`super::super::FleetStore::complete_handovers`].
pub(super) fn complete_handovers(
    tx: &Transaction<'_>,
    now_ms: u64,
    sign: &dyn Fn(&mut DesiredState),
) -> Result<Vec<Handover>> {
    let waiting = tx
        .prepare_cached("SELECT instance FROM fences GROUP BY instance HAVING COUNT(*) > 1")?
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut out = Vec::new();
    for instance in waiting {
        let instance = blob::name(instance)?;
        let holders = holders(tx, &instance)?;
        let stale: Vec<Holder> = rules::stale(&holders).into_iter().cloned().collect();
        let Some(owner) = rules::owner(&holders).cloned() else {
            continue;
        };
        if stale.is_empty() {
            continue;
        }
        let Some((fence, since)) = fence_row(tx, &owner.node, &instance)? else {
            continue;
        };
        let Some(at) = applied_at(&accepted(tx, &owner.node)?, since) else {
            continue;
        };
        if !reported_after(tx, &owner.node, &instance, at, InstanceStatus::Running)? {
            continue;
        }
        let incident = move_to(tx, &instance, &owner.node, fence)?;
        for old in stale {
            let (d, _) = destroy_on(tx, &old.node, &instance, sign)?;
            insert_decision(
                tx,
                &Decision {
                    id: 0,
                    time_ms: now_ms,
                    kind: DecisionKind::Handover,
                    instance: instance.clone(),
                    from: old.node.clone(),
                    to: Some(owner.node.clone()),
                    fence: Some(fence),
                    reason: format!(
                        "destroyed {instance} on {} (fence {}): its copy on {} runs under fence {fence}",
                        old.node, old.fence, owner.node
                    ),
                    incident: incident.clone(),
                },
            )?;
            out.push(Handover {
                instance: instance.clone(),
                destroyed_on: (old.node, d.generation),
                owner: owner.node.clone(),
                fence,
            });
        }
    }
    Ok(out)
}

/// A refusal the log already ends with for its incident (another master logged the
/// same line), else what [`insert_decision`] logs.
pub(super) fn record_refusal(tx: &Transaction<'_>, d: &Decision) -> Result<Decision> {
    if let (DecisionKind::Refused, Some(i)) = (d.kind, &d.incident) {
        let last = tx
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM decisions WHERE incident_node = ?1
                     AND incident_life = ?2 AND incident_id = ?3 ORDER BY id DESC LIMIT 1"
                ),
                params![i.node.as_str(), i.life, seq_sql(i.id)?],
                row,
            )
            .optional()?
            .map(decode_decision)
            .transpose()?;
        if let Some(last) = last.filter(|l| l.kind == d.kind && l.reason == d.reason) {
            return Ok(last);
        }
    }
    insert_decision(tx, d)
}

/// The id of the move logged for incident `i`, if any.
fn move_for(tx: &Connection, i: &IncidentRef) -> Result<Option<u64>> {
    Ok(tx
        .query_row(
            "SELECT id FROM decisions WHERE kind = 'move' AND incident_node = ?1
             AND incident_life = ?2 AND incident_id = ?3",
            params![i.node.as_str(), i.life, seq_sql(i.id)?],
            |r| r.get::<_, i64>(0),
        )
        .optional()?
        .map(from_sql))
}

/// The incident of the latest move that placed `instance` on `to` under `fence`.
fn move_to(tx: &Connection, instance: &Name, to: &Name, fence: u64) -> Result<Option<IncidentRef>> {
    let row = tx
        .query_row(
            &format!(
                "SELECT {COLUMNS} FROM decisions WHERE kind = 'move' AND instance = ?1
                 AND to_node = ?2 AND fence = ?3 ORDER BY id DESC LIMIT 1"
            ),
            params![instance.as_str(), to.as_str(), seq_sql(fence)?],
            row,
        )
        .optional()?;
    Ok(row
        .map(decode_decision)
        .transpose()?
        .and_then(|d| d.incident))
}

/// Logs `d`; returns it numbered.
pub(super) fn insert_decision(tx: &Transaction<'_>, d: &Decision) -> Result<Decision> {
    let i = d.incident.as_ref();
    tx.execute(
        "INSERT INTO decisions (time_ms, kind, instance, from_node, to_node, fence, reason,
             incident_node, incident_life, incident_id, incident_seq)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            seq_sql(d.time_ms)?,
            d.kind.as_str(),
            d.instance.as_str(),
            d.from.as_str(),
            d.to.as_ref().map(Name::as_str),
            d.fence.map(seq_sql).transpose()?,
            d.reason,
            i.map(|i| i.node.as_str()),
            i.map(|i| i.life),
            i.map(|i| seq_sql(i.id)).transpose()?,
            i.map(|i| seq_sql(i.seq)).transpose()?,
        ],
    )?;
    Ok(Decision {
        id: from_sql(tx.last_insert_rowid()),
        ..d.clone()
    })
}

const COLUMNS: &str = "id, time_ms, kind, instance, from_node, to_node, fence, reason, \
                       incident_node, incident_life, incident_id, incident_seq";

/// One row of `decisions` (selected as [`COLUMNS`]); names are checked after.
struct Row {
    id: i64,
    time_ms: i64,
    kind: String,
    instance: String,
    from: String,
    to: Option<String>,
    fence: Option<i64>,
    reason: String,
    incident: Option<(String, u32, i64, i64)>,
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    let incident = match r.get::<_, Option<String>>("incident_node")? {
        Some(node) => Some((
            node,
            r.get("incident_life")?,
            r.get("incident_id")?,
            r.get("incident_seq")?,
        )),
        None => None,
    };
    Ok(Row {
        id: r.get("id")?,
        time_ms: r.get("time_ms")?,
        kind: r.get("kind")?,
        instance: r.get("instance")?,
        from: r.get("from_node")?,
        to: r.get("to_node")?,
        fence: r.get("fence")?,
        reason: r.get("reason")?,
        incident,
    })
}

fn decode_decision(row: Row) -> Result<Decision> {
    let incident = match row.incident {
        Some((node, life, id, seq)) => Some(IncidentRef {
            node: blob::name(node)?,
            life,
            id: from_sql(id),
            seq: from_sql(seq),
        }),
        None => None,
    };
    Ok(Decision {
        id: from_sql(row.id),
        time_ms: from_sql(row.time_ms),
        kind: DecisionKind::parse(&row.kind).ok_or(StoreError::UnknownDecision(row.kind))?,
        instance: blob::name(row.instance)?,
        from: blob::name(row.from)?,
        to: row.to.map(blob::name).transpose()?,
        fence: row.fence.map(from_sql),
        reason: row.reason,
        incident,
    })
}

/// The log from `since_ms` on (every entry when 0), in order.
pub(super) fn decisions_since(conn: &Connection, since_ms: u64) -> Result<Vec<Decision>> {
    let rows = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM decisions WHERE time_ms >= ?1 ORDER BY id"
        ))?
        .query_map([seq_sql(since_ms)?], row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter().map(decode_decision).collect()
}
