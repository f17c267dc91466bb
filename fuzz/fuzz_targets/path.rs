//! RFC 3986 §6.2.2 path normalisation on arbitrary targets: refused, or a normal form that is a
//! fixed point with the query kept; the invariants live in `shellac::fuzzing::path`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shellac::fuzzing::path(data));
