//! The node's MQTT driver for the mesh, over a real mosquitto with mutual TLS and the
//! master's ACL: a relay asks the master for another node's signed desired state
//! (`ToLink::Fetch` → `Message::Fetch` on the relay's own `up` topic) and hands over what
//! the master answers on the relay's `carry` topic (`ToNode::Carried`), untouched.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::fleet::Fleet;
use hedge_runtime::config::NodeConfig;
use hedge_uplink::link::{ToLink, ToNode};
use hedge_uplink::mqtt::{self, LinkSettings};
use hedge_wire::{Message, Name};
use tokio::sync::mpsc;

#[test]
fn a_relay_fetches_another_nodes_signed_state_through_its_own_topics() {
    let mut fleet = Fleet::new();
    fleet.start_master();
    let _far = fleet.started_node("far");
    fleet.master_ok(&[
        "request",
        "job",
        "--software",
        "exec:/bin/sleep",
        "--arg",
        "100000",
        "--node",
        "far",
    ]);
    // The relay enrolls (its daemon fetches its certificate), then its daemon goes:
    // this test drives the relay's MQTT driver itself.
    let mut relay = fleet.started_node("relay");
    relay.kill9();
    let cfg = NodeConfig::load(&relay.config()).unwrap();
    let u = &cfg.uplink;
    let read = |p: &std::path::Path| std::fs::read(cfg.state_path(p)).unwrap();
    let tls =
        hedge_uplink::tls::client_config(&read(&u.ca), &read(&u.cert), &read(&u.key)).unwrap();
    let master_key = cfg.master_key().unwrap();
    let settings = LinkSettings {
        node: cfg.node_id().clone(),
        epoch: 1,
        host: u.host.clone(),
        port: u.port,
        tls,
        sync: hedge_uplink::Config::default(),
        keepalive: Duration::from_secs(2),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (to_node_tx, mut to_node) = mpsc::unbounded_channel();
        let (to_link, from_node) = mpsc::unbounded_channel();
        let task = tokio::spawn(mqtt::run(settings, to_node_tx, from_node));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut asked = false;
        let frame = loop {
            let msg = tokio::time::timeout_at(deadline, to_node.recv())
                .await
                .expect("the master's answer on the carry topic")
                .expect("the driver runs");
            match msg {
                // An empty outbox.
                ToNode::Load { from, .. } => to_link
                    .send(ToLink::Loaded {
                        from,
                        records: Vec::new(),
                        end: true,
                    })
                    .unwrap(),
                ToNode::Link(true) if !asked => {
                    asked = true;
                    to_link
                        .send(ToLink::Fetch(vec![Name::new("far").unwrap()]))
                        .unwrap();
                }
                ToNode::Carried(frame) => break frame,
                _ => {}
            }
        };
        // The master's own signed state of `far`, as it stores it: the relay passes it on
        // unverified, the far node checks it.
        let Message::Desired(d) =
            hedge_wire::decode(&frame, hedge_wire::DEFAULT_MAX_FRAME).unwrap()
        else {
            panic!("not a desired state");
        };
        assert!(d.instances.iter().any(|i| i.name.as_str() == "job"));
        hedge_runtime::desired::check(&d, &Name::new("far").unwrap(), 0, Some(&master_key))
            .unwrap();
        task.abort();
    });
}
