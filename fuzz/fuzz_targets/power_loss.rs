#![no_main]
//! The engine on a simulated disk, with the fuzzer choosing the operations, the moment the
//! power goes and what the disk keeps: after recovery every acknowledged commit is there,
//! no batch is half there, and the database is whole.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    storage::fuzzing::power_loss(data);
});
