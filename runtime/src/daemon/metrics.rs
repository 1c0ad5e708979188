//! The Prometheus text endpoint (`GET /metrics` on a loopback address).
//!
//! Contract: [`serve`] answers every HTTP request on the listener with the current
//! exposition, fetched from the daemon loop over the same channel as the local API (it
//! never touches daemon state itself). Requests are read up to 4 KiB and otherwise
//! ignored; a slow or broken client cannot stall the loop: at most [`MAX_CONNECTIONS`]
//! are served at once (more are closed at once) and each gets [`CONNECTION_TIME`].
//! A failing `accept` (e.g. out of file descriptors) is retried after a pause that
//! doubles from 50 ms to 2 s ([`AcceptBackoff`]), logged at most every ten seconds.

use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::api::ApiCall;
use super::Daemon;
use crate::local_api::{Answer, ApiRequest};

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 8;
/// Time one connection gets, request to answer.
pub const CONNECTION_TIME: Duration = Duration::from_secs(5);

/// The pause after a failed `accept`: doubles from 50 ms to 2 s, reset by a success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptBackoff {
    next: Duration,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(50);
    const MAX: Duration = Duration::from_secs(2);

    /// A fresh backoff.
    pub fn new() -> Self {
        AcceptBackoff { next: Self::FIRST }
    }

    /// The pause after one more failure.
    pub fn failed(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        d
    }

    /// An accept succeeded.
    pub fn succeeded(&mut self) {
        self.next = Self::FIRST;
    }
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        Self::new()
    }
}

/// Serves the endpoint until aborted.
pub(super) async fn serve(listener: TcpListener, calls: mpsc::Sender<ApiCall>) {
    serve_with(|| listener.accept(), calls).await;
}

async fn serve_with<F, Fut>(mut accept: F, calls: mpsc::Sender<ApiCall>)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::io::Result<(TcpStream, SocketAddr)>>,
{
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut backoff = AcceptBackoff::new();
    let mut log = super::RateLimit::default();
    loop {
        let mut s = match accept().await {
            Ok((s, _)) => {
                backoff.succeeded();
                s
            }
            Err(e) => {
                let pause = backoff.failed();
                if let Some(suppressed) = log.allow(super::monotonic_now()) {
                    tracing::warn!(error = %e, pause_ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX), suppressed, "metrics endpoint accept failed");
                }
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // Busy: close at once rather than queue.
            continue;
        };
        let calls = calls.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(CONNECTION_TIME, answer(&mut s, calls)).await;
            drop(permit);
        });
    }
}

