//! The wire decoders: `decode` (the envelope) and `read_frame` (length-prefixed frames).
//! Any input must give a validated message or a typed error, never a panic, and a
//! decoded message must encode again and decode to itself.
#![no_main]

use hedge_wire::{decode, encode, read_frame, DEFAULT_MAX_FRAME};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = decode(data, DEFAULT_MAX_FRAME) {
        let again = encode(&msg, DEFAULT_MAX_FRAME).expect("a decoded message encodes");
        assert_eq!(decode(&again, DEFAULT_MAX_FRAME).as_ref(), Ok(&msg));
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
