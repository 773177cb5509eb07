#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hero_snap_core::fuzzing::manifest(data));
