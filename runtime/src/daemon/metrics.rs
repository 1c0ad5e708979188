//! The Prometheus text endpoint (`GET /metrics` on a loopback address).
//!
//! Contract: [`serve`] answers every HTTP request on the listener with the current
//! exposition, fetched from the daemon loop over the same channel as the local API (it
//! never touches daemon state itself). Requests are read up to 4 KiB and otherwise
//! ignored; a slow or broken client cannot stall the loop.

use std::fmt::Write as _;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use super::api::{ApiCall, ApiRequest};
use super::instance::status_word;
use super::Daemon;

/// Serves the endpoint until aborted.
pub(super) async fn serve(listener: TcpListener, calls: mpsc::Sender<ApiCall>) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        let calls = calls.clone();
        tokio::spawn(async move {
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
                    .and_then(|v| v["text"].as_str().map(String::from))
                    .unwrap_or_default(),
                Err(_) => String::new(),
            };
            let head = format!(
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(body.as_bytes()).await;
        });
    }
}

fn label(v: &str) -> String {
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
        let per = |f: &dyn Fn(&super::instance::Slot) -> String| -> Vec<(String, String)> {
            self.slots
                .iter()
                .map(|(n, s)| (format!("{{instance=\"{}\"}}", label(n.as_str())), f(s)))
                .collect()
        };
        metric(
            "hedge_instance_up",
            "1 when the instance's process runs.",
            "gauge",
            per(&|s| u8::from(status_word(s.lc.status()) == "running").to_string()),
        );
        metric(
            "hedge_instance_restarts_total",
            "Restarts of the instance.",
            "counter",
            per(&|s| s.lc.restarts().to_string()),
        );
        metric(
            "hedge_usage_cpu_ms_total",
            "CPU ms reported in usage records by this daemon run.",
            "counter",
            self.slots
                .keys()
                .map(|n| {
                    (
                        format!("{{instance=\"{}\"}}", label(n.as_str())),
                        self.usage_cpu_ms
                            .get(n.as_str())
                            .copied()
                            .unwrap_or(0)
                            .to_string(),
                    )
                })
                .collect(),
        );
        let mut promises = Vec::new();
        for (n, s) in &self.slots {
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
                self.incidents.open_incidents().count().to_string(),
            )],
        );
        metric(
            "hedge_outbox_depth",
            "Records waiting for the master.",
            "gauge",
            vec![(String::new(), self.store.outbox_depth().to_string())],
        );
        metric(
            "hedge_outbox_bytes",
            "Bytes of records waiting for the master.",
            "gauge",
            vec![(String::new(), self.store.outbox_bytes().to_string())],
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
        out
    }
}
