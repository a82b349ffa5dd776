//! Any bytes as one control request: parsed, or refused in one line.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Err(err) = tether::Request::parse(bytes) {
        assert!(!err.contains('\n'), "multi-line refusal {err:?}");
        assert!(!err.is_empty(), "an empty refusal");
    }
});
