#![no_main]
//! Arbitrary frames at the start of a replication connection: the verdict on a peer's hello
//! and the bounds on a base backup's page runs, whatever the peer claims. Never a panic.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    replication::fuzzing::handshake(data);
});
