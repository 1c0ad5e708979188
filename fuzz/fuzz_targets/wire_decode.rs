//! The wire decoders: `decode` (the envelope, versions 2 and 3) and `read_frame`
//! (length-prefixed frames). Any input must give a validated message or a typed error,
//! never a panic, and a decoded message must encode again and decode to itself; a
//! decoded batch also in the compact encoding. The same bytes behind the compact
//! version byte exercise its decoder directly.
#![no_main]

use hedge_wire::{
    decode, encode, encode_up, read_frame, Message, COMPACT_UP_VERSION, DEFAULT_MAX_FRAME,
};
use libfuzzer_sys::fuzz_target;

fn check(bytes: &[u8]) {
    if let Ok(msg) = decode(bytes, DEFAULT_MAX_FRAME) {
        let again = encode(&msg, DEFAULT_MAX_FRAME).expect("a decoded message encodes");
        assert_eq!(decode(&again, DEFAULT_MAX_FRAME).as_ref(), Ok(&msg));
        if let Message::Up(up) = &msg {
            // Unbounded: adversarial values can make the compact form the longer one.
            let compact = encode_up(up, usize::MAX).expect("a decoded batch encodes");
            assert_eq!(decode(&compact, DEFAULT_MAX_FRAME).as_ref(), Ok(&msg));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if let Some((_, body)) = data.split_first() {
        let mut compact = Vec::with_capacity(data.len());
        compact.push(COMPACT_UP_VERSION);
        compact.extend_from_slice(body);
        check(&compact);
    }
    // The same bytes as a stream of frames, through a small buffer (so the size bound
    // is hit too); embedded-io's `Read` for `&[u8]` never fails.
    let mut stream = data;
    let mut buf = [0u8; 4096];
    for _ in 0..8 {
        if read_frame(&mut stream, &mut buf).is_err() {
            break;
        }
    }
});
