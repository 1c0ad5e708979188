//! The store worker: a thread that owns the master's store for the MQTT driver.
//!
//! Contract: the driver's event loop never waits on SQLite (`synchronous = FULL`, a
//! busy timeout while another master holds the write lock). It hands each piece of
//! store work to [`Worker::submit`] as a [`Job`], which returns at once: `Err(Busy)`
//! when [`Worker::QUEUE`] jobs already wait (the driver then refuses the frame, not
//! acknowledged, and the node resends later). The worker runs the jobs in order on
//! its own thread and sends one [`Done`] per job back over a channel the loop selects
//! on; an acknowledgement is published only from an [`Done::Ingested`] whose records
//! are committed. Ingest jobs waiting together (up to [`Worker::BATCH`], at most
//! [`Worker::PER_NODE`] of one node, so that a node is never left with its whole window
//! in one commit) share one transaction and one commit ([`FleetStore::ingest_many`]):
//! under load, one `fsync` serves many batches. The worker runs over any [`FleetStore`] backend. Dropping the worker closes its queue; the thread ends after the job
//! in hand.

use std::collections::BTreeMap;

use hedge_wire::codec::encode;
use hedge_wire::limits::DEFAULT_MAX_FRAME;
use hedge_wire::{Message, Name, Up};
use tokio::sync::mpsc;

use crate::store::{Batch, FleetStore, Ingested, StoreError};

/// Store work for the worker.
#[derive(Debug)]
pub enum Job {
    /// Store an Up batch that arrived on `node`'s topic.
    Ingest {
        /// The topic's node.
        node: Name,
        /// The decoded batch.
        up: Up,
        /// Arrival time, ms since the epoch.
        now_ms: u64,
        /// Refuse when the node already has this many bytes stored.
        max_bytes: u64,
        /// Whom relayed batches are checked against; `None`: they are stored as their
        /// summary and not unwrapped.
        origins: Option<std::sync::Arc<crate::origin::Origins>>,
    },
    /// Read the stored desired states of `nodes` for `relay` ([`Done::Fetched`]).
    Fetch {
        /// The node that asked (on its own topic).
        relay: Name,
        /// The nodes it carries.
        nodes: Vec<Name>,
    },
    /// Find desired states newer than `published` (node → generation published).
    Desired {
        /// What the driver has published on this connection.
        published: BTreeMap<Name, u64>,
    },
    /// One evacuation pass ([`crate::act::evacuate::driver::pass`]): draining, retiring and
    /// lost nodes.
    Evacuate {
        /// The signing key, the master directory (revocations) and the pass's settings.
        with: std::sync::Arc<crate::act::evacuate::driver::Standing>,
        /// When this master began listening to nodes.
        listening_since_ms: u64,
        /// Now, ms since the epoch.
        now_ms: u64,
    },
    /// Re-sign the desired states near their expiry ([`crate::sign::renew_expiring`]).
    Renew {
        /// The signing key.
        key: std::sync::Arc<crate::sign::MasterKey>,
        /// Now, ms since the epoch.
        now_ms: u64,
    },
    /// Re-sign the desired states whose imported connection parameters changed
    /// ([`FleetStore::refresh_imports`]).
    Imports {
        /// The signing key.
        key: std::sync::Arc<crate::sign::MasterKey>,
        /// Now, ms since the epoch.
        now_ms: u64,
    },
    /// One pass of the master acting for the fleet ([`crate::act::driver::act`]).
    Act {
        /// The signing key.
        key: std::sync::Arc<crate::sign::MasterKey>,
        /// The policy.
        policy: crate::act::Policy,
        /// Now, ms since the epoch.
        now_ms: u64,
    },
}

