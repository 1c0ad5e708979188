//! Cross-node connection parameters: the imports every state write fills, and
//! re-signing only the states whose imports changed.

use hedge_wire::{ConfigFile, DesiredState, Import};

use super::*;
use crate::sign::{sign, verify, MasterKey};

fn params_rec(seq: u64, instance: &str, port: &str) -> Record {
    Record {
        seq,
        time_ms: 5000 + seq,
        kind: RecordKind::ConnectionParameters {
            instance: n(instance),
            parameters: BTreeMap::from([
                ("host".to_owned(), "10.0.0.2".to_owned()),
                ("port".to_owned(), port.to_owned()),
            ]),
        },
    }
}

fn app() -> InstanceRequest {
    let mut r = request("app", RequestedState::Started);
    r.config_files.push(ConfigFile {
        path: "etc/app.conf".into(),
        template: "db={{db.host}}:{{ db.port }}\n".into(),
    });
    r
}

fn imported(port: &str) -> Vec<Import> {
    vec![Import {
        instance: n("db"),
        parameters: BTreeMap::from([
            ("host".to_owned(), "10.0.0.2".to_owned()),
            ("port".to_owned(), port.to_owned()),
        ]),
    }]
}

fn put<S: FleetStore>(s: &S, node: &str, r: InstanceRequest, key: &MasterKey) -> DesiredState {
    s.update_desired(
        &n(node),
        |mut v| {
            v.push(r);
            v
        },
        |d| sign(key, d, 0),
    )
    .unwrap()
}

pub(crate) fn a_state_imports_what_the_owner_of_a_referenced_instance_published<H: Harness>(h: &H) {
    let s = &h.open();
    let key = MasterKey::generate();
    put(s, "node-b", request("db", RequestedState::Started), &key);
    let a1 = put(s, "node-a", app(), &key);
    assert!(a1.imports.is_empty(), "db published nothing yet");
    assert!(s.refresh_imports(|d| sign(&key, d, 0)).unwrap().is_empty());

    s.ingest(
        &n("node-b"),
        &up("node-b", vec![params_rec(1, "db", "5432")], Some((1, 1))),
        1,
    )
    .unwrap();
    let written = s.refresh_imports(|d| sign(&key, d, 0)).unwrap();
    assert_eq!(
        written,
        vec![(n("node-a"), a1.generation + 1)],
        "only the importer"
    );
    let a2 = s.desired(&n("node-a")).unwrap().unwrap();
    assert_eq!(a2.imports, imported("5432"));
    verify(&key.public(), &a2).unwrap();
    assert!(
        s.refresh_imports(|d| sign(&key, d, 0)).unwrap().is_empty(),
        "unchanged values make no new generation"
    );

    // The latest record of the owner wins, across its lives too.
    s.ingest(
        &n("node-b"),
        &up("node-b", vec![params_rec(2, "db", "6000")], Some((2, 2))),
        2,
    )
    .unwrap();
    assert_eq!(s.refresh_imports(|d| sign(&key, d, 0)).unwrap().len(), 1);
    assert_eq!(
        s.desired(&n("node-a")).unwrap().unwrap().imports,
        imported("6000")
    );
    s.ingest(
        &n("node-b"),
        &up_in(
            "node-b",
            0xe2,
            vec![params_rec(1, "db", "7000")],
            Some((1, 1)),
        ),
        3,
    )
    .unwrap();
    assert_eq!(s.refresh_imports(|d| sign(&key, d, 0)).unwrap().len(), 1);
    assert_eq!(
        s.desired(&n("node-a")).unwrap().unwrap().imports,
        imported("7000")
    );

    // Every state write fills them: a new consumer on another node gets them at once.
    let c = put(
        s,
        "node-c",
        {
            let mut r = app();
            r.name = n("app-2");
            r
        },
        &key,
    );
    assert_eq!(c.imports, imported("7000"));
    // An instance on the same node resolves there: no import.
    let b = put(
        s,
        "node-b",
        {
            let mut r = app();
            r.name = n("app-3");
            r
        },
        &key,
    );
    assert!(b.imports.is_empty());
}

