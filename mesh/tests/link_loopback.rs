//! Mesh links over real peer sessions (TCP + mutual TLS on loopback, `net::start`) with
//! real keys (`trust::NodeTrust`: P-256 node keys under a fleet CA, the master's ed25519
//! key): a chain of three where only the first reaches the master; the far node's
//! records arrive exactly once and its copies go once the master's ack comes back; its
//! desired state and its connection parameters cross the chain; the keys refuse what
//! they must.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;
mod fake;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use common::{loopback, Ca};
use ed25519_dalek::{Signer, SigningKey};
use fake::{drain, exactly_once, until, until_with, usage, Daemon, Master, Node, EPOCH};
use hedge_mesh::link::Trust;
use hedge_mesh::trust::{NodeTrust, TrustError};
use hedge_mesh::{start, NetTls};
use hedge_uplink::link::ToLink;
use hedge_uplink::origin::{sign_ack, OriginCert};
use hedge_wire::mesh::SignedBatch;
use hedge_wire::{decode, encode, DesiredState, Message, Name, DEFAULT_MAX_FRAME};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::sync::mpsc;

fn n(s: &str) -> Name {
    Name::new(s).unwrap()
}

fn der(cert_pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec()
}

/// Starts node `name`'s transport (dialing `peers`) and mesh link with real keys.
fn node(ca: &Ca, master: &SigningKey, name: &str, peers: Vec<String>) -> (Node, String, String) {
    let (cert, key) = ca.node(name);
    let tls = NetTls::new(ca.pem.as_bytes(), cert.as_bytes(), key.as_bytes()).unwrap();
    let (tx, rx) = mpsc::channel(1024);
    let net = start(loopback(peers), tls, n(name), tx).unwrap();
    let trust = NodeTrust::new(
        n(name),
        key.as_bytes(),
        cert.as_bytes(),
        ca.pem.as_bytes(),
        master.verifying_key(),
    )
    .unwrap();
    let addr = net.local_addr().to_string();
    let node = fake::start_with(
        n(name),
        Arc::new(Mutex::new(Daemon::default())),
        net,
        trust,
        rx,
    );
    (node, addr, cert)
}

fn signed_state(master: &SigningKey, node: &Name, generation: u64) -> DesiredState {
    let mut s = DesiredState {
        node: node.clone(),
        generation,
        instances: Vec::new(),
        signature: heapless::Vec::new(),
        expires_ms: u64::MAX,
        terms: Vec::new(),
        imports: Vec::new(),
        backups: Vec::new(),
        restores: Vec::new(),
    };
    let sig = master.sign(&s.signed_bytes()).to_bytes();
    s.signature = heapless::Vec::from_slice(&sig).unwrap();
    s
}

#[tokio::test]
async fn a_chain_of_three_over_tls_carries_records_states_and_parameters() {
    let ca = Ca::new("fleet");
    let master_key = SigningKey::from_bytes(&[7; 32]);
    let (a, a_addr, a_cert) = node(&ca, &master_key, "a", vec![]);
    let (b, b_addr, b_cert) = node(&ca, &master_key, "b", vec![a_addr]);
    let (c, _, c_cert) = node(&ca, &master_key, "c", vec![b_addr]);
    let certs: BTreeMap<Name, OriginCert> = [("a", &a_cert), ("b", &b_cert), ("c", &c_cert)]
        .into_iter()
        .map(|(name, pem)| (n(name), OriginCert::from_der(&der(pem)).unwrap()))
        .collect();
    let ack_key = master_key.clone();
    let master = Mutex::new(Master {
        signed_by: Box::new(move |node: &Name, batch: &SignedBatch| {
            certs
                .get(node)
                .is_some_and(|c| c.verify_batch(batch).is_ok())
        }),
        ack: Box::new(move |node: &Name, epoch, upto| {
            sign_ack(&ack_key, node.clone(), epoch, upto)
        }),
        ..Master::default()
    });
    a.tell(ToLink::Direct(true));
    b.tell(ToLink::Direct(false));
    c.tell(ToLink::Direct(false));
    c.append(300);
    until_with(
        30,
        "c's records at the master and c's copies gone",
        || drain(&master, &a),
        || master.lock().unwrap().acked(&c.name, EPOCH) >= 300 && c.d().outbox.is_empty(),
    )
    .await;
    exactly_once(&master, &c.name, 300);
    assert_eq!(master.lock().unwrap().forged, 0);
    until_with(
        10,
        "b's relay copies gone",
        || drain(&master, &a),
        || b.d().outbox.is_empty(),
    )
    .await;

    // c's desired state, from the master's carry topic at a, reaches c through b.
    let state = signed_state(&master_key, &c.name, 3);
    let frame = encode(&Message::Desired(state), DEFAULT_MAX_FRAME).unwrap();
    a.tell(ToLink::Carried(frame));
    until(10, "c's state at c", || c.d().desired.len() == 1).await;
    let got = decode(&c.d().desired[0], DEFAULT_MAX_FRAME).unwrap();
    assert!(matches!(got, Message::Desired(s) if s.node == c.name && s.generation == 3));

    // c's connection parameters reach a with no master involved, verified at each hop.
    c.tell(ToLink::Params {
        instance: n("db"),
        parameters: BTreeMap::from([("port".to_string(), "5432".to_string())]),
    });
    until(10, "c's parameters at a", || a.d().params.len() == 1).await;
    let p = a.d().params[0].clone();
    assert_eq!((p.node.as_str(), p.instance.as_str()), ("c", "db"));
    assert_eq!(p.parameters["port"], "5432");
    assert_eq!(
        usage(&c.name, 1),
        master.lock().unwrap().records[&(c.name.clone(), EPOCH, 1)]
    );
}

