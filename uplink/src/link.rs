//! The messages between the node daemon and a link driver (the MQTT driver today, a
//! mesh link later), independent of the transport.
//!
//! Contract: a driver sends [`ToNode`]s and receives [`ToLink`]s over two channels; the
//! daemon stays the single owner of the outbox. Every [`ToNode::Load`] is answered by one
//! [`ToLink::Loaded`] with the same `from` (the [`crate::sync::Input::Loaded`] rules);
//! [`ToLink::OutboxChanged`] follows every turn of the daemon's loop that appended records
//! (once per turn, not per record). The daemon answers loads when it can,
//! so a driver never blocks it.

use std::collections::BTreeMap;

use hedge_wire::mesh::{CustodyRefusal, SignedBatch, SignedParams};
use hedge_wire::{Name, Record};

/// From the link to the daemon.
#[derive(Debug)]
pub enum ToNode {
    /// Read up to `limit` outbox records with `seq >= from`; answer with [`ToLink::Loaded`].
    Load {
        /// First seq wanted.
        from: u64,
        /// Most records wanted.
        limit: usize,
    },
    /// The master holds everything up to `upto`: delete it.
    Delete {
        /// Highest acknowledged seq.
        upto: u64,
    },
    /// Range batches up to `upto` have been sent (maybe not yet acknowledged).
    Sent {
        /// Highest seq sent in a range.
        upto: u64,
    },
    /// A frame from the desired-state topic (unverified).
    Desired(Vec<u8>),
    /// The link went up (`true`) or down (`false`).
    Link(bool),
    /// The master acknowledged a batch first sent at `since` (the lease start moved
    /// forward: see `crate::sync::SyncMachine::lease_since`). An instant of this
    /// process's monotonic clock; never sent with an earlier one than before.
    Lease {
        /// The new lease start.
        since: std::time::Instant,
    },
    /// Mesh link → daemon: a peer's own batch, its signature checked against the peer's
    /// certificate: append it as one `RecordKind::Relayed` record, durably, then answer
    /// [`ToLink::CustodyStored`] with the same `id`.
    Custody {
        /// Matches the answer to the request.
        id: u64,
        /// The batch, as received.
        batch: SignedBatch,
    },
    /// MQTT link → daemon: a frame from this node's `carry` topic (unverified), for the
    /// mesh link.
    Carried(Vec<u8>),
    /// Mesh link → daemon: ask the master (through the MQTT link) for these nodes'
    /// latest signed desired states.
    Fetch(Vec<Name>),
    /// Mesh link → daemon: a peer's instance's connection parameters, verified (chain to
    /// the fleet CA, CN, signature).
    PeerParams(SignedParams),
}

/// From the daemon to the link.
#[derive(Debug)]
pub enum ToLink {
    /// The answer to [`ToNode::Load`].
    Loaded {
        /// The `from` of the `Load` this answers.
        from: u64,
        /// Outbox records with `seq >= from`, increasing, at most `limit`.
        records: Vec<Record>,
        /// No records beyond these exist now.
        end: bool,
    },
    /// Records were appended.
    OutboxChanged,
    /// Daemon → mesh link: the answer to [`ToNode::Custody`] with this `id`: stored
    /// durably, or refused.
    CustodyStored {
        /// The request's `id`.
        id: u64,
        /// Stored, or why not.
        result: Result<(), CustodyRefusal>,
    },
    /// Daemon → mesh link: a frame the master sent on this node's `carry` topic.
    Carried(Vec<u8>),
    /// Daemon → MQTT link: publish `Message::Fetch` of these nodes.
    Fetch(Vec<Name>),
    /// Daemon → mesh link: this node's direct uplink is up (`true`) or down.
    Direct(bool),
    /// Daemon → mesh link: an instance of this node published connection parameters.
    Params {
        /// The instance.
        instance: Name,
        /// What it published.
        parameters: BTreeMap<String, String>,
    },
}