pub(crate) fn a_node_publishing_for_an_instance_it_does_not_own_changes_no_import<H: Harness>(
    h: &H,
) {
    let s = &h.open();
    let key = MasterKey::generate();
    put(s, "node-b", request("db", RequestedState::Started), &key);
    put(s, "node-a", app(), &key);
    s.ingest(
        &n("node-b"),
        &up("node-b", vec![params_rec(1, "db", "5432")], Some((1, 1))),
        1,
    )
    .unwrap();
    s.refresh_imports(|d| sign(&key, d, 0)).unwrap();
    let before = s.desired(&n("node-a")).unwrap().unwrap();
    assert_eq!(before.imports, imported("5432"));

    // A hostile node claims db's parameters, later and in a newer life than the owner's.
    for (epoch, seq) in [(E1, 1), (0xbad, 99)] {
        s.ingest(
            &n("evil"),
            &up_in(
                "evil",
                epoch,
                vec![params_rec(seq, "db", "6666")],
                Some((1, seq)),
            ),
            10,
        )
        .unwrap();
    }
    // The consumer's own node cannot claim them either.
    s.ingest(
        &n("node-a"),
        &up("node-a", vec![params_rec(1, "db", "6666")], Some((1, 1))),
        11,
    )
    .unwrap();
    assert!(s.refresh_imports(|d| sign(&key, d, 0)).unwrap().is_empty());
    assert_eq!(s.desired(&n("node-a")).unwrap().unwrap(), before);
    // A write of the consumer's state keeps the owner's values.
    let again = s
        .update_desired(&n("node-a"), |v| v, |d| sign(&key, d, 0))
        .unwrap();
    assert_eq!(again.imports, imported("5432"));

    // Once db is destroyed on its node, nobody owns it: the import goes.
    s.update_desired(
        &n("node-b"),
        |mut v| {
            v.iter_mut()
                .for_each(|r| r.state = RequestedState::Destroyed);
            v
        },
        |d| sign(&key, d, 0),
    )
    .unwrap();
    assert_eq!(s.refresh_imports(|d| sign(&key, d, 0)).unwrap().len(), 1);
    assert!(s.desired(&n("node-a")).unwrap().unwrap().imports.is_empty());
}

pub(crate) fn a_consumer_left_behind_by_a_move_imports_once_the_old_copy_is_pruned<H: Harness>(
    h: &H,
) {
    use super::place::{on, register, Reporter};
    let s = &h.open();
    let key = MasterKey::generate();
    register(s, "x", 8);
    register(s, "y", 8);
    let place =
        |r: InstanceRequest, node: &str| s.place(r, &on(node), 0, 0, |d| sign(&key, d, 0)).unwrap();
    let mut x = Reporter::new("x");
    let mut y = Reporter::new("y");
    place(request("db", RequestedState::Started), "x");
    let g = place(app(), "x").state.generation;
    x.accepted(s, g);
    x.state(s, "db", InstanceStatus::Running);

    // db moves to y and publishes there; x still names it (destroyed): no import yet.
    let moved = place(request("db", RequestedState::Started), "y");
    let (_, gx) = moved.destroyed_on[0].clone();
    y.send(s, params_rec(0, "db", "5432").kind);
    assert!(s.refresh_imports(|d| sign(&key, d, 0)).unwrap().is_empty());
    assert!(s.desired(&n("x")).unwrap().unwrap().imports.is_empty());

    // x applied the move and reported its copy destroyed: the refresh prunes it and
    // imports y's values.
    x.accepted(s, gx);
    x.state(s, "db", InstanceStatus::Destroyed);
    let written = s.refresh_imports(|d| sign(&key, d, 0)).unwrap();
    assert_eq!(
        written.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["x"]
    );
    let state = s.desired(&n("x")).unwrap().unwrap();
    assert!(!state.instances.iter().any(|r| r.name == n("db")), "pruned");
    assert_eq!(state.imports, imported("5432"));
    assert!(s.refresh_imports(|d| sign(&key, d, 0)).unwrap().is_empty());
}
