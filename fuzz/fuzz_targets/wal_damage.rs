#![no_main]
//! The recovery classifier on a log the fuzzer damages (flips, zeroed runs, garbage): `check`
//! and opening agree on damage, a refused open changes nothing, and what opens is a prefix
//! of the commits holding every one that ended before the damage.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    storage::fuzzing::wal_damage(data);
});
