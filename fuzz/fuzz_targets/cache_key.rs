//! Cache key from an arbitrary authority and request target; the harness and its invariants live in `shellac::fuzzing`, shared with the
//! deterministic smoke test that runs in CI.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shellac::fuzzing::cache_key(data));
