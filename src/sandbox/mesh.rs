//! `hedge sandbox --mesh chain|star`: the sandbox's swarm, without root.
//!
//! Contract: only `node-1` has an uplink; every other node starts with its uplink cut
//! (its own relay to the broker refuses, as after `hedge sandbox link node-K down`)
//! and reaches the master through its peers. Each node's mesh listens on a loopback
//! port of its own; a peer link is a TCP relay of the sandbox (the same relay as the
//! uplinks', [`super::relay`]) that the dialling node's `[mesh] peers` names, so
//! `hedge sandbox link A B down|up` cuts and restores it with a flag file
//! (`DIR/links/A~B.down`, names sorted), no nftables, no namespaces. Beacons are off:
//! on one loopback every node would hear every other, and the layout is the point.
//! - `chain`: node-K dials node-(K-1): node-N's records cross N-1 hops.
//! - `star`: every node dials node-1.
//!
//! Pure helpers only (layout, config text, argument parsing); the sandbox's driver
//! (`super::run`) starts the relays and processes.

use std::path::{Path, PathBuf};

use anyhow::anyhow;

/// The swarm's layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// node-K dials node-(K-1); only node-1 has an uplink.
    Chain,
    /// Every node dials node-1, the only one with an uplink.
    Star,
}

/// The peer links of `nodes` nodes (1-based): `(a, b)`, `a` dials `b`.
pub fn edges(shape: Shape, nodes: usize) -> Vec<(usize, usize)> {
    match shape {
        Shape::Chain => (2..=nodes).map(|k| (k, k - 1)).collect(),
        Shape::Star => (2..=nodes).map(|k| (k, 1)).collect(),
    }
}

/// The layout in one line, for the sandbox's banner.
pub fn describe(shape: Shape, nodes: usize) -> String {
    match shape {
        Shape::Chain => {
            let mut names: Vec<String> = (1..=nodes).rev().map(|k| format!("node-{k}")).collect();
            names.push("master".into());
            format!("chain: {}", names.join(" → "))
        }
        Shape::Star => {
            let leaves: Vec<String> = (2..=nodes).map(|k| format!("node-{k}")).collect();
            format!("star: {{{}}} → node-1 → master", leaves.join(", "))
        }
    }
}

/// The `[mesh]` section of a sandbox node: listening on `127.0.0.1:listen`, dialling
/// each of `peers` (loopback ports of the peer links' relays), redialling a restored
/// link within 2 s (the default backoff grows to 30 s).
pub fn section(listen: u16, peers: &[u16]) -> String {
    let peers: Vec<String> = peers.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    format!(
        "[mesh]\nenabled = true\nlisten = \"127.0.0.1:{listen}\"\npeers = [{}]\nbeacon_interfaces = []\n\
         max_backoff_ms = 2000\n",
        peers.join(", ")
    )
}

/// `node.toml` with its `[mesh]` section (if any) replaced by `section`.
pub fn with_section(text: &str, section: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with('[') {
            skipping = t.starts_with("[mesh]");
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push('\n');
    out.push_str(section);
    out
}

/// The flag file whose presence cuts the peer link between `a` and `b`.
pub fn link_flag(dir: &Path, a: &str, b: &str) -> PathBuf {
    let (x, y) = if a <= b { (a, b) } else { (b, a) };
    dir.join("links").join(format!("{x}~{y}.down"))
}

/// What `hedge sandbox link` was asked.
#[derive(Debug, PartialEq, Eq)]
pub enum LinkTarget {
    /// One node's uplink.
    Uplink(String),
    /// The peer link between two nodes.
    Peer(String, String),
}

/// Parses `NODE down|up` or `NODE PEER down|up`; `Ok((target, down))`.
pub fn parse_link(args: &[String]) -> anyhow::Result<(LinkTarget, bool)> {
    let (state, nodes) = args
        .split_last()
        .ok_or_else(|| anyhow!("expected NODE [PEER] down|up"))?;
    let down = match state.as_str() {
        "down" => true,
        "up" => false,
        other => return Err(anyhow!("expected down or up, not {other:?}")),
    };
    match nodes {
        [n] => Ok((LinkTarget::Uplink(n.clone()), down)),
        [a, b] if a != b => Ok((LinkTarget::Peer(a.clone(), b.clone()), down)),
        [a, _] => Err(anyhow!("a peer link joins two nodes, not {a:?} to itself")),
        _ => Err(anyhow!("expected NODE [PEER] down|up")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_string()).collect()
    }

    #[test]
    fn a_chain_and_a_star_reach_node_1() {
        assert_eq!(edges(Shape::Chain, 4), vec![(2, 1), (3, 2), (4, 3)]);
        assert_eq!(edges(Shape::Star, 4), vec![(2, 1), (3, 1), (4, 1)]);
        assert!(edges(Shape::Chain, 1).is_empty());
        assert_eq!(
            describe(Shape::Chain, 3),
            "chain: node-3 → node-2 → node-1 → master"
        );
        assert_eq!(
            describe(Shape::Star, 3),
            "star: {node-2, node-3} → node-1 → master"
        );
    }

    #[test]
    fn the_mesh_section_replaces_any_other() {
        let text = "[node]\nid = \"a\"\n[mesh]\nenabled = false\n# x\n[uplink]\nport = 1\n";
        let out = with_section(text, &section(7000, &[7001, 7002]));
        assert_eq!(out.matches("[mesh]").count(), 1, "{out}");
        assert!(!out.contains("enabled = false"), "{out}");
        assert!(out.contains("[uplink]\nport = 1\n"), "{out}");
        assert!(out.ends_with(
            "[mesh]\nenabled = true\nlisten = \"127.0.0.1:7000\"\npeers = [\"127.0.0.1:7001\", \"127.0.0.1:7002\"]\nbeacon_interfaces = []\nmax_backoff_ms = 2000\n"
        ));
    }

    #[test]
    fn link_arguments_name_an_uplink_or_a_peer_link() {
        assert_eq!(
            parse_link(&args(&["node-1", "down"])).unwrap(),
            (LinkTarget::Uplink("node-1".into()), true)
        );
        assert_eq!(
            parse_link(&args(&["node-2", "node-1", "up"])).unwrap(),
            (LinkTarget::Peer("node-2".into(), "node-1".into()), false)
        );
        for bad in [
            &["node-1"][..],
            &["node-1", "sideways"],
            &["node-1", "node-1", "down"],
            &["a", "b", "c", "down"],
        ] {
            assert!(parse_link(&args(bad)).is_err(), "{bad:?}");
        }
        let d = Path::new("/s");
        assert_eq!(
            link_flag(d, "node-2", "node-1"),
            link_flag(d, "node-1", "node-2")
        );
        assert_eq!(
            link_flag(d, "node-2", "node-1"),
            Path::new("/s/links/node-1~node-2.down")
        );
    }
}