/// The outcome of one [`Job`]. (`Desired` is small, `Ingested` carries a store error;
/// one of these per job, never stored in bulk.)
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Done {
    /// An [`Job::Ingest`]: committed (acknowledge it) or refused.
    Ingested {
        /// The topic's node.
        node: Name,
        /// The node the batch claimed.
        claimed: Name,
        /// What the store did.
        result: Result<Ingested, StoreError>,
        /// The generation of the node's stored desired state, read after the commit
        /// (`None`: it has none, or it could not be read).
        desired: Option<u64>,
        /// The batches it carried for other nodes (unwrapped and verified), each stored
        /// in the same transaction.
        carried: Vec<Carried>,
        /// The relayed batches refused.
        refused: Vec<crate::relay::Refused>,
    },
    /// A [`Job::Fetch`]: `(node, generation, encoded Desired frame)` of each node that
    /// has a state.
    Fetched {
        /// The node that asked.
        relay: Name,
        /// The frames.
        frames: Vec<(Name, u64, Vec<u8>)>,
    },
    /// A [`Job::Desired`]: encoded frames to publish, retained, per node.
    Desired(Vec<(Name, u64, Vec<u8>)>),
    /// A [`Job::Renew`]: the nodes whose state was re-signed, with the new generation.
    Renewed(Result<Vec<(Name, u64)>, StoreError>),
    /// A [`Job::Imports`]: the nodes whose state was re-signed, with the new generation.
    Imports(Result<Vec<(Name, u64)>, StoreError>),
    /// A [`Job::Act`]: what the pass did.
    Acted(Result<crate::act::driver::Report, StoreError>),
    /// A [`Job::Evacuate`]: what the pass did.
    Evacuated(Result<Vec<crate::act::evacuate::driver::Done>, StoreError>),
}

/// One batch carried by relays, as the store took it.
#[derive(Debug)]
pub struct Carried {
    /// The node that signed it.
    pub node: Name,
    /// What the store did.
    pub result: Result<Ingested, StoreError>,
    /// The generation of the node's stored desired state, read after the commit.
    pub desired: Option<u64>,
}

/// The worker is full: the job was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("store worker busy: {} jobs waiting", Worker::QUEUE)]
pub struct Busy;

/// The thread that owns the store.
pub struct Worker {
    jobs: std::sync::mpsc::SyncSender<Job>,
}

impl Worker {
    /// Jobs that may wait for the worker.
    pub const QUEUE: usize = 256;
    /// Ingest jobs committed together, at most.
    pub const BATCH: usize = 64;
    /// Batches of one node committed together, at most. A node has only its window of
    /// batches in flight (8 by default): a commit that took all of them would leave it
    /// waiting for the acks with nothing to send, and the worker idle until its next
    /// batches arrive. Two at a time keep both busy (a drain of ~105k records: 66k rec/s
    /// with the whole window per commit, 92k with two).
    pub const PER_NODE: usize = 2;

    /// Starts the worker thread; it sends each job's [`Done`] on `done`.
    pub fn start<S: FleetStore + 'static>(
        store: S,
        done: mpsc::UnboundedSender<Done>,
    ) -> std::io::Result<Self> {
        let (jobs, queue) = std::sync::mpsc::sync_channel::<Job>(Self::QUEUE);
        std::thread::Builder::new()
            .name("hedge-store".into())
            .spawn(move || {
                let mut next = None;
                loop {
                    let Some(job) = next.take().or_else(|| queue.recv().ok()) else {
                        return;
                    };
                    let outcomes = match job {
                        Job::Ingest { .. } => {
                            // Take the ingest jobs already waiting behind it, in order.
                            let mut batch = vec![job];
                            while batch.len() < Self::BATCH {
                                match queue.try_recv() {
                                    Ok(j @ Job::Ingest { .. }) if joins(&batch, &j) => {
                                        batch.push(j);
                                    }
                                    Ok(other) => {
                                        next = Some(other);
                                        break;
                                    }
                                    Err(_) => break,
                                }
                            }
                            ingest(&store, batch)
                        }
                        other => vec![work(&store, other)],
                    };
                    for d in outcomes {
                        if done.send(d).is_err() {
                            return;
                        }
                    }
                }
            })?;
        Ok(Worker { jobs })
    }

    /// Queues `job`; never blocks.
    pub fn submit(&self, job: Job) -> Result<(), Busy> {
        self.jobs.try_send(job).map_err(|_| Busy)
    }
}

/// Whether ingest `job` may join the ingest jobs of `group` in one commit: its node has
/// fewer than [`Worker::PER_NODE`] batches there.
fn joins(group: &[Job], job: &Job) -> bool {
    let node_of = |j: &Job| match j {
        Job::Ingest { node, .. } => Some(node.clone()),
        _ => None,
    };
    let node = node_of(job);
    group.iter().filter(|j| node_of(j) == node).count() < Worker::PER_NODE
}

/// One ingest job's place among the batches of one commit.
struct Planned {
    /// The topic's node.
    node: Name,
    /// The node the batch claimed.
    claimed: Name,
    /// Index of its own batch.
    at: usize,
    /// Indexes of the batches it carried (accepted layers), and their nodes.
    layers: Vec<usize>,
    /// The relayed batches refused.
    refused: Vec<crate::relay::Refused>,
}

