#![no_main]
//! Arbitrary bytes as a page image: verification and cell decoding must return a summary or
//! a typed error, never panic or read out of bounds.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    storage::fuzzing::page_decode(data);
});
