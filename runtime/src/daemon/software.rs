//! The daemon's side of software artifacts: which cached tree an instance runs, and the
//! background downloads of what is missing.
//!
//! Contract: an instance whose software is an artifact runs the variant for this
//! binary's [`super::TARGET`] (else the `*` one). When `<state_dir>/software/<hex>/`
//! exists it is used at once, with no network (so instances start after an offline
//! reboot). Otherwise the instance waits (state `waiting`) while one task per artifact
//! tries [`crate::artifact::install`] against `[uplink] artifacts`, with backoff that
//! never gives up (1 s doubling to 5 min, ±20 %), until it is installed — then every
//! instance that runs it is started — or refused (an unsafe archive: permanent for
//! those bytes, not retried until the daemon restarts). A running instance whose
//! request moves to an artifact not yet installed keeps running the old one until the
//! new one is ready. Each outcome is counted (`artifact_installed`,
//! `artifact_hash_mismatch`, `artifact_refused`, `artifact_fetch_errors`); installs,
//! refusals and wrong hashes are also `Artifact` records for the master. Downloads no
//! instance needs any more are stopped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use hedge_wire::{ArtifactOutcome, InstanceRequest, Name, RecordKind, Sha256Hex, SoftwareRelease};
use tokio::sync::mpsc;

use super::{Daemon, Event, RateLimit, TARGET};
use crate::artifact::{self, Cache, InstallError, Limits, Source};

/// First retry delay after a failed attempt.
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest retry delay.
const RETRY_MAX: Duration = Duration::from_secs(300);

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// In the cache now.
    Installed,
    /// The bytes had another hash (hex given); deleted; retried.
    HashMismatch(String),
    /// The archive is unsafe; nothing kept; not retried.
    Refused(String),
    /// Network, HTTP or local I/O trouble; retried.
    Failed(String),
}

/// The daemon's artifact state.
pub(crate) struct Software {
    cache: Cache,
    pub(super) source: Option<Source>,
    tasks: BTreeMap<[u8; 32], tokio::task::JoinHandle<()>>,
    refused: BTreeMap<[u8; 32], String>,
    log: RateLimit,
}

/// What an instance's software needs now.
pub(super) enum Need {
    /// `exec:`: nothing.
    Nothing,
    /// The artifact's installed tree.
    Ready(PathBuf),
    /// Not installed yet (a download runs, or was refused).
    Pending,
    /// No variant for this node's target.
    NoVariant,
}

impl Software {
    pub(super) fn new(cache: Cache) -> Self {
        Software {
            cache,
            source: None,
            tasks: BTreeMap::new(),
            refused: BTreeMap::new(),
            log: RateLimit::default(),
        }
    }

    /// Stops every download (at shutdown).
    pub(super) fn abort_all(&mut self) {
        for (_, t) in std::mem::take(&mut self.tasks) {
            t.abort();
        }
    }
}

fn target_of(req: &InstanceRequest, sha: &[u8; 32]) -> String {
    match &req.software {
        SoftwareRelease::Artifact { variants, .. } => variants
            .iter()
            .find(|v| &v.sha256 == sha && (v.target == TARGET || v.target == "*"))
            .map_or_else(|| "*".to_owned(), |v| v.target.clone()),
        SoftwareRelease::Exec(_) => "*".to_owned(),
    }
}

async fn attempts(
    source: Source,
    cache: Cache,
    sha256: [u8; 32],
    tx: mpsc::UnboundedSender<Event>,
) {
    let mut delay = RETRY_FIRST;
    loop {
        let attempt = match artifact::install(&source, &cache, sha256, Limits::default()).await {
            Ok(()) => Attempt::Installed,
            Err(InstallError::Refused(r)) => Attempt::Refused(r.to_string()),
            Err(InstallError::HashMismatch { got }) => Attempt::HashMismatch(got),
            Err(e) => Attempt::Failed(e.to_string()),
        };
        let done = matches!(attempt, Attempt::Installed | Attempt::Refused(_));
        if tx.send(Event::Artifact { sha256, attempt }).is_err() || done {
            return;
        }
        tokio::time::sleep(delay.mul_f64(0.8 + 0.4 * fastrand::f64())).await;
        delay = (delay * 2).min(RETRY_MAX);
    }
}

impl Daemon {
    /// The tree `req` runs, when installed; no side effect.
    pub(super) fn installed_dir(&self, req: &InstanceRequest) -> Option<PathBuf> {
        let sha = req.software.artifact_for(TARGET)?;
        let sw = &self.software;
        sw.cache.ready(&sha).then(|| sw.cache.dir(&sha))
    }

    /// What `req`'s software needs; starts a download when it is missing.
    pub(super) fn need(&mut self, name: &Name, req: &InstanceRequest) -> Need {
        if matches!(req.software, SoftwareRelease::Exec(_)) {
            return Need::Nothing;
        }
        let Some(sha) = req.software.artifact_for(TARGET) else {
            return Need::NoVariant;
        };
        if self.software.cache.ready(&sha) {
            return Need::Ready(self.software.cache.dir(&sha));
        }
        self.want(name, &sha);
        Need::Pending
    }