/// Stores `jobs` (all [`Job::Ingest`]) in one transaction; one [`Done`] per job. Each
/// job's relayed batches ([`crate::relay::unwrap`], when it has [`Job::Ingest::origins`])
/// are stored in the same transaction as the batch that carried them.
fn ingest(store: &impl FleetStore, jobs: Vec<Job>) -> Vec<Done> {
    let mut batches: Vec<Batch> = Vec::new();
    let mut plans = Vec::new();
    for job in jobs {
        let Job::Ingest {
            node,
            up,
            now_ms,
            max_bytes,
            origins,
        } = job
        else {
            continue;
        };
        // A batch naming another node than its topic is refused whole: nothing it
        // carries is unwrapped (its path would name a relay that did not send it).
        let unwrapped = match &origins {
            Some(o) if up.node == node => {
                crate::relay::unwrap(&up, DEFAULT_MAX_FRAME, &|n, b| o.check(n, b))
            }
            _ => crate::relay::Unwrapped::default(),
        };
        let refused_in = |who: &Name| -> Vec<u64> {
            let seqs = (unwrapped.refused.iter()).filter(|r| &r.by == who && r.reason.forged());
            seqs.map(|r| r.seq).collect()
        };
        let at = batches.len();
        let mut own = Batch::direct(node.clone(), up, now_ms, max_bytes);
        own.refused_relayed = refused_in(&node);
        let claimed = own.up.node.clone();
        batches.push(own);
        let mut layers = Vec::new();
        for layer in &unwrapped.layers {
            layers.push(batches.len());
            batches.push(Batch {
                refused_relayed: refused_in(&layer.node),
                node: layer.node.clone(),
                up: layer.up.clone(),
                now_ms,
                max_bytes,
                via: layer.via.clone(),
            });
        }
        plans.push(Planned {
            node,
            claimed,
            at,
            layers,
            refused: unwrapped.refused,
        });
    }
    let mut results: Vec<Option<Result<Ingested, StoreError>>> =
        store.ingest_many(&batches).into_iter().map(Some).collect();
    // Only an ack waits on it; a refused batch gets none.
    let desired = |node: &Name, result: &Result<Ingested, StoreError>| {
        match result {
        Ok(_) => store.desired_generation(node).unwrap_or_else(|e| {
            tracing::warn!(node = %node, error = %e, "cannot read the desired generation; the ack goes out unchecked");
            None
        }),
        Err(_) => None,
    }
    };
    let mut take = |i: usize| {
        results[i]
            .take()
            .unwrap_or_else(|| Err(StoreError::Batch("no result".into())))
    };
    plans
        .into_iter()
        .map(|p| {
            let result = take(p.at);
            let carried = p
                .layers
                .iter()
                .map(|&i| {
                    let result = take(i);
                    let node = batches[i].node.clone();
                    Carried {
                        desired: desired(&node, &result),
                        node,
                        result,
                    }
                })
                .collect();
            Done::Ingested {
                desired: desired(&p.node, &result),
                node: p.node,
                claimed: p.claimed,
                result,
                carried,
                refused: p.refused,
            }
        })
        .collect()
}

/// Runs one job that is not an ingest.
fn work(store: &impl FleetStore, job: Job) -> Done {
    match job {
        Job::Ingest { .. } => ingest(store, vec![job]).remove(0),
        Job::Desired { published } => Done::Desired(newer_desired(store, &published)),
        Job::Fetch { relay, nodes } => Done::Fetched {
            frames: desired_frames(store, &nodes),
            relay,
        },
        Job::Renew { key, now_ms } => {
            Done::Renewed(crate::sign::renew_expiring(store, &key, now_ms))
        }
        Job::Imports { key, now_ms } => {
            Done::Imports(store.refresh_imports(|d| crate::sign::sign(&key, d, now_ms)))
        }
        Job::Act {
            key,
            policy,
            now_ms,
        } => Done::Acted(crate::act::driver::act(store, &key, &policy, now_ms)),
        Job::Evacuate {
            with,
            listening_since_ms,
            now_ms,
        } => Done::Evacuated(with.pass(store, listening_since_ms, now_ms)),
    }
}

