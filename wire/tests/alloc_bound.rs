//! Decoding allocates only for data present in its input: a frame that claims huge
//! collection lengths gets no allocation on the strength of the claim, and a frame full
//! of tiny elements stops at the collection's bound.
//!
//! A counting global allocator (`cap`) gets a limit of "what is allocated now + budget"
//! around each decode. An allocation beyond it fails, which aborts this test binary with
//! "memory allocation of N bytes failed"; rerun with `--nocapture` to see which case.
//! This file holds a single test so that nothing else allocates meanwhile.
#![allow(clippy::unwrap_used)]

use std::alloc::System;

use cap::Cap;
use hedge_wire::limits::*;
use hedge_wire::*;

#[global_allocator]
static ALLOC: Cap<System> = Cap::new(System, usize::MAX);

const MAX: usize = DEFAULT_MAX_FRAME;
/// More than any claim below could be backed by, less than the input can hold.
const CLAIM: u32 = 60_000;

fn varint(mut v: u32, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push(v.to_le_bytes()[0] | 0x80);
        v >>= 7;
    }
    out.push(v.to_le_bytes()[0]);
}

/// `head` then a claimed length of [`CLAIM`], then `fill` repeated up to `MAX` bytes.
fn frame(head: &[u8], fill: &dyn Fn(usize) -> Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAX + 64);
    out.extend_from_slice(head);
    varint(CLAIM, &mut out);
    let mut i = 0;
    loop {
        let item = fill(i);
        if out.len() + item.len() > MAX {
            break;
        }
        out.extend(item);
        i += 1;
    }
    out.resize(MAX, 0);
    out
}

/// `Message::Desired` with node "n", generation 0, then `rest`.
fn desired_head(rest: &[u8]) -> Vec<u8> {
    let mut h = vec![WIRE_VERSION, 0, 1, b'n', 0];
    h.extend_from_slice(rest);
    h
}

/// One instance "a", an artifact with no variant and an empty entry, then `rest`
/// (from `args` on).
fn instance_head(rest: &[u8]) -> Vec<u8> {
    let mut h = vec![1, 1, b'a', 1, 0, 0];
    h.extend_from_slice(rest);
    desired_head(&h)
}

/// An artifact variant with an empty target and a zero hash: 33 bytes.
fn variant(_: usize) -> Vec<u8> {
    vec![0; 33]
}

/// `Message::Up` with node "n", then `rest`.
fn up_head(rest: &[u8]) -> Vec<u8> {
    let mut h = vec![WIRE_VERSION, 1, 1, b'n'];
    h.extend_from_slice(rest);
    h
}

/// A distinct 3-letter parameter key with an empty value.
fn param(i: usize) -> Vec<u8> {
    let l = |n: usize| b'a' + u8::try_from(n % 26).unwrap();
    vec![3, l(i), l(i / 26), l(i / 676), 0]
}

/// A `NodeHealth` record, all zeros: 10 bytes.
fn health(_: usize) -> Vec<u8> {
    vec![0, 0, 4, 0, 0, 0, 0, 0, 0, 0]
}

fn zero(_: usize) -> Vec<u8> {
    vec![0]
}

/// A compact batch (version 3) with node "n", epoch 1, no `covers`, then `rest`.
fn compact_head(rest: &[u8]) -> Vec<u8> {
    let mut h = vec![COMPACT_UP_VERSION, 1, b'n', 1, 0];
    h.extend_from_slice(rest);
    h
}

/// A compact usage record, every field predicted, with a new one-letter name: 6 bytes.
fn compact_usage(_: usize) -> Vec<u8> {
    vec![!compact::NET, 0, 1, b'a', 0, 0]
}

fn within(label: &str, budget: usize, input: &[u8]) {
    eprintln!("{label}: budget {budget} bytes");
    ALLOC.set_limit(ALLOC.allocated() + budget).unwrap();
    let got = decode(input, MAX);
    ALLOC.set_limit(usize::MAX).unwrap();
    assert!(got.is_err(), "{label}: decoded");
    eprintln!("{label}: {:?}", got);
}

#[test]
fn decoding_allocates_only_for_what_is_there() {
    // Claims backed by nothing decodable: the first element fails (an empty name, or
    // bytes that end). Nothing may be preallocated for the claim beyond a few KiB.
    let small = 32 * 1024;
    // Elements actually present, up to the bound: the bound times the element size,
    // with room for `Vec` doubling.
    let full = |n: usize, size: usize| 2 * n * size + 64 * 1024;

    let cases: Vec<(&str, usize, Vec<u8>)> = vec![
        ("instances claim", small, frame(&desired_head(&[]), &zero)),
        (
            "args claim",
            full(MAX_ARGS, 24),
            frame(&instance_head(&[]), &zero),
        ),
        (
            "parameters claim",
            full(MAX_PARAMETERS, 96),
            frame(&instance_head(&[0]), &param),
        ),
        // path "" and template "" decode; validation would refuse them later.
        (
            "config files claim",
            full(MAX_CONFIG_FILES, 48),
            frame(&instance_head(&[0, 0]), &zero),
        ),
        (
            "promises claim",
            small,
            frame(&instance_head(&[0, 0, 0]), &zero),
        ),
        (
            "command argv claim",
            full(MAX_ARGS, 24),
            frame(&instance_head(&[0, 0, 0, 1, 1, b'p', 3]), &zero),
        ),
        (
            "artifact variants claim",
            full(MAX_VARIANTS, size_of::<ArtifactVariant>()),
            frame(&desired_head(&[1, 1, b'a', 1]), &variant),
        ),
        (
            "records claim",
            full(MAX_RECORDS, size_of::<Record>()),
            frame(&up_head(&[]), &health),
        ),
        (
            "connection parameters claim",
            full(MAX_PARAMETERS, 96),
            frame(&up_head(&[1, 0, 0, 6, 1, b'a']), &param),
        ),
        (
            "local request args claim",
            full(MAX_ARGS, 24),
            frame(&up_head(&[1, 0, 0, 5, 1, b'a', 1, 0, 0]), &zero),
        ),
        (
            "compact records claim",
            small,
            frame(&compact_head(&[]), &compact_usage),
        ),
        (
            // The bound's worth of records, each a new name (the largest state a
            // compact batch makes its decoder keep), then zeros: trailing bytes.
            "compact records present",
            full(MAX_RECORDS, size_of::<Record>() + 128),
            {
                let mut f = compact_head(&[0x80, 0x08]);
                (0..MAX_RECORDS).for_each(|i| f.extend(compact_usage(i)));
                f.resize(MAX, 0);
                f
            },
        ),
    ];
    eprintln!("size_of::<Record>() = {}", size_of::<Record>());
    for (label, budget, input) in &cases {
        assert_eq!(input.len(), MAX);
        within(label, *budget, input);
    }
}
