//! Daemon-level tests of imported connection parameters: a consumer renders a value
//! another node published from the signed state's imports, is restarted only when an
//! import it uses changes, and renders the same values after a reboot with no master.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use ed25519_dalek::Signer;
use hedge_wire::codec::encode;
use hedge_wire::{ConfigFile, DesiredState, Import, InstanceStatus, Message, Name, RequestedState};

use super::{kill_all, pump_until, sleep_request};
use crate::daemon::desired::tests::{config, master};
use crate::daemon::{now_ms, Daemon};

/// A signed state for `n1` running `app` (which renders `{{db.port}}` into a file) and
/// importing `imports` (instance, port).
fn frame(generation: u64, imports: &[(&str, &str)]) -> Vec<u8> {
    let mut app = sleep_request("app", RequestedState::Started, Default::default());
    app.config_files.push(ConfigFile {
        path: "etc/app.conf".into(),
        template: "db={{db.port}}\n".into(),
    });
    let mut d = DesiredState {
        node: Name::new("n1").unwrap(),
        generation,
        instances: vec![app],
        signature: heapless::Vec::new(),
        expires_ms: now_ms() + 24 * 3600 * 1000,
        terms: Vec::new(),
        imports: imports
            .iter()
            .map(|(i, port)| Import {
                instance: Name::new(i).unwrap(),
                parameters: BTreeMap::from([("port".to_owned(), (*port).to_owned())]),
            })
            .collect(),
        backups: Vec::new(),
        restores: Vec::new(),
    };
    d.signature = heapless::Vec::from_slice(&master().sign(&d.signed_bytes()).to_bytes()).unwrap();
    encode(&Message::Desired(d), hedge_wire::DEFAULT_MAX_FRAME).unwrap()
}

fn app_pid(d: &Daemon) -> Option<u32> {
    d.instances.slots[&Name::new("app").unwrap()]
        .lifecycle
        .pid()
}

fn status(d: &Daemon) -> InstanceStatus {
    d.instances.slots[&Name::new("app").unwrap()]
        .lifecycle
        .status()
}

#[tokio::test]
async fn a_consumer_renders_imports_restarts_on_their_change_and_keeps_them_after_a_reboot() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let conf = cfg.state_dir().join("partitions/app/etc/app.conf");
    let read = || std::fs::read_to_string(&conf).unwrap();
    {
        let mut d = Daemon::boot(cfg.clone()).unwrap();
        // Nothing imported yet: the consumer waits.
        d.on_desired_frame(&frame(1, &[])).unwrap();
        assert_eq!(status(&d), InstanceStatus::Waiting);
        assert_eq!(app_pid(&d), None);

        d.on_desired_frame(&frame(2, &[("db", "5432")])).unwrap();
        d.flush_observed(); // as the loop does after a link message: execs confirmed
        let pid = app_pid(&d).expect("started once the import arrived");
        assert_eq!(read(), "db=5432\n");

        // An import it does not use changes: not restarted.
        d.on_desired_frame(&frame(3, &[("db", "5432"), ("cache", "1")]))
            .unwrap();
        d.flush_observed();
        assert_eq!(app_pid(&d), Some(pid));

        // The value it uses changes: re-rendered and restarted.
        d.on_desired_frame(&frame(4, &[("db", "6000"), ("cache", "1")]))
            .unwrap();
        pump_until(&mut d, "app restarted", |d| {
            app_pid(d).is_some_and(|p| p != pid)
        })
        .await;
        assert_eq!(read(), "db=6000\n");
        kill_all(&mut d);
    }
    // A reboot with no master: the stored signed state's imports render it again.
    std::fs::remove_file(&conf).unwrap();
    let mut d = Daemon::boot(cfg).unwrap();
    d.reconcile();
    d.flush_observed(); // as the loop does after reconciling at boot
    assert!(app_pid(&d).is_some(), "started from the stored imports");
    assert_eq!(read(), "db=6000\n");
    kill_all(&mut d);
}
