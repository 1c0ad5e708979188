//! `hedge master backups [INSTANCE] [--json]`: snapshots stored at the master and those
//! nodes reported taken but not uploaded yet ([`hedge_master::blobs::listing`]), and
//! each node's blob counters.

use hedge_master::blobs::listing::{listing, Where};
use hedge_master::store::{FleetStore, MasterStore};
use hedge_wire::Name;

use crate::Failure;

/// Prints the listing: a table, or JSON `{"snapshots": [...], "nodes": [...]}` (each
/// node's `bytes`, `chunk_puts`, `duplicate_puts`, `refused`).
pub fn show(store: &MasterStore, instance: Option<&Name>, json: bool) -> Result<(), Failure> {
    let rows = listing(&store.snapshots()?, &store.backup_records()?, instance);
    let counters = store.blob_counters()?;
    if json {
        let out = serde_json::json!({ "snapshots": rows, "nodes": counters });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{:<20} {:<20} {:<16} {:>14} {:>12} {:>12}  STORED",
        "NODE", "INSTANCE", "ID", "TAKEN_MS", "BYTES", "NEW_BYTES"
    );
    for r in rows {
        println!(
            "{:<20} {:<20} {:<16} {:>14} {:>12} {:>12}  {}",
            r.node.as_str(),
            r.instance.as_str(),
            r.id,
            r.taken_ms,
            r.bytes,
            r.new_bytes,
            match r.stored {
                Where::Master => "master",
                Where::Node => "node",
            }
        );
    }
    Ok(())
}
