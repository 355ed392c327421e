#![no_main]
//! A replica fed a fuzzer-written log (records with valid checksums: images, deltas,
//! commits with right and wrong counts, checkpoints, epochs) in fuzzer-chosen pieces, then a
//! checkpoint, a power cut and a restart: typed errors only, never a panic.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    storage::fuzzing::replica_apply(data);
});
