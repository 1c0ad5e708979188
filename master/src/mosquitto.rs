//! The mosquitto 2.0 configuration and ACL that `hedge master init` writes.
//!
//! Contract: [`config`] and [`acl`] are pure text generators; [`crate::pki::init`] writes
//! their output to `DIR/mosquitto.conf` and `DIR/acl`, and an operator (or a test helper)
//! runs `mosquitto -c DIR/mosquitto.conf`. Two TLS listeners with the same certificates,
//! ACL and CRL, nothing else bound:
//!
//! - the nodes' listener (`hedge master init --host H --port P`, what enrollment bundles
//!   give nodes) has `use_username_as_clientid true`: mosquitto replaces the client id a
//!   node sends by its username (its certificate CN), so node B cannot connect with node
//!   A's client id and kick A's session (`broker_tls.rs`
//!   `a_node_cannot_take_over_another_nodes_client_id`). A node's session is therefore
//!   keyed by its certificate CN whatever client id it sends.
//! - the masters' listener (`--master-host`, default `127.0.0.1`; `--master-port`,
//!   default P + 1; `[broker]` of `master.toml`) has no such option: every master shares
//!   one certificate (CN [`MASTER_USER`]) and picks a random client id per process, so with
//!   the option masters would kick each other off. It is bound to loopback by default
//!   because masters run beside the broker: a node certificate is a valid client there
//!   too (one ACL, `per_listener_settings false`), and from that listener a node could
//!   choose any client id. Only bind it to a non-loopback address on a network nodes
//!   cannot reach.
//!
//! - mutual TLS: clients must present a certificate signed by the fleet CA
//!   (`require_certificate true`), and its CN becomes the MQTT username
//!   (`use_identity_as_username true`): the node id for nodes, [`MASTER_USER`] for masters.
//!   No anonymous access, no passwords.
//! - [`acl`]: masters read/write `hedge/v1/#` (and so receive through the shared
//!   subscription `$share/hedge/hedge/v1/+/up`); a node may only publish to
//!   `hedge/v1/<its id>/up` and only read `hedge/v1/<its id>/{desired,ack,carry}`
//!   (`carry`: what the master sends a relay for the nodes it carries, the mesh).
//!
//! Behaviour of mosquitto 2.0.11 under this ACL (checked with the real broker by
//! `master/tests/broker_tls.rs` and by hand with `mosquitto_pub`/`mosquitto_sub -d`):
//!
//! - The ACL file does not check SUBSCRIBE at all in 2.0.11: every subscription is
//!   granted (SUBACK carries the requested QoS, never 0x80), `$share/...` ones included,
//!   whatever the user. Access is enforced per message at delivery, against the message's
//!   real topic (`hedge/v1/a/up`, never the `$share/hedge/` filter), retained messages
//!   included. So the masters' shared subscription works because `topic readwrite
//!   hedge/v1/#` grants read on every `hedge/v1/<node>/up`; and node A subscribing to
//!   `hedge/v1/b/desired` or `hedge/v1/#` gets a successful SUBACK and then only its own
//!   `desired`/`ack` messages. A test can only observe the absence of deliveries.
//! - A forbidden publish is dropped silently and the client stays connected. QoS 1 still
//!   gets a PUBACK: reason 0 (success) with MQTT 3.1.1, which has no refusal code; reason
//!   0x87 "not authorized" with MQTT 5. No subscriber (the master) ever receives it.
//! - `crlfile DIR/crl.pem` ([`crate::revocation`]): a certificate it lists fails the TLS
//!   handshake (alert "certificate revoked"). mosquitto re-reads it on SIGHUP, whose pid
//!   is in `DIR/mosquitto.pid` (`pid_file`).
//! - A client without a certificate fails the TLS handshake (`peer did not return a
//!   certificate`); it never reaches MQTT.
//!
//! - `message_size_limit` ([`MESSAGE_SIZE_LIMIT`]): a larger PUBLISH is dropped (its QoS
//!   flow completes, per mosquitto.conf(5)); no subscriber gets it, so the masters stay
//!   connected while a node floods 300 KiB frames (`broker_tls.rs`).
//!
//! Privileges: mosquitto started as root drops to user `mosquitto` unless the config says
//! `user root` (2.0 ignores `user` when not started as root). The keys in DIR are 0600 and
//! owned by whoever ran `hedge master init`, and `mosquitto-data/` must be writable, so
//! the generated file is meant to be run **by the owner of DIR** (e.g. a systemd unit with
//! `User=` that owner). When DIR is owned by root, [`crate::pki::init`] appends
//! [`user_line`]`(0)` = `user root` so a root-started broker can read its key and write its
//! persistence; the test helpers do the same when they run as root.
//!
//! Persistence is a snapshot (`autosave_interval`): after a `kill -9` mosquitto loses what
//! changed since the last save (queued QoS 1 messages, retained messages). hedge does not
//! rely on it for correctness: the node keeps its outbox until acknowledged and resends,
//! and the master republishes desired state.

