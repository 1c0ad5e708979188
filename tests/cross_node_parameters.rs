//! Connection parameters across nodes (#15): an app on node `a` renders its database's
//! host and port from the instance `db` on node `b`, through the master (which carries
//! them in `a`'s signed desired state); `b`'s value changes and `a`'s app is re-rendered
//! and restarted; `a` reboots with the broker unreachable and renders the same values.
//! Real master, broker and node processes.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::{Duration, Instant};

use common::broker::free_port;
use common::fleet::Fleet;
use common::params::{app_request, db_request};
use common::{wait_for, Node};
use hedge_wire::InstanceStatus;

fn conf_is(a: &Node, want: &str) -> Option<()> {
    let got = std::fs::read_to_string(a.partition("app").join("etc/app.conf")).ok()?;
    (got == want).then_some(())
}

#[test]
#[allow(clippy::disallowed_methods)] // an end-to-end test: reports how long the propagation took
fn an_app_renders_its_database_from_another_node_and_keeps_it_offline() {
    let mut fleet = Fleet::new();
    fleet.start_master();
    let mut a = fleet.started_node("a");
    let b = fleet.started_node("b");
    let dir = fleet.dir.path().to_path_buf();

    // The consumer first: it waits, on a, for a value published on b.
    fleet.master_ok(&[
        "request",
        "--file",
        &app_request(&dir, "db={{db.host}}:{{ db.port }}\\n"),
        "--node",
        "a",
    ]);
    wait_for("app waiting on a", Duration::from_secs(30), || {
        (a.instance("app")?.state == InstanceStatus::Waiting).then_some(())
    });
    let started = Instant::now();
    fleet.master_ok(&[
        "request",
        "--file",
        &db_request(&dir, "5432"),
        "--node",
        "b",
    ]);
    b.running_pid("db", None);
    let pid1 = wait_for("app running on a", Duration::from_secs(30), || {
        let i = a.instance("app")?;
        (i.state == InstanceStatus::Running).then_some(i.pid?)
    });
    wait_for("a's config rendered", Duration::from_secs(5), || {
        conf_is(&a, "db=127.0.0.1:5432\n")
    });
    eprintln!(
        "db published on b → app running on a: {:?}",
        started.elapsed()
    );

    // b's database changes its port: a's app is re-rendered and restarted.
    let changed = Instant::now();
    fleet.master_ok(&[
        "request",
        "--file",
        &db_request(&dir, "6000"),
        "--node",
        "b",
    ]);
    let pid2 = wait_for("app restarted on a", Duration::from_secs(30), || {
        let i = a.instance("app")?;
        (i.state == InstanceStatus::Running && i.pid? != pid1 && common::alive(i.pid?))
            .then_some(i.pid?)
    });
    wait_for("a's config re-rendered", Duration::from_secs(5), || {
        conf_is(&a, "db=127.0.0.1:6000\n")
    });
    assert!(!common::alive(pid1), "the old app still runs");
    eprintln!(
        "db's port changed on b → app restarted on a: {:?}",
        changed.elapsed()
    );

    // Offline reboot: a's daemon stops, its uplink now points at a closed port (the
    // broker is unreachable), and the rendered file is gone: rendering must come from
    // the imports kept in a's stored, signed state.
    a.terminate();
    assert!(!common::alive(pid2));
    std::fs::remove_file(a.partition("app").join("etc/app.conf")).unwrap();
    let dead = free_port();
    let port = fleet.node_port;
    a.edit_config(|c| c.replace(&format!("port = {port}"), &format!("port = {dead}")));
    a.start();
    let pid3 = a.running_pid("app", Some(pid2));
    conf_is(&a, "db=127.0.0.1:6000\n").expect("rendered from the kept imports");
    assert!(
        !a.status().uplink.connected,
        "a reached a broker: the reboot was not offline"
    );
    assert_eq!(a.running_pid("app", None), pid3);
}
