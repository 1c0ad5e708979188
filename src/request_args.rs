//! The request flags shared by `hedge node request` and `hedge master request`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use hedge_runtime::request_file::{self, Flags, Releases};
use hedge_wire::backup::BackupPolicy;
use hedge_wire::{InstanceRequest, RequestedState};

use crate::Failure;

/// An instance request: a request file, or flags.
#[derive(Args)]
pub struct RequestArgs {
    /// A request file (TOML).
    #[arg(long, conflicts_with_all = ["name", "software"])]
    file: Option<PathBuf>,
    /// Instance name.
    #[arg(required_unless_present = "file")]
    name: Option<String>,
    /// What it runs: exec:PROGRAM, sha256:HEX (an artifact; needs --entry), or, on the
    /// master, release:NAME.
    #[arg(long, required_unless_present = "file")]
    software: Option<String>,
    /// The program inside an artifact, e.g. bin/app.
    #[arg(long)]
    entry: Option<String>,
    /// An argument (repeatable).
    #[arg(long = "arg", allow_hyphen_values = true)]
    args: Vec<String>,
    /// A parameter key=value (repeatable).
    #[arg(long = "param")]
    params: Vec<String>,
    /// A promise [NAME=]KIND[:TARGET] (repeatable), e.g. port=tcp:127.0.0.1:{{port}}.
    #[arg(long = "promise")]
    promises: Vec<String>,
    /// started (default), stopped or destroyed.
    #[arg(long)]
    state: Option<String>,
}

impl RequestArgs {
    /// Reads the file or builds from the flags, with every check of the request format,
    /// and the file's backup policy (`[backup]`; flags give none: a request without one
    /// removes the instance's policy). `releases` resolves `release:NAME` (the
    /// master's), or refuses it (the node's).
    pub fn build_with_backup(
        self,
        releases: Releases<'_>,
    ) -> Result<(InstanceRequest, Option<BackupPolicy>), Failure> {
        if let Some(f) = self.file {
            let text = std::fs::read_to_string(&f)
                .with_context(|| format!("cannot read {}", f.display()))
                .map_err(Failure::data)?;
            return request_file::parse_toml_full(&text, releases)
                .with_context(|| f.display().to_string())
                .map_err(Failure::data);
        }
        let destroy = self.state.as_deref() == Some("destroyed");
        let mut r = request_file::from_flags_with(
            &Flags {
                name: self.name.unwrap_or_default(),
                software: self.software.unwrap_or_default(),
                entry: self.entry,
                args: self.args,
                params: self.params,
                promises: self.promises,
                state: self.state.filter(|_| !destroy),
            },
            releases,
        )
        .map_err(Failure::data)?;
        if destroy {
            r.state = RequestedState::Destroyed;
        }
        Ok((r, None))
    }
}