async fn answer(s: &mut TcpStream, calls: mpsc::Sender<ApiCall>) {
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
    let (tx, rx) = oneshot::channel();
    let body = match calls
        .send(ApiCall {
            request: ApiRequest::Metrics,
            reply: tx,
        })
        .await
    {
        Ok(()) => rx
            .await
            .ok()
            .and_then(Result::ok)
            .and_then(|a| match a {
                Answer::Metrics(m) => Some(m.text),
                _ => None,
            })
            .unwrap_or_default(),
        Err(_) => String::new(),
    };
    let head = format!(
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(head.as_bytes()).await;
    let _ = s.write_all(body.as_bytes()).await;
}

pub(super) fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Daemon {
    /// The exposition text.
    pub(super) fn metrics_text(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, help: &str, kind: &str, rows: Vec<(String, String)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in rows {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let per = |f: &dyn Fn(&super::instances::Slot) -> String| -> Vec<(String, String)> {
            self.instances
                .slots
                .iter()
                .map(|(n, s)| (format!("{{instance=\"{}\"}}", label(n.as_str())), f(s)))
                .collect()
        };
        metric(
            "hedge_instance_up",
            "1 when the instance's process runs.",
            "gauge",
            per(&|s| {
                u8::from(s.lifecycle.status() == hedge_wire::InstanceStatus::Running).to_string()
            }),
        );
        metric(
            "hedge_instance_restarts_total",
            "Restarts of the instance.",
            "counter",
            per(&|s| s.lifecycle.restarts().to_string()),
        );
        metric(
            "hedge_usage_cpu_ms_total",
            "CPU ms reported in usage records by this daemon run.",
            "counter",
            self.instances
                .slots
                .keys()
                .map(|n| {
                    (
                        format!("{{instance=\"{}\"}}", label(n.as_str())),
                        self.monitoring
                            .usage_cpu_ms
                            .get(n.as_str())
                            .copied()
                            .unwrap_or(0)
                            .to_string(),
                    )
                })
                .collect(),
        );
        let mut promises = Vec::new();
        for (n, s) in &self.monitoring.watched {
            for p in &s.promises {
                if let Some((ok, _)) = p.state.last() {
                    promises.push((
                        format!(
                            "{{instance=\"{}\",promise=\"{}\"}}",
                            label(n.as_str()),
                            label(p.spec.name.as_str())
                        ),
                        u8::from(ok).to_string(),
                    ));
                }
            }
        }
        metric(
            "hedge_promise_ok",
            "1 when the promise's last check passed.",
            "gauge",
            promises,
        );
        metric(
            "hedge_incidents_open",
            "Open incidents.",
            "gauge",
            vec![(
                String::new(),
                self.monitoring
                    .incidents
                    .open_incidents()
                    .count()
                    .to_string(),
            )],
        );
        metric(
            "hedge_outbox_depth",
            "Records waiting for the master.",
            "gauge",
            vec![(String::new(), self.outbox.store.outbox_depth().to_string())],
        );
        metric(
            "hedge_outbox_bytes",
            "Bytes of records waiting for the master.",
            "gauge",
            vec![(String::new(), self.outbox.store.outbox_bytes().to_string())],
        );
        let c = &self.counters;
        metric(
            "hedge_shed_total",
            "Records shed to keep the outbox under its quota.",
            "counter",
            vec![
                (
                    "{kind=\"promise\"}".into(),
                    c.shed_dropped_promise.to_string(),
                ),
                (
                    "{kind=\"health\"}".into(),
                    c.shed_dropped_health.to_string(),
                ),
                (
                    "{kind=\"usage_merged\"}".into(),
                    c.shed_merged_usage.to_string(),
                ),
            ],
        );
        metric(
            "hedge_disk_walks_incomplete_total",
            "Partition disk walks that could not count everything (usage is a lower bound).",
            "counter",
            vec![(String::new(), c.disk_walks_incomplete.to_string())],
        );
        metric(
            "hedge_store_errors_total",
            "Store writes that failed.",
            "counter",
            vec![(String::new(), c.store_errors.to_string())],
        );
        metric(
            "hedge_reconcile_skipped_total",
            "Reconciliations skipped because the desired state could not be read.",
            "counter",
            vec![(String::new(), c.reconcile_skipped.to_string())],
        );
        metric(
            "hedge_api_refused_total",
            "Local API connections refused (peer not admitted, or too many).",
            "counter",
            vec![(String::new(), self.api_stats.refused().to_string())],
        );
        metric(
            "hedge_stragglers_killed_total",
            "Processes that outlived their stopped instance and were killed.",
            "counter",
            vec![(String::new(), c.stragglers_killed.to_string())],
        );
        metric(
            "hedge_repairs_total",
            "Restarts asked by self-repair.",
            "counter",
            vec![(String::new(), c.repairs.to_string())],
        );
        metric(
            "hedge_command_checks_refused_total",
            "Command checks refused, never run: no partition uid to run them as.",
            "counter",
            vec![(String::new(), c.command_checks_refused.to_string())],
        );
        metric(
            "hedge_artifacts_total",
            "Software artifact download outcomes.",
            "counter",
            vec![
                (
                    "{outcome=\"installed\"}".into(),
                    c.artifact_installed.to_string(),
                ),
                (
                    "{outcome=\"hash_mismatch\"}".into(),
                    c.artifact_hash_mismatch.to_string(),
                ),
                (
                    "{outcome=\"refused\"}".into(),
                    c.artifact_refused.to_string(),
                ),
                (
                    "{outcome=\"fetch_error\"}".into(),
                    c.artifact_fetch_errors.to_string(),
                ),
            ],
        );
        self.mesh_metrics(&mut metric);
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap_and_resets() {
        let mut b = AcceptBackoff::new();
        let got: Vec<u64> = (0..8)
            .map(|_| u64::try_from(b.failed().as_millis()).unwrap())
            .collect();
        assert_eq!(got, vec![50, 100, 200, 400, 800, 1600, 2000, 2000]);
        b.succeeded();
        assert_eq!(b.failed(), Duration::from_millis(50));
    }

    /// An accept that always fails is retried a handful of times per second, not in a
    /// busy loop (the old loop retried at once, forever).
    #[tokio::test(start_paused = true)]
    async fn failing_accept_backs_off_instead_of_spinning() {
        let calls_made = Arc::new(AtomicUsize::new(0));
        let counter = calls_made.clone();
        let (tx, _rx) = mpsc::channel(1);
        let server = tokio::spawn(serve_with(
            move || {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n >= 1000 {
                        // Enough to tell a spin from a backoff; stop here.
                        std::future::pending::<()>().await;
                    }
                    Err(std::io::Error::other("too many open files"))
                }
            },
            tx,
        ));
        tokio::time::sleep(Duration::from_secs(5)).await;
        let n = calls_made.load(Ordering::SeqCst);
        server.abort();
        // 50+100+…+1600 ms then 2 s pauses: 7 attempts fit in 5 s.
        assert!((3..=10).contains(&n), "{n} accept attempts in 5 s");
    }
}
