#![no_main]
//! Arbitrary bytes as client input: the RESP parser returns requests, "incomplete" or a
//! protocol error — never a panic, an allocation beyond the request's own bounded size, or a
//! loop.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    replidb_server::resp::fuzz_parse_all(data);
});
