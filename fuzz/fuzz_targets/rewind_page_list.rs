#![no_main]
//! A rewinding peer's page lists against a node of fuzzer-chosen size: the list the serving
//! side keeps never names a page it lacks nor holds more ids than it has pages.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    replication::fuzzing::rewind_page_list(data);
});