use std::path::Path;

use hedge_uplink::topic::{
    ack_topic, carry_topic, desired_topic, up_topic, ALL_TOPICS, MASTER_UP_FILTER,
};

/// The MQTT username (certificate CN) of every master.
pub const MASTER_USER: &str = "hedge-master";

/// Largest message payload the broker accepts (`message_size_limit`); larger ones are
/// dropped by the broker (QoS 1 still completes) and never reach a master. Above a node's
/// largest frame ([`hedge_wire::limits::DEFAULT_MAX_FRAME`]) and below what the masters'
/// MQTT client accepts ([`crate::run::MAX_PACKET`]), which would otherwise drop its whole
/// connection on one oversized packet from one node.
pub const MESSAGE_SIZE_LIMIT: usize = 128 * 1024;

// Room for the fixed header, topic and packet id of a PUBLISH.
const _: () = assert!(MESSAGE_SIZE_LIMIT + 1024 <= crate::run::MAX_PACKET);
const _: () = assert!(MESSAGE_SIZE_LIMIT >= hedge_wire::limits::DEFAULT_MAX_FRAME);

/// Directory (inside DIR) of mosquitto's persistence file.
pub const DATA_DIR: &str = "mosquitto-data";

/// Where the two listeners of [`config`] bind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listeners<'a> {
    /// The nodes' listener (`use_username_as_clientid true`): host.
    pub node_host: &'a str,
    /// The nodes' listener: port.
    pub node_port: u16,
    /// The masters' listener (client ids kept): host, loopback by default.
    pub master_host: &'a str,
    /// The masters' listener: port.
    pub master_port: u16,
}

/// A mosquitto 2.0 config for two mutual-TLS listeners ([`Listeners`]: the nodes' one
/// first, then the masters' one), with absolute paths into `dir` (`ca.crt`, `broker.crt`,
/// `broker.key`, `acl`, `mosquitto-data/`).
///
/// `dir` should be absolute (a relative one is made absolute against the current
/// directory). Hosts must be plain addresses or names (no spaces) and the ports distinct;
/// [`crate::pki::init`] checks them.
pub fn config(dir: &Path, l: Listeners<'_>) -> String {
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let p = |name: &str| dir.join(name).display().to_string();
    let data = format!("{}/", dir.join(DATA_DIR).display());
    // Certificate checks, identical on both listeners (TLS settings are per listener).
    let tls = format!(
        "\
protocol mqtt
cafile {ca}
certfile {cert}
keyfile {key}
require_certificate true
use_identity_as_username true
# Certificates of revoked nodes (`hedge master revoke`); re-read on SIGHUP.
crlfile {crl}
",
        ca = p("ca.crt"),
        cert = p("broker.crt"),
        key = p("broker.key"),
        crl = p(crate::revocation::CRL),
    );
    format!(
        "\
# mosquitto 2.0 configuration written by `hedge master init`.
# Run it as the owner of this directory: mosquitto -c {conf}
# (started as root, mosquitto drops to user `mosquitto`, which cannot read the 0600 keys,
# unless a `user` line below says otherwise).

# Settings below apply to both listeners (one ACL for nodes and masters).
per_listener_settings false
# Nagle's algorithm off on client sockets: a small packet (an ack, a PUBACK) must not
# wait up to 40 ms for the peer's delayed acknowledgement of the previous one.
set_tcp_nodelay true
# Only clients with a certificate from the fleet CA; the CN is the username.
allow_anonymous false
acl_file {acl}

# Queued QoS 1 messages for offline persistent sessions survive a clean restart.
# A snapshot: a crash loses what changed since the last save (hedge resends).
persistence true
persistence_location {data}
autosave_interval 60
# Nodes may stay offline for long; keep their queues (0 bytes = no byte limit).
max_queued_messages 100000
max_queued_bytes 0
# Larger messages are dropped by the broker: one node must not knock the masters (whose
# client drops its connection on an oversized packet) off the broker.
message_size_limit {limit}

# `hedge master revoke` sends SIGHUP to this pid to make mosquitto re-read crlfile.
pid_file {pid}

log_dest stderr
log_type error
log_type warning
log_type notice
log_type information
connection_messages true

# The nodes' listener (what enrollment bundles give nodes): MQTT over mutual TLS. The
# client id a node sends is replaced by its username (certificate CN), so no node can
# take over another's client id and kick it off.
listener {node_port} {node_host}
{tls}use_username_as_clientid true

# The masters' listener: masters share one certificate (CN {master}) and each picks a
# random client id, so client ids are kept here. Masters run beside the broker: keep it
# on loopback (a node certificate is accepted here too, with any client id).
listener {master_port} {master_host}
{tls}",
        conf = p("mosquitto.conf"),
        limit = MESSAGE_SIZE_LIMIT,
        acl = p("acl"),
        data = data,
        node_port = l.node_port,
        node_host = l.node_host,
        master_port = l.master_port,
        master_host = l.master_host,
        master = MASTER_USER,
        tls = tls,
        pid = p(crate::revocation::BROKER_PID),
    )
}

