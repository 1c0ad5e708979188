//! Helpers the node and the master share, each with one home here: [`keyfile`] (secret
//! files written 0600 and read back only while private), [`clock`] (the one place that
//! reads the wall clock), [`hex`], [`config_error`] (the error of loading a config-like
//! file), [`log_gate`] (one log line per period for noisy conditions), and the backup
//! keys' two primitives: [`aead`] (a chunk sealed under its own key) and [`seal`] (a
//! snapshot key sealed to the fleet's recovery key). It holds no node or master logic, so the node-only build carries no master code.

pub mod aead;
pub mod clock;
pub mod config_error;
pub mod hex;
pub mod keyfile;
pub mod log_gate;
pub mod seal;

pub use config_error::ConfigFileError;
pub use keyfile::KeyFileError;
