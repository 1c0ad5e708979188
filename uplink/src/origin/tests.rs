#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
};

use super::*;

/// 2026-12-01, as seconds since the epoch: inside the test certificates' validity.
const NOW: Duration = Duration::from_secs(1_796_083_200);

fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

/// A fleet CA (as `hedge master init` makes one): its PEM and an issuer.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(cn: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let pem = p.self_signed(&key).unwrap().pem();
    Ca {
        pem,
        issuer: Issuer::new(p, key),
    }
}

/// A node certificate for `cn` with `key` (client auth, as the master issues them),
/// valid until `until` (year); its DER.
fn node_cert(
    ca: &Ca,
    cn: &str,
    key: &KeyPair,
    until: i32,
    eku: ExtendedKeyUsagePurpose,
) -> Vec<u8> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![eku];
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(until, 1, 1);
    p.signed_by(key, &ca.issuer).unwrap().der().to_vec()
}

/// A node certificate for `cn` with `key`, as rcgen gives it (PEM and DER).
fn node_cert_pem(ca: &Ca, cn: &str, key: &KeyPair) -> rcgen::Certificate {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.signed_by(key, &ca.issuer).unwrap()
}

/// A node: its signing key (from the PEM the node writes) and its certificate.
fn node(ca: &Ca, cn: &str) -> (OriginKey, KeyPair, Vec<u8>) {
    let kp = KeyPair::generate().unwrap();
    let key = OriginKey::from_pem(kp.serialize_pem().as_bytes()).unwrap();
    let cert = node_cert(ca, cn, &kp, 2040, ExtendedKeyUsagePurpose::ClientAuth);
    (key, kp, cert)
}

#[test]
fn a_batch_verifies_only_unaltered_and_with_its_origins_key() {
    let fleet = ca("hedge fleet CA");
    let (key, kp, cert) = node(&fleet, "node-1");
    let (_, _, other_cert) = node(&fleet, "node-2");
    let b = key.sign_batch(b"an encoded Up frame".to_vec()).unwrap();
    assert_eq!(b.signature.len(), ORIGIN_SIGNATURE_LEN);
    let c = OriginCert::from_der(&cert).unwrap();
    assert_eq!(c.cn(), Some("node-1"));
    c.verify_batch(&b).unwrap();
    c.check_node(&name("node-1")).unwrap();
    assert!(c.matches(&key));
    let (other_key, _, _) = node(&fleet, "node-1");
    assert!(
        !c.matches(&other_key),
        "a node key that is not the certificate's"
    );
    assert!(matches!(
        c.check_node(&name("node-2")),
        Err(OriginError::WrongNode { .. })
    ));
    // The key alone (SubjectPublicKeyInfo) verifies the same, and has no CN.
    let spki = OriginCert::from_spki_der(&kp.subject_public_key_info()).unwrap();
    spki.verify_batch(&b).unwrap();
    assert!(spki.check_node(&name("node-1")).is_err());
    // Another node's certificate (a relay claiming the batch is someone else's).
    assert_eq!(
        OriginCert::from_der(&other_cert).unwrap().verify_batch(&b),
        Err(OriginError::BadSignature)
    );
    // Altered bytes, altered, truncated, DER-form or missing signatures.
    let mut bad = b.clone();
    bad.bytes[0] ^= 1;
    assert_eq!(c.verify_batch(&bad), Err(OriginError::BadSignature));
    let mut bad = b.clone();
    bad.bytes.push(0);
    assert_eq!(c.verify_batch(&bad), Err(OriginError::BadSignature));
    let mut bad = b.clone();
    bad.signature[10] ^= 0x80;
    assert_eq!(c.verify_batch(&bad), Err(OriginError::BadSignature));
    for sig in [
        Vec::new(),
        b.signature[..63].to_vec(),
        vec![0u8; 72],
        vec![0u8; 64],
    ] {
        let bad = SignedBatch {
            bytes: b.bytes.clone(),
            signature: sig,
        };
        assert_eq!(c.verify_batch(&bad), Err(OriginError::BadSignature));
    }
    // A signature over the bare bytes (no context) is not a batch signature.
    let bare = SignedBatch {
        bytes: b.bytes.clone(),
        signature: key.sign(&b.bytes).unwrap(),
    };
    assert_eq!(c.verify_batch(&bare), Err(OriginError::BadSignature));
}

