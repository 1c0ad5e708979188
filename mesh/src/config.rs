//! The `[mesh]` section of node.toml.
//!
//! Contract: [`MeshConfig`] deserialises with every field defaulted (an absent section is
//! a disabled mesh) and unknown fields refused; [`MeshConfig::validate`] refuses values the
//! transport cannot run with (a zero interval, a peer without a port, a timeout shorter
//! than two keepalives, ...) with a [`ConfigError`] naming the field. Nothing here does I/O.

use std::net::{Ipv4Addr, SocketAddr};

use serde::Deserialize;

/// Default TCP address peer sessions are accepted on.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:7441";
/// Default UDP port of beacons.
pub const DEFAULT_BEACON_PORT: u16 = 7442;
/// Default multicast group of beacons (administratively scoped, RFC 2365).
pub const DEFAULT_BEACON_GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 74, 41);

/// The mesh: peer sessions over TCP + mutual TLS under the fleet CA, and beacons.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeshConfig {
    /// Whether the node takes part in a mesh at all (default false).
    pub enabled: bool,
    /// Where peer sessions are accepted (default `0.0.0.0:7441`).
    pub listen: SocketAddr,
    /// Static peers, `host:port`, dialled and redialled with backoff.
    pub peers: Vec<String>,
    /// Interfaces beacons are sent and heard on (names such as `eth0`); none = no beacons.
    pub beacon_interfaces: Vec<String>,
    /// UDP port of beacons (default 7442).
    pub beacon_port: u16,
    /// Multicast group of beacons (default 239.255.74.41).
    pub beacon_group: Ipv4Addr,
    /// Interval between two beacons, milliseconds (default 2000).
    pub beacon_every_ms: u64,
    /// Most peer sessions at once, both directions (default 16); more are refused.
    pub max_peers: usize,
    /// Interval of keepalive frames on an idle session, milliseconds (default 1000).
    pub keepalive_ms: u64,
    /// A session that received nothing for this long is closed, milliseconds (default 5000).
    pub dead_after_ms: u64,
    /// Longest backoff between two dials of one peer, milliseconds (default 10000: a
    /// restored link is found again within seconds; a dial of a dead LAN address is cheap).
    pub max_backoff_ms: u64,
    /// Most bytes of another node's records this node holds in custody (default 4 MiB).
    pub custody_bytes_per_origin: u64,
    /// A data mule (a drone or vehicle that moves between sites; default false): with no
    /// path of its own it still takes custody from peers that have none, and carries
    /// their records until it finds a path (`hedge_wire::mesh::FERRY`).
    pub ferry: bool,
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            enabled: false,
            listen: SocketAddr::from(([0, 0, 0, 0], 7441)),
            peers: Vec::new(),
            beacon_interfaces: Vec::new(),
            beacon_port: DEFAULT_BEACON_PORT,
            beacon_group: DEFAULT_BEACON_GROUP,
            beacon_every_ms: 2000,
            max_peers: 16,
            keepalive_ms: 1000,
            dead_after_ms: 5000,
            max_backoff_ms: 10_000,
            custody_bytes_per_origin: 4 * 1024 * 1024,
            ferry: false,
        }
    }
}

impl MeshConfig {
    /// Refuses values the transport cannot run with.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for p in &self.peers {
            peer_port(p).ok_or_else(|| ConfigError::Peer(p.clone()))?;
        }
        for i in &self.beacon_interfaces {
            if i.is_empty() || i.len() > 15 {
                return Err(ConfigError::Interface(i.clone()));
            }
        }
        if self.beacon_every_ms == 0 {
            return Err(ConfigError::Zero("beacon_every_ms"));
        }
        if self.keepalive_ms == 0 {
            return Err(ConfigError::Zero("keepalive_ms"));
        }
        if self.max_peers == 0 {
            return Err(ConfigError::Zero("max_peers"));
        }
        if self.max_backoff_ms == 0 {
            return Err(ConfigError::Zero("max_backoff_ms"));
        }
        if self.beacon_port == 0 && !self.beacon_interfaces.is_empty() {
            return Err(ConfigError::Zero("beacon_port"));
        }
        if self.dead_after_ms < self.keepalive_ms.saturating_mul(2) {
            return Err(ConfigError::DeadAfter);
        }
        if !self.beacon_group.is_multicast() {
            return Err(ConfigError::Group(self.beacon_group));
        }
        Ok(())
    }
}