    /// Starts the download of `sha` unless one runs or it was refused.
    fn want(&mut self, name: &Name, sha: &[u8; 32]) {
        let hex = Sha256Hex(sha).to_string();
        if let Some(reason) = self.software.refused.get(sha) {
            if let Some(suppressed) = self.software.log.allow(super::monotonic_now()) {
                tracing::warn!(instance = %name, sha256 = %hex, reason, suppressed, "artifact was refused; waiting for another release");
            }
            return;
        }
        if self
            .software
            .tasks
            .get(sha)
            .is_some_and(|t| !t.is_finished())
        {
            return;
        }
        let source = match self.artifact_source() {
            Ok(s) => s,
            Err(e) => {
                if let Some(suppressed) = self.software.log.allow(super::monotonic_now()) {
                    tracing::warn!(instance = %name, sha256 = %hex, error = %e, suppressed, "artifact not in the cache and cannot be downloaded; waiting");
                }
                return;
            }
        };
        tracing::info!(instance = %name, sha256 = %hex, host = %source.host, port = source.port, "downloading artifact");
        let task = tokio::spawn(attempts(
            source,
            self.software.cache.clone(),
            *sha,
            self.events_tx.clone(),
        ));
        self.software.tasks.insert(*sha, task);
    }

    pub(super) fn artifact_source(&mut self) -> Result<Source, String> {
        if let Some(s) = &self.software.source {
            return Ok(s.clone());
        }
        let u = &self.cfg.uplink;
        let url = u.artifacts.clone().ok_or(
            "no `[uplink] artifacts` URL in node.toml (enroll with a master that serves artifacts)",
        )?;
        let tls = self.uplink_tls()?;
        let source = Source::parse(&url, tls).map_err(|e| e.to_string())?;
        self.software.source = Some(source.clone());
        Ok(source)
    }

    /// A download task reported.
    pub(super) fn on_artifact(&mut self, sha256: [u8; 32], attempt: Attempt) {
        let hex = Sha256Hex(&sha256).to_string();
        let users: Vec<(Name, String)> = self
            .instances
            .slots
            .iter()
            .filter(|(_, s)| s.request.software.artifact_for(TARGET) == Some(sha256))
            .map(|(n, s)| (n.clone(), target_of(&s.request, &sha256)))
            .collect();
        let target = users
            .first()
            .map_or_else(|| "*".to_owned(), |(_, t)| t.clone());
        let record = |outcome, message: String| RecordKind::Artifact {
            sha256,
            target: target.clone(),
            outcome,
            message: crate::monitor::bounded_message(message),
        };
        match attempt {
            Attempt::Installed => {
                self.counters.artifact_installed += 1;
                self.software.tasks.remove(&sha256);
                tracing::info!(sha256 = %hex, dir = %self.software.cache.dir(&sha256).display(), "artifact installed");
                self.record(record(ArtifactOutcome::Installed, String::new()));
                for (n, _) in users {
                    self.restart_if_changed(&n);
                }
            }
            Attempt::HashMismatch(got) => {
                self.counters.artifact_hash_mismatch += 1;
                tracing::warn!(sha256 = %hex, got = %got, "downloaded artifact has another sha256: deleted; retrying later");
                self.record(record(
                    ArtifactOutcome::HashMismatch,
                    format!("downloaded bytes have sha256 {got}"),
                ));
            }
            Attempt::Refused(reason) => {
                self.counters.artifact_refused += 1;
                self.software.tasks.remove(&sha256);
                tracing::warn!(sha256 = %hex, %reason, "artifact refused: nothing kept");
                self.record(record(ArtifactOutcome::Refused, reason.clone()));
                self.software.refused.insert(sha256, reason);
            }
            Attempt::Failed(error) => {
                self.counters.artifact_fetch_errors += 1;
                if let Some(suppressed) = self.software.log.allow(super::monotonic_now()) {
                    tracing::info!(sha256 = %hex, %error, suppressed, "artifact download failed; retrying later");
                }
            }
        }
    }

    /// Stops downloads that no instance needs any more.
    pub(super) fn prune_downloads(&mut self) {
        let wanted: BTreeSet<[u8; 32]> = self
            .instances
            .slots
            .values()
            .filter_map(|s| s.request.software.artifact_for(TARGET))
            .collect();
        self.software.tasks.retain(|sha, t| {
            let keep = wanted.contains(sha) && !t.is_finished();
            if !keep {
                t.abort();
            }
            keep
        });
    }

    pub(super) fn stop_downloads(&mut self) {
        self.software.abort_all();
    }

    pub(super) fn software_status(&self) -> crate::local_api::SoftwareView {
        crate::local_api::SoftwareView {
            cache: self.software.cache.root().display().to_string(),
            downloading: self
                .software
                .tasks
                .keys()
                .map(|s| Sha256Hex(s).to_string())
                .collect(),
            refused: self
                .software
                .refused
                .iter()
                .map(|(s, r)| crate::local_api::RefusedArtifact {
                    sha256: Sha256Hex(s).to_string(),
                    reason: r.clone(),
                })
                .collect(),
        }
    }
}
