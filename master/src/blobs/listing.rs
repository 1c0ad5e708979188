//! What `hedge master backups` lists, pure: the snapshots stored at the master, and
//! those nodes reported taken but have not uploaded yet.
//!
//! Contract: [`listing`] returns every stored snapshot (`stored: master`), then every
//! snapshot a node's `Backup { Taken }` record names that has no `Uploaded` record and
//! is not stored at the master (`stored: node`), optionally only one instance's, by
//! node, instance, then time taken.

use hedge_wire::backup::{BackupEvent, Consistency, SnapshotId};
use hedge_wire::{Name, Record, RecordKind};
use serde::Serialize;

use crate::store::StoredSnapshot;

/// Where a listed snapshot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Where {
    /// At the master (uploaded, not yet dropped by retention).
    Master,
    /// Only on its node (reported taken, not uploaded).
    Node,
}

/// One listed snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listed {
    /// The node that took it.
    pub node: Name,
    /// The instance.
    pub instance: Name,
    /// Its id, 16 hex digits.
    pub id: String,
    /// When its paths were read, ms since the Unix epoch.
    pub taken_ms: u64,
    /// How it was made consistent.
    pub consistency: Consistency,
    /// Bytes of the files it holds.
    pub bytes: u64,
    /// Bytes of chunks no earlier snapshot of its node had.
    pub new_bytes: u64,
    /// Where it is.
    pub stored: Where,
}

/// See the module doc.
pub fn listing(
    stored: &[StoredSnapshot],
    records: &[(Name, Record)],
    instance: Option<&Name>,
) -> Vec<Listed> {
    let wanted = |i: &Name| instance.is_none_or(|w| w == i);
    let at_master =
        |node: &Name, id: SnapshotId| stored.iter().any(|s| &s.node == node && s.id == id);
    let uploaded = |node: &Name, inst: &Name, id: SnapshotId| {
        records.iter().any(|(n, r)| {
            n == node
                && matches!(&r.kind, RecordKind::Backup { instance, snapshot, event: BackupEvent::Uploaded, .. }
                    if instance == inst && *snapshot == id)
        })
    };
    let mut out: Vec<Listed> = stored
        .iter()
        .filter(|s| wanted(&s.instance))
        .map(|s| Listed {
            node: s.node.clone(),
            instance: s.instance.clone(),
            id: s.id.to_string(),
            taken_ms: s.taken_ms,
            consistency: s.consistency,
            bytes: s.bytes,
            new_bytes: s.new_bytes,
            stored: Where::Master,
        })
        .collect();
    for (node, r) in records {
        let RecordKind::Backup {
            instance: inst,
            snapshot,
            event:
                BackupEvent::Taken {
                    taken_ms,
                    bytes,
                    new_bytes,
                    consistency,
                },
            ..
        } = &r.kind
        else {
            continue;
        };
        if !wanted(inst)
            || at_master(node, *snapshot)
            || uploaded(node, inst, *snapshot)
            || out
                .iter()
                .any(|l| &l.node == node && l.id == snapshot.to_string())
        {
            continue;
        }
        out.push(Listed {
            node: node.clone(),
            instance: inst.clone(),
            id: snapshot.to_string(),
            taken_ms: *taken_ms,
            consistency: *consistency,
            bytes: *bytes,
            new_bytes: *new_bytes,
            stored: Where::Node,
        });
    }
    out.sort_by(|a, b| {
        (&a.node, &a.instance, a.taken_ms, &a.id).cmp(&(&b.node, &b.instance, b.taken_ms, &b.id))
    });
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn n(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    fn rec(instance: &str, id: u64, event: BackupEvent) -> Record {
        Record {
            seq: id,
            time_ms: 0,
            kind: RecordKind::Backup {
                instance: n(instance),
                snapshot: SnapshotId(id),
                event,
                message: String::new(),
            },
        }
    }

    fn taken(at: u64) -> BackupEvent {
        BackupEvent::Taken {
            taken_ms: at,
            bytes: 10,
            new_bytes: 5,
            consistency: Consistency::Frozen,
        }
    }

    #[test]
    fn stored_snapshots_and_those_still_on_their_node_are_listed_once() {
        let stored = vec![StoredSnapshot {
            node: n("a"),
            instance: n("web"),
            id: SnapshotId(1),
            taken_ms: 100,
            consistency: Consistency::Frozen,
            bytes: 10,
            new_bytes: 5,
            chunks: 2,
            stored_ms: 1,
            ids: String::new(),
        }];
        let records = vec![
            (n("a"), rec("web", 1, taken(100))),
            (n("a"), rec("web", 2, taken(200))),
            (n("a"), rec("web", 3, taken(300))),
            (n("a"), rec("web", 3, BackupEvent::Uploaded)),
            (n("a"), rec("db", 4, taken(50))),
        ];
        let all = listing(&stored, &records, None);
        let got: Vec<(&str, &str, Where)> = all
            .iter()
            .map(|l| (l.instance.as_str(), l.id.as_str(), l.stored))
            .collect();
        assert_eq!(
            got,
            vec![
                ("db", "0000000000000004", Where::Node),
                ("web", "0000000000000001", Where::Master),
                ("web", "0000000000000002", Where::Node),
            ],
            "uploaded and then dropped by retention: not listed"
        );
        assert_eq!(listing(&stored, &records, Some(&n("db"))).len(), 1);
    }
}