/// The `user` line to append for a broker started by the user with this uid: `user root`
/// for root (so it keeps the privileges needed to read root-owned 0600 keys), else `None`
/// (mosquitto ignores `user` when not started as root).
pub fn user_line(uid: u32) -> Option<&'static str> {
    (uid == 0)
        .then_some("# DIR is root's: keep root, or the key files are unreadable.\nuser root\n")
}

/// The ACL file: masters read/write `hedge/v1/#`; each node (`%u` = its certificate CN)
/// writes only its `up` topic and reads only its `desired`, `ack` and `carry` topics.
pub fn acl() -> String {
    format!(
        "\
# mosquitto ACL written by `hedge master init`. Usernames are certificate CNs.
# Anything not granted here is denied.

# Masters: everything under hedge/v1/. mosquitto 2.0 grants every SUBSCRIBE (the shared
# {share} too) and checks `read` per delivered message, on its real topic.
user {master}
topic readwrite {all}

# Every client, by its own CN (%u): publish its records, read its desired state and acks,
# and (a relay of the mesh) the signed acks and states of the nodes it carries.
# A node id is a hedge Name ([a-z0-9._-]), so %u never holds a wildcard or a '/'.
pattern write {up}
pattern read {desired}
pattern read {ack}
pattern read {carry}
",
        share = MASTER_UP_FILTER,
        master = MASTER_USER,
        all = ALL_TOPICS,
        up = up_topic("%u"),
        desired = desired_topic("%u"),
        ack = ack_topic("%u"),
        carry = carry_topic("%u"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_has_a_nodes_and_a_masters_tls_listener_with_absolute_paths() {
        let c = config(
            Path::new("/srv/hedge"),
            Listeners {
                node_host: "10.0.0.5",
                node_port: 18883,
                master_host: "127.0.0.1",
                master_port: 18884,
            },
        );
        // Each listener's block: its line up to the next listener line.
        let mut blocks: Vec<Vec<&str>> = Vec::new();
        for line in c.lines() {
            if line.starts_with("listener") {
                blocks.push(vec![line]);
            } else if let Some(b) = blocks.last_mut() {
                b.push(line);
            }
        }
        let heads: Vec<&str> = blocks.iter().map(|b| b[0]).collect();
        assert_eq!(
            heads,
            ["listener 18883 10.0.0.5", "listener 18884 127.0.0.1"]
        );
        for b in &blocks {
            for line in [
                "protocol mqtt",
                "cafile /srv/hedge/ca.crt",
                "certfile /srv/hedge/broker.crt",
                "keyfile /srv/hedge/broker.key",
                "require_certificate true",
                "use_identity_as_username true",
                "crlfile /srv/hedge/crl.pem",
            ] {
                assert!(b.contains(&line), "missing {line:?} in {b:?}");
            }
        }
        // Client ids are the CN on the nodes' listener only (masters share one CN).
        assert!(blocks[0].contains(&"use_username_as_clientid true"));
        assert!(!blocks[1]
            .iter()
            .any(|l| l.contains("use_username_as_clientid")));
        for line in [
            "acl_file /srv/hedge/acl",
            "persistence_location /srv/hedge/mosquitto-data/",
            "allow_anonymous false",
            "per_listener_settings false",
            "message_size_limit 131072",
            "pid_file /srv/hedge/mosquitto.pid",
        ] {
            assert!(c.lines().any(|l| l == line), "missing {line:?} in\n{c}");
        }
        assert!(!c.contains("\nuser "));
    }

    #[test]
    fn acl_scopes_nodes_to_their_own_topics() {
        let a = acl();
        assert!(a.contains("user hedge-master\ntopic readwrite hedge/v1/#\n"));
        assert!(a.contains("pattern write hedge/v1/%u/up\n"));
        assert!(a.contains("pattern read hedge/v1/%u/desired\n"));
        assert!(a.contains("pattern read hedge/v1/%u/ack\n"));
        assert!(a.contains("pattern read hedge/v1/%u/carry\n"));
        assert!(!a.contains("pattern readwrite"));
        assert_eq!(up_topic("a"), "hedge/v1/a/up");
        assert_eq!(user_line(1000), None);
        assert!(user_line(0).is_some_and(|l| l.ends_with("user root\n")));
    }
}
