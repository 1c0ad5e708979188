//! The errors of the master store, whatever its backend.
//!
//! Contract: one enum, [`StoreError`]; a backend maps its own failures into the
//! variants that name it (SQLite: [`StoreError::Open`], [`StoreError::Sqlite`]).

use std::path::PathBuf;

use hedge_wire::{Name, WireError};

use super::SCHEMA_VERSION;

/// Errors of the master store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be opened or set up.
    #[error("{path}: cannot open the master store: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The database file could not be created with mode 0600.
    #[error("{path}: cannot create the master store: {source}")]
    Create {
        /// The database file.
        path: PathBuf,
        /// The error of creating it.
        source: std::io::Error,
    },
    /// The database was written by a newer master.
    #[error("master store schema version {0} is newer than this master's {SCHEMA_VERSION}")]
    SchemaTooNew(i64),
    /// A SQLite operation failed.
    #[error("master store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// `hedge master recover` refuses: a master process has the store open.
    #[error("{}: a master has the store open (stop every `hedge master` using it first)", .0.display())]
    InUse(std::path::PathBuf),
    /// The store is being replaced by `hedge master recover`.
    #[error("{}: `hedge master recover` is replacing the store", .0.display())]
    Recovering(std::path::PathBuf),
    /// A stored blob does not decode.
    #[error("master store: stored {what} of node {node} does not decode: {source}")]
    Corrupt {
        /// What it was (record, coverage, desired state, health).
        what: &'static str,
        /// The node the value belongs to.
        node: String,
        /// postcard's error.
        source: postcard::Error,
    },
    /// A stored node name is not a valid name.
    #[error("master store: stored node name {0:?} is invalid")]
    BadName(String),
    /// A value could not be encoded.
    #[error("cannot encode {what}: {source}")]
    Encode {
        /// What it was (record, coverage, desired state, health).
        what: &'static str,
        /// postcard's error.
        source: postcard::Error,
    },
    /// Labels could not be encoded or decoded as JSON.
    #[error("node labels: {0}")]
    Labels(#[from] serde_json::Error),
    /// A batch arrived for one node but names another.
    #[error("batch names node {sent} but arrived for node {topic}")]
    NodeMismatch {
        /// The node the transport says it is from.
        topic: String,
        /// The node the batch names.
        sent: String,
    },
    /// A message broke a wire rule.
    #[error("refused: {0}")]
    Invalid(#[from] WireError),
    /// The node already has its quota of record bytes stored.
    #[error("node {node} has {stored} bytes of records stored, limit {limit}: refused")]
    QuotaExceeded {
        /// The node whose batch was refused.
        node: Name,
        /// Bytes of its records already stored.
        stored: u64,
        /// The quota it reached.
        limit: u64,
    },
    /// A sequence number is beyond what the store can index.
    #[error("sequence number {0} is above 2^63-1")]
    SeqOutOfRange(u64),
    /// A desired state's generation is not above the stored one.
    #[error("desired state for {node}: generation {given} is not above the stored {current}")]
    StaleGeneration {
        /// The node the state is for.
        node: Name,
        /// The generation stored.
        current: u64,
        /// The generation refused.
        given: u64,
    },
    /// No generation is left for a node.
    #[error("desired state for {0}: no generation left")]
    GenerationExhausted(Name),
    /// The signing step of [`super::FleetStore::update_desired`] changed the node or the
    /// generation it was given.
    #[error("desired state for {0}: signing changed the node or the generation")]
    SignerChangedState(Name),
    /// The signed desired state, framed for the wire, is larger than a node accepts: it
    /// could never be delivered, so it is not stored.
    #[error(
        "desired state for {node} would be {len} bytes signed and framed, more than the \
         frame limit of {max} bytes: refused, nothing stored"
    )]
    TooLarge {
        /// The node the state is for.
        node: Name,
        /// Encoded size of the whole signed state in its envelope.
        len: usize,
        /// The frame limit ([`hedge_wire::limits::DEFAULT_MAX_FRAME`]).
        max: usize,
    },
    /// Allocation found no node for a request.
    #[error(transparent)]
    Alloc(#[from] crate::alloc::AllocError),
    /// A move breaks a rule of [`crate::moves`]; nothing was stored.
    #[error(transparent)]
    Move(Box<crate::moves::MoveError>),
    /// A stored decision names a kind this master does not know.
    #[error("master store: unknown decision kind {0:?}")]
    UnknownDecision(String),
    /// The transaction of several batches failed to begin or commit.
    #[error("master store: batch transaction: {0}")]
    Batch(String),
    /// A request to destroy an instance that is not placed where it names.
    #[error("{instance} is not placed on {}: nothing to destroy", .node.as_ref().map_or("any node".into(), |n| n.to_string()))]
    NotPlaced {
        /// The instance the request names.
        instance: Name,
        /// The node the request named, if one (boxed: keeps the error small).
        node: Option<Box<Name>>,
    },
    /// The node is not known to the fleet.
    #[error("no node named {0}")]
    NoSuchNode(Name),
    /// A change of a node's state was refused.
    #[error(transparent)]
    NodeState(#[from] crate::node_state::NodeStateError),
}

impl From<crate::moves::MoveError> for StoreError {
    fn from(e: crate::moves::MoveError) -> Self {
        StoreError::Move(Box::new(e))
    }
}

impl From<Box<crate::moves::MoveError>> for StoreError {
    fn from(e: Box<crate::moves::MoveError>) -> Self {
        StoreError::Move(e)
    }
}
