//! libFuzzer entry for `tether::fuzz::config` (the properties live there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tether::fuzz::config(data));
