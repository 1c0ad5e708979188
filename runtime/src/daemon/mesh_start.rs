//! Starting and stopping the mesh link: the peer transport (`hedge_mesh::net`) and the
//! link task (`hedge_mesh::link`), the daemon's second link (`LinkId::Mesh`).
//!
//! Contract: with `[mesh] enabled`, [`Daemon::start_mesh`] reads the `[uplink]` CA,
//! certificate and key (the node's fleet identity: a peer is its certificate's CN) and
//! the master's public key, starts the transport on `[mesh] listen`, and spawns the link
//! task over the same channels as the MQTT driver, tuned like it (`[uplink]` batches,
//! window, ack timeout). It then tells the link whether the direct uplink is up and
//! every connection parameter this node's instances published. A missing certificate
//! or key, or a port that cannot be bound, leaves the node without a mesh and says why,
//! once, in its log: the node runs on (offline, or on its direct uplink).
//! [`Daemon::stop_mesh`] stops the task and closes every peer session.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::links::{LinkHandle, LinkId};
use super::Daemon;

/// What the daemon keeps of a running mesh: the transport (peers for `status`) and the
/// link's counters.
pub(crate) struct MeshRun {
    pub net: hedge_mesh::net::NetHandle,
    pub stats: Arc<hedge_mesh::link::LinkStats>,
}

/// Peer events waiting for the link task at most.
const EVENTS: usize = 256;

impl Daemon {
    /// Starts the mesh link when `[mesh]` is enabled (replacing a running one).
    pub(super) fn start_mesh(&mut self) {
        if !self.cfg.mesh.enabled {
            return;
        }
        self.stop_mesh();
        match self.spawn_mesh() {
            Ok(()) => {
                tracing::info!(listen = %self.cfg.mesh.listen, peers = self.cfg.mesh.peers.len(), "mesh link started");
                self.tell_direct();
                let names: Vec<_> = self
                    .instances
                    .published
                    .keys()
                    .filter_map(|k| hedge_wire::Name::new(k).ok())
                    .collect();
                for n in names {
                    self.tell_params(&n);
                }
            }
            Err(e) => tracing::warn!(error = %e, "mesh misconfigured: running without peers"),
        }
    }

    fn spawn_mesh(&mut self) -> Result<(), String> {
        let u = &self.cfg.uplink;
        let read = |p: &std::path::Path| {
            let path = self.cfg.state_path(p);
            std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))
        };
        let ca = read(&u.ca)?;
        let cert = read(&u.cert)?;
        let key =
            hedge_uplink::tls::read_key(&self.cfg.state_path(&u.key)).map_err(|e| e.to_string())?;
        let master = self
            .master_key
            .ok_or("no master public key ([uplink] master_public_key)")?;
        let me = self.cfg.node_id().clone();
        let tls = hedge_mesh::tls::NetTls::new(&ca, &cert, &key).map_err(|e| e.to_string())?;
        let trust = hedge_mesh::trust::NodeTrust::new(me.clone(), &key, &cert, &ca, master)
            .map_err(|e| e.to_string())?;
        let (events_tx, events_rx) = mpsc::channel(EVENTS);
        let net = hedge_mesh::net::start(self.cfg.mesh.clone(), tls, me.clone(), events_tx)
            .map_err(|e| e.to_string())?;
        let mut settings = hedge_mesh::link::MeshLinkSettings::new(
            me,
            self.outbox.store.epoch(),
            self.sync_config(),
        );
        settings.ferry = self.cfg.mesh.ferry;
        let stats = Arc::new(hedge_mesh::link::LinkStats::default());
        let (to_node_tx, to_node_rx) = mpsc::unbounded_channel();
        let (to_link_tx, to_link_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(hedge_mesh::link::run(
            settings,
            net.clone(),
            trust,
            stats.clone(),
            events_rx,
            to_node_tx,
            to_link_rx,
        ));
        self.links
            .add(LinkHandle::new(LinkId::Mesh, to_link_tx, to_node_rx, task));
        self.mesh = Some(MeshRun { net, stats });
        Ok(())
    }

    /// Stops the mesh link and its transport, if they run.
    pub(super) fn stop_mesh(&mut self) {
        self.links.stop(LinkId::Mesh);
        if let Some(m) = self.mesh.take() {
            m.net.shutdown();
        }
    }
}
