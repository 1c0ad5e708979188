//! Desired states: the generation high-water mark, validation and renewal.

use super::*;
use crate::sign::{sign, verify, MasterKey};
use crate::store::StoreError;

pub(crate) fn desired_generations_only_grow<H: Harness>(h: &H) {
    let s = &h.open();
    let pi = n("pi-1");
    let key = MasterKey::generate();
    assert_eq!(s.desired(&pi).unwrap(), None);
    let d1 = s
        .update_desired(
            &pi,
            |mut v| {
                v.push(request("web", RequestedState::Started));
                v
            },
            |d| sign(&key, d, 0),
        )
        .unwrap();
    assert_eq!(d1.generation, 1);
    verify(&key.public(), &d1).unwrap();
    assert_eq!(s.desired(&pi).unwrap().as_ref(), Some(&d1));

    let g = s.next_generation(&pi).unwrap();
    assert_eq!(g, 2);
    assert_eq!(s.next_generation(&pi).unwrap(), 3, "never handed out twice");
    // A reserved generation may still be stored, if above the stored one.
    let mut d2 = d1.clone();
    d2.generation = g;
    sign(&key, &mut d2, 0);
    s.put_desired(&d2).unwrap();
    assert!(matches!(
        s.put_desired(&d2),
        Err(StoreError::StaleGeneration {
            current: 2,
            given: 2,
            ..
        })
    ));
    let d4 = s.update_desired(&pi, |v| v, |d| sign(&key, d, 0)).unwrap();
    assert_eq!((d4.generation, d4.instances.len()), (4, 1));
    // An error inside the transaction stores nothing.
    assert!(matches!(
        s.update_desired(&pi, |v| v, |d| d.generation = 99),
        Err(StoreError::SignerChangedState(_))
    ));
    assert_eq!(s.desired(&pi).unwrap().map(|d| d.generation), Some(4));
    assert_eq!(s.desired_generation(&pi).unwrap(), Some(4));
    assert_eq!(s.desired_generations().unwrap(), vec![(pi.clone(), 4)]);
    assert_eq!(s.desired_generation(&n("pi-2")).unwrap(), None);
    // A state the wire would refuse is refused here too.
    let mut bad = d4.clone();
    bad.generation = 10;
    bad.signature = heapless::Vec::from_slice(&[1, 2, 3]).unwrap();
    assert!(matches!(s.put_desired(&bad), Err(StoreError::Invalid(_))));
}

pub(crate) fn states_near_their_expiry_are_re_signed_with_the_same_instances<H: Harness>(h: &H) {
    let s = &h.open();
    use crate::sign::{needs_renewal, renew_expiring, DESIRED_TTL_MS};
    let key = MasterKey::generate();
    let (pi, pj) = (n("pi-1"), n("pi-2"));
    let t0 = 1_000_000;
    let with_web = |mut v: Vec<InstanceRequest>| {
        v.push(request("web", RequestedState::Started));
        v
    };
    let d1 = s
        .update_desired(&pi, with_web, |d| sign(&key, d, t0))
        .unwrap();
    assert_eq!(d1.expires_ms, t0 + DESIRED_TTL_MS);
    // Nothing is due while more than half the lifetime is left.
    assert!(!needs_renewal(d1.expires_ms, t0 + DESIRED_TTL_MS / 2 - 1));
    assert!(renew_expiring(s, &key, t0 + DESIRED_TTL_MS / 2 - 1)
        .unwrap()
        .is_empty());
    // pi-2 was signed later: only pi-1 is due.
    let later = t0 + DESIRED_TTL_MS / 2 + 1;
    s.update_desired(&pj, with_web, |d| sign(&key, d, later))
        .unwrap();
    let renewed = renew_expiring(s, &key, later).unwrap();
    assert_eq!(renewed, vec![(pi.clone(), 2)]);
    let d2 = s.desired(&pi).unwrap().unwrap();
    assert_eq!(d2.generation, 2);
    assert_eq!(d2.instances, d1.instances);
    assert_eq!(d2.expires_ms, later + DESIRED_TTL_MS);
    verify(&key.public(), &d2).unwrap();
    // A state without an expiry (stored before wire version 2) is due at once.
    assert!(needs_renewal(0, 1));
}
