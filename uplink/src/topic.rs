//! The MQTT topic names of the node <-> master protocol: the one place both ends build
//! and parse them.
//!
//! Contract: every topic names one node under `hedge/v1/`:
//! - [`up_topic`] `hedge/v1/<node>/up`: node → master record batches (QoS 1);
//! - [`ack_topic`] `hedge/v1/<node>/ack`: master → node acknowledgements (QoS 1);
//! - [`desired_topic`] `hedge/v1/<node>/desired`: master → node desired state (QoS 1,
//!   retained);
//! - [`carry_topic`] `hedge/v1/<node>/carry`: master → a relay: what it carries for
//!   other nodes of its swarm (QoS 1).
//!
//! Masters receive every node's `up` topic through the shared subscription
//! [`MASTER_UP_FILTER`] (group [`SHARE_GROUP`]), so each batch reaches one master;
//! [`node_of_up_topic`] reads the node back from the topic a batch arrived on. Pure string
//! functions; a node id is a [`Name`], so it never holds a wildcard or a `/`.

use hedge_wire::Name;

/// The shared-subscription group every master joins.
pub const SHARE_GROUP: &str = "hedge";

/// The filter masters subscribe to: `$share/<SHARE_GROUP>/` + [`up_topic`] of every node.
pub const MASTER_UP_FILTER: &str = "$share/hedge/hedge/v1/+/up";

/// Every topic of the protocol (what the broker lets masters read and write).
pub const ALL_TOPICS: &str = "hedge/v1/#";

/// `hedge/v1/<node>/carry`: master → a relay: signed acks and desired states of the nodes
/// it carries (QoS 1).
pub fn carry_topic(node: &str) -> String {
    format!("hedge/v1/{node}/carry")
}

/// `hedge/v1/<node>/up`: node → master records (QoS 1).
pub fn up_topic(node: &str) -> String {
    format!("hedge/v1/{node}/up")
}

/// `hedge/v1/<node>/ack`: master → node acknowledgements.
pub fn ack_topic(node: &str) -> String {
    format!("hedge/v1/{node}/ack")
}

/// `hedge/v1/<node>/desired`: master → node desired state (retained).
pub fn desired_topic(node: &str) -> String {
    format!("hedge/v1/{node}/desired")
}

/// The node a `hedge/v1/<node>/up` topic names; `None` for any other topic or an invalid
/// node name.
pub fn node_of_up_topic(topic: &str) -> Option<Name> {
    let rest = topic.strip_prefix("hedge/v1/")?.strip_suffix("/up")?;
    Name::new(rest).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn up_topics_name_their_node() {
        assert_eq!(
            node_of_up_topic("hedge/v1/n-1/up").map(|n| n.to_string()),
            Some("n-1".into())
        );
        assert_eq!(node_of_up_topic("hedge/v1/../up"), None);
        assert_eq!(node_of_up_topic("hedge/v1/a/b/up"), None);
        assert_eq!(node_of_up_topic("hedge/v1/a/ack"), None);
    }

    #[test]
    fn topics_of_a_node() {
        assert_eq!(up_topic("a"), "hedge/v1/a/up");
        assert_eq!(ack_topic("a"), "hedge/v1/a/ack");
        assert_eq!(desired_topic("a"), "hedge/v1/a/desired");
    }

    #[test]
    fn up_topic_and_node_of_up_topic_are_inverse() {
        for id in ["n-1", "edge.box_7", "x"] {
            let name = Name::new(id).unwrap();
            assert_eq!(node_of_up_topic(&up_topic(name.as_str())), Some(name));
        }
        assert_eq!(node_of_up_topic(&ack_topic("a")), None);
        assert_eq!(node_of_up_topic(&desired_topic("a")), None);
    }

    #[test]
    fn filters_match_the_topic_builders() {
        assert_eq!(
            MASTER_UP_FILTER,
            format!("$share/{SHARE_GROUP}/{}", up_topic("+"))
        );
        for t in [
            up_topic("a"),
            ack_topic("a"),
            desired_topic("a"),
            carry_topic("a"),
        ] {
            assert!(t.starts_with(ALL_TOPICS.trim_end_matches('#')), "{t}");
        }
    }
}
