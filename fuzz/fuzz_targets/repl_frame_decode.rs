#![no_main]
//! Arbitrary bytes on a replication connection: frames or a typed error, never a panic or an
//! allocation beyond a frame's bounded payload.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    replication::fuzzing::frame_decode(data);
});
