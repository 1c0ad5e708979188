//! hedge's wire format: message types shared by node, master, mesh and firmware.
//!
//! `#![no_std]` with `alloc`; the `std` feature adds `std::error::Error` impls.
#![no_std]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod types;

pub use types::*;
