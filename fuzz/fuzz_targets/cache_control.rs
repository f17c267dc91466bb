//! RFC 9111 storing and hit rules on arbitrary Cache-Control, Pragma, Expires, Date, Last-Modified, Age and Vary values; the harness and its invariants live in `shellac::fuzzing`, shared with the
//! deterministic smoke test that runs in CI.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shellac::fuzzing::cache_control(data));
