//! The daemon's side of the uplink: answers the link task's loads, deletes what the
//! master acknowledged, applies desired states, tracks the link state.
//!
//! Contract: the link task (hedge_uplink::mqtt) runs beside the loop and talks only
//! through channels; the daemon stays the single owner of the store. When the uplink is
//! disabled or misconfigured the node runs offline and says why, once, in its log.

use std::sync::Arc;

use hedge_uplink::link::{ToLink, ToNode};
use hedge_uplink::mqtt::{self, LinkSettings};
use rustls::ClientConfig;
use tokio::sync::mpsc;

use super::links::{LinkHandle, LinkId};
use super::Daemon;

impl Daemon {
    /// The mTLS client configuration from the `[uplink]` CA, certificate and key files
    /// (shared by the MQTT link and the artifact downloads).
    pub(super) fn uplink_tls(&self) -> Result<Arc<ClientConfig>, String> {
        let u = &self.cfg.uplink;
        let read = |p: &std::path::Path| {
            let path = self.cfg.state_path(p);
            std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))
        };
        // The key is mode-checked and wiped after use (like the identity key).
        let key =
            hedge_uplink::tls::read_key(&self.cfg.state_path(&u.key)).map_err(|e| e.to_string())?;
        hedge_uplink::tls::client_config(&read(&u.ca)?, &read(&u.cert)?, &key)
            .map_err(|e| e.to_string())
    }

    fn link_settings(&self) -> Result<LinkSettings, String> {
        let u = &self.cfg.uplink;
        let tls = self.uplink_tls()?;
        Ok(LinkSettings {
            node: self.cfg.node_id().clone(),
            epoch: self.outbox.store.epoch(),
            host: u.host.clone(),
            port: u.port,
            keepalive: std::time::Duration::from_secs(u64::from(u.keepalive_s)),
            tls,
            sync: self.sync_config(),
        })
    }

    /// The sync core's tuning from `[uplink]` (the MQTT link's, and the mesh link's).
    pub(super) fn sync_config(&self) -> hedge_uplink::Config {
        let u = &self.cfg.uplink;
        hedge_uplink::Config {
            max_batch_records: u.max_batch_records,
            max_batch_bytes: u.max_batch_bytes,
            window: u.window,
            ack_timeout: std::time::Duration::from_millis(u.ack_timeout_ms),
            budget_bytes_per_sec: (u.budget_bytes_per_sec > 0).then_some(u.budget_bytes_per_sec),
            ..hedge_uplink::Config::default()
        }
    }

    /// Starts the uplink task when the uplink is enabled (replacing a running one).
    pub(super) fn start_uplink(&mut self) {
        if !self.cfg.uplink.enabled {
            tracing::info!(
                "uplink disabled: running offline (enroll with `hedge node init --enroll`)"
            );
            return;
        }
        let cert = self.cfg.state_path(&self.cfg.uplink.cert);
        if !cert.exists() && self.cfg.uplink.artifacts.is_some() {
            tracing::info!(cert = %cert.display(), "uplink: no certificate yet; enrolling at the master's endpoint first");
            return;
        }
        let settings = match self.link_settings() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "uplink misconfigured: running offline");
                return;
            }
        };
        let (to_node_tx, to_node_rx) = mpsc::unbounded_channel();
        let (to_link_tx, to_link_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(mqtt::run(settings, to_node_tx, to_link_rx));
        self.links.add(LinkHandle::new(
            LinkId::Uplink,
            to_link_tx,
            to_node_rx,
            task,
        ));
    }

    /// Starts the credentials task (enrollment, renewal) when the uplink is enabled and
    /// the master's HTTPS endpoint is known: see [`crate::credentials`].
    pub(super) fn start_credentials(&self) -> Option<tokio::task::JoinHandle<()>> {
        let u = &self.cfg.uplink;
        let url = u.artifacts.clone().filter(|_| u.enabled)?;
        let paths = crate::credentials::Paths {
            node: self.cfg.node_id().to_string(),
            ca: self.cfg.state_path(&u.ca),
            cert: self.cfg.state_path(&u.cert),
            key: self.cfg.state_path(&u.key),
            url,
            renew_at_percent: u.renew_at_percent,
            check: std::time::Duration::from_secs(u.renew_check_s),
        };
        let down = self.links.uplink_down_since.clone();
        let events = self.events_tx.clone();
        Some(tokio::spawn(crate::credentials::run(
            paths,
            move || {
                down.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .map(|t| t.elapsed())
            },
            move || {
                let _ = events.send(super::Event::Credentials);
            },
        )))
    }

    /// A message from the link `link`.
    pub(super) fn on_link(&mut self, link: LinkId, msg: ToNode) {
        match msg {
            ToNode::Load { from, limit } => {
                // Records are durable, and marked as handed over (so shedding keeps
                // off them), before they leave the node. If either fails, none leave.
                // Only a group not yet on disk costs a flush.
                let read = self.outbox.store.outbox_from(from, limit).and_then(|r| {
                    if let Some(last) = r.last() {
                        self.outbox.store.hand_over(last.seq)?;
                        self.outbox.store.flush_to_send(last.seq)?;
                    }
                    Ok(r)
                });
                let (records, end) = match read {
                    Ok(r) => {
                        let end = r.len() < limit;
                        (r, end)
                    }
                    Err(e) => {
                        self.store_failed(&e);
                        (Vec::new(), true)
                    }
                };
                self.links.send(link, ToLink::Loaded { from, records, end });
            }
            ToNode::Delete { upto } => match self.outbox.store.ack(upto) {
                Ok(n) => {
                    self.relay.acked(upto);
                    if let Some(l) = self.links.get_mut(link) {
                        l.acked_upto = l.acked_upto.max(upto);
                        l.deleted += n as u64;
                    }
                    tracing::debug!(upto, deleted = n, "master acknowledged records");
                }
                Err(e) => self.store_failed(&e),
            },
            ToNode::Sent { upto } => {
                if let Some(l) = self.links.get_mut(link) {
                    l.sent_upto = l.sent_upto.max(upto);
                }
            }
            ToNode::Lease { since } => {
                if self.leases.renewed(since) {
                    self.reconcile();
                }
            }
            ToNode::Desired(frame) => {
                let _ = self.on_desired_frame(&frame);
            }
            ToNode::Custody { id, batch } => self.on_custody(link, id, batch),
            ToNode::PeerParams(p) => self.on_peer_params(p),
            msg @ (ToNode::Carried(_) | ToNode::Fetch(_)) => self.route(msg),
            ToNode::Link(up) => {
                if let Some(l) = self.links.get_mut(link) {
                    l.up = up;
                }
                if link == LinkId::Uplink {
                    self.tell_direct();
                    if up {
                        // Pending snapshots leave now rather than at the next poll.
                        self.upload_wake();
                    }
                    let mut down = self
                        .links
                        .uplink_down_since
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    match (up, *down) {
                        (true, _) => *down = None,
                        (false, None) => *down = Some(super::monotonic_now()),
                        (false, Some(_)) => {}
                    }
                }
            }
        }
    }

    pub(super) fn link_status(&self) -> crate::local_api::UplinkView {
        let epoch = self.outbox.store.epoch();
        match self.links.get(LinkId::Uplink) {
            None => crate::local_api::UplinkView {
                enabled: self.cfg.uplink.enabled,
                connected: false,
                epoch,
                progress: None,
            },
            Some(l) => crate::local_api::UplinkView {
                enabled: true,
                connected: l.up,
                epoch,
                progress: Some(crate::local_api::LinkProgress {
                    acked_upto: l.acked_upto,
                    sent_upto: l.sent_upto,
                    deleted: l.deleted,
                    generation: self.applied_generation().ok(),
                }),
            },
        }
    }
}
