#![allow(clippy::unwrap_used)]

use hedge_wire::{ConfigFile, InstanceTerms, PromiseCheck, PromiseSpec};

use super::*;

fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

fn req(n: &str, args: &[&str]) -> InstanceRequest {
    let mut r = crate::store::conformance::request(n, RequestedState::Started);
    r.args = args.iter().map(|a| (*a).to_owned()).collect();
    r
}

fn state(node: &str, instances: Vec<InstanceRequest>, fences: &[(&str, u64)]) -> DesiredState {
    DesiredState {
        node: name(node),
        generation: 1,
        instances,
        signature: heapless::Vec::new(),
        expires_ms: 0,
        terms: fences
            .iter()
            .map(|(i, f)| InstanceTerms {
                instance: name(i),
                fence: *f,
                lease_ms: 0,
            })
            .collect(),
        imports: vec![],
        backups: Vec::new(),
        restores: Vec::new(),
    }
}

fn params(pairs: &[(&str, &str)]) -> Parameters {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn the_owner_is_the_live_holder_with_the_highest_fence() {
    let mut gone = req("db", &[]);
    gone.state = RequestedState::Destroyed;
    let a = state("a", vec![req("app", &[]), gone], &[]);
    let b = state("b", vec![req("db", &[]), req("cache", &[])], &[("db", 1)]);
    let c = state("c", vec![req("db", &[]), req("cache", &[])], &[("db", 2)]);
    let o = owners([&a, &b]);
    assert_eq!(o[&name("db")], name("b"), "a destroyed copy owns nothing");
    assert_eq!(o[&name("app")], name("a"));
    let o = owners([&a, &c, &b]);
    assert_eq!(o[&name("db")], name("c"), "the highest fence wins");
    assert_eq!(o[&name("cache")], name("b"), "equal fences: first by name");
}

#[test]
fn a_node_wants_what_its_live_instances_reference_on_other_nodes() {
    let mut app = req("app", &["--db={{db.host}}:{{ db.port }}", "{{cache.url}}"]);
    app.config_files.push(ConfigFile {
        path: "etc/app.conf".into(),
        template: "queue={{queue.addr}} self={{local.port}} own={{own.key}}".into(),
    });
    app.parameters.insert("own.key".into(), "mine".into());
    app.promises.push(PromiseSpec {
        name: name("up"),
        check: PromiseCheck::Tcp {
            address: "{{probe.addr}}".into(),
        },
        interval_ms: 1000,
        timeout_ms: 1000,
        threshold: 3,
    });
    let mut dead = req("dead", &["{{ghost.port}}"]);
    dead.state = RequestedState::Destroyed;
    let mine = vec![app, req("local", &[]), dead];
    let owners = BTreeMap::from([
        (name("db"), name("b")),
        (name("cache"), name("c")),
        (name("queue"), name("b")),
        (name("local"), name("a")),
        (name("probe"), name("c")),
        (name("own"), name("b")),
        (name("ghost"), name("b")),
    ]);
    assert_eq!(
        wanted(&name("a"), &mine, &owners),
        vec![
            (name("cache"), name("c")),
            (name("db"), name("b")),
            (name("probe"), name("c")),
            (name("queue"), name("b")),
        ],
        "own parameters, instances held here and destroyed consumers import nothing"
    );
    // `local` is owned by this node in the master's view; the instance `local`
    // referenced on another node is imported from here.
    let owners = BTreeMap::from([(name("local"), name("a"))]);
    assert!(wanted(&name("a"), &[req("x", &["{{local.p}}"])], &owners).is_empty());
    assert_eq!(
        wanted(&name("b"), &[req("x", &["{{local.p}}"])], &owners),
        vec![(name("local"), name("a"))]
    );
    // A name the state carries, even destroyed, is never imported (the wire refuses it).
    let mut gone = req("local", &[]);
    gone.state = RequestedState::Destroyed;
    assert!(wanted(
        &name("b"),
        &[req("x", &["{{local.p}}"]), gone.clone()],
        &owners
    )
    .is_empty());
    assert!(blocked(
        &name("b"),
        &[req("x", &["{{local.p}}"]), gone.clone()],
        &owners
    ));
    assert!(!blocked(
        &name("a"),
        &[req("x", &["{{local.p}}"]), gone.clone()],
        &owners
    ));
    assert!(!blocked(&name("b"), &[req("x", &[]), gone], &owners));
    // An instance no state holds has no owner: nothing to import.
    assert!(wanted(&name("a"), &[req("x", &["{{nowhere.p}}"])], &owners).is_empty());
}

#[test]
fn only_the_owners_latest_record_counts() {
    let rec = |node: &str, life: u32, seq: u64, port: &str| Published {
        node: name(node),
        at: (life, seq),
        parameters: params(&[("port", port)]),
    };
    let records = [
        rec("b", 1, 10, "5432"),
        rec("b", 1, 12, "5433"),
        rec("b", 0, 99, "old-life"),
        rec("evil", 9, 999, "6666"),
    ];
    assert_eq!(latest(&name("b"), &records).unwrap()["port"], "5433");
    let records = [rec("b", 2, 1, "new-life"), rec("b", 1, 12, "5433")];
    assert_eq!(latest(&name("b"), &records).unwrap()["port"], "new-life");
    // A node that does not own the instance changes nothing, however late its record.
    assert!(latest(&name("b"), &[rec("evil", 9, 999, "6666")]).is_none());
}

#[test]
fn imports_carry_what_the_owners_published() {
    let owners = BTreeMap::from([(name("db"), name("b")), (name("cache"), name("c"))]);
    let app = req("app", &["{{db.port}}", "{{cache.url}}"]);
    let got = imports(&name("a"), &[app], &owners, &BTreeMap::new(), |i, o| {
        (i.as_str() == "db" && o.as_str() == "b").then(|| params(&[("port", "5432")]))
    });
    assert_eq!(
        got,
        vec![Import {
            instance: name("db"),
            parameters: params(&[("port", "5432")]),
        }],
        "cache published nothing: not imported"
    );
}

#[test]
fn imports_stop_at_the_wire_bound() {
    let args: Vec<String> = (0..MAX_IMPORTS + 5)
        .map(|i| format!("{{{{db{i:03}.port}}}}"))
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let owners: BTreeMap<Name, Name> = (0..MAX_IMPORTS + 5)
        .map(|i| (name(&format!("db{i:03}")), name("b")))
        .collect();
    let got = imports(
        &name("a"),
        &[req("app", &args)],
        &owners,
        &BTreeMap::new(),
        |_, _| Some(params(&[("port", "1")])),
    );
    assert_eq!(got.len(), MAX_IMPORTS);
    assert_eq!(got[0].instance, name("db000"));
}

#[test]
fn during_a_handover_the_old_copy_serves_until_the_new_one_publishes() {
    let old = state("b", vec![req("db", &[])], &[("db", 1)]);
    let new = state("c", vec![req("db", &[])], &[("db", 2)]);
    let states = [&old, &new];
    let (owners, holders) = (owners(states), holders(states));
    assert_eq!(holders[&name("db")], vec![name("c"), name("b")]);
    let app = req("app", &["{{db.port}}"]);
    let from = |published: &[(&str, &str)]| {
        let published: BTreeMap<Name, Parameters> = published
            .iter()
            .map(|(n, port)| (name(n), params(&[("port", port)])))
            .collect();
        imports(
            &name("a"),
            std::slice::from_ref(&app),
            &owners,
            &holders,
            |_, o| published.get(o).cloned(),
        )
    };
    // The new copy has not published yet: the old one's values, not a wait.
    assert_eq!(from(&[("b", "5432")])[0].parameters["port"], "5432");
    // Once it has, its values.
    assert_eq!(
        from(&[("b", "5432"), ("c", "6000")])[0].parameters["port"],
        "6000"
    );
    // A node that holds no copy is never asked.
    assert!(from(&[("evil", "6666")]).is_empty());
}