#[test]
fn malformed_foreign_and_oversized_keys_and_certificates_are_refused() {
    let fleet = ca("hedge fleet CA");
    for pem in [
        &b""[..],
        b"garbage",
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    ] {
        assert!(matches!(OriginKey::from_pem(pem), Err(OriginError::Key(_))));
    }
    // A P-384 or ed25519 key is not a node key.
    for alg in [&rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_ED25519] {
        let kp = KeyPair::generate_for(alg).unwrap();
        assert!(matches!(
            OriginKey::from_pem(kp.serialize_pem().as_bytes()),
            Err(OriginError::Key(_))
        ));
        let cert = node_cert(
            &fleet,
            "node-1",
            &kp,
            2040,
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        assert_eq!(OriginCert::from_der(&cert), Err(OriginError::NotP256));
        assert_eq!(
            OriginCert::from_spki_der(&kp.subject_public_key_info()),
            Err(OriginError::NotP256)
        );
    }
    assert!(matches!(
        OriginCert::from_der(b"junk"),
        Err(OriginError::Cert(_))
    ));
    assert!(matches!(
        OriginCert::from_spki_der(b"junk"),
        Err(OriginError::Cert(_))
    ));
    let (_, _, mut cert) = node(&fleet, "node-1");
    cert.push(0);
    assert!(matches!(
        OriginCert::from_der(&cert),
        Err(OriginError::Cert(_))
    ));
    assert!(matches!(
        OriginCert::from_der(&vec![0x30; MAX_CERT + 1]),
        Err(OriginError::Cert(_))
    ));
}

#[test]
fn acks_verify_only_with_the_masters_key_and_unaltered() {
    let master = SigningKey::from_bytes(&[7; 32]);
    let other = SigningKey::from_bytes(&[8; 32]);
    let a = sign_ack(&master, name("node-3"), 42, 1000);
    verify_ack(&master.verifying_key(), &a).unwrap();
    assert_eq!(
        verify_ack(&other.verifying_key(), &a),
        Err(OriginError::BadSignature)
    );
    for alter in [
        |a: &mut SignedAck| a.upto += 1,
        |a: &mut SignedAck| a.epoch += 1,
        |a: &mut SignedAck| a.node = Name::new("node-4").unwrap(),
        |a: &mut SignedAck| a.signature[0] ^= 1,
        |a: &mut SignedAck| a.signature.truncate(63),
        |a: &mut SignedAck| a.signature.push(0),
    ] {
        let mut bad = a.clone();
        alter(&mut bad);
        assert_eq!(
            verify_ack(&master.verifying_key(), &bad),
            Err(OriginError::BadSignature)
        );
    }
}

fn params() -> BTreeMap<String, String> {
    BTreeMap::from([("port".to_owned(), "5432".to_owned())])
}

#[test]
fn params_need_a_fleet_certificate_for_their_node_and_its_signature() {
    let fleet = ca("hedge fleet CA");
    let trusted = FleetCa::from_pem(fleet.pem.as_bytes()).unwrap();
    let (key, kp, cert) = node(&fleet, "node-2");
    let p = key
        .sign_params(name("node-2"), name("db"), 5, params(), cert.clone())
        .unwrap();
    trusted.verify_params(&p, NOW).unwrap();

    // Altered after signing.
    for alter in [
        |p: &mut SignedParams| {
            p.parameters.insert("port".into(), "6543".into());
        },
        |p: &mut SignedParams| p.generation += 1,
        |p: &mut SignedParams| p.instance = Name::new("web").unwrap(),
        |p: &mut SignedParams| p.signature[5] ^= 1,
    ] {
        let mut bad = p.clone();
        alter(&mut bad);
        assert_eq!(
            trusted.verify_params(&bad, NOW),
            Err(OriginError::BadSignature)
        );
    }
    // Claiming to be another node with one's own certificate.
    let mut bad = key
        .sign_params(name("node-9"), name("db"), 5, params(), cert.clone())
        .unwrap();
    assert!(matches!(
        trusted.verify_params(&bad, NOW),
        Err(OriginError::WrongNode { .. })
    ));
    // Another node's (valid) certificate attached to one's own signature.
    let (intruder, _, _) = node(&fleet, "node-7");
    bad = intruder
        .sign_params(name("node-2"), name("db"), 6, params(), cert.clone())
        .unwrap();
    assert_eq!(
        trusted.verify_params(&bad, NOW),
        Err(OriginError::BadSignature)
    );
    // A certificate from another CA, even with the right CN and key.
    let rogue = ca("hedge fleet CA");
    let rogue_cert = node_cert(
        &rogue,
        "node-2",
        &kp,
        2040,
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    bad = key
        .sign_params(name("node-2"), name("db"), 7, params(), rogue_cert)
        .unwrap();
    assert!(matches!(
        trusted.verify_params(&bad, NOW),
        Err(OriginError::NotFleet(_))
    ));
    // Expired, and not a client certificate.
    for (until, eku) in [
        (2025, ExtendedKeyUsagePurpose::ClientAuth),
        (2040, ExtendedKeyUsagePurpose::ServerAuth),
    ] {
        let c = node_cert(&fleet, "node-2", &kp, until, eku);
        bad = key
            .sign_params(name("node-2"), name("db"), 8, params(), c)
            .unwrap();
        assert!(
            matches!(
                trusted.verify_params(&bad, NOW),
                Err(OriginError::NotFleet(_))
            ),
            "{until}"
        );
    }
    // Garbage certificate.
    bad = key
        .sign_params(name("node-2"), name("db"), 9, params(), b"junk".to_vec())
        .unwrap();
    assert!(matches!(
        trusted.verify_params(&bad, NOW),
        Err(OriginError::Cert(_))
    ));
    assert!(matches!(
        FleetCa::from_pem(b"no pem here"),
        Err(OriginError::Cert(_))
    ));
    // The node's own PEM certificate (a chain: leaf first), as DER to attach.
    let leaf = node_cert_pem(&fleet, "node-2", &kp);
    let chain = format!("{}{}", leaf.pem(), fleet.pem);
    assert_eq!(
        cert_der_from_pem(chain.as_bytes()).unwrap(),
        leaf.der().to_vec()
    );
    assert!(matches!(cert_der_from_pem(b""), Err(OriginError::Cert(_))));
}

/// `node`'s batch of `records` covering `covers`, encoded as the sync core sends it.
fn up_frame(node: &str, records: Vec<hedge_wire::Record>, covers: (u64, u64)) -> Vec<u8> {
    let up = hedge_wire::Up {
        node: name(node),
        records,
        covers: Some(covers),
        epoch: 9,
    };
    hedge_wire::encode(&hedge_wire::Message::Up(up), hedge_wire::DEFAULT_MAX_FRAME).unwrap()
}

#[test]
fn a_relayed_batch_verifies_layer_by_layer_and_a_relay_cannot_alter_the_inner_one() {
    // far signs its batch; relay wraps it as one Relayed record of its own batch and
    // signs that: each layer verifies against its own node's certificate.
    let fleet = ca("hedge fleet CA");
    let (far_key, _, far_cert) = node(&fleet, "far");
    let (relay_key, _, relay_cert) = node(&fleet, "relay");
    let usage = hedge_wire::Record {
        seq: 1,
        time_ms: 1_700_000_000_000,
        kind: hedge_wire::RecordKind::Fence {
            instance: name("db"),
            fence: 3,
            holding: true,
        },
    };
    let inner = far_key
        .sign_batch(up_frame("far", vec![usage], (1, 1)))
        .unwrap();
    let relayed = hedge_wire::Record {
        seq: 7,
        time_ms: 1_700_000_000_001,
        kind: hedge_wire::RecordKind::Relayed(inner.clone()),
    };
    let outer = relay_key
        .sign_batch(up_frame("relay", vec![relayed], (7, 7)))
        .unwrap();

    let relay = OriginCert::from_der(&relay_cert).unwrap();
    let far = OriginCert::from_der(&far_cert).unwrap();
    relay.verify_batch(&outer).unwrap();
    let up = outer.up(hedge_wire::DEFAULT_MAX_FRAME).unwrap();
    relay.check_node(&up.node).unwrap();
    let hedge_wire::RecordKind::Relayed(got) = &up.records[0].kind else {
        panic!("not relayed: {:?}", up.records[0].kind);
    };
    far.verify_batch(got).unwrap();
    far.check_node(&got.up(hedge_wire::DEFAULT_MAX_FRAME).unwrap().node)
        .unwrap();
    // The relay signing its own batch in far's name is refused by far's certificate.
    let forged = relay_key
        .sign_batch(up_frame("far", Vec::new(), (1, 5)))
        .unwrap();
    assert_eq!(far.verify_batch(&forged), Err(OriginError::BadSignature));
    // Nor can it alter far's batch (here: widen its range) and keep the signature.
    let mut altered = inner.clone();
    altered.bytes = up_frame("far", Vec::new(), (1, 9));
    assert_eq!(far.verify_batch(&altered), Err(OriginError::BadSignature));
}
