//! Fuzz target `event_decode`: see `tests/integration/common/fuzz_checks.rs` for what it checks.
#![no_main]

#[path = "../../tests/integration/common/limits.rs"]
#[allow(dead_code)]
mod limits;

#[path = "../../tests/integration/common/fuzz_checks.rs"]
#[allow(dead_code)]
mod fuzz_checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::event_decode(data));
