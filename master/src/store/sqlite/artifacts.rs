//! Supplied artifacts in SQLite (table `artifacts`).
//!
//! Contract: a named release holds one variant per target (a new supply for a target
//! replaces it); an unnamed supply is recorded once per (sha256, target).

use hedge_wire::Name;
use rusqlite::{params, Connection, Transaction};

use super::super::blob::name;
use super::super::{Result, SuppliedArtifact};
use super::sql::{clamp_sql, from_sql};

/// Records a supplied artifact.
pub(super) fn supply(
    tx: &Transaction<'_>,
    release: Option<&Name>,
    target: &str,
    sha256: &[u8; 32],
    size: u64,
    now_ms: u64,
) -> Result<()> {
    let hex = hedge_wire::Sha256Hex(sha256).to_string();
    match release {
        Some(r) => tx.execute(
            "DELETE FROM artifacts WHERE release = ?1 AND target = ?2",
            params![r.as_str(), target],
        )?,
        None => tx.execute(
            "DELETE FROM artifacts WHERE release IS NULL AND sha256 = ?1 AND target = ?2",
            params![hex, target],
        )?,
    };
    tx.execute(
        "INSERT INTO artifacts (release, target, sha256, size, supplied_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            release.map(Name::as_str),
            target,
            hex,
            clamp_sql(size),
            clamp_sql(now_ms)
        ],
    )?;
    Ok(())
}

/// Every supplied artifact, by release (unnamed first), target, then sha256.
pub(super) fn all(conn: &Connection) -> Result<Vec<SuppliedArtifact>> {
    let mut stmt = conn.prepare_cached(
        "SELECT release, target, sha256, size, supplied_ms FROM artifacts
         ORDER BY release, target, sha256",
    )?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, Option<String>>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter()
        .map(|(release, target, sha256, size, at)| {
            Ok(SuppliedArtifact {
                release: release.map(name).transpose()?,
                target,
                sha256,
                size: from_sql(size),
                supplied_ms: from_sql(at),
            })
        })
        .collect()
}

/// The variants of release `release`, by target.
pub(super) fn release_variants(
    conn: &Connection,
    release: &Name,
) -> Result<Vec<hedge_wire::ArtifactVariant>> {
    let mut stmt = conn.prepare_cached(
        "SELECT target, sha256 FROM artifacts WHERE release = ?1 ORDER BY target",
    )?;
    let rows = stmt
        .query_map([release.as_str()], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows
        .into_iter()
        .filter_map(|(target, hex)| {
            Some(hedge_wire::ArtifactVariant {
                target,
                sha256: hedge_wire::parse_sha256(&hex)?,
            })
        })
        .collect())
}
