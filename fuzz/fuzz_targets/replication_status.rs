//! libFuzzer entry for `tether::fuzz::replication_status` (the properties live there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tether::fuzz::replication_status(data));
