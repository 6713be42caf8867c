//! libFuzzer entry for `tether_harness::linksim::fuzz_control` (the properties live there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tether_harness::linksim::fuzz_control(data));
