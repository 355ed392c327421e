#![no_main]
//! Arbitrary bytes as a WAL stream: the decoder yields records or a typed error, never a
//! panic, an unbounded allocation or an endless loop; decoded page records replay safely.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    storage::fuzzing::wal_decode(data);
});