/// The port of a `host:port` peer address, if it has one (`[v6]:port` included).
pub fn peer_port(peer: &str) -> Option<u16> {
    let (host, port) = peer.rsplit_once(':')?;
    if host.is_empty() {
        return None;
    }
    port.parse::<u16>().ok().filter(|p| *p != 0)
}

/// A `[mesh]` value the transport cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A static peer is not `host:port`.
    #[error("mesh.peers: {0:?} is not host:port")]
    Peer(String),
    /// An interface name is empty or longer than 15 bytes.
    #[error("mesh.beacon_interfaces: {0:?} is not an interface name")]
    Interface(String),
    /// A field that must be positive is zero.
    #[error("mesh.{0} must be positive")]
    Zero(&'static str),
    /// `dead_after_ms` is shorter than two keepalives.
    #[error("mesh.dead_after_ms must be at least twice mesh.keepalive_ms")]
    DeadAfter,
    /// The beacon group is not a multicast address.
    #[error("mesh.beacon_group: {0} is not a multicast address")]
    Group(Ipv4Addr),
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn defaults_are_a_disabled_valid_mesh() {
        let c = MeshConfig::default();
        assert!(!c.enabled);
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.beacon_port, 7442);
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn the_section_reads_as_node_toml_spells_it() {
        let c: MeshConfig = toml::from_str(
            r#"
            enabled = true
            listen = "0.0.0.0:7000"
            peers = ["10.0.0.2:7441", "gw.local:7441"]
            beacon_interfaces = ["wlan0"]
            beacon_every_ms = 500
            max_peers = 4
            "#,
        )
        .unwrap();
        assert!(c.enabled);
        assert_eq!(c.listen.port(), 7000);
        assert_eq!(c.peers.len(), 2);
        assert_eq!(
            c.beacon_port, DEFAULT_BEACON_PORT,
            "absent fields keep their default"
        );
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(
            toml::from_str::<MeshConfig>("").unwrap(),
            MeshConfig::default()
        );
        let typo = toml::from_str::<MeshConfig>("peer = []")
            .unwrap_err()
            .to_string();
        assert!(typo.contains("unknown field"), "{typo}");
    }

    #[test]
    fn bad_values_are_named() {
        let c = MeshConfig {
            peers: vec!["host-without-port".into()],
            ..MeshConfig::default()
        };
        assert_eq!(
            c.validate(),
            Err(ConfigError::Peer("host-without-port".into()))
        );
        let c = MeshConfig {
            peers: vec![":7441".into()],
            ..MeshConfig::default()
        };
        assert!(matches!(c.validate(), Err(ConfigError::Peer(_))));
        let c = MeshConfig {
            keepalive_ms: 0,
            ..MeshConfig::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::Zero("keepalive_ms")));
        let c = MeshConfig {
            dead_after_ms: 1500,
            ..MeshConfig::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::DeadAfter));
        let c = MeshConfig {
            beacon_group: Ipv4Addr::new(10, 0, 0, 1),
            ..MeshConfig::default()
        };
        assert!(matches!(c.validate(), Err(ConfigError::Group(_))));
        let ok = MeshConfig {
            peers: vec!["node-2.local:7441".into(), "[fe80::1]:7441".into()],
            ..MeshConfig::default()
        };
        assert_eq!(ok.validate(), Ok(()));
    }
}