#[test]
fn real_keys_accept_their_own_and_refuse_everything_else() {
    let ca = Ca::new("fleet");
    let other_ca = Ca::new("elsewhere");
    let master = SigningKey::from_bytes(&[7; 32]);
    let (cert_c, key_c) = ca.node("c");
    let (cert_b, key_b) = ca.node("b");
    let (cert_x, key_x) = other_ca.node("c");
    let trust = |me: &str, key: &str, cert: &str, ca_pem: &str| {
        NodeTrust::new(
            n(me),
            key.as_bytes(),
            cert.as_bytes(),
            ca_pem.as_bytes(),
            master.verifying_key(),
        )
    };
    let c = trust("c", &key_c, &cert_c, &ca.pem).unwrap();
    let b = trust("b", &key_b, &cert_b, &ca.pem).unwrap();
    // A key that is not the certificate's, a certificate of another node.
    assert!(matches!(
        trust("c", &key_b, &cert_c, &ca.pem),
        Err(TrustError::Mismatch)
    ));
    assert!(matches!(
        trust("b", &key_c, &cert_c, &ca.pem),
        Err(TrustError::Mismatch)
    ));

    let frame = encode(
        &Message::Up(hedge_wire::Up {
            node: n("c"),
            records: vec![usage(&n("c"), 1)],
            covers: Some((1, 1)),
            epoch: EPOCH,
        }),
        DEFAULT_MAX_FRAME,
    )
    .unwrap();
    let batch = c.sign_batch(frame).unwrap();
    assert!(b.batch_ok(&batch, &der(&cert_c)));
    assert!(
        !b.batch_ok(&batch, &der(&cert_b)),
        "another peer's certificate"
    );
    let mut altered = batch.clone();
    altered.bytes[3] ^= 1;
    assert!(!b.batch_ok(&altered, &der(&cert_c)));
    assert!(!b.batch_ok(&batch, b"not a certificate"));

    let ack = sign_ack(&master, n("c"), EPOCH, 9);
    assert!(b.ack_ok(&ack));
    let forged = sign_ack(&SigningKey::from_bytes(&[8; 32]), n("c"), EPOCH, 9);
    assert!(!b.ack_ok(&forged));
    let mut moved = ack.clone();
    moved.upto = 10;
    assert!(!b.ack_ok(&moved));

    assert!(b.desired_ok(&signed_state(&master, &n("c"), 4)));
    let mut bumped = signed_state(&master, &n("c"), 4);
    bumped.generation = 5;
    assert!(!b.desired_ok(&bumped));
    assert!(!b.desired_ok(&signed_state(&SigningKey::from_bytes(&[9; 32]), &n("c"), 4)));

    let params = BTreeMap::from([("port".to_string(), "1".to_string())]);
    let p = c.sign_params(n("db"), 1_000, params.clone()).unwrap();
    assert!(b.params_ok(&p));
    let mut claimed = p.clone();
    claimed.node = n("b");
    assert!(!b.params_ok(&claimed), "CN is not the node claimed");
    let mut changed = p.clone();
    changed.parameters.insert("port".into(), "2".into());
    assert!(!b.params_ok(&changed));
    // Signed by a look-alike "c" under another CA: refused.
    let x = trust("c", &key_x, &cert_x, &other_ca.pem).unwrap();
    assert!(!b.params_ok(&x.sign_params(n("db"), 1_000, params).unwrap()));
}
