//! The mesh decoders: `decode_peer` (a peer frame) and `decode_beacon`. Any input must
//! give a validated message or a typed error, never a panic; a decoded message must
//! encode again and decode to itself, and a relayed batch's inner frame must decode or
//! fail typed too (a relay reads it before it takes custody).
#![no_main]

use hedge_wire::mesh::{decode_beacon, decode_peer, encode_beacon, encode_peer, PeerMessage};
use hedge_wire::DEFAULT_MAX_FRAME;
use libfuzzer_sys::fuzz_target;

const MAX: usize = 2 * DEFAULT_MAX_FRAME;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = decode_peer(data, MAX) {
        let again = encode_peer(&msg, MAX).expect("a decoded peer message encodes");
        assert_eq!(decode_peer(&again, MAX).as_ref(), Ok(&msg));
        if let PeerMessage::Batch(b) = &msg {
            let _ = b.up(DEFAULT_MAX_FRAME);
        }
    }
    if let Ok(b) = decode_beacon(data) {
        let again = encode_beacon(&b).expect("a decoded beacon encodes");
        assert_eq!(decode_beacon(&again).as_ref(), Ok(&b));
    }
});
