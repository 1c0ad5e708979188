//! The hedge node runtime.
pub mod artifact;
pub mod config;
pub mod credentials;
pub mod daemon;
pub mod desired;
pub mod identity;
pub mod local_api;
pub mod logfile;
pub mod monitor;
pub mod partition;
pub mod reconcile;
pub mod render;
pub mod request_file;
pub mod store;
pub mod supervisor;
