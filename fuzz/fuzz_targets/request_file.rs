//! The request-file parser (`hedge node request --file`): any text gives a request that
//! passes the wire bounds, or a typed error; never a panic.
#![no_main]

use hedge_runtime::request_file::{check_bounds, parse_toml};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(req) = parse_toml(text) {
        check_bounds(&req).expect("a parsed request is within the wire bounds");
    }
});
