//! libFuzzer entry for `tether::fuzz::release` (the properties live there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tether::fuzz::release(data));
