//! Bounds on everything a peer can make a decoder hold.
//!
//! Contract: these constants are the single source of truth for how big a decoded
//! message may be. [`crate::codec::decode`] refuses a frame longer than its `max`
//! (normally [`DEFAULT_MAX_FRAME`]) before looking inside it; the collection counts
//! below are enforced *while* decoding (an over-long sequence stops the decoder before
//! it allocates for it); every bound is checked again by [`crate::validate::Validate`],
//! which [`crate::codec::encode`] and [`crate::codec::decode`] both call, so a sender
//! cannot build a message its peer would refuse. String lengths are in bytes (UTF-8).
//!
//! The values are sized for a small Linux board; a microcontroller peer may pass a
//! smaller frame `max` and so accept less, but never more than these.

/// Default largest frame (version byte + postcard body), 64 KiB. Both ends of a link
/// must agree; a desired state or a batch of records larger than this is split or refused.
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024;

/// Most arguments of an instance (`InstanceRequest::args`), and most `argv`
/// entries of a command promise.
pub const MAX_ARGS: usize = 64;

/// Longest single argument, 4 KiB.
pub const MAX_ARG_LEN: usize = 4 * 1024;

/// Most parameters of an instance, and most connection parameters one instance publishes.
pub const MAX_PARAMETERS: usize = 64;

/// Longest parameter key, 64 bytes. Keys are also environment variable names.
pub const MAX_PARAMETER_KEY: usize = 64;

/// Longest parameter value, 4 KiB.
pub const MAX_PARAMETER_VALUE: usize = 4 * 1024;

/// Most config files of an instance.
pub const MAX_CONFIG_FILES: usize = 16;

/// Longest config file template, 16 KiB.
pub const MAX_CONFIG_TEMPLATE: usize = 16 * 1024;

/// Longest path on the wire (an `exec:` program, a config file's path, a file
/// promise's path), 1 KiB.
pub const MAX_PATH: usize = 1024;

/// Longest network target of a promise (a TCP `host:port` or an HTTP URL), 1 KiB.
pub const MAX_TARGET: usize = 1024;

/// Most variants (target triples) of one artifact software release.
pub const MAX_VARIANTS: usize = 8;

/// Most promises of an instance.
pub const MAX_PROMISES: usize = 16;

/// Most instances in one `DesiredState`.
pub const MAX_INSTANCES: usize = 256;

/// Most imports (other nodes' published instances) in one `DesiredState`.
pub const MAX_IMPORTS: usize = 64;

/// Most records in one `Up` batch.
pub const MAX_RECORDS: usize = 1024;

/// Longest human-readable message in a record (promise failure, incident), 1 KiB.
/// Producers truncate to this before recording.
pub const MAX_MESSAGE: usize = 1024;

/// Length of an ed25519 signature. A `DesiredState` signature is either this long or
/// empty (unsigned; whether a node accepts that is the node's policy, not the wire's).
pub const SIGNATURE_LEN: usize = 64;
