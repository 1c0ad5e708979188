//! The hedge node runtime.
