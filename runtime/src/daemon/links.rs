//! The links part of the daemon: the set of running links to the master (the MQTT
//! uplink, and the mesh link through peers).
//!
//! Contract: [`Links`] holds zero or more [`LinkHandle`]s, at most one per [`LinkId`].
//! Each link is a task that talks to the loop only through its two channels;
//! [`Links::recv`] yields the next message of any link with the id of the link it came
//! from (it never resolves while there is none, or while every link's channel is
//! closed), [`Links::send`] answers one link, [`Links::outbox_changed`] wakes them all.
//! The set also keeps since when the uplink is down, shared with the credentials task.

use std::future::poll_fn;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Instant;

use hedge_uplink::link::{ToLink, ToNode};
use tokio::sync::mpsc;

/// Which link: the key of a link in [`Links`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkId {
    /// The MQTT uplink to the broker.
    Uplink,
    /// The mesh link: peers that reach the master (`hedge_mesh`).
    Mesh,
}

/// What the daemon keeps of a running link.
pub(crate) struct LinkHandle {
    id: LinkId,
    tx: mpsc::UnboundedSender<ToLink>,
    rx: mpsc::UnboundedReceiver<ToNode>,
    task: tokio::task::JoinHandle<()>,
    /// Connected and subscribed.
    pub up: bool,
    /// Highest seq sent in a range batch (may not be acknowledged yet).
    pub sent_upto: u64,
    /// Highest seq the master acknowledged (and the node deleted).
    pub acked_upto: u64,
    /// Records deleted after acknowledgement, this run.
    pub deleted: u64,
}

impl LinkHandle {
    /// A link whose task is `task`, reached through `tx` and heard on `rx`.
    pub(crate) fn new(
        id: LinkId,
        tx: mpsc::UnboundedSender<ToLink>,
        rx: mpsc::UnboundedReceiver<ToNode>,
        task: tokio::task::JoinHandle<()>,
    ) -> Self {
        LinkHandle {
            id,
            tx,
            rx,
            task,
            up: false,
            sent_upto: 0,
            acked_upto: 0,
            deleted: 0,
        }
    }
}

/// Since when the uplink is down (`None` while up).
pub(crate) type DownSince = Arc<Mutex<Option<Instant>>>;

/// The running links.
pub(crate) struct Links {
    links: Vec<LinkHandle>,
    /// Since when the uplink is down (`None` while up); read by the credentials task.
    pub(crate) uplink_down_since: DownSince,
}

impl Links {
    /// No link yet; the uplink counts as down since `now`.
    pub(crate) fn new(now: Instant) -> Self {
        Links {
            links: Vec::new(),
            uplink_down_since: Arc::new(Mutex::new(Some(now))),
        }
    }

    /// Adds `link`, stopping the one it replaces (same id), if any.
    pub(crate) fn add(&mut self, link: LinkHandle) {
        self.stop(link.id);
        self.links.push(link);
    }

    /// Stops and forgets the link `id`, if it runs.
    pub(crate) fn stop(&mut self, id: LinkId) {
        self.links.retain(|l| {
            if l.id == id {
                l.task.abort();
            }
            l.id != id
        });
    }

    /// Stops every link.
    pub(crate) fn stop_all(&mut self) {
        for l in self.links.drain(..) {
            l.task.abort();
        }
    }

    pub(crate) fn get(&self, id: LinkId) -> Option<&LinkHandle> {
        self.links.iter().find(|l| l.id == id)
    }

    pub(crate) fn get_mut(&mut self, id: LinkId) -> Option<&mut LinkHandle> {
        self.links.iter_mut().find(|l| l.id == id)
    }

    /// Sends `msg` to the link `id`, if it runs.
    pub(crate) fn send(&self, id: LinkId, msg: ToLink) {
        if let Some(l) = self.get(id) {
            let _ = l.tx.send(msg);
        }
    }

    /// Tells every link that records were appended.
    pub(crate) fn outbox_changed(&self) {
        for l in &self.links {
            let _ = l.tx.send(ToLink::OutboxChanged);
        }
    }

    /// The next message of any link, with the link's id.
    pub(crate) async fn recv(&mut self) -> (LinkId, ToNode) {
        poll_fn(|cx| {
            for l in &mut self.links {
                // A closed channel (`Ready(None)`) says nothing more: skip it.
                if let Poll::Ready(Some(msg)) = l.rx.poll_recv(cx) {
                    return Poll::Ready((l.id, msg));
                }
            }
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;

    fn handle(
        id: LinkId,
    ) -> (
        LinkHandle,
        mpsc::UnboundedSender<ToNode>,
        mpsc::UnboundedReceiver<ToLink>,
    ) {
        let (to_node_tx, to_node_rx) = mpsc::unbounded_channel();
        let (to_link_tx, to_link_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(std::future::pending::<()>());
        (
            LinkHandle::new(id, to_link_tx, to_node_rx, task),
            to_node_tx,
            to_link_rx,
        )
    }

    #[tokio::test]
    async fn no_link_never_yields_and_a_link_is_heard_and_woken() {
        let mut links = Links::new(crate::daemon::monotonic_now());
        assert!(
            tokio::time::timeout(Duration::from_millis(20), links.recv())
                .await
                .is_err()
        );

        let (h, to_node, mut to_link) = handle(LinkId::Uplink);
        links.add(h);
        to_node.send(ToNode::Sent { upto: 3 }).unwrap();
        let (id, msg) = links.recv().await;
        assert_eq!(id, LinkId::Uplink);
        assert!(matches!(msg, ToNode::Sent { upto: 3 }));
        links.outbox_changed();
        assert!(matches!(to_link.try_recv(), Ok(ToLink::OutboxChanged)));

        // A closed channel is silence, not a stream of nothing.
        drop(to_node);
        assert!(
            tokio::time::timeout(Duration::from_millis(20), links.recv())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_link_replaces_the_one_with_its_id_and_stop_forgets_it() {
        let mut links = Links::new(crate::daemon::monotonic_now());
        let (first, _n1, _l1) = handle(LinkId::Uplink);
        links.add(first);
        links.get_mut(LinkId::Uplink).unwrap().up = true;
        let (second, _n2, _l2) = handle(LinkId::Uplink);
        links.add(second);
        assert!(
            !links.get(LinkId::Uplink).unwrap().up,
            "the first one is gone"
        );
        links.stop(LinkId::Uplink);
        assert!(links.get(LinkId::Uplink).is_none());
    }
}