/// Encoded desired states newer than `published`.
fn newer_desired(
    store: &impl FleetStore,
    published: &BTreeMap<Name, u64>,
) -> Vec<(Name, u64, Vec<u8>)> {
    let Ok(gens) = store.desired_generations() else {
        return Vec::new();
    };
    let newer: Vec<Name> = gens
        .into_iter()
        .filter(|(node, generation)| published.get(node).is_none_or(|g| g < generation))
        .map(|(node, _)| node)
        .collect();
    desired_frames(store, &newer)
}

/// `(node, generation, encoded Desired frame)` of each of `nodes` with a stored state.
fn desired_frames(store: &impl FleetStore, nodes: &[Name]) -> Vec<(Name, u64, Vec<u8>)> {
    let mut out = Vec::new();
    for node in nodes {
        let Ok(Some(d)) = store.desired(node) else {
            continue;
        };
        let generation = d.generation;
        match encode(&Message::Desired(d), DEFAULT_MAX_FRAME) {
            Ok(frame) => out.push((node.clone(), generation, frame)),
            Err(_) => tracing::warn!(node = %node, "desired state too large to publish"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use hedge_wire::{Record, RecordKind};

    use super::*;
    use crate::origin::tests::{enroll, sign};
    use crate::store::conformance::{batch, n, open};

    /// Runs `jobs` through [`ingest`] with the origins of a fresh PKI where `a` and `r`
    /// are enrolled; `r`'s batch carries `a`'s.
    fn carried(topic: &str) -> (Vec<Done>, tempfile::TempDir, crate::store::MasterStore) {
        let pki = tempfile::tempdir().unwrap();
        crate::pki::init(pki.path(), &crate::pki::InitOptions::default()).unwrap();
        let ka = enroll(pki.path(), &n("a"));
        enroll(pki.path(), &n("r"));
        let revoked = Arc::new(crate::revocation::Revoked::new(pki.path()));
        let origins = Arc::new(crate::origin::Origins::new(pki.path(), revoked));
        let inner = sign(
            &ka,
            &encode(&Message::Up(batch("a", 1, 4)), DEFAULT_MAX_FRAME).unwrap(),
        );
        let mut up = batch("r", 1, 1);
        up.records.push(Record {
            seq: 2,
            time_ms: 7,
            kind: RecordKind::Relayed(inner),
        });
        up.covers = Some((1, 2));
        let (dir, store) = open();
        let done = ingest(
            &store,
            vec![Job::Ingest {
                node: n(topic),
                up,
                now_ms: 1,
                max_bytes: u64::MAX,
                origins: Some(origins),
            }],
        );
        drop(pki);
        (done, dir, store)
    }

    fn job(node: &str, seq: u64) -> Job {
        Job::Ingest {
            node: n(node),
            up: batch(node, seq, seq),
            now_ms: 1,
            max_bytes: u64::MAX,
            origins: None,
        }
    }

    #[test]
    fn a_commit_takes_at_most_per_node_batches_of_one_node() {
        let group = vec![job("a", 1), job("b", 1)];
        assert!(joins(&group, &job("a", 2)));
        let group = vec![job("a", 1), job("b", 1), job("a", 2)];
        assert!(!joins(&group, &job("a", 3)));
        assert!(joins(&group, &job("b", 2)));
        assert!(joins(&group, &job("c", 1)));
    }

    #[test]
    fn a_carried_batch_is_stored_with_the_batch_that_carried_it() {
        let (done, _dir, store) = carried("r");
        let [Done::Ingested {
            result, carried, ..
        }] = &done[..]
        else {
            panic!("{done:?}")
        };
        assert_eq!(result.as_ref().unwrap().ack_upto, 2);
        assert_eq!(carried.len(), 1);
        assert_eq!(carried[0].node, n("a"));
        assert_eq!(carried[0].result.as_ref().unwrap().ack_upto, 4);
        assert_eq!(
            (store.count(&n("a")).unwrap(), store.count(&n("r")).unwrap()),
            (4, 2)
        );
    }

    #[test]
    fn a_batch_on_another_nodes_topic_unwraps_nothing() {
        let (done, _dir, store) = carried("x");
        let [Done::Ingested {
            result, carried, ..
        }] = &done[..]
        else {
            panic!("{done:?}")
        };
        assert!(matches!(result, Err(StoreError::NodeMismatch { .. })));
        assert!(carried.is_empty());
        assert_eq!(store.count(&n("a")).unwrap(), 0);
    }
}
