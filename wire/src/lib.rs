//! hedge's wire format: message types shared by node, master, mesh and firmware.
//!
//! `#![no_std]` with `alloc`; the `std` feature adds `std::error::Error` impls.
//!
//! - [`types`]: the messages ([`Message`] and everything in it).
//! - [`limits`]: the bounds on decoded data.
//! - [`validate`]: the [`Validate`] checks of those bounds and of structural rules.
//! - [`codec`]: the versioned envelope, [`encode`] / [`decode`], and the bytes a
//!   [`DesiredState`] signature covers.
//! - [`compact`]: the compact encoding of an [`Up`] batch (envelope version 3), which
//!   [`decode`] reads beside versions 4 and 2.
//! - [`backup`]: backup policies, restore directives and the blob service's bodies.
//! - [`mesh`]: the peer protocol of a swarm and the signed values relays carry.
//! - [`frame`]: length-prefixed frames over `embedded-io` streams.
//! - [`template`]: the `{{ key }}` syntax of requests and what a request references.
//! - [`error`]: [`WireError`], the crate's error.
//!
//! Decoding never panics and allocates only for data present in its bounded input.
//! Where the messages flow: `docs/architecture.md`.
#![no_std]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod backup;
mod bounded;
pub mod codec;
pub mod compact;
pub mod error;
pub mod frame;
pub mod limits;
pub mod mesh;
pub mod template;
pub mod types;
pub mod validate;

pub use backup::{BackupEvent, BackupPolicy, Consistency, RestoreDirective, SnapshotId};
pub use codec::{decode, encode, LEGACY_VERSION, PREVIOUS_VERSION, WIRE_VERSION};
pub use compact::{encode_up, COMPACT_UP_VERSION};
pub use error::WireError;
pub use frame::{read_frame, write_frame, FrameError};
pub use limits::DEFAULT_MAX_FRAME;
pub use types::*;
pub use validate::Validate;
