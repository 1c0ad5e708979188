//! Node credentials end to end, with a real mosquitto, master and node processes: a node
//! enrolls with its own key and a one-time token (the bundle holds no key, the token
//! works once), and renews its short-lived certificate over the master's HTTPS endpoint
//! without a gap in its records, reconnecting after its first certificate expired.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::fleet::Fleet;
use common::{wait_for, Node};

#[test]
fn a_node_enrolls_with_its_own_key_and_a_token_that_works_once() {
    let mut fleet = Fleet::new();
    fleet.start_master();
    let bundle = fleet.dir.path().join("e.bundle");
    fleet.master_ok(&["enroll", "enr-1", "--out", bundle.to_str().unwrap()]);
    let text = std::fs::read_to_string(&bundle).unwrap();
    assert!(
        !text.contains("PRIVATE KEY"),
        "the bundle holds a key:\n{text}"
    );
    assert!(text.contains("token = "), "{text}");

    let mut node = Node::init_enrolled(&bundle);
    let port = fleet.node_port;
    node.edit_config(move |c| c.replace("port = ", &format!("port = {port}\n# was: port = ")));
    let up = node.home().join("uplink");
    let key_mode = std::fs::metadata(up.join("node.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600, "the node made its own key");
    assert!(!up.join("node.crt").exists());
    assert!(up.join("enroll.token").exists());
    node.start();
    wait_for("enrolled and syncing", Duration::from_secs(30), || {
        (fleet.held("enr-1").1 > 0).then_some(())
    });
    assert!(up.join("node.crt").exists());
    assert!(
        !up.join("enroll.token").exists(),
        "the used token is deleted"
    );
    let key = std::fs::read_to_string(up.join("node.key")).unwrap();
    for f in std::fs::read_dir(fleet.master_dir()).unwrap() {
        let p = f.unwrap().path();
        if p.is_file() {
            let t = std::fs::read(&p).unwrap();
            assert!(
                !String::from_utf8_lossy(&t).contains(key.trim()),
                "the node's key is on the master: {}",
                p.display()
            );
        }
    }

    // The same bundle again, on another machine: the token is spent.
    let mut copy = Node::init_enrolled(&bundle);
    copy.edit_config(move |c| c.replace("port = ", &format!("port = {port}\n# was: port = ")));
    copy.start();
    wait_for("the second use refused", Duration::from_secs(30), || {
        fleet
            .master_log(0)
            .contains("unknown or already used enrollment token")
            .then_some(())
    });
    assert!(!copy.home().join("uplink/node.crt").exists());
    assert!(!copy.status().uplink.connected);
}

#[test]
fn a_node_renews_its_certificate_and_keeps_syncing_without_a_gap() {
    let mut fleet = Fleet::new();
    // Ten-second certificates, renewed at half their life, looked at every second.
    let toml = fleet.config();
    let text = std::fs::read_to_string(&toml).unwrap();
    assert!(text.contains("cert_lifetime_s = 2592000"));
    std::fs::write(
        &toml,
        text.replace("cert_lifetime_s = 2592000", "cert_lifetime_s = 10"),
    )
    .unwrap();
    fleet.start_master();
    let mut node = fleet.node("renew-1");
    node.edit_config(|c| {
        c.replace("renew_at_percent = 66", "renew_at_percent = 50")
            .replace("renew_check_s = 60", "renew_check_s = 1")
            .replace("sample_interval_ms = 10000", "sample_interval_ms = 100")
            .replace("usage_interval_ms = 60000", "usage_interval_ms = 100")
    });
    node.start();
    node.request_sleep("idle", "100000", &[]);
    let crt = node.home().join("uplink/node.crt");
    let first = wait_for("enrolled", Duration::from_secs(30), || {
        hedge_runtime::credentials::validity(&std::fs::read(&crt).ok()?).ok()
    });
    let issued = |fleet: &Fleet| {
        std::fs::read_to_string(fleet.master_dir().join("issued"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(" renew-1 "))
            .count()
    };
    // Past the first certificate's expiry, with renewals on the way.
    wait_for(
        "the first certificate expired",
        Duration::from_secs(40),
        || {
            let now = hedge_common::clock::now_s();
            (now > first.not_after + 1 && issued(&fleet) >= 3).then_some(())
        },
    );
    let current = hedge_runtime::credentials::validity(&std::fs::read(&crt).unwrap()).unwrap();
    assert!(
        current.not_after > first.not_after,
        "the node holds a newer certificate"
    );
    // A new connection (the broker restarts) needs a current certificate.
    fleet.broker.restart();
    let after = node.status().outbox.next_seq;
    let (records, last) = wait_for("syncing after the restart", Duration::from_secs(30), || {
        let (records, last) = fleet.held("renew-1");
        (last > after + 20).then_some((records, last))
    });
    assert_eq!(
        records, last,
        "every record from 1 to {last} is stored: no gap"
    );
    assert!(node.status().uplink.connected);
}
